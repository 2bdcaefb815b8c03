"""A malicious relay against link resumption (specs/mesh.md, "Link resumption";
threat-model R40-R42).

The relay (tests/adversary/relay_proxy.py in front of a real relay process) crashes a link
(both ends' connections cut without a close frame) while party 0 streams numbered messages
to party 1; both ends resume through it. An honest relay loses nothing; a relay that drops
a frame and then crashes the link only makes it be sent again; a relay that alters,
replays or reflects a RESUME message, or splices a link of another channel, is caught:
the run fails with ``resume_failed`` and nothing out of order or twice reaches the program.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from adversary.fakes import Events, Sink
from adversary.relay_proxy import LinkView, MaliciousRelay
from didmesh.identity.errors import DidmeshError
from didmesh.session.mesh.resume import RESUME_LEN, RESUME_MAGIC, ResumeFailed
from didmesh.session.mesh.transport import RelayedLink
from relay_helpers import RelayProcess, start_relay

MESSAGES = 120


def _message(i: int) -> bytes:
    return i.to_bytes(4, "big") * (1 + i % 50)


EXPECTED = b"".join(_message(i) for i in range(MESSAGES))


@pytest.fixture(scope="module")
def real_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    args = ["--rate-ip-per-s", "0", "--rate-did-per-s", "1000", "--rate-did-burst", "1000",
            "--link-heartbeat-s", "0"]
    with start_relay("memory", args, home=tmp_path_factory.mktemp("relay")) as relay:
        yield relay


@pytest.fixture
async def proxy(real_relay: RelayProcess) -> AsyncIterator[MaliciousRelay]:
    async with MaliciousRelay(real_relay.url) as mal:
        yield mal


class Pair:
    """Two parties in this event loop, linked through the proxy, their channels started."""

    def __init__(self, proxy: MaliciousRelay) -> None:
        self.proxy = proxy
        self.openers: list[Any] = []
        self.peers: list[Any] = []
        self.events = [Events(), Events()]
        self.sink = Sink()

    async def connect(self, resume_timeout: float = 8.0) -> None:
        from didmesh.session.mesh.connect import ConnectOptions, MeshConnector, RelayLinks
        from didmesh.session.mesh.loopback import loopback_plans

        plans, ids = loopback_plans(2, relays=[self.proxy.url], endpoints=False)
        options = ConnectOptions(relay_only=True, connect_timeout=8, handshake_timeout=3,
                                 resume_timeout=resume_timeout)
        self.openers = [RelayLinks(p, i, options) for p, i in zip(plans, ids, strict=True)]
        conns = [MeshConnector(p, i, options, relay_opener=o)
                 for p, i, o in zip(plans, ids, self.openers, strict=True)]
        results = await asyncio.gather(*(c.connect_all() for c in conns))
        self.peers = [results[0][1], results[1][0]]
        for peer, ev in zip(self.peers, self.events, strict=True):
            peer.start(ev)
        self.peers[1].attach(self.sink)

    def links(self) -> list[RelayedLink]:
        links = [p.link for p in self.peers]
        assert all(isinstance(link, RelayedLink) for link in links)
        return links

    def crash(self) -> None:
        """The relay crashes: every live connection of a link is cut, no close frame."""
        for view in self.proxy.links:
            if view.cut is not None:
                view.cut()
                view.cut = None

    async def stream(self, at: dict[int, Any]) -> None:
        """Party 0 sends every message; before message i, ``at[i]()`` runs."""
        for i in range(MESSAGES):
            if i in at:
                at[i]()
            self.peers[0].send_app(_message(i))
            await asyncio.sleep(0.005)
        for _ in range(200):
            if len(self.sink.data) >= len(EXPECTED) or self.failures():
                break
            await asyncio.sleep(0.05)

    def failures(self) -> list[DidmeshError]:
        return self.events[0].failed + self.events[1].failed

    async def close(self) -> None:
        for p in self.peers:
            p.abort()
        for o in self.openers:
            with contextlib.suppress(Exception):
                await o.aclose()


@pytest.fixture
async def pair(proxy: MaliciousRelay) -> AsyncIterator[Pair]:
    p = Pair(proxy)
    try:
        yield p
    finally:
        await p.close()


def _is_resume(frame: bytes) -> bool:
    return len(frame) == RESUME_LEN and frame[:4] == RESUME_MAGIC


async def test_honest_relay_crashing_twice_loses_nothing(pair: Pair) -> None:
    await pair.connect()
    await pair.stream({30: pair.crash, 80: pair.crash})
    assert not pair.failures(), pair.failures()
    assert bytes(pair.sink.data) == EXPECTED
    assert [link.stream.resumes for link in pair.links()] == [2, 2]


async def test_a_frame_dropped_before_a_crash_is_sent_again(pair: Pair) -> None:
    """Drop one of party 0's frames, then crash: the RESUME says what party 1 has, so the
    dropped bytes are sent again — a relay cannot make a drop go unnoticed this way."""
    await pair.connect()
    did0 = _party_did(pair, 0)
    armed = {"on": False, "dropped": 0}

    def hook(view: LinkView, frame: bytes) -> list[bytes]:
        if armed["on"] and view.did == did0 and not _is_resume(frame):
            armed["on"] = False
            armed["dropped"] += 1
            pair.crash()
            return []
        return [frame]

    pair.proxy.on_frame = hook
    await pair.stream({40: lambda: armed.update(on=True)})
    assert armed["dropped"] == 1
    assert not pair.failures(), pair.failures()
    assert bytes(pair.sink.data) == EXPECTED
    assert all(link.stream.resumes == 1 for link in pair.links())


def _party_did(pair: Pair, i: int) -> str:
    return str(pair.openers[i].identity.did)


@pytest.mark.parametrize("attack", ["flip", "replay", "reflect", "splice"])
async def test_a_relay_cannot_tamper_with_a_resumption(pair: Pair, attack: str) -> None:
    """At the second crash the relay rewrites the RESUME that party 1 sends to party 0:
    one bit flipped; the RESUME party 1 sent at the first crash (replay); party 0's own
    RESUME sent back to it (reflect); a RESUME from another channel between the same two
    parties (splice). Party 0 refuses it, the run fails with resume_failed, and party 1
    has received a prefix of the stream, nothing else."""
    await pair.connect()
    did1 = _party_did(pair, 1)
    did0 = _party_did(pair, 0)
    seen: dict[str, list[bytes]] = {did0: [], did1: []}
    crashes = {"n": 0}
    other: list[bytes] = []
    if attack == "splice":  # another channel of the same two parties, armed, its RESUME
        from didmesh.session.mesh.resume import ResumeStream

        s = ResumeStream()
        s.arm(b"\x07" * 32, False)
        other.append(s.resume_message())

    async def hook(view: LinkView, frame: bytes) -> list[bytes]:
        if not _is_resume(frame):
            return [frame]
        seen[view.did].append(frame)
        if view.did != did1 or crashes["n"] < 2:
            return [frame]
        if attack == "flip":
            return [frame[:-1] + bytes([frame[-1] ^ 0x80])]
        if attack == "replay":
            return [seen[did1][0]]
        if attack == "reflect":
            for _ in range(100):
                if len(seen[did0]) >= 2:
                    break
                await asyncio.sleep(0.02)
            return [seen[did0][-1]]
        return [other[0]]

    def crash() -> None:
        crashes["n"] += 1
        pair.crash()

    pair.proxy.on_frame = hook
    await pair.stream({30: crash, 70: crash})
    errors = pair.events[0].failed
    assert errors and isinstance(errors[0], ResumeFailed), pair.failures()
    want = {"flip": "did not authenticate", "replay": "was used already",
            "reflect": "did not authenticate", "splice": "did not authenticate"}[attack]
    assert want in errors[0].message and errors[0].code == "resume_failed"
    got = bytes(pair.sink.data)
    assert EXPECTED.startswith(got)  # a prefix: nothing out of order, nothing twice
