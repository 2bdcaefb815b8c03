"""The asyncio side of link resumption (``RelayedLink`` armed with ``arm_resume``), over an
in-memory relay that can crash: what is resumed and what is not, the bound, and that the
link's tasks always end. The real-relay versions are in tests/test_mesh_relay_resume.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from adversary.fakes import LinkSink as Sink
from didmesh.session.mesh.faults import RelayLost
from didmesh.session.mesh.resume import ResumeFailed
from didmesh.session.mesh.transport import RelayedLink

SECRET = b"\x05" * 32
URL = "http://relay.test"


class Closed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"closed ({code})")
        self.close_code = code


class FakeRaw:
    """One end of an in-memory relay link."""

    max_frame = 1000

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | Closed] = asyncio.Queue()
        self.peer: FakeRaw | None = None
        self.ended: Closed | None = None

    async def send(self, data: bytes | memoryview) -> None:
        if self.ended is not None:
            raise self.ended
        assert self.peer is not None
        self.peer.inbox.put_nowait(bytes(data))

    async def recv(self) -> bytes:
        item = await self.inbox.get()
        if isinstance(item, Closed):
            self.ended = item
            raise item
        return item

    async def close(self) -> None:
        if self.ended is None:
            self.ended = Closed(1000)
            self.inbox.put_nowait(Closed(1000))  # our own reader sees the end
            if self.peer is not None and self.peer.ended is None:
                self.peer.inbox.put_nowait(Closed(4000))

    def crash(self, code: int) -> None:
        self.inbox.put_nowait(Closed(code))


class FakeRelay:
    def __init__(self) -> None:
        self.up = True
        self.waiting: list[tuple[int, FakeRaw, asyncio.Future[None]]] = []
        self.live: list[FakeRaw] = []
        self.opens = 0

    def pair(self) -> tuple[FakeRaw, FakeRaw]:
        a, b = FakeRaw(), FakeRaw()
        a.peer, b.peer = b, a
        self.live += [a, b]
        return a, b

    async def reopen(self, side: int, deadline: float) -> tuple[Any, str]:
        """What connect.py's reopen does, against this relay."""
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= deadline:
                raise RelayLost(f"relay {URL} is gone (test)", relay=URL)
            if not self.up:
                await asyncio.sleep(0.01)
                continue
            self.opens += 1
            for i, (other, raw, fut) in enumerate(self.waiting):
                if other != side:
                    del self.waiting[i]
                    mine = FakeRaw()
                    mine.peer, raw.peer = raw, mine
                    self.live += [mine, raw]
                    fut.set_result(None)
                    return mine, URL
            raw = FakeRaw()
            fut = loop.create_future()
            self.waiting.append((side, raw, fut))
            try:
                await asyncio.wait_for(asyncio.shield(fut), max(0.01, deadline - loop.time()))
            except TimeoutError:
                self.waiting = [w for w in self.waiting if w[1] is not raw]
                continue
            return raw, URL

    def crash(self, code: int = 1006) -> None:
        for raw in self.live:
            raw.crash(code)
        self.live.clear()


async def _links(relay: FakeRelay, timeout: float = 2.0
                 ) -> tuple[RelayedLink, RelayedLink, Sink, Sink]:
    a_raw, b_raw = relay.pair()
    a, b = RelayedLink(a_raw, f"relay {URL}"), RelayedLink(b_raw, f"relay {URL}")
    a.arm_resume(SECRET, True, lambda d: relay.reopen(0, d), timeout)
    b.arm_resume(SECRET, False, lambda d: relay.reopen(1, d), timeout)
    sa, sb = Sink(), Sink()
    a.set_receiver(sa)
    b.set_receiver(sb)
    return a, b, sa, sb


async def _until(cond: Any, limit: float = 5.0) -> None:
    for _ in range(int(limit / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("code", [1006, 1001, 4411, 4500])
async def test_lost_links_are_resumed_and_nothing_is_lost(code: int) -> None:
    relay = FakeRelay()
    a, b, sa, sb = await _links(relay)
    sent = bytearray()
    for i in range(200):
        chunk = bytes([i % 256]) * (1 + i * 7 % 1500)
        sent += chunk
        a.write(chunk)
        b.write(chunk)
        if i in (50, 120):
            await asyncio.sleep(0)
            relay.crash(code)
        if i % 10 == 0:
            await asyncio.sleep(0.001)
    await _until(lambda: len(sb.data) >= len(sent) and len(sa.data) >= len(sent))
    assert sb.data == sent and sa.data == sent
    assert a.stream.resumes == b.stream.resumes == 2
    assert not sa.eof and not sb.eof
    a.close()
    b.close()
    await asyncio.wait_for(asyncio.gather(*a.tasks(), *b.tasks()), 5)


@pytest.mark.parametrize("code", [1000, 4000, 4451, 4452])
async def test_a_close_by_the_peer_or_a_limit_is_not_resumed(code: int) -> None:
    relay = FakeRelay()
    a, _b, sa, _sb = await _links(relay)
    relay.live[0].crash(code)  # a's raw link ends with `code`
    await _until(lambda: bool(sa.eof))
    assert getattr(sa.eof[0], "close_code", None) == code
    assert relay.opens == 0


async def test_a_relay_that_stays_gone_ends_the_link_naming_it_and_the_tasks_end() -> None:
    relay = FakeRelay()
    a, b, sa, sb = await _links(relay, timeout=0.3)
    a.write(b"x" * 5000)  # the writer has work pending while the relay is gone
    relay.up = False
    relay.crash()
    await _until(lambda: bool(sa.eof) and bool(sb.eof))
    for eof in (sa.eof[0], sb.eof[0]):
        assert isinstance(eof, RelayLost) and URL in eof.message
    await asyncio.wait_for(asyncio.gather(*a.tasks(), *b.tasks(), return_exceptions=True), 5)
    assert all(t.done() for t in (*a.tasks(), *b.tasks()))


async def test_a_bad_resume_from_the_other_end_fails_the_link() -> None:
    relay = FakeRelay()
    a_raw, b_raw = relay.pair()
    a = RelayedLink(a_raw, f"relay {URL}")
    a.arm_resume(SECRET, True, lambda d: relay.reopen(0, d), 2.0)
    sa = Sink()
    a.set_receiver(sa)
    b_raw.peer = None
    relay.crash()

    async def impostor() -> None:  # the relay answers the resumption itself
        raw, _ = await relay.reopen(1, asyncio.get_running_loop().time() + 2)
        await raw.send(b"DMSR\x01" + bytes(32))

    await impostor()
    await _until(lambda: bool(sa.eof))
    assert isinstance(sa.eof[0], ResumeFailed) and "did not authenticate" in sa.eof[0].message


async def test_an_unarmed_link_is_not_resumed() -> None:
    relay = FakeRelay()
    a_raw, _ = relay.pair()
    a = RelayedLink(a_raw, f"relay {URL}")
    sa = Sink()
    a.set_receiver(sa)
    relay.crash()
    await _until(lambda: bool(sa.eof))
    assert getattr(sa.eof[0], "close_code", None) == 1006 and relay.opens == 0


async def test_peer_gone_is_resumed_if_the_peer_comes_back_within_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """4410 at one end (a spliced link's first end when the second end's relay process
    died), 1006 at the other: both resume."""
    relay = FakeRelay()
    a, b, sa, sb = await _links(relay)
    a_raw, b_raw = relay.live
    relay.live.clear()
    a_raw.crash(4410)
    b_raw.crash(1006)
    a.write(b"after")
    await _until(lambda: bytes(sb.data) == b"after")
    assert a.stream.resumes == b.stream.resumes == 1 and not sa.eof and not sb.eof


async def test_peer_gone_that_does_not_come_back_is_a_lost_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import didmesh.session.mesh.transport as transport

    monkeypatch.setattr(transport, "PEER_GONE_GRACE", 0.3)
    relay = FakeRelay()
    _a, _b, sa, _sb = await _links(relay, timeout=10.0)
    relay.live[0].crash(4410)  # only a's end: b never resumes
    await _until(lambda: bool(sa.eof), limit=3.0)
    assert getattr(sa.eof[0], "close_code", None) == 4410  # reported as the peer's loss
    assert relay.opens >= 1
