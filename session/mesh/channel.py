"""The mesh recipe: a Noise KK handshake between two roster members, then a secure channel.

Sans-IO (specs/mesh.md). Both parties know each other's static X25519 key from the
verified roster, so the pattern is ``Noise_KK_25519_ChaChaPoly_BLAKE2s``; the party with
the lower party id initiates; the prologue (:func:`didmesh_prologue`) binds the roster
hash and both party ids, so two parties with different roster views fail the handshake.

On the wire every Noise message, handshake or transport, is ``uint16 BE length ||
message``. ::

    hs = MeshHandshake.for_parties(local_id=0, remote_id=1, ...)
    send(hs.step())                 # initiator: first message ("" for a responder)
    send(hs.step(received_bytes))   # feed what arrives, send what comes back
    if hs.complete: chan = hs.into_channel()
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any, Final

from .errors import ChannelClosed, HandshakeFailed, MeshError, NoiseUsageError
from .framing import DEFAULT_MAX_MESSAGE_SIZE, LEN_PREFIX, FrameDecoder, FrameEncoder
from .noise import HandshakeState, NoiseProtocol, NoiseTransport
from .primitives import TAG_LEN

#: Domain-separation label at the start of every didmesh mesh prologue.
MESH_PROLOGUE_LABEL: Final = b"didmesh/mesh/v1"
#: The one Noise protocol of the mesh.
MESH_PROTOCOL_NAME: Final = "Noise_KK_25519_ChaChaPoly_BLAKE2s"
MESH_PROTOCOL: Final = NoiseProtocol.from_name(MESH_PROTOCOL_NAME)
#: Both KK messages with empty payloads: ephemeral key (32) + payload tag (16).
KK_MESSAGE_LEN: Final = 32 + TAG_LEN

_MAX_PARTY_ID: Final = 2**32 - 1


def _field(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def didmesh_prologue(roster_hash: bytes, initiator_id: int, responder_id: int) -> bytes:
    """The Noise prologue binding a channel to one roster and one ordered pair of parties.

    ``field(MESH_PROLOGUE_LABEL) || field(roster_hash) || field(u32 initiator_id) ||
    field(u32 responder_id)`` with ``field(x) = uint16 BE len(x) || x``. The initiator
    is the party with the lower id.
    """
    roster_hash = bytes(roster_hash)
    if not 16 <= len(roster_hash) <= 64:
        raise NoiseUsageError(
            f"roster_hash must be a 16..64-byte digest, got {len(roster_hash)} bytes"
        )
    for label, pid in (("initiator_id", initiator_id), ("responder_id", responder_id)):
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid <= _MAX_PARTY_ID:
            raise NoiseUsageError(f"{label} must be an integer in 0..2**32-1, got {pid!r}")
    if initiator_id >= responder_id:
        raise NoiseUsageError(
            f"the party with the lower id initiates: initiator_id {initiator_id} must be "
            f"below responder_id {responder_id}"
        )
    return b"".join(
        (
            _field(MESH_PROLOGUE_LABEL),
            _field(roster_hash),
            _field(struct.pack(">I", initiator_id)),
            _field(struct.pack(">I", responder_id)),
        )
    )


class SecureChannel:
    """An established mesh channel: a :class:`FrameEncoder` and a :class:`FrameDecoder`.

    If either direction fails (a rejected record, a truncated stream, an exhausted
    nonce) the whole channel is aborted and every later call raises
    :class:`ChannelClosed`.
    """

    def __init__(
        self, transport: NoiseTransport, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ) -> None:
        if transport.send is None or transport.recv is None:
            raise NoiseUsageError("a SecureChannel needs a two-way Noise transport")
        self.encoder = FrameEncoder(transport.send, max_message_size=max_message_size)
        self.decoder = FrameDecoder(transport.recv, max_message_size=max_message_size)
        #: Channel binding: equal on both sides, unique to this handshake.
        self.handshake_hash = transport.handshake_hash
        #: A secret bound to this handshake (never sent): keys link resumption (resume.py).
        self.exporter = transport.exporter
        self.remote_static = transport.remote_static
        self.initiator = transport.initiator

    def _aborting(self, exc: MeshError) -> None:
        if not isinstance(exc, ChannelClosed):
            reason = f"was aborted: {exc.message}"
            self.encoder.abort(reason)
            self.decoder.abort(exc.message)

    # sending
    def send(self, message: bytes | bytearray | memoryview) -> bytearray:
        """Encrypt one application message; returns the bytes to write."""
        try:
            return self.encoder.encrypt(message)
        except MeshError as exc:
            if self.encoder.closed:
                self._aborting(exc)
            raise

    def send_many(self, messages: Iterable[bytes | bytearray | memoryview]) -> bytearray:
        """Encrypt several messages, coalesced into as few records as possible."""
        try:
            return self.encoder.encrypt_many(messages)
        except MeshError as exc:
            if self.encoder.closed:
                self._aborting(exc)
            raise

    def send_parts(self, parts: Iterable[bytes | bytearray | memoryview]) -> bytearray:
        """Encrypt ONE message, the concatenation of ``parts`` (not joined first)."""
        try:
            return self.encoder.encrypt_parts(parts)
        except MeshError as exc:
            if self.encoder.closed:
                self._aborting(exc)
            raise

    def close(self) -> bytearray:
        """The close record; write it, then close the byte stream."""
        return self.encoder.close()

    # receiving
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.decoder.receive_data(data)
        except MeshError as exc:
            self._aborting(exc)
            raise

    def receive_eof(self) -> None:
        self.decoder.receive_eof()

    def next_message(self) -> bytes | None:
        try:
            return self.decoder.next_message()
        except MeshError as exc:
            self._aborting(exc)
            raise

    def __iter__(self) -> Iterator[bytes]:
        while (m := self.next_message()) is not None:
            yield m

    @property
    def state(self) -> str:
        """``"open"``, ``"closed"`` (peer closed cleanly) or ``"aborted"``."""
        return self.decoder.state


class MeshHandshake:
    """One side of the mesh's Noise KK handshake, over a byte stream (sans-IO)."""

    def __init__(
        self,
        initiator: bool,
        local_static_private: bytes,
        remote_static_public: bytes,
        prologue: bytes,
        *,
        ephemeral_private: bytes | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._hs: HandshakeState | None = HandshakeState(
            MESH_PROTOCOL,
            initiator=initiator,
            prologue=prologue,
            s=bytes(local_static_private),
            e=ephemeral_private,
            rs=bytes(remote_static_public),
        )
        self.is_initiator = initiator
        self._max = max_message_size
        self._buf = bytearray()
        self._failed: str | None = None
        self._started = False

    @classmethod
    def initiator(cls, *args: Any, **kwargs: Any) -> MeshHandshake:
        """The initiating side (the party with the lower id); ``step()`` gives message 1.

        Takes the constructor's arguments after ``initiator``."""
        return cls(True, *args, **kwargs)

    @classmethod
    def responder(cls, *args: Any, **kwargs: Any) -> MeshHandshake:
        """The responding side (the party with the higher id).

        Takes the constructor's arguments after ``initiator``."""
        return cls(False, *args, **kwargs)

    @classmethod
    def for_parties(
        cls,
        *,
        local_id: int,
        remote_id: int,
        local_static_private: bytes,
        remote_static_public: bytes,
        roster_hash: bytes,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> MeshHandshake:
        """The handshake between two roster members; the lower party id initiates."""
        if local_id == remote_id:
            raise NoiseUsageError(f"a party cannot open a channel to itself (id {local_id})")
        lo, hi = sorted((local_id, remote_id))
        return cls(
            local_id < remote_id,
            local_static_private,
            remote_static_public,
            didmesh_prologue(roster_hash, lo, hi),
            max_message_size=max_message_size,
        )

    @property
    def complete(self) -> bool:
        return self._hs is not None and self._hs.complete

    def _live(self) -> HandshakeState:
        if self._failed is not None:
            raise ChannelClosed(f"this handshake failed earlier ({self._failed}); start anew")
        if self._hs is None:
            raise ChannelClosed("this handshake was already turned into a channel")
        return self._hs

    def step(self, data: bytes | bytearray | memoryview = b"") -> bytes:
        """Feed bytes from the peer (may be empty or any fragment); return bytes to send."""
        hs = self._live()
        try:
            return self._step(hs, data)
        except MeshError as exc:
            self._failed = exc.message
            raise

    def _step(self, hs: HandshakeState, data: bytes | bytearray | memoryview) -> bytes:
        out = bytearray()
        if self.is_initiator and not self._started:
            self._started = True
            out += self._write(hs)
        self._buf += data
        while not hs.complete and not hs.is_my_turn:
            if len(self._buf) < LEN_PREFIX:
                break
            n = (self._buf[0] << 8) | self._buf[1]
            if n != KK_MESSAGE_LEN:
                raise HandshakeFailed(
                    f"the peer's handshake message has {n} bytes, expected {KK_MESSAGE_LEN} "
                    "(not a didmesh mesh peer, or another protocol version)",
                    reason="malformed",
                )
            if len(self._buf) < LEN_PREFIX + n:
                break
            msg = bytes(self._buf[LEN_PREFIX : LEN_PREFIX + n])
            del self._buf[: LEN_PREFIX + n]
            payload = hs.read_message(msg)
            if payload:
                raise HandshakeFailed(
                    "the peer's handshake payload is not empty", reason="malformed"
                )
            if not hs.complete and hs.is_my_turn:
                out += self._write(hs)
        return bytes(out)

    @staticmethod
    def _write(hs: HandshakeState) -> bytes:
        msg = hs.write_message(b"")
        return struct.pack(">H", len(msg)) + msg

    def into_channel(self) -> SecureChannel:
        """Consume the completed handshake into a :class:`SecureChannel`.

        Bytes that arrived after the last handshake message are passed to the channel.
        """
        hs = self._live()
        if not hs.complete:
            raise NoiseUsageError("the mesh handshake is not complete yet")
        self._hs = None
        channel = SecureChannel(hs.split(), max_message_size=self._max)
        if self._buf:
            channel.receive_data(bytes(self._buf))
            self._buf.clear()
        return channel
