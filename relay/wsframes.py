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


def _reframe(buf: bytes | bytearray | memoryview, b0: int, key: bytes, start: int, n: int
             ) -> bytearray:
    """``buf[start:start+n]`` unmasked with ``key``, behind an unmasked header with first byte
    ``b0``: one allocation and one copy. The header is pre-masked with a key rotated to the
    payload's offset, so one in-place mask pass over the whole frame unmasks the payload and
    restores the header."""
    hdr = header(b0, n)
    h = len(hdr)
    shift = h % 4
    rkey = key[-shift:] + key[:-shift] if shift else key
    out = bytearray(h + n)
    out[h:] = memoryview(buf)[start:start + n]  # one copy (a slice of bytes would be two)
    out[:h] = (int.from_bytes(hdr, "big") ^ int.from_bytes((rkey * 3)[:h], "big")).to_bytes(
        h, "big"
    )
    mask_in_place(rkey, out)
    return out


class ClientFrameReader:
    """Incremental parser of the frames one link end sends."""

    __slots__ = ("max_message", "_tail", "_in_message", "_message_len", "error")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._tail = bytearray()
        self._in_message = False  # inside a fragmented data message
        self._message_len = 0
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> tuple[list[bytearray], int, list[Control]]:
        """Parse ``data``; returns (server frames to forward, their payload bytes, controls).

        On a violation, what came before it is still returned and :attr:`error` is set;
        the reader then ignores further input.
        """
        if self.error is not None:
            return [], 0, []
        if self._tail:
            self._tail += data
            buf: bytes | bytearray = self._tail
        else:
            buf = data
        out: list[bytearray] = []
        controls: list[Control] = []
        size = len(buf)
        pos = 0
        payload_bytes = 0
        try:
            while size - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1]
                n = b1 & 0x7F
                h = 2
                if n == 126:
                    if size - pos < 4:
                        break
                    n = int.from_bytes(buf[pos + 2:pos + 4], "big")
                    h = 4
                elif n == 127:
                    if size - pos < 10:
                        break
                    n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                    h = 10
                self._check(b0, b1, n)
                if size - pos < h + 4 + n:
                    break
                key = bytes(buf[pos + h:pos + h + 4])
                start = pos + h + 4
                opcode = b0 & 0x0F
                if opcode < 8:
                    if n < 126:  # the common small frame, inlined: 2-byte header, key rotated by 2
                        rkey = key[2:] + key[:2]
                        frame = bytearray(2 + n)
                        frame[2:] = buf[start:start + n]
                        frame[0] = b0 ^ rkey[0]
                        frame[1] = n ^ rkey[1]
                        mask_in_place(rkey, frame)
                        out.append(frame)
                    else:
                        out.append(_reframe(buf, b0, key, start, n))
                    payload_bytes += n
                    self._message_len = n if opcode == OP_BINARY else self._message_len + n
                    self._in_message = not b0 & 0x80
                else:
                    payload = bytearray(buf[start:start + n])
                    mask_in_place(key, payload)
                    controls.append(Control(opcode, bytes(payload)))
                pos = start + n
        except FrameError as exc:
            self.error = exc
            self._tail = bytearray()
            return out, payload_bytes, controls
        if buf is self._tail:
            del self._tail[:pos]
        elif pos < size:
            self._tail = bytearray(buf[pos:])
        return out, payload_bytes, controls

    def _check(self, b0: int, b1: int, n: int) -> None:
        """Validate a frame header before its payload is buffered (no state change: a
        header is checked again when more of its frame arrives)."""
        if not b1 & 0x80:
            raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
        if b0 & 0x70:
            raise FrameError(PROTOCOL_ERROR, "reserved bits set (no extension on links)")
        opcode = b0 & 0x0F
        if opcode >= 8:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise FrameError(PROTOCOL_ERROR, f"unknown control opcode {opcode:#x}")
            if not b0 & 0x80 or n > 125:
                raise FrameError(PROTOCOL_ERROR, "control frames are final and <= 125 bytes")
            if opcode == OP_CLOSE and n == 1:
                raise FrameError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
            return
        if opcode == OP_TEXT:
            raise FrameError(TEXT_AFTER_LINKED, "text frame after linked")
        if opcode == OP_BINARY:
            if self._in_message:
                raise FrameError(PROTOCOL_ERROR, "new message inside a fragmented one")
            total = n
        elif opcode == OP_CONTINUATION:
            if not self._in_message:
                raise FrameError(PROTOCOL_ERROR, "continuation frame without a message")
            total = self._message_len + n
        else:
            raise FrameError(PROTOCOL_ERROR, f"unknown data opcode {opcode:#x}")
        if n >> 63:
            raise FrameError(PROTOCOL_ERROR, "frame length has its top bit set")
        if total > self.max_message:
            raise FrameError(
                MESSAGE_TOO_BIG, f"message larger than link_max_frame ({self.max_message} bytes)"
            )


__all__ = [
    "ClientFrameReader", "Control", "FrameError", "close_frame", "header", "mask_in_place",
    "mask_py", "server_frame",
]
