"""Records and application messages over a Noise transport (specs/mesh.md, "Framing").

Sans-IO: :class:`FrameEncoder` turns application messages into bytes for the wire,
:class:`FrameDecoder` takes bytes from the wire in arbitrary fragments and yields
application messages.

Wire: a sequence of *records*, each ``uint16 BE length || Noise ciphertext`` (at most
65535 bytes, so at most 65519 plaintext bytes). A record's plaintext is one or more
*items*, each ``uint32 BE header || data``::

    bit 31      MORE  this item is a fragment; the message continues in the next item
                      (the next record's first item; a MORE item ends its record)
    bit 30      END   the sender closed the channel (alone in the last record, length 0)
    bits 16-29  reserved, zero
    bits 0-15   length of data

A message is the data of consecutive items up to one without MORE. Several small
messages share one record (:meth:`FrameEncoder.encrypt_many` packs records full); a
large one spans records. Nonces are implicit and strictly sequential, so a replayed,
reordered, dropped or altered record fails authentication: the decoder then aborts
(:class:`RecordRejected`) and every later call raises :class:`ChannelClosed`. A stream
that ends without the sender's END item was truncated (:class:`FrameTruncated`).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Final

from .errors import (
    ChannelClosed,
    DecryptFailed,
    FrameMalformed,
    FrameTooLarge,
    FrameTruncated,
    MeshError,
    MessageTooLarge,
    RecordRejected,
)
from .noise import CipherState
from .primitives import MAX_MESSAGE_LEN, TAG_LEN

#: Bytes of the record length prefix.
LEN_PREFIX: Final = 2
#: Largest record plaintext (one Noise message of 65535 bytes minus the tag).
MAX_RECORD_PLAINTEXT: Final = MAX_MESSAGE_LEN - TAG_LEN
#: Bytes of an item header.
ITEM_HEADER: Final = 4
#: Most data bytes one item can carry.
MAX_ITEM_DATA: Final = MAX_RECORD_PLAINTEXT - ITEM_HEADER
#: Default cap on one application message (both directions).
DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024

FLAG_MORE: Final = 0x8000_0000
FLAG_END: Final = 0x4000_0000
_RESERVED: Final = 0x3FFF_0000
_LEN_MASK: Final = 0x0000_FFFF

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_pack_u16_into = _U16.pack_into
_pack_u32 = _U32.pack
_unpack_u32_from = _U32.unpack_from
_END_ITEM: Final = _pack_u32(FLAG_END)


def _check_max(max_message_size: int) -> int:
    if not 0 <= max_message_size <= 2**62:
        raise ValueError(f"max_message_size out of range: {max_message_size}")
    return max_message_size


class FrameEncoder:
    """Encrypts application messages into records for the wire."""

    def __init__(
        self, cipher: CipherState, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ) -> None:
        if not cipher.has_key():
            raise ValueError("FrameEncoder needs a keyed transport CipherState")
        self._cipher = cipher
        self.max_message_size = _check_max(max_message_size)
        self._closed: str | None = None

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def abort(self, reason: str) -> None:
        """Refuse every later call (used when the channel's other direction failed)."""
        if self._closed is None:
            self._closed = reason

    def _check_open(self) -> None:
        if self._closed is not None:
            raise ChannelClosed(f"cannot send: the secure channel {self._closed}")

    def encrypt(self, message: bytes | bytearray | memoryview) -> bytearray:
        """One application message -> wire bytes (one or more records)."""
        n = len(message)
        if n > MAX_ITEM_DATA or n > self.max_message_size or type(message) is memoryview:
            return self.encrypt_many((message,))
        # Fast path: one record holding one item.
        self._check_open()
        out = bytearray(LEN_PREFIX + ITEM_HEADER + n + TAG_LEN)
        _pack_u16_into(out, 0, ITEM_HEADER + n + TAG_LEN)
        try:
            with memoryview(out) as ov:
                self._cipher.encrypt_into(_pack_u32(n) + message, ov[LEN_PREFIX:])
        except MeshError as exc:
            self._closed = f"was aborted: {exc.message}"
            raise
        return out

    def encrypt_many(self, messages: Iterable[bytes | bytearray | memoryview]) -> bytearray:
        """Several application messages -> wire bytes, packed into as few records as possible.

        Either every message is encrypted or, if one is over the limit
        (:class:`MessageTooLarge`), none is. The result is a new buffer owned by the caller.
        """
        self._check_open()
        return self._plan([[memoryview(m).cast("B")] for m in messages])

    def encrypt_parts(self, parts: Iterable[bytes | bytearray | memoryview]) -> bytearray:
        """ONE application message, the concatenation of ``parts`` -> wire bytes.

        The parts are not joined first: each record's plaintext is gathered from them
        once. A message that fits one record (the usual case: the small writes of one
        event-loop turn) takes a short path.
        """
        self._check_open()
        items = list(parts)
        if any(type(p) is memoryview for p in items):  # len() of a view counts items
            items = [memoryview(p).cast("B") for p in items]
        n = sum(map(len, items))
        if n > MAX_ITEM_DATA or n > self.max_message_size:
            return self._plan([[memoryview(p).cast("B") for p in items]])
        out = bytearray(LEN_PREFIX + ITEM_HEADER + n + TAG_LEN)
        _pack_u16_into(out, 0, ITEM_HEADER + n + TAG_LEN)
        try:
            with memoryview(out) as ov:
                self._cipher.encrypt_into(b"".join([_pack_u32(n), *items]), ov[LEN_PREFIX:])
        except MeshError as exc:
            self._closed = f"was aborted: {exc.message}"
            raise
        return out

    def _plan(self, messages: list[list[memoryview]]) -> bytearray:
        """Records for ``messages`` (each a list of parts), greedily filled, then sealed."""
        limit = self.max_message_size
        for i, parts in enumerate(messages):
            size = sum(v.nbytes for v in parts)
            if size > limit:
                raise MessageTooLarge(
                    f"message {i} is {size} bytes; this channel sends at most {limit} "
                    "(raise max_message_size on both sides, or split the message)"
                )
        # Plan: records as lists of pieces (headers and data views), greedily filled.
        records: list[list[bytes | memoryview]] = []
        sizes: list[int] = []
        cur: list[bytes | memoryview] = []
        used = 0
        for parts in messages:
            remaining = sum(v.nbytes for v in parts)
            pi = 0  # the part being consumed, and how much of it is consumed
            off = 0
            while True:
                space = MAX_RECORD_PLAINTEXT - used - ITEM_HEADER
                if space < 0 or (space == 0 and remaining > 0):
                    records.append(cur)
                    sizes.append(used)
                    cur, used = [], 0
                    continue
                take = remaining if remaining <= space else space
                more = take < remaining
                cur.append(_pack_u32((FLAG_MORE | take) if more else take))
                used += ITEM_HEADER + take
                remaining -= take
                while take:  # the data of this item, from as many parts as it spans
                    v = parts[pi]
                    n = v.nbytes - off
                    if n <= take:
                        cur.append(v[off:] if off else v)
                        take -= n
                        pi += 1
                        off = 0
                    else:
                        cur.append(v[off : off + take])
                        off += take
                        take = 0
                if not more:
                    break
                records.append(cur)
                sizes.append(used)
                cur, used = [], 0
        if cur:
            records.append(cur)
            sizes.append(used)
        return self._seal(records, sizes)

    def close(self) -> bytearray:
        """The final record (an END item). Send it, then close the byte stream."""
        self._check_open()
        out = self._seal([[_END_ITEM]], [ITEM_HEADER])
        self._closed = "was closed by this side"
        return out

    def _seal(self, records: list[list[bytes | memoryview]], sizes: list[int]) -> bytearray:
        total = sum(sizes) + len(sizes) * (LEN_PREFIX + TAG_LEN)
        out = bytearray(total)
        encrypt_into = self._cipher.encrypt_into
        pos = 0
        try:
            with memoryview(out) as ov:
                for parts, size in zip(records, sizes, strict=True):
                    ct_len = size + TAG_LEN
                    _pack_u16_into(out, pos, ct_len)
                    pos += LEN_PREFIX
                    plaintext = parts[0] if len(parts) == 1 else b"".join(parts)
                    encrypt_into(plaintext, ov[pos : pos + ct_len])
                    pos += ct_len
        except MeshError as exc:  # NonceExhausted: nothing more can be sent
            self._closed = f"was aborted: {exc.message}"
            raise
        return out


class FrameDecoder:
    """Takes wire bytes in any fragments; yields complete application messages.

    ``receive_data(data)`` buffers; ``next_message()`` returns the next message or
    ``None`` if more bytes are needed (or the peer closed cleanly: see :attr:`state`).
    Call ``receive_eof()`` when the byte stream ends.
    """

    def __init__(
        self, cipher: CipherState, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ) -> None:
        if not cipher.has_key():
            raise ValueError("FrameDecoder needs a keyed transport CipherState")
        self._cipher = cipher
        self.max_message_size = _check_max(max_message_size)
        # Received bytes from _pos on; a bytes object adopted from receive_data, or a
        # bytearray once bytes had to be appended to a pending tail.
        self._buf: bytes | bytearray = bytearray()
        self._pos = 0
        self._ready: deque[bytes] = deque()
        # Fragments of the message being reassembled: (record plaintext, start, end).
        self._partial: list[tuple[bytearray, int, int]] | None = None
        self._partial_len = 0
        self._eof = False
        self._peer_closed = False
        self._aborted: str | None = None
        self.records_received = 0

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> str:
        """``"open"``, ``"closed"`` (the peer's END item arrived) or ``"aborted"``."""
        if self._aborted is not None:
            return "aborted"
        return "closed" if self._peer_closed else "open"

    def abort(self, reason: str) -> None:
        if self._aborted is None:
            self._aborted = reason
        self._buf = bytearray()
        self._pos = 0
        self._ready.clear()
        self._partial = None

    def _check_usable(self) -> None:
        if self._aborted is not None:
            raise ChannelClosed(f"the secure channel was aborted: {self._aborted}")

    def _fail(self, exc: MeshError) -> MeshError:
        self.abort(exc.message)
        return exc

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the wire (any fragment size, including empty)."""
        self._check_usable()
        if self._eof:
            raise ChannelClosed("receive_data() after receive_eof()")
        if self._peer_closed and data:
            raise self._fail(
                FrameMalformed("the peer sent data after its close record; channel aborted")
            )
        buf = self._buf
        if self._pos == len(buf):
            # Nothing pending (the usual case): parse the caller's bytes in place. bytes
            # are immutable, so keeping a reference is safe; only a tail is copied later.
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
            return
        if type(buf) is not bytearray:  # the tail of an adopted bytes object
            self._buf = buf = bytearray(memoryview(buf)[self._pos :])
            self._pos = 0
        elif self._pos:
            self._compact()
        buf += data

    def receive_eof(self) -> None:
        """The byte stream ended. Pending messages can still be read."""
        self._check_usable()
        self._eof = True

    # ------------------------------------------------------------------ output

    def next_message(self) -> bytes | None:
        """The next complete application message, or ``None`` if there is none yet.

        Raises a :class:`FrameError` (and aborts) on a rejected, malformed, oversized or
        truncated stream; after an abort every call raises :class:`ChannelClosed`.
        """
        self._check_usable()
        ready = self._ready
        while not ready:
            if not self._next_record():
                self._compact()
                if self._eof and not self._peer_closed:
                    self._at_eof()
                return None
        return ready.popleft()

    def __iter__(self) -> Iterator[bytes]:
        """All messages that can be completed from the bytes received so far."""
        while (m := self.next_message()) is not None:
            yield m

    def _compact(self) -> None:
        if self._pos:
            buf = self._buf
            if type(buf) is bytearray:
                del buf[: self._pos]
                self._pos = 0
            elif self._pos == len(buf):
                self._buf = b""
                self._pos = 0

    def _at_eof(self) -> None:
        pending = len(self._buf) - self._pos
        if pending:
            raise self._fail(
                FrameTruncated(
                    f"channel closed mid-frame: the stream ended inside a record "
                    f"({pending} byte(s) of it received)"
                )
            )
        if self._partial is not None:
            raise self._fail(
                FrameTruncated(
                    f"channel closed mid-frame: the stream ended inside a message "
                    f"({self._partial_len} byte(s) of it received)"
                )
            )
        raise self._fail(
            FrameTruncated(
                "channel closed mid-frame: the stream ended without the peer's close "
                "record (connection lost or stream truncated)"
            )
        )

    def _next_record(self) -> bool:
        """Decrypt and parse one record if a whole one is buffered."""
        if self._peer_closed:
            return False
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < LEN_PREFIX:
            return False
        ct_len = (buf[pos] << 8) | buf[pos + 1]
        if ct_len < TAG_LEN + ITEM_HEADER:
            raise self._fail(
                FrameMalformed(
                    f"record of {ct_len} bytes is shorter than a tag and an item header; "
                    "channel aborted"
                )
            )
        end = pos + LEN_PREFIX + ct_len
        if len(buf) < end:
            return False
        plaintext = bytearray(ct_len - TAG_LEN)
        try:
            with memoryview(buf) as bv:
                self._cipher.decrypt_into(bv[pos + LEN_PREFIX : end], plaintext)
        except DecryptFailed as exc:
            raise self._fail(
                RecordRejected(
                    f"record {self.records_received} did not authenticate: it was altered, "
                    "replayed, reordered, or one before it was dropped; channel aborted"
                )
            ) from exc
        except MeshError as exc:  # NonceExhausted
            raise self._fail(exc) from None
        self._pos = end
        self.records_received += 1
        self._parse_items(plaintext)
        return True

    def _parse_items(self, pt: bytearray) -> None:
        size = len(pt)
        off = 0
        ready = self._ready
        limit = self.max_message_size
        if self._partial is None and size <= limit + ITEM_HEADER:
            # Fast path: the record is exactly one complete message.
            (header,) = _unpack_u32_from(pt, 0)
            if header + ITEM_HEADER == size:  # no flag bits set, length fills the record
                del pt[:ITEM_HEADER]
                ready.append(bytes(pt))
                return
        with memoryview(pt) as pv:
            while off < size:
                if size - off < ITEM_HEADER:
                    raise self._fail(FrameMalformed("record ends inside an item header"))
                (header,) = _unpack_u32_from(pt, off)
                n = header & _LEN_MASK
                start = off + ITEM_HEADER
                off = start + n
                if header & _RESERVED or off > size:
                    raise self._fail(
                        FrameMalformed("item header has reserved bits set or overruns its record")
                    )
                if header & FLAG_END:
                    if header != FLAG_END or off != size or self._partial is not None:
                        raise self._fail(FrameMalformed("malformed close record"))
                    self._peer_closed = True
                    if len(self._buf) > self._pos:
                        raise self._fail(
                            FrameMalformed("the peer sent data after its close record")
                        )
                    return
                partial = self._partial
                if header & FLAG_MORE:
                    if n == 0 or off != size:
                        raise self._fail(
                            FrameMalformed("a continued item must be non-empty and end its record")
                        )
                    if partial is None:
                        partial = self._partial = []
                        self._partial_len = 0
                    self._partial_len += n
                    if self._partial_len > limit:
                        raise self._fail(self._too_large(self._partial_len))
                    partial.append((pt, start, off))
                elif partial is None:
                    if n > limit:
                        raise self._fail(self._too_large(n))
                    ready.append(bytes(pv[start:off]))
                else:
                    self._partial_len += n
                    if self._partial_len > limit:
                        raise self._fail(self._too_large(self._partial_len))
                    partial.append((pt, start, off))
                    ready.append(b"".join([memoryview(b)[i:j] for b, i, j in partial]))
                    self._partial = None

    def _too_large(self, size: int) -> FrameTooLarge:
        return FrameTooLarge(
            f"the peer's message exceeds this channel's limit of {self.max_message_size} "
            f"bytes (at least {size} received); channel aborted"
        )
