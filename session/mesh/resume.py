"""Resuming a relayed link's byte stream after the relay lost it (sans-IO; specs/mesh.md,
"Link resumption").

A relayed link carries one ordered byte stream each way (the hello, the Noise handshake,
then Noise records). :class:`ResumeStream` is this side's bookkeeping of that stream,
with no I/O:

* every byte written gets a *stream offset*; :meth:`~ResumeStream.next_batch` hands the
  writer what to send next and keeps what it handed out in a *resend buffer* until the
  peer acknowledges it (:meth:`~ResumeStream.on_ack`). The peer's acknowledgements travel
  as ACK messages inside the Noise channel (:mod:`.peer`), so the relay cannot forge them.
  The resend buffer is bounded (``max_unacked``): beyond it the oldest bytes are dropped,
  and a resumption that would need them fails (:class:`ResumeFailed`) instead of growing
  memory without end;
* when the relay loses the link, both ends open a new one and each sends one
  :data:`RESUME_LEN`-byte RESUME message before anything else::

      b"DMSR" || version 1 || u64 seq || u64 received || tag[16]

  ``received`` is how many stream bytes this side received so far; ``seq`` counts this
  side's RESUME messages (1, 2, ...); ``tag = BLAKE2s-128(key = K_dir, data = the 21 bytes
  before it)`` with ``K_dir = BLAKE2s(key = exporter, data = RESUME_KEY_LABEL || role)``,
  ``exporter`` being the Noise channel's exported secret (:attr:`SecureChannel.exporter
  <.channel.SecureChannel.exporter>`, from the handshake's chaining key — the relay does not
  know it). A RESUME is accepted only if its tag verifies (same peer, same channel: no other
  party and no other channel has the key; the role keeps our own message from being
  reflected back), its ``seq`` is above the last one accepted (no replay) and ``received``
  lies between what the peer acknowledged already and what we sent (no forged or stale
  state). The writer then resends every byte from the peer's ``received`` on — the very
  ciphertext sent before, so Noise nonces simply continue and no nonce is ever used for a
  second plaintext — and the Noise records themselves catch any byte the relay adds, drops,
  replays or reorders after that.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import deque
from typing import Final

from didmesh.identity.errors import RemoteError

from .errors import MeshError

RESUME_MAGIC: Final = b"DMSR"
RESUME_VERSION: Final = 1
TAG_LEN: Final = 16
_BODY = struct.Struct(">4sBQQ")
RESUME_LEN: Final = _BODY.size + TAG_LEN  # 37
RESUME_KEY_LABEL: Final = b"didmesh/mesh/resume/v1/"
LINK_ID_LABEL: Final = b"didmesh/mesh/resume/v1/link-id"
#: default bound of the resend buffer (bytes sent but not yet acknowledged by the peer)
DEFAULT_MAX_UNACKED: Final = 16 * 1024 * 1024
#: the receiver acknowledges after this many new stream bytes
DEFAULT_ACK_EVERY: Final = 128 * 1024
_U64_MAX: Final = 2**64 - 1


class ResumeFailed(MeshError, RemoteError):
    """A relayed link could not be resumed: its RESUME message or acknowledgement did not
    authenticate or is inconsistent, or bytes it needs are gone from the bounded resend
    buffer."""

    code = "resume_failed"


def _key(exporter: bytes, role: bytes) -> bytes:
    return hashlib.blake2s(RESUME_KEY_LABEL + role, key=exporter).digest()


def resume_link_id(exporter: bytes) -> str:
    """The relay ``link_id`` under which both ends of a channel re-pair: the same at both
    ends, unguessable for anybody without the channel's secret, distinct per channel."""
    return "r" + hashlib.blake2s(LINK_ID_LABEL, key=exporter, digest_size=8).hexdigest()


class ResumeStream:
    """One side of a relayed byte stream: offsets, the bounded resend buffer, acknowledgements
    and the RESUME messages (see the module docstring)."""

    def __init__(self, *, max_unacked: int = DEFAULT_MAX_UNACKED,
                 ack_every: int = DEFAULT_ACK_EVERY) -> None:
        if max_unacked < 1 or ack_every < 1:
            raise ValueError("max_unacked and ack_every must be positive")
        self.max_unacked = max_unacked
        self.ack_every = ack_every
        self._unsent: deque[bytes] = deque()
        self._unacked: deque[bytes] = deque()
        self.unsent_bytes = 0
        self.unacked_bytes = 0
        #: stream offset of the first byte still in the resend buffer
        self.base = 0
        #: bytes handed to a link so far (== base + unacked_bytes)
        self.wire = 0
        #: bytes received from the peer so far
        self.received = 0
        #: the highest offset the peer acknowledged
        self.peer_acked = 0
        self._ack_sent = 0
        self._send_key: bytes | None = None
        self._recv_key: bytes | None = None
        self._seq = 0
        self._peer_seq = 0
        self.resumes = 0

    # -- keys ------------------------------------------------------------------------

    def arm(self, exporter: bytes, initiator: bool) -> None:
        """Enable resumption with the channel's exported secret (after its handshake)."""
        if len(exporter) < 16:
            raise ValueError("the exporter secret is too short")
        mine, theirs = (b"initiator", b"responder") if initiator else (b"responder", b"initiator")
        self._send_key, self._recv_key = _key(exporter, mine), _key(exporter, theirs)

    @property
    def armed(self) -> bool:
        return self._send_key is not None

    # -- sending ---------------------------------------------------------------------

    @property
    def written(self) -> int:
        """Bytes written so far (sent or not)."""
        return self.wire + self.unsent_bytes

    def write(self, data: bytes) -> None:
        if data:
            self._unsent.append(data)
            self.unsent_bytes += len(data)

    def next_batch(self, limit: int) -> bytes | None:
        """What to send next, or ``None``: the oldest write whole, joined with the next ones
        while the batch is under ``limit`` bytes (the caller splits it into frames). What it
        returns stays in the resend buffer until acknowledged (or dropped by the bound)."""
        q = self._unsent
        if not q:
            return None
        parts = [q.popleft()]
        size = len(parts[0])
        while q and size < limit:
            item = q.popleft()
            parts.append(item)
            size += len(item)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.unsent_bytes -= size
        self.wire += size
        self._unacked.append(data)
        self.unacked_bytes += size
        self._bound()
        return data

    def requeue_last(self) -> None:
        """Undo the last :meth:`next_batch` (nothing of it was handed to a link)."""
        if not self._unacked:
            raise ValueError("no batch to requeue")
        data = self._unacked.pop()
        self.unacked_bytes -= len(data)
        self.wire -= len(data)
        self._unsent.appendleft(data)
        self.unsent_bytes += len(data)

    def _bound(self) -> None:
        """Drop the oldest sent bytes beyond ``max_unacked`` (a later resumption that needs
        them fails with a message saying so)."""
        while self.unacked_bytes > self.max_unacked and self._unacked:
            old = self._unacked.popleft()
            self.unacked_bytes -= len(old)
            self.base += len(old)

    def on_ack(self, offset: int) -> None:
        """The peer says (inside the Noise channel) it received ``offset`` stream bytes."""
        if not self.peer_acked <= offset <= self.wire:
            raise ResumeFailed(
                f"the peer acknowledged {offset} bytes of this link's stream, but "
                f"{self.peer_acked} were acknowledged already and {self.wire} sent"
            )
        self.peer_acked = offset
        self._trim(offset)

    def _trim(self, offset: int) -> None:
        q = self._unacked
        while q and self.base + len(q[0]) <= offset:
            old = q.popleft()
            self.unacked_bytes -= len(old)
            self.base += len(old)
        if q and self.base < offset:
            cut = offset - self.base
            q[0] = q[0][cut:]
            self.unacked_bytes -= cut
            self.base = offset

    # -- receiving -------------------------------------------------------------------

    def on_received(self, n: int) -> None:
        self.received += n

    def ack_due(self) -> int | None:
        """The offset to acknowledge now (``ack_every`` new bytes since the last), or None."""
        if self.armed and self.received - self._ack_sent >= self.ack_every:
            self._ack_sent = self.received
            return self.received
        return None

    # -- resumption ------------------------------------------------------------------

    def resume_message(self) -> bytes:
        """This side's next RESUME message (each call uses the next ``seq``)."""
        if self._send_key is None:
            raise ResumeFailed("this link cannot be resumed before its channel is established")
        self._seq += 1
        body = _BODY.pack(RESUME_MAGIC, RESUME_VERSION, self._seq, self.received)
        return body + hashlib.blake2s(body, key=self._send_key, digest_size=TAG_LEN).digest()

    def on_resume_message(self, msg: bytes) -> int:
        """Check the peer's RESUME and rewind the writer to what it received; returns the
        number of bytes that will be sent again. Raises :class:`ResumeFailed`."""
        if self._recv_key is None:
            raise ResumeFailed("this link cannot be resumed before its channel is established")
        if len(msg) != RESUME_LEN or msg[:4] != RESUME_MAGIC:
            raise ResumeFailed(
                f"the first message on the resumed link is not a RESUME ({len(msg)} bytes)")
        body, tag = msg[: _BODY.size], msg[_BODY.size :]
        want = hashlib.blake2s(body, key=self._recv_key, digest_size=TAG_LEN).digest()
        if not hmac.compare_digest(tag, want):
            raise ResumeFailed(
                "the RESUME message did not authenticate: not from this channel's peer "
                "(another party or link, or altered by the relay)")
        _, version, seq, received = _BODY.unpack(body)
        if version != RESUME_VERSION:
            raise ResumeFailed(f"the peer's RESUME has version {version}, not {RESUME_VERSION}")
        if seq <= self._peer_seq:
            raise ResumeFailed(
                f"the peer's RESUME number {seq} was used already (last {self._peer_seq}): "
                "a replayed message")
        if not self.peer_acked <= received <= self.wire:
            raise ResumeFailed(
                f"the peer's RESUME says it received {received} bytes, but it acknowledged "
                f"{self.peer_acked} already and {self.wire} were sent")
        if received < self.base:
            raise ResumeFailed(
                f"{self.base - received} byte(s) the peer did not receive are gone from the "
                f"resend buffer (bounded at {self.max_unacked} bytes unacknowledged)")
        self._peer_seq = seq
        # rewind: what was sent from `received` on goes back to the front of the queue
        again: list[bytes] = []
        pos = self.wire
        while self._unacked and pos > received:
            item = self._unacked.pop()
            start = pos - len(item)
            if start < received:
                keep, item = item[: received - start], item[received - start :]
                self._unacked.append(keep)
                start = received
            again.append(item)
            self.unacked_bytes -= len(item)
            pos = start
        resend = self.wire - received
        for item in again:  # popped newest first: appendleft restores the order
            self._unsent.appendleft(item)
        self.unsent_bytes += resend
        self.wire = received
        self.peer_acked = received
        self._trim(received)
        self.resumes += 1
        return resend
