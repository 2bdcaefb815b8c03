"""Link pairing and frame forwarding on the server (specs/relay.md, "Links").

Two ends ask for each other (:class:`~didmesh.relay.protocol.LinkRequest`); the
:class:`LinkHub` pairs them. Ends in the same process are piped directly: each end's
handler reads its own socket and ``await``s the send on the other socket, so a slow reader
stalls the fast writer through TCP (aiohttp bounds the read queue and the write buffer):
bounded memory, no per-frame JSON, no per-frame logging. Ends on different processes (Redis
store) go through Redis pub/sub with credit-based flow control (:class:`RemotePipe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMessage, WSMsgType, web
from didmesh.identity.strict_json import loads_strict

from .config import RelayConfig
from .errors import MalformedRequest
from .fastlink import FastLink, fast_end
from .metrics import Metrics
from .protocol import (
    XP_CLOSE,
    XP_CREDIT,
    XP_DATA,
    XP_READY,
    XP_READY_MSG,
    CloseCode,
    Linked,
    LinkRequest,
    close_reason,
    xp_close,
    xp_credit,
    xp_data,
)
from .store.base import Bus

log = logging.getLogger("didmesh.relay.links")

#: bytes a process may publish to a remote end before that end's process confirms delivery
REMOTE_WINDOW = 1024 * 1024
READY_TIMEOUT_S = 10.0


class LinkDuplicate(Exception):
    pass


class LinkPeerGone(Exception):
    pass


@dataclass(eq=False)
class LinkState:
    """Shared by both ends of a local link: budget and liveness."""

    max_bytes: int
    bytes: int = 0
    frames: int = 0
    closed_code: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class LinkEnd:
    did: str
    req: LinkRequest
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None = None  # the upgraded connection (fast path)
    http_protocol: Any = None  # aiohttp's protocol on that connection (fast path)
    early: asyncio.Future[Any] | None = None  # the read watching for frames before "linked"
    local_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    paired: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(eq=False)
class LocalPair:
    peer: LinkEnd
    state: LinkState
    owner: bool = False  # the end that completed the pairing runs the watchdog


def key_str(key: tuple[str, str, str, str]) -> str:
    return json.dumps(key, separators=(",", ":"))


async def close_ws(ws: web.WebSocketResponse, code: int) -> None:
    """Close from the task that owns ``ws`` (its handler)."""
    end = fast_end(ws)
    if end is not None:
        end.link.close(code)
        await asyncio.wait({end.lost}, timeout=10)
    elif not ws.closed:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=code, message=close_reason(code).encode()), 10)


_closing: dict[int, asyncio.Task[None]] = {}


def close_peer(ws: web.WebSocketResponse, code: int) -> None:
    """Close a socket another task reads from, without waiting. Its handler must call
    :func:`settle` before returning, so the close handshake completes before aiohttp drops
    the connection (else the client sees 1006 instead of ``code``)."""
    key = id(ws)
    end = fast_end(ws)
    if end is not None:
        end.link.close(code)
        return
    if ws.closed or key in _closing:
        return
    task = asyncio.get_running_loop().create_task(close_ws(ws, code))
    _closing[key] = task
    task.add_done_callback(lambda _t: _closing.pop(key, None))


async def settle(ws: web.WebSocketResponse) -> None:
    end = fast_end(ws)
    if end is not None:
        await asyncio.wait({end.lost}, timeout=10)
        return
    task = _closing.get(id(ws))
    if task is not None:
        await asyncio.wait({task}, timeout=10)


class LinkHub:
    def __init__(self, config: RelayConfig, metrics: Metrics, bus: Bus | None) -> None:
        self.config = config
        self.metrics = metrics
        self.bus = bus
        self._waiting: dict[tuple[str, str, str, str], LinkEnd] = {}
        self._by_id: dict[str, LinkEnd] = {}
        self._remote: set[RemotePipe] = set()

    async def start(self) -> None:
        if self.bus is not None:
            await self.bus.subscribe(self.bus.proc_channel(self.bus.proc_id), self._on_proc_msg)

    # -- pairing ----------------------------------------------------------------------
    async def join(self, end: LinkEnd) -> LocalPair | RemotePipe | FastLink:
        """Wait (up to the pairing timeout) for the peer; raises TimeoutError, LinkDuplicate
        or LinkPeerGone."""
        timeout = self.config.link_pair_timeout_s
        if self.bus is None:
            other = self._waiting.pop(end.req.mirror_key(end.did), None)
            if other is not None and not other.paired.done():
                return await self._pair_local(end, other)
            key = end.req.key(end.did)
            if key in self._waiting:
                raise LinkDuplicate()
            self._waiting[key] = end
            self.metrics.links_waiting += 1
            try:
                return await asyncio.wait_for(asyncio.shield(end.paired), timeout)
            finally:
                self.metrics.links_waiting -= 1
                if self._waiting.get(key) is end:
                    del self._waiting[key]
        return await self._join_bus(end, self.bus, timeout)

    async def _join_bus(
        self, end: LinkEnd, bus: Bus, timeout: float
    ) -> LocalPair | RemotePipe | FastLink:
        my_key, mirror = key_str(end.req.key(end.did)), key_str(end.req.mirror_key(end.did))
        token = f"{bus.proc_id}:{end.local_id}"
        self._by_id[end.local_id] = end
        try:
            try:
                other = await bus.pair(my_key, mirror, token, int(timeout * 1000))
            except KeyError:
                raise LinkDuplicate() from None
            if other is None:  # we wait; the peer's process will tell us
                self.metrics.links_waiting += 1
                try:
                    return await asyncio.wait_for(asyncio.shield(end.paired), timeout)
                finally:
                    self.metrics.links_waiting -= 1
                    if not end.paired.done():
                        await bus.unpair(my_key, token)
            proc, _, lid = other.partition(":")
            if proc == bus.proc_id:
                peer = self._by_id.get(lid)
                if peer is None or peer.paired.done():
                    raise LinkPeerGone()
                return await self._pair_local(end, peer)
            # the peer waits on another process: claim it
            link = uuid.uuid4().hex
            pipe = RemotePipe(self, bus, end, link, "b")
            await pipe.subscribe()
            pipe.watch(proc)
            await bus.publish(
                bus.proc_channel(proc),
                json.dumps({"waiter": lid, "link": link, "proc": bus.proc_id}).encode(),
            )
            try:
                await asyncio.wait_for(pipe.ready.wait(), READY_TIMEOUT_S)
            except TimeoutError:
                await pipe.unsubscribe()
                raise LinkPeerGone() from None
            if pipe.remote_close:
                await pipe.unsubscribe()
                raise LinkPeerGone()
            return pipe
        finally:
            self._by_id.pop(end.local_id, None)

    def linked_json(self, end: LinkEnd) -> str:
        c = self.config
        return Linked(
            end.req.session, end.req.peer, end.req.link_id, c.link_max_bytes,
            c.link_max_duration_s, c.link_max_frame,
        ).to_json()

    def _can_fast(self, *ends: LinkEnd) -> bool:
        """Hand the connections to :class:`FastLink`? Not with a bus (a link end there may
        keep aiohttp's heartbeat), nor when a read raced with pairing (a frame sent before
        "linked" is then handled by the handler as a violation)."""
        return self.bus is None and all(
            FastLink.supported(e.transport, e.http_protocol)
            and (e.early is None or not e.early.done())
            for e in ends
        )

    async def _pair_local(self, end: LinkEnd, other: LinkEnd) -> LocalPair | FastLink:
        """Tell both ends "linked" before either may forward, then wake the waiting one."""
        state = LinkState(self.config.link_max_bytes)
        if self._can_fast(end, other):
            fast = FastLink(self.config, self.metrics, state)
            fast.start(
                (other.ws, other.transport, other.http_protocol, self.linked_json(other)),
                (end.ws, end.transport, end.http_protocol, self.linked_json(end)),
            )
            self.metrics.links_total += 1
            other.paired.set_result(fast)
            return fast
        other.paired.set_result(LocalPair(end, state))
        try:
            await other.ws.send_str(self.linked_json(other))
            await end.ws.send_str(self.linked_json(end))
        except (ConnectionError, RuntimeError):
            state.closed_code = CloseCode.PEER_GONE
        state.ready.set()
        return LocalPair(other, state, owner=True)

    def _on_proc_msg(self, data: bytes) -> None:
        try:
            msg = loads_strict(data, max_bytes=4096, error=MalformedRequest, what="pairing notice")
            lid, link, proc = str(msg["waiter"]), str(msg["link"]), str(msg["proc"])
        except (MalformedRequest, KeyError, TypeError):
            log.warning("malformed pairing notice on the bus")
            return
        asyncio.get_running_loop().create_task(self._accept_remote(lid, link, proc))

    async def _accept_remote(self, lid: str, link: str, proc: str) -> None:
        assert self.bus is not None
        end = self._by_id.get(lid)
        if end is None or end.paired.done():
            await self.bus.publish(f"link:{link}:b", xp_close(CloseCode.PEER_GONE))
            return
        pipe = RemotePipe(self, self.bus, end, link, "a")
        await pipe.subscribe()
        pipe.watch(proc)
        if end.paired.done():  # timed out meanwhile
            await pipe.unsubscribe()
            await self.bus.publish(f"link:{link}:b", xp_close(CloseCode.PEER_GONE))
            return
        end.paired.set_result(pipe)
        try:
            await end.ws.send_str(self.linked_json(end))
        except (ConnectionError, RuntimeError):
            pipe.state.closed_code = CloseCode.PEER_GONE
        pipe.linked_sent = True
        await self.bus.publish(f"link:{link}:b", XP_READY_MSG)

    async def close_all(self, code: int) -> None:
        for end in list(self._waiting.values()) + list(self._by_id.values()):
            await close_ws(end.ws, code)


# -- forwarding ------------------------------------------------------------------------------


async def watchdog(
    config: RelayConfig, state: LinkState, ends: list[web.WebSocketResponse],
    on_close: Callable[[int], Any] | None = None,
) -> None:
    """Close the link when its duration or idle budget is used up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.link_max_duration_s
    idle = config.ws_idle_timeout_s
    last_frames, last_active = -1, loop.time()
    while True:
        now = loop.time()
        if state.frames != last_frames:
            last_frames, last_active = state.frames, now
        if now >= deadline:
            code = CloseCode.DURATION_EXCEEDED
        elif now - last_active >= idle:
            code = CloseCode.IDLE_TIMEOUT
        else:
            await asyncio.sleep(min(deadline - now, idle - (now - last_active), idle / 4) + 0.001)
            continue
        state.closed_code = code
        if on_close is not None:
            await on_close(code)
        for ws in ends:
            close_peer(ws, code)
        return


_END = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
#: frames at least this large are written at once (joining would only add a copy)
_BIG = 16 * 1024
#: pause forwarding while the peer's socket holds more than this, unsent
_HIGH_WATER = 256 * 1024


def error_close_code(msg: WSMessage) -> int:
    """The close code for the peer when aiohttp reports a protocol error on one end (never
    1005/1006, which may not be sent in a close frame)."""
    code = getattr(msg.data, "code", None)
    return int(code) if isinstance(code, int) and code not in (1005, 1006) else CloseCode.PEER_GONE


class FrameBatcher:
    """Writes forwarded frames to one socket, coalescing the small frames that arrive in one
    event-loop turn into a single ``transport.write`` (one syscall instead of one per frame).

    Frames are unmasked server-to-client binary frames (RFC 6455, 5.2), written to the same
    transport aiohttp writes its own frames to; each write holds whole frames, so they never
    interleave with aiohttp's pings or close frame. Ordering is preserved: a big frame first
    flushes what is pending.
    """

    __slots__ = ("transport", "parts", "scheduled", "loop")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.parts: list[bytes] = []
        self.scheduled = False
        self.loop = asyncio.get_running_loop()

    @staticmethod
    def header(n: int) -> bytes:
        if n < 126:
            return bytes((0x82, n))
        if n < 65536:
            return b"\x82\x7e" + n.to_bytes(2, "big")
        return b"\x82\x7f" + n.to_bytes(8, "big")

    def add(self, data: bytes) -> None:
        n = len(data)
        if not self.scheduled:  # first frame of this loop turn: no added latency
            self.scheduled = True
            self.loop.call_soon(self.flush)
            self.transport.write(self.header(n) + data)
        elif n >= _BIG:
            self._write_pending()
            self.transport.write(self.header(n) + data)
        else:  # more frames in the same turn: one write at the end of it
            self.parts.append(self.header(n))
            self.parts.append(data)

    def flush(self) -> None:
        self.scheduled = False
        self._write_pending()

    def _write_pending(self) -> None:
        if self.parts:
            data = b"".join(self.parts)
            self.parts.clear()
            if not self.transport.is_closing():
                self.transport.write(data)

    def backlog(self) -> int:
        return self.transport.get_write_buffer_size()


async def _drain(peer_ws: web.WebSocketResponse, batcher: FrameBatcher) -> None:
    """Wait until the peer's socket has taken most of its backlog (backpressure)."""
    batcher.flush()
    writer = getattr(peer_ws, "_payload_writer", None)
    drain = getattr(writer, "drain", None)
    while batcher.backlog() > _HIGH_WATER and not batcher.transport.is_closing():
        if drain is not None:
            await drain()
            if batcher.backlog() > _HIGH_WATER:
                await asyncio.sleep(0.001)
        else:
            await asyncio.sleep(0.001)


async def pipe_local(
    me: LinkEnd, pair: LocalPair, metrics: Metrics, first: WSMessage | None = None
) -> int:
    """Forward my end's binary frames to the peer until either side closes.

    ``first`` is a message read before the link was known to be established. Returns the
    close code for my socket. This is the hot path: no JSON, no logging; frames read in one
    loop turn leave in one write; the peer's unsent backlog is capped at ``_HIGH_WATER``.
    """
    state, peer_ws, ws = pair.state, pair.peer.ws, me.ws
    max_bytes = state.max_bytes
    await state.ready.wait()
    transport = pair.peer.transport
    batcher = FrameBatcher(transport) if transport is not None else None
    n = frames = 0
    binary = WSMsgType.BINARY
    try:
        while True:
            if first is not None:
                msg, first = first, None
            else:
                msg = await ws.receive()
            if msg.type is binary:
                data = msg.data
                state.bytes += len(data)
                if state.bytes > max_bytes:
                    state.closed_code = CloseCode.BYTES_EXCEEDED
                    break
                state.frames += 1
                n += len(data)
                frames += 1
                if batcher is None or peer_ws.closed:
                    await peer_ws.send_bytes(data)
                else:
                    batcher.add(data)
                    if batcher.backlog() > _HIGH_WATER:
                        await _drain(peer_ws, batcher)
            elif msg.type in _END:
                break
            elif msg.type is WSMsgType.ERROR:  # e.g. frame too large: aiohttp closed with 1009
                state.closed_code = state.closed_code or error_close_code(msg)
                break
            else:  # a text frame after "linked": protocol violation
                state.closed_code = state.closed_code or CloseCode.MALFORMED
                break
    except (ConnectionError, RuntimeError, asyncio.CancelledError):
        state.closed_code = state.closed_code or CloseCode.PEER_GONE
    finally:
        if batcher is not None:
            batcher.flush()
        metrics.link_bytes_forwarded += n
        metrics.link_frames_forwarded += frames
    code = state.closed_code or (
        CloseCode.PEER_CLOSED if ws.close_code in (None, 1000, 1001) else CloseCode.PEER_GONE
    )
    if not state.closed_code:
        state.closed_code = code
    close_peer(peer_ws, code)
    if code in (CloseCode.BYTES_EXCEEDED, CloseCode.MALFORMED, CloseCode.MESSAGE_TOO_BIG):
        await close_ws(ws, code)
    return code if code != CloseCode.PEER_CLOSED else CloseCode.NORMAL


class RemotePipe:
    """One local end of a link whose other end is on another relay process."""

    def __init__(self, hub: LinkHub, bus: Bus, end: LinkEnd, link: str, role: str) -> None:
        self.hub, self.bus, self.end = hub, bus, end
        self.link, self.role = link, role
        self.rx = f"link:{link}:{role}"
        self.tx = f"link:{link}:{'b' if role == 'a' else 'a'}"
        self.ready = asyncio.Event()
        self.remote_close = 0
        self.inbound: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.credit = REMOTE_WINDOW
        self.credit_event = asyncio.Event()
        self.credit_event.set()
        self.state = LinkState(hub.config.link_max_bytes)
        self.linked_sent = False

    async def subscribe(self) -> None:
        await self.bus.subscribe(self.rx, self._on_msg)

    def watch(self, proc: str) -> None:
        """If the other end's relay process dies, end this link as if it said "gone"
        (within the store's liveness bound, instead of at the idle timeout)."""
        self.bus.watch_process(proc, self.rx, lambda: self._on_msg(xp_close(CloseCode.PEER_GONE)))

    async def unsubscribe(self) -> None:
        await self.bus.unsubscribe(self.rx)

    def _on_msg(self, data: bytes) -> None:
        kind = data[0] if data else -1
        if kind == XP_DATA:
            self.inbound.put_nowait(data[1:])
        elif kind == XP_CREDIT:
            self.credit += int.from_bytes(data[1:5], "big")
            self.credit_event.set()
        elif kind == XP_CLOSE:
            self.remote_close = int.from_bytes(data[1:3], "big") or CloseCode.PEER_GONE
            self.ready.set()
            self.inbound.put_nowait(None)
            self.credit_event.set()
        elif kind == XP_READY:
            self.ready.set()

    async def _deliver(self) -> None:
        ws, state = self.end.ws, self.state
        owed = 0
        while True:
            data = await self.inbound.get()
            if data is None:
                close_peer(ws, self.remote_close)
                return
            state.bytes += len(data)
            state.frames += 1
            if state.bytes > state.max_bytes:
                await self._close(CloseCode.BYTES_EXCEEDED)
                return
            await ws.send_bytes(data)
            owed += len(data)
            if owed >= REMOTE_WINDOW // 4 or self.inbound.empty():
                await self.bus.publish(self.tx, xp_credit(owed))
                owed = 0

    async def _close(self, code: int) -> None:
        if not self.state.closed_code:
            self.state.closed_code = code
            with contextlib.suppress(Exception):
                await self.bus.publish(self.tx, xp_close(code))
        close_peer(self.end.ws, code)

    async def run(self, metrics: Metrics, first: WSMessage | None = None) -> int:
        ws, state = self.end.ws, self.state
        deliver = asyncio.create_task(self._deliver())
        dog = asyncio.create_task(watchdog(self.hub.config, state, [], self._close))
        n = frames = 0
        try:
            while True:
                if first is not None:
                    msg, first = first, None
                else:
                    msg = await ws.receive()
                if msg.type in _END:
                    break
                if msg.type is WSMsgType.ERROR:
                    await self._close(error_close_code(msg))
                    break
                if msg.type is not WSMsgType.BINARY:
                    await self._close(CloseCode.MALFORMED)
                    break
                data = msg.data
                state.bytes += len(data)
                state.frames += 1
                if state.bytes > state.max_bytes:
                    await self._close(CloseCode.BYTES_EXCEEDED)
                    break
                while self.credit < len(data) and not self.remote_close:
                    self.credit_event.clear()
                    await self.credit_event.wait()
                if self.remote_close:
                    break
                self.credit -= len(data)
                await self.bus.publish(self.tx, xp_data(data))
                n += len(data)
                frames += 1
        except Exception:
            log.exception("remote link %s failed", self.link)
            await self._close(CloseCode.INTERNAL)
        finally:
            metrics.link_bytes_forwarded += n
            metrics.link_frames_forwarded += frames
            dog.cancel()
            if not self.remote_close and not state.closed_code:
                state.closed_code = CloseCode.PEER_CLOSED
                with contextlib.suppress(Exception):
                    await self.bus.publish(self.tx, xp_close(CloseCode.PEER_CLOSED))
            if self.remote_close:
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(deliver, 1.0)
            deliver.cancel()
            await self.unsubscribe()
        code = self.remote_close or state.closed_code
        return CloseCode.NORMAL if code == CloseCode.PEER_CLOSED and not self.remote_close else code
