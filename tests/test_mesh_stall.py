"""The watchdog's bounds that heartbeats alone would not give (in-process, two parties
over loopback): a program that made no progress (a deadlock: every peer alive, no MPyC
message for the timeout) and a link stuck "resuming" past its own resume bound. The
real-process deadlock is in tests/test_mesh_clean_end.py."""

from __future__ import annotations

import asyncio
import time

import pytest
from didmesh.session.mesh.connect import ConnectOptions, MeshConnector
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


async def test_a_stall_while_this_partys_program_blocks_names_it_first() -> None:
    """Party 1's program blocks outside MPyC after mpc.start() (its pump says so): its own
    watchdog declares the stall ``2 * interval`` before the timeout, naming party 1, and
    party 0 hears that, not an unnamed deadlock of its own."""
    plans, ids = loopback_plans(2)
    meshes = await _meshes(plans, ids, timeout=TIMEOUT)
    try:
        for m in meshes:
            m.watch_progress(lambda m=m: _app_bytes(m))
        meshes[1].watch_blocked(lambda: True)
        await _until_fatal(meshes, 4 * TIMEOUT + 2)
        await asyncio.sleep(0.2)  # the notice reaches party 0
        f1, f0 = meshes[1].fatal, meshes[0].fatal
        assert isinstance(f1, ProgramStalled) and f1.party == 1, f1
        assert "party 1 'bob'" in str(f1) and "has not given control back" in str(f1), f1
        assert f0 is not None and "has not given control back" in str(f0), f0
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


async def test_before_every_ready_is_in_the_checks_timeout_applies_not_the_stall() -> None:
    """The runner starts the program once its READY is out and waits for the peers' rows
    with MPyC's start barrier: a peer still setting up (alive, no READY yet) is no
    deadlock; the check's own timeout ends the wait, naming the check."""
    plans, ids = loopback_plans(2)
    options = ConnectOptions(connect_timeout=5, handshake_timeout=3)
    peers = await asyncio.gather(*(MeshConnector(p, i, options).connect_all()
                                   for p, i in zip(plans, ids, strict=True)))
    meshes = [Mesh(plans[i], peers[i], identity=ids[i], timeout=TIMEOUT) for i in range(2)]
    try:
        for m in meshes:
            m.start()
        await meshes[0].announce(timeout=5)  # party 1 never announces
        meshes[0].watch_progress(lambda: _app_bytes(meshes[0]))
        await asyncio.sleep(3 * TIMEOUT)
        assert meshes[0].fatal is None and not meshes[0].ready
        with pytest.raises(PeerUnresponsive, match="connectivity check"):
            await meshes[0].wait_ready(TIMEOUT)
        await meshes[1].announce(timeout=5)
        assert (await meshes[0].wait_ready(1)) and meshes[0].ready
        took = await _until_fatal(meshes, 4 * TIMEOUT + 2)  # from now on, a stall counts
        assert took < TIMEOUT + 2
        assert "made no progress" in str(meshes[0].fatal), meshes[0].fatal
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
