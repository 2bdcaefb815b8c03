"""Cross-process links without a message bus per frame (specs/relay.md, "Links").

When the two ends of a link reach different relay processes on one shared store, the
process of the *second* end (B) does not forward frames through Redis pub/sub: it opens one
TCP connection to the *first* end's process (A), at the address A advertised in the store
(``link_splice_listen``), says which waiting end it wants in a one-line preamble
authenticated with a key derived from the relay secret, and from then on copies bytes both
ways between its client's connection and that TCP connection without parsing them. A
treats the TCP connection as the second end's own WebSocket connection: it pairs it with
its waiting end in a :class:`~didmesh.relay.fastlink.FastLink`, which sends ``linked``,
forwards frames, enforces the budgets, pings both clients and closes both ends with a code.

Per MB this costs B one read and one write of the bytes (no frame parsing, no task, no
queue) on top of what a local link costs A, instead of a Redis round trip per frame.

Preamble (B to A, one line of JSON, at most :data:`MAX_PREAMBLE` bytes)::

    {"v":1,"to":A's proc id,"from":B's proc id,"waiter":the waiting end's id,"ts":ms,"mac":hex}

``mac`` = HMAC-SHA256(splice key, ``v|to|from|waiter|ts``), the splice key =
HMAC-SHA256(relay secret, ``"didmesh relay splice v1"``). A answers one line: ``ok`` (the
bytes after it are the link's, already framed for B's client) or ``no <reason>``, and
closes. A preamble older than :data:`MAX_SKEW_MS`, for another process or with a bad MAC
is refused; a waiter is paired once, so a replayed preamble finds nothing to pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from .fastlink import CLOSE_TIMEOUT_S
from .protocol import CloseCode, close_reason
from .wsframes import close_frame

SPLICE_LABEL = b"didmesh relay splice v1"
MAX_PREAMBLE = 1024
MAX_SKEW_MS = 30_000
CONNECT_TIMEOUT_S = 3.0
#: splice connections still sending their preamble, at most (more are cut at once)
MAX_PENDING = 64
PREAMBLE_TIMEOUT_S = 5.0
#: stop reading one side while the other side's socket holds this much unsent
HIGH_WATER = 256 * 1024


def splice_key(secret: bytes) -> bytes:
    return hmac.new(secret, SPLICE_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, to: str, frm: str, waiter: str, ts: int) -> str:
    msg = f"1|{to}|{frm}|{waiter}|{ts}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def make_preamble(key: bytes, to: str, frm: str, waiter: str, now_ms: int) -> bytes:
    body = {"v": 1, "to": to, "from": frm, "waiter": waiter, "ts": now_ms,
            "mac": _mac(key, to, frm, waiter, now_ms)}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


class PreambleError(Exception):
    pass


def check_preamble(line: bytes, key: bytes, me: str, now_ms: int) -> str:
    """The waiter id a valid preamble asks for; raises :class:`PreambleError` (sans-IO)."""
    try:
        msg = json.loads(line)
        to, frm, waiter = str(msg["to"]), str(msg["from"]), str(msg["waiter"])
        ts, mac, v = msg["ts"], str(msg["mac"]), msg["v"]
    except (ValueError, KeyError, TypeError):
        raise PreambleError("malformed") from None
    if v != 1 or not isinstance(ts, int) or isinstance(ts, bool):
        raise PreambleError("malformed")
    if not hmac.compare_digest(mac, _mac(key, to, frm, waiter, ts)):
        raise PreambleError("bad mac")
    if to != me:
        raise PreambleError("not this process")
    if abs(now_ms - ts) > MAX_SKEW_MS:
        raise PreambleError("stale")
    return waiter


# -- A: the process holding the waiting end --------------------------------------------------


class SpliceListener(asyncio.Protocol):
    """One incoming splice connection until its preamble is read; then the link's
    :class:`~didmesh.relay.fastlink.FastLink` owns the connection. ``accept(waiter,
    transport)`` writes ``ok`` and pairs, or returns False if that end is not waiting here
    (answered ``no gone``)."""

    def __init__(
        self, key: bytes, me: str, accept: Callable[[str, asyncio.Transport], bool],
        pending: list[int],
    ):
        self.key, self.me, self.accept = key, me, accept
        self.pending = pending  # [connections of this listener still in their preamble]
        self.counted = False
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.pending[0] >= MAX_PENDING:
            transport.abort()
            return
        self.pending[0] += 1
        self.counted = True
        self.timer = asyncio.get_running_loop().call_later(PREAMBLE_TIMEOUT_S, transport.abort)

    def _done(self) -> None:
        if self.counted:
            self.counted = False
            self.pending[0] -= 1
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        line, sep, rest = self.buf.partition(b"\n")
        if not sep:
            if len(self.buf) > MAX_PREAMBLE:
                self._refuse("too long")
            return
        self._done()
        if rest:  # B sends nothing after its preamble until it reads "ok"
            self._refuse("unexpected bytes")
            return
        try:
            waiter = check_preamble(line, self.key, self.me, int(time.time() * 1000))
        except PreambleError as exc:
            self._refuse(str(exc))
            return
        # accept() answers "ok" itself, then hands the connection to the link
        if not self.accept(waiter, self.transport):
            self._refuse("gone")

    def _refuse(self, why: str) -> None:
        assert self.transport is not None
        self.transport.write(b"no " + why.encode()[:100] + b"\n")
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()


# -- B: the process of the second end ---------------------------------------------------------


class ServerFrameTracker:
    """Follows the frame boundaries of a server-to-client WebSocket stream without copying
    payloads (sans-IO), so B can end the client's connection with a close frame of its own
    when A's process goes, and knows the close code A sent."""

    __slots__ = ("_hdr", "_left", "_opcode", "_payload", "close_code")

    def __init__(self) -> None:
        self._hdr = b""
        self._left = 0
        self._opcode = 0
        self._payload = b""
        self.close_code: int | None = None  # set once A's close frame went through

    def at_boundary(self) -> bool:
        return not self._left and not self._hdr

    def _header_len(self) -> int:
        if len(self._hdr) < 2:
            return 2
        ln = self._hdr[1] & 0x7F
        return 2 + (2 if ln == 126 else 8 if ln == 127 else 0) + (4 if self._hdr[1] & 0x80 else 0)

    def feed(self, data: bytes | memoryview) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                if self._opcode == 0x8 and len(self._payload) < 125:
                    self._payload += bytes(data[i : i + take])
                self._left -= take
                i += take
                if not self._left:
                    self._frame_done()
                continue
            take = min(self._header_len() - len(self._hdr), n - i)
            self._hdr += bytes(data[i : i + take])
            i += take
            if len(self._hdr) == self._header_len():
                hdr, self._hdr = self._hdr, b""
                self._opcode = hdr[0] & 0x0F
                ln = hdr[1] & 0x7F
                if ln == 126:
                    ln = int.from_bytes(hdr[2:4], "big")
                elif ln == 127:
                    ln = int.from_bytes(hdr[2:10], "big")
                self._left = ln
                if not ln:
                    self._frame_done()

    def _frame_done(self) -> None:
        if self._opcode == 0x8 and self.close_code is None:
            p = self._payload
            self.close_code = int.from_bytes(p[:2], "big") if len(p) >= 2 else 1005
        self._payload = b""


class _Half(asyncio.Protocol):
    """Copies what it reads to ``other``'s transport; pauses its own reading while that
    transport is backed up (and the other half does the same in reverse)."""

    def __init__(self, splice: Splice) -> None:
        self.splice = splice
        self.transport: asyncio.Transport | None = None
        self.other: _Half | None = None

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write(data)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice._half_lost(self, exc)


class _Upstream(_Half):
    """B's connection to A: first the answer line, then the link's bytes for B's client."""

    def __init__(self, splice: Splice) -> None:
        super().__init__(splice)
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.early: list[bytes] = []  # after "ok", before B's client is taken over
        self.frames = ServerFrameTracker()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.buf += data
            line, sep, rest = self.buf.partition(b"\n")
            if not sep:
                if len(self.buf) > MAX_PREAMBLE:
                    self.answer.set_result(b"no answer too long")
                return
            self.buf = b""
            self.answer.set_result(line)
            data = rest
            if not data:
                return
        self.frames.feed(data)
        if self.other is None:
            self.early.append(bytes(data))
        else:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_result(b"no connection lost")
        super().connection_lost(exc)


class Splice:
    """B's side of a spliced link: its client's connection joined to A's process."""

    def __init__(self) -> None:
        self.up = _Upstream(self)
        self.down = _Half(self)
        self.http_protocol: Any = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.bytes_up = 0

    async def connect(self, address: str, preamble: bytes) -> str:
        """Open the connection to A and send the preamble; returns A's answer line
        (``ok`` or ``no ...``, or ``no <error>`` if A cannot be reached)."""
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await loop.create_connection(lambda: self.up, host.strip("[]"), int(port))
        except (OSError, TimeoutError, ValueError) as exc:
            return f"no {type(exc).__name__}"
        assert self.up.transport is not None
        self.up.transport.set_write_buffer_limits(high=HIGH_WATER)
        self.up.transport.write(preamble)
        try:
            async with asyncio.timeout(PREAMBLE_TIMEOUT_S):
                return (await self.up.answer).decode("utf-8", "replace")
        except TimeoutError:
            self.abort()
            return "no timeout"

    def take_over(self, client: asyncio.Transport, http_protocol: Any) -> None:
        """From now on the client's bytes go to A and A's to the client."""
        self.http_protocol = http_protocol
        self.down.transport = client
        client.set_write_buffer_limits(high=HIGH_WATER)
        client.set_protocol(self.down)
        self.down.other, self.up.other = self.up, self.down
        for chunk in self.up.early:
            client.write(chunk)
        self.up.early.clear()
        if self.up.transport is None or self.up.transport.is_closing():
            client.close()

    @property
    def close_code(self) -> int | None:
        """The code A closed the link with, if its close frame went through."""
        return self.up.frames.close_code

    def _half_lost(self, half: _Half, exc: Exception | None) -> None:
        other = half.other or (self.down if half is self.up else self.up)
        if half is self.up:
            # A ended the link (its close frame went through first: let the client's
            # socket flush it), or A's process went: 4411, the relay lost the link (the
            # mesh resumes it), not the peer
            self.close(CloseCode.PEER_RELAY_GONE)
        elif other.transport is not None and not other.transport.is_closing():
            other.transport.abort()  # the client went: cut A's side at once
        if half is self.down and self.http_protocol is not None:
            with contextlib.suppress(Exception):  # let aiohttp finish the request it served
                self.http_protocol.connection_lost(exc)
        both = all(h.transport is None or h.transport.is_closing() for h in (self.up, self.down))
        if both and not self.done.done():
            self.done.set_result(None)

    def abort(self) -> None:
        for h in (self.up, self.down):
            if h.transport is not None:
                h.transport.abort()

    def close(self, code: int) -> None:
        """End the client's side: with a close frame of ours (``code``) when A has not
        sent one and the stream is between frames, else as it stands; A's side is cut."""
        client = self.down.transport
        if self.up.transport is not None and not self.up.transport.is_closing():
            self.up.transport.abort()
        if client is None or client.is_closing():
            return
        frames = self.up.frames
        if frames.close_code is None and frames.at_boundary():
            client.write(close_frame(code, close_reason(code)))
            frames.close_code = code
        client.close()  # after what is queued, then the client hears EOF
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, client.abort)

    async def run(self) -> None:
        """Until both connections are gone (A's FastLink bounds the link's life)."""
        try:
            await asyncio.shield(self.done)
        except asyncio.CancelledError:
            self.abort()
            raise


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``; raises ValueError."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(text)
    return host, int(port)


async def serve_splices(
    listen: str, key: bytes, me: str, accept: Callable[[str, asyncio.Transport], bool]
) -> tuple[asyncio.Server, str]:
    """Listen for splice connections at ``HOST:PORT``; returns the server and the
    ``HOST:PORT`` to advertise (the real port when 0 was asked)."""
    host, port = parse_hostport(listen)
    loop = asyncio.get_running_loop()
    pending = [0]
    server = await loop.create_server(
        lambda: SpliceListener(key, me, accept, pending), host, port
    )
    sock = server.sockets[0].getsockname()
    h = sock[0]
    return server, (f"[{h}]" if ":" in h else h) + f":{sock[1]}"
