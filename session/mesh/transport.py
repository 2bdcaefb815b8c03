"""Byte pipes that carry a pair's Noise records: direct TCP and relayed links (asyncio).

A :class:`ByteLink` is an ordered, reliable byte stream between two parties with no
security of its own (the Noise channel above it provides that). Two kinds:

* :class:`TcpLink` — an :class:`asyncio.Protocol` on a TCP socket (the fast path:
  received bytes go to the receiver synchronously, in the socket's callback);
* :class:`RelayedLink` — adapts a relay client's link (``await send(bytes)``,
  ``await recv() -> bytes`` (``b""``/``None`` or an exception at the end),
  ``await close()``): the relay forwards ciphertext only.

Until a receiver is set, received bytes are buffered and can be read with
:meth:`ByteLink.read_some` (used by the cleartext hello and the handshake).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from didmesh.identity.errors import DidmeshError

from .faults import RelayLost
from .plan import format_endpoint
from .resume import ResumeFailed, ResumeStream

#: a relay's ``link_max_frame`` when its link does not say (the relay's default, 1 MiB)
DEFAULT_MAX_FRAME = 1024 * 1024


def _positive(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else default


class LinkReceiver(Protocol):
    def link_data(self, data: bytes) -> None: ...
    def link_eof(self, exc: BaseException | None) -> None: ...


class ByteLink:
    """Common part: buffering before a receiver is set, counters, EOF bookkeeping."""

    kind = "link"

    def __init__(self, description: str) -> None:
        self.description = description
        #: the round trip the pair handshake measured on this link, seconds (None: not
        #: measured): the connectivity check's figure, so that it needs no pings
        self.handshake_rtt: float | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self._receiver: LinkReceiver | None = None
        self._pending = bytearray()
        self._eof: BaseException | None | bool = False  # False: open; None/exc: ended
        self._wakeup: asyncio.Event | None = None

    # -- receiving ------------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        self.bytes_received += len(data)
        r = self._receiver
        if r is not None:
            r.link_data(data)
        else:
            self._pending += data
            if self._wakeup is not None:
                self._wakeup.set()

    def _deliver_eof(self, exc: BaseException | None) -> None:
        if self._eof is not False:
            return
        self._eof = exc
        r = self._receiver
        if r is not None:
            r.link_eof(exc)
        elif self._wakeup is not None:
            self._wakeup.set()

    @property
    def at_eof(self) -> bool:
        return self._eof is not False

    def set_receiver(self, receiver: LinkReceiver) -> None:
        """From now on deliver to ``receiver``, first whatever was buffered."""
        self._receiver = receiver
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            receiver.link_data(data)
        if self._eof is not False:
            receiver.link_eof(self._eof if isinstance(self._eof, BaseException) else None)

    async def read_some(self, timeout: float) -> bytes:
        """Buffered bytes, waiting up to ``timeout`` s for some; ``b""`` at the end."""
        if self._receiver is not None:
            raise RuntimeError("read_some() after set_receiver()")
        if not self._pending and self._eof is False:
            self._wakeup = asyncio.Event()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            finally:
                self._wakeup = None
        data = bytes(self._pending)
        self._pending.clear()
        if not data and isinstance(self._eof, BaseException):
            raise ConnectionError(str(self._eof) or type(self._eof).__name__)
        return data

    # -- sending (subclasses) -------------------------------------------------------

    def write(self, data: bytes | bytearray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and close gracefully."""
        raise NotImplementedError

    def abort(self) -> None:
        """Close at once, dropping unsent data."""
        self.close()

    def unsent(self) -> int:
        """Bytes written but not yet handed to the operating system or the relay."""
        return 0

    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        """The tasks this link runs (kept when a failed run drops the program's work)."""
        return ()

    #: True while a lost relayed link is being resumed (the mesh's liveness waits)
    resuming = False
    #: the longest a resumption may take, in seconds (the mesh's liveness waits no longer)
    resume_grace = 0.0

    def ack_due(self) -> int | None:
        """A resumable link: the stream offset to acknowledge to the peer now, if any."""
        return None

    def peer_acked(self, offset: int) -> None:
        """A resumable link: the peer acknowledged ``offset`` bytes (an ACK message)."""


# --------------------------------------------------------------------------- TCP


#: the most a failed TCP link reads from the kernel after the failure (TcpLink)
DRAIN_LIMIT = 1 << 20


class TcpLink(ByteLink, asyncio.Protocol):
    kind = "direct"

    def __init__(self, description: str = "tcp") -> None:
        ByteLink.__init__(self, description)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if peer and self.description == "tcp":
            self.description = f"tcp {format_endpoint(str(peer[0]), int(peer[1]))[6:]}"

    def data_received(self, data: bytes) -> None:
        self._deliver(data)

    def eof_received(self) -> bool:
        self._deliver_eof(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._drain_kernel()
        self._deliver_eof(exc if exc is not None else None)

    def _drain_kernel(self) -> None:
        """A write failed (EPIPE, ECONNRESET: the peer had closed) and asyncio stopped
        reading at once; what the peer sent before it closed — typically its signed
        abort notice, when this party's event loop was blocked for a while — is still in
        the kernel's receive queue. Read it (at most :data:`DRAIN_LIMIT` bytes, without
        blocking) before the end is reported, so the cause is known, not only "broken
        pipe". asyncio closes the socket right after this callback."""
        t = self.transport
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is None:
            return
        try:
            dup = sock.dup()
        except OSError:
            return
        with dup:
            dup.setblocking(False)
            left = DRAIN_LIMIT
            while left > 0:
                try:
                    chunk = dup.recv(min(65536, left))
                except OSError:  # nothing more (BlockingIOError), or reset
                    return
                if not chunk:
                    return
                left -= len(chunk)
                self._deliver(chunk)

    def write(self, data: bytes | bytearray) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        self.bytes_sent += len(data)
        t.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def unsent(self) -> int:
        t = self.transport
        return 0 if t is None or t.is_closing() else t.get_write_buffer_size()


async def open_tcp(host: str, port: int, timeout: float) -> TcpLink:
    """Connect to ``host:port`` within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    desc = f"tcp {format_endpoint(host, port)[6:]}"
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: TcpLink(desc), host, port), timeout
    )
    return proto


async def serve_tcp(
    host: str, port: int, on_link: Callable[[TcpLink], Coroutine[Any, Any, None]]
) -> asyncio.Server:
    """Listen on ``host:port``; run ``on_link(link)`` as a task for each connection."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def factory() -> TcpLink:
        link = TcpLink()
        orig = link.connection_made

        def made(transport: asyncio.BaseTransport) -> None:
            orig(transport)
            task = loop.create_task(on_link(link))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        link.connection_made = made  # type: ignore[method-assign]
        return link

    # SO_REUSEPORT too: a hole punch connects from this port while we listen on it
    return await loop.create_server(factory, host, port, reuse_address=True,
                                    reuse_port=hasattr(socket, "SO_REUSEPORT"))


# --------------------------------------------------------------------------- relayed


#: close codes after which a relayed link is resumed (as relay.protocol.RESUMABLE_CLOSE_CODES,
#: not imported: this module must not import the relay package)
RESUMABLE_CLOSE_CODES: Final = frozenset({1001, 1006, 4411, 4500})

#: ``reopen(deadline) -> (raw link, relay url)``: a new relay link to the same peer under
#: the channel's resume link id, on the same relay or another of the session (connect.py)
Reopen = Callable[[float], Coroutine[Any, Any, tuple[Any, str]]]


#: "peer gone" (4410): the peer's connection to the relay vanished — its party died, or
#: the relay process holding its end did (a spliced link's first end cannot tell). The link
#: is resumed if the peer comes back within this many seconds; else the peer is lost.
PEER_GONE_CODE: Final = 4410
PEER_GONE_GRACE = 3.0


def resumable(exc: BaseException | None) -> bool:
    """Whether a relay link that ended with ``exc`` was lost by the relay (not the peer)."""
    if exc is None:
        return False
    code = getattr(exc, "close_code", None)
    if isinstance(code, int):
        return code in RESUMABLE_CLOSE_CODES
    return isinstance(exc, ConnectionError | OSError)


def _peer_gone(exc: BaseException | None) -> bool:
    return getattr(exc, "close_code", None) == PEER_GONE_CODE


class RelayedLink(ByteLink):
    """A relay client's link as a :class:`ByteLink` (reader and writer tasks).

    The writer joins what queued up meanwhile into as few relay frames as it can, each at
    most the relay's announced ``link_max_frame`` (the link's ``max_frame``): a large
    message goes out as several frames (the byte stream above does not see frame
    boundaries). The link's traffic in both directions is held to the relay's
    ``link_max_bytes`` here, so that a run which outgrows it ends with a message that says
    so instead of a link the relay cut.

    Once :meth:`arm_resume` is called (the pair's channel is established), a link the relay
    loses (:func:`resumable`) is resumed: the reader opens a new one (``reopen``), both
    ends exchange RESUME messages, and the writer resends what the peer had not received
    (:class:`~.resume.ResumeStream` holds the offsets and the bounded resend buffer). If
    that does not succeed within ``resume_timeout`` seconds, the link ends with
    :class:`~.faults.RelayLost`, which names the relay.
    """

    kind = "relay"

    def __init__(self, link: Any, description: str, *,
                 stream: ResumeStream | None = None) -> None:
        super().__init__(description)
        self._link = link
        self._set_limits(link)
        self.frames_sent = 0
        self._wire_sent = 0  # on the current relay link (its link_max_bytes budget)
        self._recv_base = 0
        self._bg: set[asyncio.Task[None]] = set()
        self.stream = stream or ResumeStream()
        self._data = asyncio.Event()  # the writer has something to do
        self._up = asyncio.Event()  # the current raw link is usable
        self._up.set()
        self._closed = False
        self._reopen: Reopen | None = None
        self._resume_timeout = 0.0
        self.resuming = False
        self.resume_seconds: list[float] = []
        self._busy = False  # the writer task holds a batch not yet handed on
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read_loop())
        self._writer = loop.create_task(self._write_loop())

    def _set_limits(self, link: Any) -> None:
        self.max_frame = _positive(getattr(link, "max_frame", None), DEFAULT_MAX_FRAME)
        self.max_bytes = _positive(getattr(link, "max_bytes", None), 0)

    # -- resumption ------------------------------------------------------------------

    def arm_resume(self, exporter: bytes, initiator: bool, reopen: Reopen,
                   timeout: float) -> None:
        """Resume this link when the relay loses it (call once the channel is up)."""
        if timeout > 0 and exporter:
            self.stream.arm(exporter, initiator)
            self._reopen = reopen
            self._resume_timeout = timeout
            self.resume_grace = timeout

    def ack_due(self) -> int | None:
        return self.stream.ack_due()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def peer_acked(self, offset: int) -> None:
        self.stream.on_ack(offset)

    async def _resume(self, cause: BaseException | None) -> bool:
        """Reopen and resume after the raw link ended with ``cause``; False if this link
        is not to be resumed. Raises RelayLost or ResumeFailed when it cannot be."""
        peer_gone = _peer_gone(cause)
        if self._reopen is None or self._closed or not (resumable(cause) or peer_gone):
            return False
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + (min(self._resume_timeout, PEER_GONE_GRACE) if peer_gone
                         else self._resume_timeout)
        self.resuming = True
        self._up.clear()
        self._background(_quiet_close(self._link))
        try:
            while True:
                try:
                    raw, url = await self._reopen(deadline)  # RelayLost at the deadline
                except RelayLost:
                    if peer_gone:  # the peer did not come back: it is gone, as the relay said
                        return False
                    raise
                try:
                    await raw.send(self.stream.resume_message())
                    msg = await asyncio.wait_for(raw.recv(), max(0.01, deadline - loop.time()))
                    self.stream.on_resume_message(bytes(msg))
                except ResumeFailed:
                    await _quiet_close(raw)
                    raise
                except (OSError, TimeoutError, DidmeshError, ConnectionError) as exc:
                    await _quiet_close(raw)
                    if loop.time() >= deadline:
                        if peer_gone:
                            return False
                        raise RelayLost(
                            f"relay {url} lost the link ({self.description}) and it could not "
                            f"be resumed within {self._resume_timeout:g} s: {exc}",
                            relay=url) from None
                    continue
                break
        finally:
            self.resuming = False
        self._link = raw
        self._set_limits(raw)
        self._wire_sent, self._recv_base = 0, self.bytes_received  # a new link's budget
        self.description = f"relay {url}"
        self.resume_seconds.append(loop.time() - t0)
        self._up.set()
        self._data.set()
        return True

    # -- the tasks -------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                cause: BaseException | None
                try:
                    data = await self._link.recv()
                    cause = None
                except (Exception, asyncio.CancelledError) as exc:
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    data, cause = b"", exc
                if data:
                    self.stream.on_received(len(data))
                    self._deliver(bytes(data))
                    continue
                if await self._resume(cause):
                    continue
                self._deliver_eof(cause)
                self._up.set()
                self._data.set()  # the writer ends too
                return
        except asyncio.CancelledError:
            self._deliver_eof(None)
            raise
        except Exception as exc:  # RelayLost, ResumeFailed
            self._deliver_eof(exc)
            self._up.set()
            self._data.set()  # the writer ends too

    async def _write_loop(self) -> None:
        stream = self.stream
        try:
            while True:
                if not self._up.is_set():
                    await self._up.wait()
                if self.at_eof:
                    return
                self._busy = False
                data = stream.next_batch(self.max_frame)
                if data is None:
                    if self._closed:
                        return
                    self._data.clear()
                    await self._data.wait()
                    continue
                self._busy = True  # write() queues behind this batch, keeping the order
                if self.max_bytes and (
                    self._wire_sent + self.bytes_received - self._recv_base + len(data)
                    > self.max_bytes
                ):
                    raise ConnectionError(
                        f"this link's traffic would exceed the relay's link_max_bytes "
                        f"({self.max_bytes} bytes in both directions); use a direct path "
                        "or a relay with a larger budget"
                    )
                self._wire_sent += len(data)
                link = self._link
                try:
                    limit = self.max_frame
                    if len(data) <= limit:
                        await link.send(data)
                        self.frames_sent += 1
                    else:
                        view = memoryview(data)
                        for off in range(0, len(view), limit):
                            await link.send(view[off : off + limit])
                            self.frames_sent += 1
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self._reopen is None or not (resumable(exc) or _peer_gone(exc)):
                        raise
                    # kept in the resend buffer: the reader finds the end and resumes
                    while self._link is link and not self.at_eof:
                        self._data.clear()
                        await self._data.wait()
                    continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._deliver_eof(exc)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._link.close(), 2.0)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            return
        b = bytes(data)
        self.bytes_sent += len(b)
        self.stream.write(b)
        if self._busy or self.stream.unsent_bytes != len(b) or not self._up.is_set() \
                or not self._send_now():
            self._data.set()  # the writer task sends it

    def _send_now(self) -> bool:
        """With nothing else queued or in flight: hand what was just written to the relay
        client at once, in frames of at most ``max_frame``, if its link takes frames without
        waiting (``send_nowait``: into the socket, the rest into the transport's buffer, as
        :class:`TcpLink` writes). Not one more event-loop turn for the writer task (a round
        of a many-round program waits for every message), and a large message leaves
        even while the program computes. False: the writer task sends it (no such link,
        over the link's budget, or the link refused the first frame). What went stays in
        the resend buffer like what the writer sends."""
        send_nowait = getattr(self._link, "send_nowait", None)
        stream = self.stream
        n = stream.unsent_bytes
        if send_nowait is None or self._writer.done() or (
                self.max_bytes and self._wire_sent + self.bytes_received - self._recv_base
                + n > self.max_bytes):
            return False
        batch = stream.next_batch(n)
        assert batch is not None and len(batch) == n
        limit = self.max_frame
        view = memoryview(batch) if n > limit else batch
        for off in range(0, n, limit):
            try:
                sent = send_nowait(view[off : off + limit] if n > limit else batch)
            except Exception:  # noqa: BLE001 - the link failed: its reader reports it
                sent = False
            if not sent:
                if off == 0:
                    stream.requeue_last()  # nothing went: the writer task sends it
                    return False
                break  # the link closed mid-way: resumed (and resent) or reported
            self.frames_sent += 1
        self._wire_sent += n
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._data.set()

    def unsent(self) -> int:
        return 0 if self._writer.done() else self.stream.unsent_bytes

    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        return (self._reader, self._writer)

    def abort(self) -> None:
        self._closed = True
        self._writer.cancel()
        self._reader.cancel()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().create_task(self._link.close())


async def _quiet_close(link: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(link.close(), 2.0)
