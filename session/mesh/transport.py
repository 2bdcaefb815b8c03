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
from typing import Any, Protocol

from .plan import format_endpoint

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


# --------------------------------------------------------------------------- TCP


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
        self._deliver_eof(exc if exc is not None else None)

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


class RelayedLink(ByteLink):
    """A relay client's link as a :class:`ByteLink` (reader and writer tasks).

    The writer joins what queued up meanwhile into as few relay frames as it can, each at
    most the relay's announced ``link_max_frame`` (the link's ``max_frame``): a large
    message goes out as several frames (the byte stream above does not see frame
    boundaries). The link's traffic in both directions is held to the relay's
    ``link_max_bytes`` here, so that a run which outgrows it ends with a message that says
    so instead of a link the relay cut.
    """

    kind = "relay"

    def __init__(self, link: Any, description: str) -> None:
        super().__init__(description)
        self._link = link
        self.max_frame = _positive(getattr(link, "max_frame", None), DEFAULT_MAX_FRAME)
        self.max_bytes = _positive(getattr(link, "max_bytes", None), 0)
        self.frames_sent = 0
        self._wire_sent = 0
        self._unsent = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closed = False
        self._busy = False  # the writer task holds a batch not yet handed on
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read_loop())
        self._writer = loop.create_task(self._write_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._link.recv()
                if not data:
                    self._deliver_eof(None)
                    return
                self._deliver(bytes(data))
        except asyncio.CancelledError:
            self._deliver_eof(None)
            raise
        except Exception as exc:
            self._deliver_eof(exc)

    def _next_batch(self, first: bytes) -> tuple[bytes, bool]:
        """``first`` joined with what queued up meanwhile, up to about one frame."""
        parts, size, limit = [first], len(first), self.max_frame
        end = False
        while size < limit and not self._queue.empty():
            nxt = self._queue.get_nowait()
            if nxt is None:
                end = True
                break
            parts.append(nxt)
            size += len(nxt)
        return (b"".join(parts) if len(parts) > 1 else first), end

    async def _write_loop(self) -> None:
        try:
            end = False
            while not end:
                self._busy = False
                data = await self._queue.get()
                if data is None:
                    break
                self._busy = True  # write() queues behind this batch, keeping the order
                data, end = self._next_batch(data)
                if self.max_bytes and (
                    self._wire_sent + self.bytes_received + len(data) > self.max_bytes
                ):
                    raise ConnectionError(
                        f"this link's traffic would exceed the relay's link_max_bytes "
                        f"({self.max_bytes} bytes in both directions); use a direct path "
                        "or a relay with a larger budget"
                    )
                self._wire_sent += len(data)
                limit = self.max_frame
                if len(data) <= limit:
                    await self._link.send(data)
                    self.frames_sent += 1
                else:
                    view = memoryview(data)
                    for off in range(0, len(view), limit):
                        await self._link.send(view[off : off + limit])
                        self.frames_sent += 1
                self._unsent -= len(data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._deliver_eof(exc)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._link.close(), 2.0)

    def write(self, data: bytes | bytearray) -> None:
        if self._closed:
            return
        self.bytes_sent += len(data)
        if not self._busy and self._queue.empty() and self._send_now(data):
            return
        self._unsent += len(data)
        self._queue.put_nowait(bytes(data))

    def _send_now(self, data: bytes | bytearray) -> bool:
        """With nothing queued or in flight: hand ``data`` to the relay client at once, in
        frames of at most ``max_frame``, if its link takes frames without waiting
        (``send_nowait``: into the socket, the rest into the transport's buffer, as
        :class:`TcpLink` writes). Not one more event-loop turn for the writer task (a round
        of a many-round program waits for every message), and a large message leaves
        even while the program computes. False: the writer task sends it (no such link,
        over the link's budget, or the link refused the first frame)."""
        send_nowait = getattr(self._link, "send_nowait", None)
        if send_nowait is None or self._writer.done() or (
                self.max_bytes
                and self._wire_sent + self.bytes_received + len(data) > self.max_bytes):
            return False
        limit = self.max_frame
        view = memoryview(data) if len(data) > limit else data
        for off in range(0, len(data), limit):
            try:
                sent = send_nowait(view[off : off + limit] if len(data) > limit else data)
            except Exception:  # noqa: BLE001 - the link failed: its reader reports it
                sent = False
            if not sent:
                if off == 0:
                    return False  # nothing went: the writer task sends it, or says why
                break  # the link closed mid-way: its end is reported as the link's EOF
            self.frames_sent += 1
        self._wire_sent += len(data)
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    def unsent(self) -> int:
        return 0 if self._writer.done() else self._unsent

    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        return (self._reader, self._writer)

    def abort(self) -> None:
        self._closed = True
        self._writer.cancel()
        self._reader.cancel()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().create_task(self._link.close())
