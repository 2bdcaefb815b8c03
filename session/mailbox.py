"""Mailboxes: how session messages travel (specs/session-protocol.md, "Transport").

The protocol needs only :class:`Mailbox`: ``send(to_did, session_id, payload)`` and
``receive(timeout) -> (from_did, payload) | None``. Two implementations:

* :class:`MemoryRelay` / :class:`MemoryMailbox`: an in-memory fake (shipped as code) for
  unit tests and library-level runs;
* :class:`RelayMailbox`: the adapter over :class:`didmesh.relay.client.RelayClient`, one
  client per relay URL. ``send`` posts a sealed envelope to *every* relay (succeeding if
  at least one took it); ``receive`` merges the inboxes of all relays.

On relays, each payload is framed as one byte (0: raw, 1: zlib) and the rest: rosters
(which carry the manifest once, ``roster.pack_roster``) repeat contexts and proof fields
in every acceptance and shrink ~6x: 14 KB framed at m = 30 with 8 endpoints per party,
well inside a relay's default 64 KiB envelope limit. Inflating is capped (no zip bombs).

Acknowledgement is explicit: the caller calls ``commit()`` once it has handled and
persisted what ``receive`` returned; only then are those envelopes deleted from the
relays. A crash in between means the envelopes are delivered again; the session layer
drops duplicates by message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Protocol

from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey

DEFAULT_TTL_S = 24 * 3600
MAX_TTL_S = 30 * 24 * 3600
MAX_PAYLOAD_BYTES = 1024 * 1024
RAW, ZLIB = b"\x00", b"\x01"


def frame(payload: bytes) -> bytes:
    packed = zlib.compress(payload, 6)
    return ZLIB + packed if len(packed) + 64 < len(payload) else RAW + payload


def unframe(data: bytes, limit: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Undo :func:`frame`; raises ValueError on a bad frame or one inflating past ``limit``."""
    if data[:1] == RAW:
        return data[1:]
    if data[:1] != ZLIB:
        raise ValueError("unknown payload frame")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data[1:], limit + 1)
    except zlib.error as exc:
        raise ValueError(f"payload does not inflate: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail or not inflater.eof:
        raise ValueError(f"payload inflates past {limit} bytes or is truncated")
    return out


class Mailbox(Protocol):
    @property
    def did(self) -> str: ...

    async def send(
        self, to_did: str, session_id: str, payload: bytes, *, ttl: int = DEFAULT_TTL_S
    ) -> None: ...

    async def receive(self, timeout: float) -> tuple[str, bytes] | None: ...

    async def commit(self) -> None:
        """Everything ``receive`` returned so far is handled: drop it from the relays."""

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- in memory


class MemoryRelay:
    """A shared in-memory relay: one FIFO inbox per DID. ``tap`` (if set) sees every
    message and may return a replacement payload (or None to drop it): a test's relay
    adversary."""

    def __init__(self) -> None:
        self.inboxes: dict[str, deque[tuple[str, bytes]]] = defaultdict(deque)
        self.events: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.tap: Callable[[str, str, bytes], bytes | None] | None = None
        self.sent = 0

    def post(self, sender: str, to: str, payload: bytes) -> None:
        if self.tap is not None:
            replaced = self.tap(sender, to, payload)
            if replaced is None:
                return
            payload = replaced
        self.sent += 1
        self.inboxes[to].append((sender, payload))
        self.events[to].set()

    def mailbox(self, identity: IdentityKey | str) -> MemoryMailbox:
        did = identity if isinstance(identity, str) else identity.did
        return MemoryMailbox(self, did)


class MemoryMailbox:
    def __init__(self, relay: MemoryRelay, did: str) -> None:
        self.relay = relay
        self._did = did

    @property
    def did(self) -> str:
        return self._did

    async def send(
        self, to_did: str, session_id: str, payload: bytes, *, ttl: int = DEFAULT_TTL_S
    ) -> None:
        self.relay.post(self._did, to_did, payload)

    async def receive(self, timeout: float) -> tuple[str, bytes] | None:
        inbox = self.relay.inboxes[self._did]
        event = self.relay.events[self._did]
        deadline = time.monotonic() + max(0.0, timeout)
        while not inbox:
            event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                return None
        return inbox.popleft()

    async def commit(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------- real relays


class RelayMailbox:
    """A mailbox over one or more real relays (``async with RelayMailbox(urls, key)``)."""

    def __init__(
        self,
        urls: Sequence[str],
        identity: IdentityKey,
        *,
        timeout: float = 10.0,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        from didmesh.relay.client import RelayClient

        if not urls:
            raise ValueError("a RelayMailbox needs at least one relay URL")
        self.identity = identity
        self.urls = list(dict.fromkeys(urls))
        self.clients = [RelayClient(u, identity, timeout=timeout) for u in self.urls]
        self.on_warning = on_warning or (lambda _text: None)
        self._queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._to_ack: dict[int, list[str]] = defaultdict(list)
        self._failures: dict[int, BaseException] = {}
        self._started = False

    @property
    def did(self) -> str:
        return self.identity.did

    async def __aenter__(self) -> RelayMailbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(
        self, to_did: str, session_id: str, payload: bytes, *, ttl: int = DEFAULT_TTL_S
    ) -> None:
        ttl = max(60, min(int(ttl), MAX_TTL_S))
        wire = frame(payload)
        results = await asyncio.gather(
            *(c.send(to_did, session_id, wire, ttl=ttl) for c in self.clients),
            return_exceptions=True,
        )
        errors = [
            (u, r)
            for u, r in zip(self.urls, results, strict=True)
            if isinstance(r, BaseException)
        ]
        for url, err in errors:
            if not isinstance(err, DidmeshError):
                raise err
            if len(errors) < len(self.clients):
                self.on_warning(f"relay {url} did not take a message: {err.message}")
        if len(errors) == len(self.clients):
            raise errors[0][1]

    def _start(self) -> None:
        if self._tasks:
            return
        self._started = True
        for i, client in enumerate(self.clients):
            self._tasks.append(asyncio.create_task(self._pull(i, client)))

    async def _pull(self, index: int, client: object) -> None:
        from didmesh.relay.client import RelayClient

        assert isinstance(client, RelayClient)
        try:
            async for item in client.inbox():
                await self._queue.put((index, item))
        except DidmeshError as exc:
            self._failures[index] = exc
            self.on_warning(f"relay {self.urls[index]}: {exc.message}")
            await self._queue.put((index, exc))

    async def commit(self) -> None:
        await self._ack()

    def problems(self) -> list[tuple[str, DidmeshError]]:
        """``(url, error)`` for each relay whose inbox failed, or was never reached since
        :meth:`receive` started (then the error it last retried after, if any). Someone
        showing an inbox must not show an unreachable relay's as empty."""
        from didmesh.relay.errors import RelayUnreachable

        out: list[tuple[str, DidmeshError]] = []
        for i, (url, client) in enumerate(zip(self.urls, self.clients, strict=True)):
            failed = self._failures.get(i)
            if isinstance(failed, DidmeshError):
                out.append((url, failed))
            elif self._started and not client.inbox_reached:
                out.append((url, client.inbox_error or RelayUnreachable(
                    f"no answer from the relay at {url} within the wait")))  # fmt: skip
        return out

    async def _ack(self) -> None:
        pending, self._to_ack = self._to_ack, defaultdict(list)
        for index, ids in pending.items():
            try:
                if not await self.clients[index].ack_over_push(ids):
                    await self.clients[index].ack(ids)
            except DidmeshError as exc:
                self.on_warning(f"relay {self.urls[index]}: acknowledging failed: {exc.message}")

    async def receive(self, timeout: float) -> tuple[str, bytes] | None:
        from didmesh.relay.client import Received

        self._start()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if len(self._failures) == len(self.clients):
                raise next(iter(self._failures.values()))
            left = deadline - time.monotonic()
            if left <= 0 and self._queue.empty():
                return None
            try:
                index, item = await asyncio.wait_for(self._queue.get(), max(left, 0.001))
            except TimeoutError:
                return None
            if not isinstance(item, Received):
                continue  # a failure marker; checked at the top
            self._to_ack[index].append(item.id)
            try:
                plaintext = unframe(item.open(self.identity))
            except DidmeshError as exc:
                self.on_warning(f"relay {self.urls[index]}: dropped an envelope from "
                                f"{item.envelope.sender}: {exc.message}")  # fmt: skip
                continue
            except ValueError as exc:
                self.on_warning(f"relay {self.urls[index]}: dropped an envelope from "
                                f"{item.envelope.sender}: {exc}")  # fmt: skip
                continue
            return item.envelope.sender, plaintext

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for client in self.clients:
            await client.close()
