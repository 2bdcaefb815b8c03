"""The watchdog's bounds that heartbeats alone would not give (in-process, two parties
over loopback): a program that made no progress (a deadlock: every peer alive, no MPyC
message for the timeout) and a link stuck "resuming" past its own resume bound. The
real-process deadlock is in tests/test_mesh_clean_end.py."""

from __future__ import annotations

import asyncio
import time

from didmesh.session.mesh.faults import PeerUnresponsive, ProgramStalled
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.mesh import Mesh
from test_mesh_faults import _meshes, _until_fatal

TIMEOUT = 0.6


def _app_bytes(mesh: Mesh) -> int:
    return sum(p.app_bytes_sent + p.app_bytes_received for p in mesh.peers.values())


async def test_no_progress_for_the_timeout_is_a_stall() -> None:
    plans, ids = loopback_plans(2)
    meshes = await _meshes(plans, ids, timeout=TIMEOUT)
    try:
        for m in meshes:
            m.watch_progress(lambda m=m: _app_bytes(m))
        t0 = time.monotonic()
        for _ in range(int(3 * TIMEOUT / 0.05)):  # progress: no verdict however long
            meshes[0].peers[1].send_app(b"round")
            await asyncio.sleep(0.05)
        assert all(m.fatal is None for m in meshes)
        took = await _until_fatal(meshes, 4 * TIMEOUT + 2)  # then nothing moves
        assert time.monotonic() - t0 > 3 * TIMEOUT
        assert took < TIMEOUT + 2
        # heartbeats flowed all along: no peer is blamed; the first to see it tells the other
        assert any(isinstance(m.fatal, ProgramStalled) for m in meshes)
        for m in meshes:
            assert "made no progress" in str(m.fatal), m.fatal
    finally:
        for m in meshes:
            m.close()


async def test_a_stopped_watch_is_no_stall() -> None:
    plans, ids = loopback_plans(2)
    meshes = await _meshes(plans, ids, timeout=TIMEOUT)
    try:
        for m in meshes:
            m.watch_progress(lambda m=m: _app_bytes(m))
            m.watch_progress(None)  # the program ended
        await asyncio.sleep(3 * TIMEOUT)
        assert all(m.fatal is None for m in meshes)
    finally:
        for m in meshes:
            m.close()


async def test_a_link_stuck_resuming_still_ends_in_a_verdict() -> None:
    """Party 1 falls silent (its watchdog stopped: no heartbeats) while party 0's link
    says it is resuming and never stops saying so. The watchdog's grace for a resumption
    is the link's own bound (``resume_grace``); past it the peer is unresponsive (it used
    to hold the verdict off for as long as the flag stayed up: forever)."""
    grace = 0.5
    plans, ids = loopback_plans(2)
    meshes = await _meshes(plans, ids, timeout=TIMEOUT)
    try:
        w = meshes[1]._watchdog
        assert w is not None
        w.cancel()
        link = meshes[0].peers[1].link
        link.resuming = True  # stuck
        link.resume_grace = grace
        t0 = time.monotonic()
        while meshes[0].fatal is None:
            assert time.monotonic() - t0 < grace + 2 * TIMEOUT + 3, "no verdict"
            await asyncio.sleep(0.02)
        assert isinstance(meshes[0].fatal, PeerUnresponsive), meshes[0].fatal
        assert time.monotonic() - t0 >= grace
    finally:
        for m in meshes:
            m.close()
