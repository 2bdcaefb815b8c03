"""Faults at run time, in-process: tampering forwarder, lost/unresponsive peers, aborts."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.session.mesh.abort import decode_abort, encode_abort, make_abort
from didmesh.session.mesh.connect import HELLO_LEN, ConnectOptions, MeshConnector
from didmesh.session.mesh.errors import FrameTruncated, RecordRejected
from didmesh.session.mesh.faults import (
    InvalidAbort,
    PeerAborted,
    PeerLost,
    PeerUnresponsive,
)
from didmesh.session.mesh.loopback import FakeRelay, free_ports, loopback_plans
from didmesh.session.mesh.mesh import Mesh
from didmesh.session.mesh.plan import MeshPlan, format_endpoint

HANDSHAKE_BYTES = HELLO_LEN + 2 + 48  # hello and KK message 1, initiator -> responder


class Forwarder:
    """A TCP forwarder that can alter, replay or truncate the initiator's records."""

    def __init__(self, target_port: int, mode: str, at_record: int) -> None:
        self.target_port = target_port
        self.mode = mode
        self.at_record = at_record
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def back() -> None:
            while data := await ur.read(65536):
                w.write(data)
            w.close()

        task = asyncio.ensure_future(back())
        head = await r.readexactly(HANDSHAKE_BYTES)
        uw.write(head)
        n = 0
        seen: list[bytes] = []
        try:
            while True:
                hdr = await r.readexactly(2)
                body = await r.readexactly(int.from_bytes(hdr, "big"))
                rec = hdr + body
                if n == self.at_record:
                    if self.mode == "alter":
                        rec = rec[:-1] + bytes([rec[-1] ^ 1])
                    elif self.mode == "replay":
                        uw.write(rec)
                        rec = seen[-1]
                    elif self.mode == "truncate":
                        uw.write(rec[: len(rec) // 2])
                        await uw.drain()
                        uw.close()
                        w.close()
                        return
                seen.append(rec)
                uw.write(rec)
                n += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            uw.close()
        finally:
            task.cancel()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def _route(plan: MeshPlan, party: int, port: int) -> MeshPlan:
    parties = list(plan.parties)
    parties[party] = dataclasses.replace(parties[party],
                                         endpoints=(format_endpoint("127.0.0.1", port),))
    return dataclasses.replace(plan, parties=tuple(parties))


async def _meshes(plans: list[MeshPlan], ids: list[IdentityKey], timeout: float = 5.0,
                  relay: FakeRelay | None = None, **opts: Any) -> list[Mesh]:
    options = ConnectOptions(connect_timeout=5, handshake_timeout=3, **opts)
    peers = await asyncio.gather(*(
        MeshConnector(p, i, options, relay_opener=relay.opener(i.did) if relay else None
                      ).connect_all()
        for p, i in zip(plans, ids, strict=True)))
    meshes = [Mesh(plans[i], peers[i], identity=ids[i], timeout=timeout)
              for i in range(len(plans))]
    for m in meshes:
        m.start()
    await asyncio.gather(*(m.check(timeout=5) for m in meshes))
    return meshes


async def _until_fatal(meshes: list[Mesh], limit: float) -> float:
    t0 = time.monotonic()
    while any(m.fatal is None for m in meshes):
        assert time.monotonic() - t0 < limit, [m.fatal for m in meshes]
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


@pytest.mark.parametrize(
    ("mode", "error"),
    [("alter", RecordRejected), ("replay", RecordRejected), ("truncate", FrameTruncated)],
)
async def test_tampering_forwarder(mode: str, error: type[Exception]) -> None:
    plans, ids = loopback_plans(2)
    real_port = int(plans[1].me.endpoints[0].rsplit(":", 1)[1])
    fwd = Forwarder(real_port, mode, at_record=25)  # well after the check
    await fwd.start()
    plans[0] = _route(plans[0], 1, fwd.port)
    meshes = await _meshes(plans, ids)
    try:
        for i in range(40):
            meshes[0].peers[1].send_app(b"x" * (100 + i))
            await asyncio.sleep(0.01)
        await _until_fatal(meshes, 3)
        f1 = meshes[1].fatal
        assert isinstance(f1, error) and "party 0 'alice'" in f1.message, f1
        f0 = meshes[0].fatal
        # party 0 learns it from 1's signed abort (or sees the forwarder's close)
        assert isinstance(f0, PeerAborted | PeerLost), f0
        if isinstance(f0, PeerAborted):
            assert "aborted by party 1 'bob'" in f0.message
    finally:
        for m in meshes:
            m.close()
        fwd.close()


async def test_signed_abort_reaches_everyone_and_names_the_culprit() -> None:
    plans, ids = loopback_plans(3)
    meshes = await _meshes(plans, ids)
    try:
        meshes[2].fail(PeerLost("test: party 2 gave up", party=2), culprit=2)
        await _until_fatal(meshes, 2)
        for m in meshes[:2]:
            assert isinstance(m.fatal, PeerAborted)
            assert "aborted by party 2 'carol'" in m.fatal.message
            assert m.fatal.party == 2
    finally:
        for m in meshes:
            m.close()


async def test_lost_peer_is_named_by_all() -> None:
    plans, ids = loopback_plans(3)
    meshes = await _meshes(plans, ids)
    try:
        for p in meshes[1].peers.values():  # party 1 dies: its sockets close, no BYE
            p.link.abort()
        meshes[1].close()
        meshes[1].fatal = PeerLost("killed")  # keep it out of the wait
        elapsed = await _until_fatal([meshes[0], meshes[2]], 3)
        for m in (meshes[0], meshes[2]):
            assert "party 1 'bob'" in m.fatal.message, m.fatal
        assert elapsed < 3
    finally:
        for m in meshes:
            m.close()


async def test_unresponsive_peer_detected_within_timeout() -> None:
    plans, ids = loopback_plans(2)
    meshes = await _meshes(plans, ids, timeout=0.6)
    try:
        # party 1 freezes: stops its watchdog and stops reading (SIGSTOP-like)
        assert meshes[1]._watchdog is not None
        meshes[1]._watchdog.cancel()
        link = meshes[1].peers[0].link
        link.transport.pause_reading()  # type: ignore[attr-defined]
        elapsed = await _until_fatal([meshes[0]], 3)
        assert isinstance(meshes[0].fatal, PeerUnresponsive)
        assert "party 1 'bob'" in meshes[0].fatal.message
        assert 0.5 < elapsed < 2.5
    finally:
        for m in meshes:
            m.close()


async def test_relay_dropping_links() -> None:
    plans, ids = loopback_plans(2, relays=["https://relay.test"], endpoints=False)
    relay = FakeRelay()
    meshes = await _meshes(plans, ids, relay=relay, relay_only=True)
    try:
        relay.drop_all()
        await _until_fatal(meshes, 3)
        assert "party 1 'bob'" in meshes[0].fatal.message
        assert "party 0 'alice'" in meshes[1].fatal.message
    finally:
        for m in meshes:
            m.close()


async def test_bye_then_close_is_clean() -> None:
    plans, ids = loopback_plans(3)
    meshes = await _meshes(plans, ids)
    await asyncio.gather(*(m.finish(3) for m in meshes))
    await asyncio.sleep(0.05)
    assert all(m.fatal is None for m in meshes)


def test_abort_notice_round_trip_and_forgery() -> None:
    plans, ids = loopback_plans(3)
    n = make_abort(plans[2], ids[2], culprit=1, code="peer_lost", reason="lost\x1b[31m bob",
                   now=1.5)
    data = encode_abort(n, ids[2])
    got = decode_abort(data, plans[0])
    assert got == n and "\x1b" not in got.reason
    # a notice claiming to come from party 2 but signed by party 1
    forged = encode_abort(n, ids[1])
    with pytest.raises(InvalidAbort, match="not signed by its DID key"):
        decode_abort(forged, plans[0])
    other, _ = loopback_plans(3)
    with pytest.raises(InvalidAbort, match="another session"):
        decode_abort(data, other[0])
    with pytest.raises(InvalidAbort, match="malformed"):
        decode_abort(b"{not json", plans[0])
    with pytest.raises(InvalidAbort, match="exceeds"):
        decode_abort(b" " * 5000, plans[0])
    with pytest.raises(ValueError):
        make_abort(plans[0], ids[1], culprit=None, code="x", reason="", now=0)


async def test_free_ports_distinct() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5


@pytest.mark.parametrize("text,expected", [
    ("short reason", "short reason"),
    ("x" * 300, "x" * 300),
    # a long sentence ends at a word, marked as cut (it ended "... without  [code]")
    ("word " * 70, ("word " * 59).rstrip() + " …"),
    ("y" * 400, "y" * 299 + "…"),
], ids=["short", "exactly the limit", "long sentence", "one long word"])
def test_a_long_abort_reason_is_cut_at_a_word_and_marked(text: str, expected: str) -> None:
    from didmesh.session.mesh.abort import MAX_REASON, clean_reason

    got = clean_reason(text)
    assert got == expected and len(got) <= MAX_REASON
    assert clean_reason(got) == got  # a received reason is cleaned again, unchanged
