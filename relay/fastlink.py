"""Forwarding for a link whose two ends sit in this relay process (specs/relay.md, "Links").

Once both ends are paired, each end's connection is handed from aiohttp to a
:class:`LinkEndProtocol` (``transport.set_protocol``: public asyncio API). Its read
callback (a ``BufferedProtocol``: asyncio reads into one buffer shared by every link end,
parsed before the callback returns) parses the client's frames
(:mod:`didmesh.relay.wsframes`) and writes them, re-framed, to the other end's transport
in the same call: no queue, no task switch, one copy per frame, one write per read.
Pings, pongs and the close handshake are answered here too.

Backpressure is the transport's own: when the other end's socket holds more than
``HIGH_WATER`` unsent bytes, asyncio calls that end's ``pause_writing`` and this end stops
reading (``pause_reading``) until it drains, so a slow reader holds back a fast writer
through TCP with bounded memory in between.

Every way a link ends goes through :meth:`FastLink.close` (both ends get the same code) or
:meth:`FastLink._end_closed_by_client` (the closer gets 1000, the other end 4000), and
every close is bounded in time: an end that does not answer a close frame within
``CLOSE_TIMEOUT_S`` is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .config import RelayConfig
from .metrics import Metrics
from .protocol import CloseCode, close_reason
from .wsframes import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    ClientFrameReader,
    close_frame,
    server_frame,
)

#: pause reading the sender while the receiver's socket holds more than this, unsent
HIGH_WATER = 256 * 1024
CLOSE_TIMEOUT_S = 5.0
#: forwarded frames at least this large are written at once (joining would only add a copy)
_BIG = 16 * 1024

_fast_ends: dict[int, LinkEndProtocol] = {}  # id(aiohttp WebSocketResponse) -> its protocol


#: one receive buffer for every link end of the process: asyncio reads into it
#: (``recv_into``) and :meth:`LinkEndProtocol.buffer_updated` parses it in the same call,
#: copying out whatever it keeps, so no end holds it across calls
_READ_BUFFER = memoryview(bytearray(1024 * 1024))


class LinkBudget:
    """A link's duration and idle budgets (sans-IO: the caller passes the time)."""

    __slots__ = ("deadline", "idle", "last_frames", "last_active")

    def __init__(self, config: RelayConfig, now: float) -> None:
        self.deadline = now + config.link_max_duration_s
        self.idle = config.ws_idle_timeout_s
        self.last_frames, self.last_active = -1, now

    def check(self, now: float, frames: int) -> tuple[int, float]:
        """(close code or 0, seconds until the next check is due) given the frames
        forwarded so far."""
        if frames != self.last_frames:
            self.last_frames, self.last_active = frames, now
        if now >= self.deadline:
            return CloseCode.DURATION_EXCEEDED, 0.0
        if now - self.last_active >= self.idle:
            return CloseCode.IDLE_TIMEOUT, 0.0
        return 0, min(self.deadline - now, self.idle - (now - self.last_active))


class LinkEndProtocol(asyncio.BufferedProtocol):
    """One end of a forwarded link: reads its client's frames, writes to the other end."""

    __slots__ = (  # thousands of idle links: no instance dict
        "link", "ws", "transport", "http_protocol", "reader", "peer", "loop", "last_rx",
        "ping_at", "close_sent", "close_received", "client_close_code", "lost", "_timer",
        "_pending", "_flush_scheduled",
    )

    def __init__(
        self, link: FastLink, ws: Any, transport: asyncio.Transport, http_protocol: Any,
        max_frame: int,
    ) -> None:
        self.link = link
        self.ws = ws
        self.transport = transport
        self.http_protocol = http_protocol  # aiohttp's, told when the connection goes
        self.reader = ClientFrameReader(max_frame)
        self.peer: LinkEndProtocol = self  # set by FastLink
        self.loop = asyncio.get_running_loop()
        self.last_rx = self.loop.time()
        self.ping_at = 0.0  # when our unanswered ping went out (0: none)
        self.close_sent = False
        self.close_received = False
        self.client_close_code: int | None = None
        self.lost = self.loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._pending: list[bytes | bytearray] = []
        self._flush_scheduled = False

    # -- asyncio callbacks ------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_READ_BUFFER[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self.last_rx = self.loop.time()
        frames, n, controls = self.reader.feed(data)
        if frames and not self.close_sent:
            link = self.link
            state = link.state
            state.bytes += n
            if state.bytes > link.max_bytes:
                link.close(CloseCode.BYTES_EXCEEDED)
                return
            state.frames += len(frames)
            peer = self.peer
            if not peer.close_sent:
                peer.send(frames[0] if len(frames) == 1 else b"".join(frames))
                link.metrics.link_bytes_forwarded += n
                link.metrics.link_frames_forwarded += len(frames)
        for c in controls:
            if c.opcode == OP_PING:
                if not self.close_sent:
                    self.transport.write(server_frame(OP_PONG, c.payload))
            elif c.opcode == OP_PONG:
                self.ping_at = 0.0
            elif c.opcode == OP_CLOSE:
                self.close_received = True
                self.client_close_code = c.close_code()
                if self.close_sent:  # the answer to our close: done
                    self.transport.close()
                else:
                    self.link._end_closed_by_client(self)
                return
        if self.reader.error is not None:
            self.link.close(self.reader.error.code)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def pause_writing(self) -> None:  # my socket is backed up: stop reading the sender
        if not self.peer.transport.is_closing():
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        _fast_ends.pop(id(self.ws), None)
        if not self.lost.done():
            self.lost.set_result(None)
        self.link._end_lost(self)
        with contextlib.suppress(Exception):  # let aiohttp finish the request it served
            self.http_protocol.connection_lost(exc)

    def send(self, data: bytes | bytearray) -> None:
        """Write forwarded frames to my client. The first write of an event-loop turn goes
        out at once (no added latency); later ones in the same turn are joined into one
        write at its end (one syscall for a burst of small frames)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
            self.transport.write(data)
        elif len(data) >= _BIG:
            self._flush()
            self._flush_scheduled = True
            self.transport.write(data)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self.transport.is_closing():
                self.transport.write(data)

    # -- closing ----------------------------------------------------------------------
    def send_close(self, code: int) -> None:
        """Send a close frame (once) and cut the connection if no answer comes in time."""
        if self.close_sent or self.transport.is_closing():
            return
        self.close_sent = True
        self._flush()
        self.transport.resume_reading()  # to read the answer
        self.transport.write(close_frame(code, close_reason(code)))
        if self.close_received:
            self.transport.close()
        else:
            self._timer = self.loop.call_later(CLOSE_TIMEOUT_S, self.abort)

    def abort(self) -> None:
        self.transport.abort()

    def ping(self, now: float) -> None:
        if not self.close_sent and not self.transport.is_closing():
            self.ping_at = now
            self.transport.write(server_frame(OP_PING, b"didmesh"))


class FastLink:
    """Two paired ends in this process, forwarded by :class:`LinkEndProtocol`."""

    __slots__ = (
        "config", "metrics", "state", "max_bytes", "ends", "spliced", "_timer", "_budget",
    )

    def __init__(self, config: RelayConfig, metrics: Metrics, state: Any) -> None:
        self.config = config
        self.metrics = metrics
        self.state = state  # links.LinkState: bytes, frames, closed_code
        self.max_bytes = state.max_bytes
        self.ends: list[LinkEndProtocol] = []
        self.spliced = False  # the second end is another relay process's splice
        self._timer: asyncio.TimerHandle | None = None
        self._budget: LinkBudget | None = None

    @staticmethod
    def supported(transport: Any, http_protocol: Any) -> bool:
        return (
            transport is not None and not transport.is_closing()
            and hasattr(transport, "set_protocol") and http_protocol is not None
        )

    def start(self, a: tuple[Any, Any, Any, str], b: tuple[Any, Any, Any, str]) -> None:
        """Take over both connections, then tell each end ``linked`` (``(ws, transport,
        http_protocol, linked_json)`` each). From here on the client's frames reach us."""
        max_frame = self.config.link_max_frame
        for ws, transport, http_protocol, _ in (a, b):
            end = LinkEndProtocol(self, ws, transport, http_protocol, max_frame)
            transport.set_write_buffer_limits(high=HIGH_WATER)
            transport.set_protocol(end)
            _fast_ends[id(ws)] = end
            self.ends.append(end)
        self.ends[0].peer, self.ends[1].peer = self.ends[1], self.ends[0]
        for end, (_, _, _, linked) in zip(self.ends, (a, b), strict=True):
            end.transport.write(server_frame(0x1, linked.encode()))
        self._budget = LinkBudget(self.config, self.ends[0].loop.time())
        self._watch()

    async def run(self, ws: Any) -> None:
        """Wait until ``ws``'s connection is gone (every path there is bounded)."""
        end = _fast_ends.get(id(ws)) or next((e for e in self.ends if e.ws is ws), None)
        if end is None:
            return
        try:
            await asyncio.shield(end.lost)
        except asyncio.CancelledError:
            end.abort()
            raise

    # -- endings ----------------------------------------------------------------------
    def close(self, code: int) -> None:
        """End the link for both ends with ``code``."""
        if not self.state.closed_code:
            self.state.closed_code = code
        for end in self.ends:
            end.send_close(code)

    def _end_closed_by_client(self, end: LinkEndProtocol) -> None:
        code = end.client_close_code
        if not self.state.closed_code:
            self.state.closed_code = (
                CloseCode.PEER_CLOSED if code in (None, 1000, 1001) else CloseCode.PEER_GONE
            )
        end.send_close(CloseCode.NORMAL)
        end.peer.send_close(self.state.closed_code)

    def _end_lost(self, end: LinkEndProtocol) -> None:
        if not self.state.closed_code:
            self.state.closed_code = CloseCode.PEER_GONE
        end.peer.send_close(self.state.closed_code)
        if all(e.lost.done() for e in self.ends) and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _watch(self) -> None:
        """Duration and idle budgets of the link, and heartbeats on each end: a timer
        callback that re-arms itself (no task per link: an idle link costs a timer)."""
        self._timer = None
        if self.state.closed_code or all(e.lost.done() for e in self.ends):
            return
        loop = self.ends[0].loop
        now = loop.time()
        assert self._budget is not None
        code, wait = self._budget.check(now, self.state.frames)
        if code:
            self.close(code)
            return
        beat = self.config.link_heartbeat_s
        if beat > 0:
            for end in self.ends:
                if end.ping_at and end.last_rx < end.ping_at:
                    if now - end.ping_at >= beat / 2:  # no pong: the end is gone
                        end.abort()
                        continue
                    wait = min(wait, end.ping_at + beat / 2 - now)
                elif now - end.last_rx >= beat:
                    end.ping(now)
                    wait = min(wait, beat / 2)
                else:
                    end.ping_at = 0.0
                    wait = min(wait, end.last_rx + beat - now)
        self._timer = loop.call_later(max(wait, 0.0) + 0.001, self._watch)


def fast_end(ws: Any) -> LinkEndProtocol | None:
    """The forwarding protocol now serving ``ws``'s connection, if any."""
    return _fast_ends.get(id(ws))


__all__ = [
    "CLOSE_TIMEOUT_S", "HIGH_WATER", "FastLink", "LinkBudget", "LinkEndProtocol", "fast_end",
]
