"""Relayed mesh links honour the relay's announced limits (didmesh issue 15, item 1).

The relay announces ``link_max_frame`` (default 1 MiB) and ``link_max_bytes`` in
``GET /info``; a relayed link's writer splits what it sends into frames of at most the
frame limit and ends the link with a message naming the byte budget before the relay
would cut it. Unit cases use a recording fake link; the end-to-end case sends 6 MB
through a real relay process on its default settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest
from adversary.fakes import LinkSink as Sink
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import DEFAULT_LINK_LIMITS, RelayClient
from didmesh.relay.linkclient import link_limits as _link_limits
from didmesh.session.mesh.transport import DEFAULT_MAX_FRAME, RelayedLink
from relay_helpers import start_relay


class FakeLink:
    """A relay client's link that records the frames sent (and refuses oversized ones)."""

    def __init__(self, max_frame: int | None = None, max_bytes: int | None = None) -> None:
        if max_frame is not None:
            self.max_frame = max_frame
        if max_bytes is not None:
            self.max_bytes = max_bytes
        self.frames: list[bytes] = []
        self._incoming: asyncio.Queue[bytes] = asyncio.Queue()

    async def send(self, data: bytes | memoryview) -> None:
        limit = getattr(self, "max_frame", DEFAULT_MAX_FRAME)
        assert len(data) <= limit, f"frame of {len(data)} > {limit}"
        self.frames.append(bytes(data))
        await asyncio.sleep(0)

    async def recv(self) -> bytes:
        return await self._incoming.get()

    async def close(self) -> None:
        self._incoming.put_nowait(b"")


@pytest.mark.parametrize(
    "max_frame, sizes",
    [
        (1000, [10, 999, 1000, 1001, 5000, 1]),  # around and well over the limit
        (1000, [400] * 30),  # many small writes are joined, never beyond a frame or so
        (None, [3 * DEFAULT_MAX_FRAME + 7]),  # a link that does not say: the relay default
        (64, [1] * 200),
    ],
    ids=["around-limit", "many-small", "default-limit", "tiny-limit"],
)
def test_writer_splits_to_the_announced_frame_limit(
    max_frame: int | None, sizes: list[int]
) -> None:
    async def main() -> tuple[FakeLink, bytes]:
        fake = FakeLink(max_frame)
        link = RelayedLink(fake, "relay test")
        sent = b"".join(os.urandom(n) for n in sizes)
        pos = 0
        for n in sizes:
            link.write(sent[pos : pos + n])
            pos += n
        link.close()
        await asyncio.wait_for(link._writer, 10)
        return fake, sent

    fake, sent = asyncio.run(main())
    limit = max_frame or DEFAULT_MAX_FRAME
    assert b"".join(fake.frames) == sent
    assert all(len(f) <= limit for f in fake.frames)
    assert len(fake.frames) >= -(-len(sent) // limit)


def test_writer_holds_the_link_byte_budget() -> None:
    async def main() -> Sink:
        fake = FakeLink(max_frame=1000, max_bytes=5000)
        link = RelayedLink(fake, "relay test")
        sink = Sink()
        link.set_receiver(sink)
        link.write(b"x" * 3000)
        await asyncio.sleep(0.05)
        link.write(b"y" * 3000)  # 6000 > 5000 in all
        await asyncio.wait_for(link._writer, 10)
        assert b"".join(fake.frames) == b"x" * 3000
        return sink

    sink = asyncio.run(main())
    assert len(sink.eof) == 1 and isinstance(sink.eof[0], ConnectionError)
    assert "link_max_bytes (5000 bytes" in str(sink.eof[0])


class NowaitLink(FakeLink):
    """A link that also takes frames without waiting (``send_nowait``), as the asyncio
    link client's does; ``refuse`` makes it decline (the writer task must send then)."""

    def __init__(self, *args: Any, refuse: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refuse = refuse
        self.nowait = 0
        self.gate = asyncio.Event()
        self.gate.set()

    def send_nowait(self, data: bytes | memoryview) -> bool:
        if self.refuse:
            return False
        limit = getattr(self, "max_frame", DEFAULT_MAX_FRAME)
        assert len(data) <= limit, f"frame of {len(data)} > {limit}"
        self.frames.append(bytes(data))
        self.nowait += 1
        return True

    async def send(self, data: bytes | memoryview) -> None:
        await self.gate.wait()  # a writer task held up here keeps later writes queued
        await super().send(data)


@pytest.mark.parametrize("sizes", [[10], [1000], [1001], [3500, 1, 999]],
                         ids=["small", "one-frame", "just-over", "several"])
def test_an_idle_link_hands_a_write_on_at_once_in_frames(sizes: list[int]) -> None:
    """No event-loop turn between a write and the relay client (a round of a many-round
    program waits for it): split to the frame limit, in order, before write returns."""

    async def main() -> tuple[NowaitLink, bytes, int]:
        fake = NowaitLink(max_frame=1000)
        link = RelayedLink(fake, "relay test")
        sent = b"".join(os.urandom(n) for n in sizes)
        pos = 0
        for n in sizes:
            link.write(sent[pos : pos + n])
            pos += n
        at_once = len(b"".join(fake.frames))  # before any await
        link.close()
        await asyncio.wait_for(link._writer, 10)
        assert link.unsent() == 0
        return fake, sent, at_once

    fake, sent, at_once = asyncio.run(main())
    assert at_once == len(sent)
    assert b"".join(fake.frames) == sent
    assert all(len(f) <= 1000 for f in fake.frames)
    assert fake.nowait == len(fake.frames) == sum(-(-n // 1000) for n in sizes)


def test_writes_queue_behind_a_busy_writer_and_keep_their_order() -> None:
    async def main() -> tuple[NowaitLink, bytes]:
        fake = NowaitLink(max_frame=1000, refuse=True)
        fake.gate.clear()
        link = RelayedLink(fake, "relay test")
        parts = [os.urandom(n) for n in (500, 2500, 10, 700)]
        link.write(parts[0])  # refused: queued for the writer task, which blocks in send
        await asyncio.sleep(0.01)
        fake.refuse = False
        for part in parts[1:]:  # the writer holds a batch: these must queue behind it
            link.write(part)
        assert fake.frames == []
        fake.gate.set()
        link.close()
        await asyncio.wait_for(link._writer, 10)
        return fake, b"".join(parts)

    fake, sent = asyncio.run(main())
    assert b"".join(fake.frames) == sent
    assert fake.nowait == 0


def test_the_direct_hand_on_holds_the_link_byte_budget_too() -> None:
    async def main() -> Sink:
        fake = NowaitLink(max_frame=1000, max_bytes=5000)
        link = RelayedLink(fake, "relay test")
        sink = Sink()
        link.set_receiver(sink)
        link.write(b"x" * 3000)
        assert fake.nowait == 3
        link.write(b"y" * 3000)  # 6000 > 5000 in all: left to the writer, which says why
        await asyncio.wait_for(link._writer, 10)
        assert b"".join(fake.frames) == b"x" * 3000
        return sink

    sink = asyncio.run(main())
    assert len(sink.eof) == 1 and isinstance(sink.eof[0], ConnectionError)
    assert "link_max_bytes (5000 bytes" in str(sink.eof[0])


@pytest.mark.parametrize(
    "info, frame",
    [
        ({"limits": {"link_max_frame": 4096}}, 4096),
        ({"limits": {"link_max_frame": 0}}, DEFAULT_LINK_LIMITS["link_max_frame"]),
        ({"limits": {"link_max_frame": "big"}}, DEFAULT_LINK_LIMITS["link_max_frame"]),
        ({"limits": {"link_max_frame": True}}, DEFAULT_LINK_LIMITS["link_max_frame"]),
        ({"limits": {"link_max_frame": 10**40}}, DEFAULT_LINK_LIMITS["link_max_frame"]),
        ({"limits": []}, DEFAULT_LINK_LIMITS["link_max_frame"]),
        ([], DEFAULT_LINK_LIMITS["link_max_frame"]),
    ],
    ids=["given", "zero", "string", "bool", "huge", "not-a-dict", "not-an-object"],
)
def test_link_limits_from_info(info: Any, frame: int) -> None:
    assert _link_limits(info)["link_max_frame"] == frame


def test_six_megabytes_over_a_relayed_link_through_a_default_relay() -> None:
    """A real relay process on its default settings (1 MiB frames): 6 MB in one write."""
    payload = os.urandom(6 * 1000 * 1000)

    async def main(url: str) -> tuple[bytes, RelayedLink, Any]:
        a, b = IdentityKey.generate(), IdentityKey.generate()
        async with RelayClient(url, a) as ca, RelayClient(url, b) as cb:
            la, lb = await asyncio.wait_for(asyncio.gather(
                ca.open_link("s-limits", b.did), cb.open_link("s-limits", a.did)), 20)
            sender, receiver = RelayedLink(la, "relay a"), RelayedLink(lb, "relay b")
            sink = Sink()
            receiver.set_receiver(sink)
            sender.write(payload)
            async with asyncio.timeout(30):
                while len(sink.data) < len(payload) and not sink.eof:
                    await asyncio.sleep(0.01)
            sender.close()
            receiver.close()
            await asyncio.wait_for(asyncio.gather(sender._writer, receiver._writer), 10)
            return bytes(sink.data), sender, la

    with start_relay() as relay:
        got, sender, raw = asyncio.run(main(relay.url))
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert raw.max_frame == 1024 * 1024  # announced in the relay's /info
    assert sender.frames_sent >= 6
