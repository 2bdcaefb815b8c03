"""Link pairing and cross-process forwarding on the server (specs/relay.md, "Links").

Two ends ask for each other (:class:`~didmesh.relay.protocol.LinkRequest`); the
:class:`LinkHub` pairs them. Ends in the same process are handed to a
:class:`~didmesh.relay.fastlink.FastLink`, which forwards in the read callback. Ends on
different processes (Redis store) go through Redis pub/sub with credit-based flow control
(:class:`RemotePipe`), which also pings its client (``link_heartbeat_s``) and watches the
other process's liveness.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMessage, WSMsgType, web
from didmesh.identity.strict_json import loads_strict

from .config import RelayConfig
from .conns import log_throttled
from .errors import MalformedRequest, RelayError
from .fastlink import FastLink, LinkBudget, fast_end
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
from .splice import Splice, make_preamble, serve_splices, splice_key
from .store.base import Bus

log = logging.getLogger("didmesh.relay.links")

#: bytes a process may publish to a remote end before that end's process confirms delivery
REMOTE_WINDOW = 1024 * 1024
READY_TIMEOUT_S = 10.0
#: a process's advertised splice address lives this long in the store; refreshed at a third
SPLICE_TTL_MS = 60_000


class LinkDuplicate(Exception):
    pass


class LinkPeerGone(Exception):
    pass


@dataclass(eq=False, slots=True)
class LinkState:
    """Shared by both ends of a local link: budget and liveness."""

    max_bytes: int
    bytes: int = 0
    frames: int = 0
    closed_code: int = 0


@dataclass(eq=False, slots=True)
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


def _alive(end: LinkEnd) -> bool:
    return FastLink.supported(end.transport, end.http_protocol)


def key_str(key: tuple[str, str, str, str]) -> str:
    return json.dumps(key, separators=(",", ":"))


#: id(aiohttp WebSocketResponse) -> the splice now carrying its connection (this process
#: holds the link's second end; the first end's process closes it with a code)
_spliced: dict[int, Splice] = {}


async def close_ws(ws: web.WebSocketResponse, code: int) -> None:
    """Close from the task that owns ``ws`` (its handler)."""
    splice = _spliced.get(id(ws))
    if splice is not None:
        splice.close(code)
        await asyncio.wait({splice.done}, timeout=10)
        return
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
    splice = _spliced.get(key)
    if splice is not None:
        splice.close(code)
        return
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
    splice = _spliced.get(id(ws))
    if splice is not None:
        await asyncio.wait({splice.done}, timeout=10)
        return
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
        self.splice_key = b""
        self.splice_address = ""  # advertised HOST:PORT ("": no splicing)
        self._splice_server: asyncio.Server | None = None
        self._advertise: asyncio.Task[None] | None = None

    async def start(self, secret: bytes = b"") -> None:
        if self.bus is None:
            return
        await self.bus.subscribe(self.bus.proc_channel(self.bus.proc_id), self._on_proc_msg)
        if secret and self.config.link_splice_listen:
            self.splice_key = splice_key(secret)
            self._splice_server, address = await serve_splices(
                self.config.link_splice_listen, self.splice_key, self.bus.proc_id,
                self._accept_splice,
            )
            await self.bus.advertise(address, SPLICE_TTL_MS)
            self.splice_address = address
            self._advertise = asyncio.get_running_loop().create_task(
                self._advertise_loop(self.bus, address), name="relay-splice-advertise")

    async def _advertise_loop(self, bus: Bus, address: str) -> None:
        while True:
            await asyncio.sleep(SPLICE_TTL_MS / 3000)
            try:
                await bus.advertise(address, SPLICE_TTL_MS)
            except Exception as exc:  # Redis trouble: the others fall back to pub/sub
                log.warning("could not refresh the splice address: %s", exc)

    async def stop(self) -> None:
        if self._advertise is not None:
            self._advertise.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._advertise
        if self._splice_server is not None:
            self._splice_server.close()

    # -- pairing ----------------------------------------------------------------------
    async def join(self, end: LinkEnd) -> RemotePipe | FastLink | Splice:
        """Wait (up to the pairing timeout) for the peer; raises TimeoutError, LinkDuplicate
        or LinkPeerGone."""
        timeout = self.config.link_pair_timeout_s
        if self.bus is None:
            if not _alive(end):
                raise LinkPeerGone()  # our own client is gone already
            other = self._waiting.pop(end.req.mirror_key(end.did), None)
            if other is not None and not other.paired.done() and _alive(other):
                return self._pair_local(end, other)
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
    ) -> RemotePipe | FastLink | Splice:
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
                if peer is None or peer.paired.done() or not _alive(peer) or not _alive(end):
                    raise LinkPeerGone()
                return self._pair_local(end, peer)
            # the peer waits on another process: splice to it, else frames through the bus
            if self.splice_key:
                spliced = await self._splice(end, bus, proc, lid)
                if spliced is not None:
                    return spliced
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

    def _pair_local(self, end: LinkEnd, other: LinkEnd) -> FastLink:
        """Both ends are in this process: hand both connections to a :class:`FastLink`
        (which tells each end "linked" once it owns the connection), wake the waiting one."""
        return self._pair_with(
            other, (end.ws, end.transport, end.http_protocol, self.linked_json(end))
        )

    def _pair_with(self, waiting: LinkEnd, second: tuple[Any, Any, Any, str]) -> FastLink:
        fast = FastLink(self.config, self.metrics, LinkState(self.config.link_max_bytes))
        fast.start(
            (waiting.ws, waiting.transport, waiting.http_protocol, self.linked_json(waiting)),
            second,
        )
        self.metrics.links_total += 1
        waiting.paired.set_result(fast)
        return fast

    # -- splices (relay/splice.py) ----------------------------------------------------
    def _accept_splice(self, waiter: str, transport: asyncio.Transport) -> bool:
        """Another process brings the second end of our waiting end ``waiter`` on
        ``transport``: pair them here (False: that end is not waiting any more)."""
        end = self._by_id.get(waiter)
        if end is None or end.paired.done() or not _alive(end):
            return False
        transport.write(b"ok\n")
        c = self.config
        linked = Linked(end.req.session, end.did, end.req.link_id, c.link_max_bytes,
                        c.link_max_duration_s, c.link_max_frame).to_json()
        fast = self._pair_with(end, (_SplicedEnd(), transport, _SplicedEnd(), linked))
        fast.spliced = True
        return True

    async def _splice(self, end: LinkEnd, bus: Bus, proc: str, lid: str) -> Splice | None:
        """Join ``end`` to waiter ``lid`` on process ``proc`` over one TCP connection;
        None: that process cannot be spliced to (use the bus)."""
        address = await bus.splice_address(proc)
        if not address:
            return None
        splice = Splice()
        preamble = make_preamble(self.splice_key, proc, bus.proc_id, lid, int(time.time() * 1000))
        answer = await splice.connect(address, preamble)
        if answer == "ok":
            if end.transport is None or not _alive(end):
                splice.abort()
                raise LinkPeerGone()
            splice.take_over(end.transport, end.http_protocol)
            self.metrics.links_spliced += 1
            _spliced[id(end.ws)] = splice
            ws_id = id(end.ws)
            splice.done.add_done_callback(lambda _f: _spliced.pop(ws_id, None))
            return splice
        if answer == "no gone":
            raise LinkPeerGone()
        self.metrics.links_splice_failed += 1
        log.warning("cross-process link through Redis: splice refused or failed",
                    extra={"fields": {"answer": answer[:120]}})
        return None

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


class _SplicedEnd:
    """Stands for aiohttp's objects on a spliced end (no request handler here)."""

    def connection_lost(self, exc: Exception | None) -> None:
        pass


async def watchdog(
    config: RelayConfig, state: LinkState, on_close: Callable[[int], Any]
) -> None:
    """Close the link (``on_close(code)``) when its duration or idle budget is used up."""
    loop = asyncio.get_running_loop()
    budget = LinkBudget(config, loop.time())
    while True:
        code, wait = budget.check(loop.time(), state.frames)
        if code:
            state.closed_code = code
            await on_close(code)
            return
        await asyncio.sleep(min(wait, config.ws_idle_timeout_s / 4) + 0.001)


_END = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


def error_close_code(msg: WSMessage) -> int:
    """The close code for the peer when aiohttp reports a protocol error on one end (never
    1005/1006, which may not be sent in a close frame)."""
    code = getattr(msg.data, "code", None)
    return int(code) if isinstance(code, int) and code not in (1005, 1006) else CloseCode.PEER_GONE


async def receive_data(ws: web.WebSocketResponse, timeout: float | None = None) -> WSMessage:
    """The next message on a link socket that is not a ping or pong (aiohttp's ``autoping``
    is off on links so that :class:`RemotePipe` sees pongs): pings are answered here."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.PING:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.pong(msg.data)
            elif msg.type is not WSMsgType.PONG:
                return msg


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
        self.last_rx = asyncio.get_running_loop().time()

    async def subscribe(self) -> None:
        await self.bus.subscribe(self.rx, self._on_msg)

    def watch(self, proc: str) -> None:
        """If the other end's relay process dies, end this link with 4411 (within the
        store's liveness bound, instead of at the idle timeout): the mesh resumes it."""
        self.bus.watch_process(
            proc, self.rx, lambda: self._on_msg(xp_close(CloseCode.PEER_RELAY_GONE)))

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
                try:
                    await self.bus.publish(self.tx, xp_credit(owed))
                except RelayError as exc:  # the bus failed (Redis down): end the link,
                    log_throttled(  # else nothing would take the close that follows
                        "remote-link-failed", logging.WARNING, "remote link failed",
                        {"link": self.link, "error": exc.message[:300]})
                    await self._close(CloseCode.INTERNAL)
                    return
                owed = 0

    async def _close(self, code: int) -> None:
        self.credit_event.set()  # a send waiting for credit ends too
        if not self.state.closed_code:
            self.state.closed_code = code
            with contextlib.suppress(Exception):
                await self.bus.publish(self.tx, xp_close(code))
        close_peer(self.end.ws, code)

    async def _heartbeat(self, beat: float) -> None:
        """Ping my client after ``beat`` silent seconds; no answer within ``beat / 2``: it is
        gone (its peer hears 4410)."""
        loop = asyncio.get_running_loop()
        while True:
            silent = loop.time() - self.last_rx
            if silent < beat:
                await asyncio.sleep(beat - silent + 0.001)
                continue
            ping_at = loop.time()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.end.ws.ping(b"didmesh")
            await asyncio.sleep(beat / 2)
            if self.last_rx < ping_at:
                await self._close(CloseCode.PEER_GONE)
                if self.end.transport is not None:
                    self.end.transport.abort()
                return

    async def run(self, metrics: Metrics, first: WSMessage | None = None) -> int:
        ws, state = self.end.ws, self.state
        loop = asyncio.get_running_loop()
        deliver = asyncio.create_task(self._deliver())
        dog = asyncio.create_task(watchdog(self.hub.config, state, self._close))
        beat = self.hub.config.link_heartbeat_s
        pinger = asyncio.create_task(self._heartbeat(beat)) if beat > 0 else None
        n = frames = 0
        try:
            while True:
                if first is not None:
                    msg, first = first, None
                else:
                    msg = await ws.receive()
                self.last_rx = loop.time()
                if msg.type is WSMsgType.PING:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.pong(msg.data)
                    continue
                if msg.type is WSMsgType.PONG:
                    continue
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
                # credit comes from the other process; without it this waits until the
                # link ends (its peer's close, its process's death, the bus lost, or the
                # watchdog's idle or duration budget closing it here)
                while self.credit < len(data) and not (self.remote_close or state.closed_code):
                    self.credit_event.clear()
                    await self.credit_event.wait()
                if self.remote_close or state.closed_code:
                    break
                self.credit -= len(data)
                await self.bus.publish(self.tx, xp_data(data))
                n += len(data)
                frames += 1
        except RelayError as exc:  # the bus failed (Redis down): no bug, no traceback
            log_throttled("remote-link-failed", logging.WARNING, "remote link failed",
                          {"link": self.link, "error": exc.message[:300]})
            await self._close(CloseCode.INTERNAL)
        except Exception:
            log.exception("remote link %s failed", self.link)
            await self._close(CloseCode.INTERNAL)
        finally:
            metrics.link_bytes_forwarded += n
            metrics.link_frames_forwarded += frames
            dog.cancel()
            if pinger is not None:
                pinger.cancel()
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
