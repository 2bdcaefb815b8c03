"""One peer's established channel at run time (specs/mesh.md, "Channel messages").

A :class:`PeerChannel` joins a :class:`~.transport.ByteLink` and a
:class:`~.channel.SecureChannel`. Every application message of the channel starts with
one kind byte:

====  ==========  =======================================================
0x00  DATA        MPyC's bytes (the bridge's writes of one loop turn)
0x01  APP_CLOSE   MPyC closed its connection (``transport.close()``)
0x02  PING        echo request (payload echoed in PONG)
0x03  PONG        echo reply
0x04  ABORT       a signed abort notice (:mod:`.abort`)
0x05  READY       this party's row of the connectivity table (JSON)
0x06  BYE         the run finished here; nothing more will follow
0x07  SELECT      initiator: this path is the pair's channel
0x08  HEARTBEAT   keep-alive, no payload
0x09  START       the program here reached ``mpc.start()`` (the start barrier)
0x0A  ACK         u64 BE: stream bytes received on this relayed link (:mod:`.resume`)
====  ==========  =======================================================

Events go to a :class:`PeerEvents` (the mesh). The receive path is synchronous: bytes
from the socket are decrypted and handed to MPyC in the same callback.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from didmesh.identity.errors import DidmeshError

from .channel import SecureChannel
from .errors import FrameTruncated
from .faults import PeerLost, PeerMisbehaved, RelayLost
from .mpyc_bridge import AppReceiver
from .resume import ResumeFailed
from .transport import ByteLink

DATA: Final = 0
APP_CLOSE: Final = 1
PING: Final = 2
PONG: Final = 3
ABORT: Final = 4
READY: Final = 5
BYE: Final = 6
SELECT: Final = 7
HEARTBEAT: Final = 8
START: Final = 9
ACK: Final = 10

_DATA_BYTE: Final = b"\x00"
_CLOSE_MARK: Final = object()


class PeerEvents(Protocol):
    def peer_failed(self, peer: PeerChannel, exc: DidmeshError) -> None: ...
    def abort_received(self, peer: PeerChannel, payload: bytes) -> None: ...
    def ready_received(self, peer: PeerChannel, payload: bytes) -> None: ...
    def bye_received(self, peer: PeerChannel) -> None: ...


class PeerChannel:
    """The runtime side of one pair's secure channel (also the MPyC bridge's AppPort)."""

    def __init__(
        self,
        peer_id: int,
        name: str,
        link: ByteLink,
        channel: SecureChannel,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peer_id = peer_id
        self.name = name
        self.link = link
        self.channel = channel
        self._clock = clock
        self.events: PeerEvents | None = None
        self.last_rx = clock()
        self.last_tx = clock()
        self.app_bytes_sent = 0
        self.app_bytes_received = 0
        self.bye = False
        self.closed = False
        self.failed = False
        self._app: AppReceiver | None = None
        self._app_queue: deque[object] = deque()
        self._pongs: dict[bytes, asyncio.Future[float]] = {}
        self._early: list[tuple[int, bytes]] = []
        self.peer_started = asyncio.Event()  # its program reached mpc.start()

    @property
    def path(self) -> str:
        return self.link.kind

    def start(self, events: PeerEvents) -> None:
        """Begin delivering received messages to ``events`` (and MPyC, once attached)."""
        self.events = events
        self.link.set_receiver(self)
        for kind, payload in self._early:
            self._dispatch(kind, payload)
        self._early.clear()
        # what the handshake's reader decoded behind SELECT (the peer's READY, sent in the
        # same segment) waits in the channel: deliver it now, not with the peer's next
        # record (a heartbeat, seconds later)
        try:
            self._dispatch_decoded()
        except DidmeshError as exc:
            self._fail(exc)

    def _dispatch_decoded(self) -> None:
        """Dispatch every message the channel has decoded and not yet handed out."""
        for msg in self.channel:
            if not msg:
                raise PeerMisbehaved(f"{self.name} sent an empty message", party=self.peer_id)
            self._dispatch(msg[0], memoryview(msg)[1:])  # no copy of the payload

    # -- sending ---------------------------------------------------------------------

    def _send(self, messages: Sequence[bytes | bytearray | memoryview]) -> None:
        if self.closed or self.failed:  # the failure was reported already
            return
        self.link.write(self.channel.send_many(messages))
        self.last_tx = self._clock()

    def send_control(self, kind: int, payload: bytes | memoryview = b"") -> None:
        self._send((bytes((kind,)) + payload,))

    # -- AppPort (the MPyC bridge) -----------------------------------------------------

    def attach(self, receiver: AppReceiver) -> None:
        self._app = receiver
        q = self._app_queue
        while q and self._app is receiver:
            item = q.popleft()
            if item is _CLOSE_MARK:
                self._app = None
                receiver.app_closed()
            else:
                assert isinstance(item, bytes)
                receiver.app_data(item)

    def send_app(self, data: bytes) -> None:
        self.send_app_parts((data,))

    def send_app_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """One DATA message: the kind byte, then ``parts`` (gathered, not joined first)."""
        if self.closed or self.failed:  # the failure was reported already
            return
        self.app_bytes_sent += sum(map(len, parts))
        self.link.write(self.channel.send_parts((_DATA_BYTE, *parts)))
        self.last_tx = self._clock()

    def close_app(self) -> None:
        self.send_control(APP_CLOSE)

    def send_start(self) -> None:
        self.send_control(START)

    # -- pings -----------------------------------------------------------------------

    async def ping(self, timeout: float) -> float:
        """Round-trip time of one PING/PONG through the secure channel, in seconds."""
        token = time.perf_counter_ns().to_bytes(8, "big")
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pongs[token] = fut
        t0 = time.perf_counter()
        self.send_control(PING, token)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._pongs.pop(token, None)
        return time.perf_counter() - t0

    # -- LinkReceiver ----------------------------------------------------------------

    def link_data(self, data: bytes) -> None:
        if self.failed:
            return
        self.last_rx = self._clock()
        try:
            self.channel.receive_data(data)
            self._dispatch_decoded()
            ack = self.link.ack_due()
            if ack is not None:  # a resumable link: the peer may drop what we got
                self.send_control(ACK, ack.to_bytes(8, "big"))
        except DidmeshError as exc:
            self._fail(exc)

    def link_eof(self, exc: BaseException | None) -> None:
        if self.failed or self.closed:
            return
        try:
            if self.channel.state == "open":
                self.channel.receive_eof()
                self._dispatch_decoded()
        except FrameTruncated as err:
            if "without the peer's close record" not in err.message:
                self._fail(err)  # the stream ended inside a record or message
                return
        except DidmeshError as err:
            self._fail(err)
            return
        if self.bye:
            self.closed = True
            return
        if isinstance(exc, RelayLost | ResumeFailed):  # the relay's fault, not the peer's
            self._fail(exc)
            return
        why = f" ({str(exc) or type(exc).__name__})" if exc is not None else ""
        self._fail(PeerLost(f"{self.name} disconnected{why}", party=self.peer_id))

    def _fail(self, exc: DidmeshError) -> None:
        if self.failed:
            return
        self.failed = True
        self.link.abort()
        if self.events is not None:
            self.events.peer_failed(self, exc)

    def _dispatch(self, kind: int, payload: bytes | memoryview) -> None:
        ev = self.events
        if kind == START:
            self.peer_started.set()
            return
        if ev is None and kind not in (PING, PONG, HEARTBEAT, SELECT, ACK):
            self._early.append((kind, bytes(payload)))
            return
        if kind == DATA:
            self.app_bytes_received += len(payload)
            app = self._app
            if app is not None:
                app.app_data(payload)
            else:
                self._app_queue.append(bytes(payload))
        elif kind == APP_CLOSE:
            app = self._app
            if app is not None:
                self._app = None
                app.app_closed()
            else:
                self._app_queue.append(_CLOSE_MARK)
        elif kind == PING:
            self.send_control(PONG, payload)
        elif kind == PONG:
            fut = self._pongs.get(bytes(payload))
            if fut is not None and not fut.done():
                fut.set_result(self._clock())
        elif kind == HEARTBEAT or kind == SELECT:
            pass
        elif kind == ACK:
            if len(payload) != 8:
                raise PeerMisbehaved(f"{self.name} sent a malformed ACK", party=self.peer_id)
            self.link.peer_acked(int.from_bytes(payload, "big"))
        elif ev is None:
            pass
        elif kind == ABORT:
            ev.abort_received(self, bytes(payload))
        elif kind == READY:
            ev.ready_received(self, bytes(payload))
        elif kind == BYE:
            self.bye = True
            ev.bye_received(self)
        else:
            raise PeerMisbehaved(
                f"{self.name} sent an unknown channel message kind {kind}", party=self.peer_id
            )

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Send the channel's close record and close the link (after BYE)."""
        if self.closed:
            return
        try:
            self.link.write(self.channel.close())
        except DidmeshError:
            pass
        self.closed = True
        self.link.close()

    def abort(self) -> None:
        self.closed = True
        self.link.abort()
