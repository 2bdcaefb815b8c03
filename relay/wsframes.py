"""WebSocket frames on an established link, parsed without aiohttp (RFC 6455, section 5).

Sans-IO: :class:`ClientFrameReader` takes the bytes a client sent (masked frames) and gives
back the same data frames re-framed for the other end (unmasked server frames, ready to
write), plus the control frames (ping, pong, close) for the caller to answer. It is what
lets the relay forward a frame inside the ``data_received`` call that brought it in, with
no task switch and one copy (see :mod:`didmesh.relay.fastlink`).

Rules enforced (each a :class:`FrameError` with a close code): frames must be masked; RSV
bits must be zero (no extension is negotiated on links); control frames are final and at
most 125 bytes; a message (all fragments) may not exceed ``max_message`` (1009, checked on
the header, before its payload is buffered); no continuation without a start, no new message
inside a fragmented one; a text frame after ``linked`` is a link-protocol violation (4400).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .protocol import CloseCode

_c_mask: Callable[[bytes, bytearray], None] | None
try:  # aiohttp's C helper (in place, 4-byte key); the fallback below gives the same result
    from aiohttp._websocket.helpers import websocket_mask as _c_mask
except ImportError:  # pragma: no cover - depends on the aiohttp build
    _c_mask = None

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

PROTOCOL_ERROR = 1002  # RFC 6455, 7.4.1
MESSAGE_TOO_BIG = int(CloseCode.MESSAGE_TOO_BIG)
TEXT_AFTER_LINKED = int(CloseCode.MALFORMED)


def mask_py(key: bytes, data: bytearray) -> None:
    """XOR ``data`` in place with the repeated 4-byte ``key`` (pure Python)."""
    n = len(data)
    if n:
        stream = (key * (n // 4 + 1))[:n]
        data[:] = (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(
            n, "little"
        )


mask_in_place = _c_mask if _c_mask is not None else mask_py


def header(opcode_byte: int, n: int) -> bytes:
    """Server-to-client frame header (no mask) for a payload of ``n`` bytes."""
    if n < 126:
        return bytes((opcode_byte, n))
    if n < 65536:
        return bytes((opcode_byte, 126)) + n.to_bytes(2, "big")
    return bytes((opcode_byte, 127)) + n.to_bytes(8, "big")


def server_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A final, unmasked frame from the relay."""
    return header(0x80 | opcode, len(payload)) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return server_frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode()[:123])


class FrameError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Control:
    opcode: int  # OP_PING, OP_PONG or OP_CLOSE
    payload: bytes

    def close_code(self) -> int | None:
        """The code of a close frame (None if it carried none)."""
        return int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else None


def _new_frame(b0: int, key: bytes, n: int) -> tuple[bytearray, int, bytes]:
    """A server frame of ``n`` payload bytes to be filled with the client's *masked* payload:
    returns (frame, header length, key). The header is stored pre-masked with the client's
    key rotated to the payload's offset, so one in-place mask pass over the filled frame
    unmasks the payload and restores the header: one allocation, one copy."""
    hdr = header(b0, n)
    h = len(hdr)
    shift = h % 4
    rkey = key[-shift:] + key[:-shift] if shift else key
    frame = bytearray(h + n)
    frame[:h] = (int.from_bytes(hdr, "big") ^ int.from_bytes((rkey * 3)[:h], "big")).to_bytes(
        h, "big"
    )
    return frame, h, rkey


def _header_len(b1: int) -> int:
    """Length of a masked client frame's header (with its 4-byte key) from its second byte."""
    n = b1 & 0x7F
    return 6 if n < 126 else 8 if n == 126 else 14


class ClientFrameReader:
    """Incremental parser of the frames one link end sends.

    A frame whose payload is split over several reads is copied straight into the frame
    that will be forwarded (allocated when its header arrives), so no byte is copied twice
    whatever the read boundaries.
    """

    __slots__ = (
        "max_message", "_hdr", "_frame", "_fill", "_key", "_opcode", "_b0",
        "_in_message", "_message_len", "error",
    )

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._hdr = bytearray()  # an incomplete header
        self._frame: bytearray | None = None  # a frame waiting for the rest of its payload
        self._fill = 0
        self._key = b""
        self._opcode = 0
        self._b0 = 0
        self._in_message = False  # inside a fragmented data message
        self._message_len = 0
        self.error: FrameError | None = None

    def feed(self, data: bytes | bytearray | memoryview
             ) -> tuple[list[bytearray], int, list[Control]]:
        """Parse ``data``; returns (server frames to forward, their payload bytes, controls).

        On a violation, what came before it is still returned and :attr:`error` is set;
        the reader then ignores further input.
        """
        out: list[bytearray] = []
        controls: list[Control] = []
        if self.error is not None:
            return out, 0, controls
        mv = memoryview(data)
        raw = data if isinstance(data, bytes) else mv  # indexing bytes is the cheaper
        size = len(mv)
        pos = 0
        nbytes = 0
        try:
            while True:
                frame = self._frame
                if frame is not None:  # the rest of a split frame
                    fill = self._fill
                    take = min(len(frame) - fill, size - pos)
                    frame[fill:fill + take] = mv[pos:pos + take]
                    pos += take
                    if fill + take < len(frame):
                        self._fill = fill + take
                        break
                    self._frame = None
                    nbytes += self._complete(frame, out, controls)
                    continue
                if pos >= size:
                    break
                # the header: from the input, or completed from a stash
                if self._hdr:
                    hdr = self._hdr
                    while pos < size:
                        need = _header_len(hdr[1]) if len(hdr) >= 2 else 2
                        if len(hdr) >= need:
                            break
                        take = min(need - len(hdr), size - pos)
                        hdr += mv[pos:pos + take]
                        pos += take
                    if len(hdr) < 2 or len(hdr) < _header_len(hdr[1]):
                        self._check_partial(hdr)
                        break
                    hbuf: bytes | bytearray | memoryview = hdr
                    self._hdr = bytearray()
                    hpos = 0
                else:
                    if size - pos < 2 or size - pos < _header_len(raw[pos + 1]):
                        self._hdr += mv[pos:]
                        self._check_partial(self._hdr)
                        break
                    need = _header_len(raw[pos + 1])
                    hbuf, hpos = raw, pos
                    pos += need
                b0, b1 = hbuf[hpos], hbuf[hpos + 1]
                self._check_start(b0, b1)
                n = b1 & 0x7F
                h = 2
                if n == 126:
                    n = int.from_bytes(hbuf[hpos + 2:hpos + 4], "big")
                    h = 4
                elif n == 127:
                    n = int.from_bytes(hbuf[hpos + 2:hpos + 10], "big")
                    h = 10
                self._check_length(b0, n)
                key = bytes(hbuf[hpos + h:hpos + h + 4])
                opcode = b0 & 0x0F
                avail = size - pos
                if opcode < 8 and n < 126 and avail >= n:  # the common small frame, inlined
                    rkey = key[2:] + key[:2]
                    small = bytearray(2 + n)
                    small[2:] = raw[pos:pos + n]
                    small[0] = b0 ^ rkey[0]
                    small[1] = n ^ rkey[1]
                    mask_in_place(rkey, small)
                    out.append(small)
                    pos += n
                    nbytes += n
                    self._message_len = n if opcode == OP_BINARY else self._message_len + n
                    self._in_message = not b0 & 0x80
                    continue
                if opcode < 8:
                    frame, start, key = _new_frame(b0, key, n)
                else:
                    frame, start = bytearray(n), 0
                take = min(n, avail)
                frame[start:start + take] = mv[pos:pos + take]
                pos += take
                self._key, self._opcode, self._b0 = key, opcode, b0
                if take < n:
                    self._frame, self._fill = frame, start + take
                    break
                nbytes += self._complete(frame, out, controls)
        except FrameError as exc:
            self.error = exc
            self._frame = None
            self._hdr = bytearray()
        return out, nbytes, controls

    def _complete(self, frame: bytearray, out: list[bytearray], controls: list[Control]) -> int:
        """A whole frame is in ``frame``: unmask it and hand it out; returns payload bytes."""
        mask_in_place(self._key, frame)
        opcode = self._opcode
        if opcode >= 8:
            controls.append(Control(opcode, bytes(frame)))
            return 0
        n = _payload_len(frame)
        out.append(frame)
        self._message_len = n if opcode == OP_BINARY else self._message_len + n
        self._in_message = not self._b0 & 0x80
        return n

    def _check_partial(self, hdr: bytearray) -> None:
        """Check an incomplete header as far as it goes (a too-long frame is refused as soon
        as its length field is in, before its key or payload)."""
        if len(hdr) < 2:
            return
        self._check_start(hdr[0], hdr[1])
        field = _header_len(hdr[1]) - 4
        if len(hdr) >= field:
            n = hdr[1] & 0x7F
            if field > 2:
                n = int.from_bytes(hdr[2:field], "big")
            self._check_length(hdr[0], n)

    def _check_start(self, b0: int, b1: int) -> None:
        """Validate what the first two bytes of a frame say."""
        if not b1 & 0x80:
            raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
        if b0 & 0x70:
            raise FrameError(PROTOCOL_ERROR, "reserved bits set (no extension on links)")
        opcode = b0 & 0x0F
        if opcode >= 8:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise FrameError(PROTOCOL_ERROR, f"unknown control opcode {opcode:#x}")
            if not b0 & 0x80 or b1 & 0x7F > 125:
                raise FrameError(PROTOCOL_ERROR, "control frames are final and <= 125 bytes")
            if opcode == OP_CLOSE and b1 & 0x7F == 1:
                raise FrameError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
            return
        if opcode == OP_TEXT:
            raise FrameError(TEXT_AFTER_LINKED, "text frame after linked")
        if opcode == OP_BINARY:
            if self._in_message:
                raise FrameError(PROTOCOL_ERROR, "new message inside a fragmented one")
        elif opcode == OP_CONTINUATION:
            if not self._in_message:
                raise FrameError(PROTOCOL_ERROR, "continuation frame without a message")
        else:
            raise FrameError(PROTOCOL_ERROR, f"unknown data opcode {opcode:#x}")

    def _check_length(self, b0: int, n: int) -> None:
        """Validate a data frame's length before its payload is buffered."""
        if b0 & 0x0F >= 8:
            return
        if n >> 63:
            raise FrameError(PROTOCOL_ERROR, "frame length has its top bit set")
        total = n if b0 & 0x0F == OP_BINARY else self._message_len + n
        if total > self.max_message:
            raise FrameError(
                MESSAGE_TOO_BIG, f"message larger than link_max_frame ({self.max_message} bytes)"
            )


def _payload_len(frame: bytearray) -> int:
    """Payload length of an (unmasked) server frame."""
    n = frame[1] & 0x7F
    return n if n < 126 else len(frame) - (4 if n == 126 else 10)


__all__ = [
    "ClientFrameReader", "Control", "FrameError", "close_frame", "header", "mask_in_place",
    "mask_py", "server_frame",
]
