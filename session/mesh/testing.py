"""In-memory fakes for tests of the mesh and of layers above it (no sockets).

:func:`channel_pair` runs the real KK handshake between two in-memory peers and
:func:`deliver` passes bytes from one to the other in random fragments, like a TCP
stream would (h11's connection-pair helper, STYLE.md point 11). Randomness is injected
(``random.Random``), so a failing seed replays exactly. Never use for real keys.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .channel import MeshHandshake, SecureChannel
from .framing import DEFAULT_MAX_MESSAGE_SIZE
from .primitives import DH25519


@dataclass(frozen=True)
class PartyKeys:
    """A test party's static X25519 key pair."""

    private: bytes
    public: bytes

    @classmethod
    def from_rng(cls, rng: random.Random) -> PartyKeys:
        kp = DH25519().keypair(rng.randbytes(32))
        return cls(kp.private, kp.public)


def fragments(
    data: bytes | bytearray, rng: random.Random, max_fragment: int = 4096
) -> Iterator[bytes]:
    """``data`` cut at random points into pieces of 1..max_fragment bytes."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        n = rng.randint(1, max_fragment)
        yield bytes(view[pos : pos + n])
        pos += n


def handshake(
    a: MeshHandshake, b: MeshHandshake, rng: random.Random, max_fragment: int = 7
) -> tuple[SecureChannel, SecureChannel]:
    """Run ``a`` (initiator) against ``b`` in memory, delivering bytes in small fragments."""
    to_b = a.step()
    for _ in range(8):  # KK needs two messages; a few rounds bound a broken peer
        to_a = b"".join(b.step(f) for f in fragments(to_b, rng, max_fragment))
        to_b = b"".join(a.step(f) for f in fragments(to_a, rng, max_fragment))
        if a.complete and b.complete:
            return a.into_channel(), b.into_channel()
    raise AssertionError("the in-memory handshake did not complete")


def channel_pair(
    rng: random.Random,
    *,
    roster_hash: bytes = b"\x42" * 32,
    ids: tuple[int, int] = (0, 1),
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> tuple[SecureChannel, SecureChannel]:
    """Two connected channels (party ``ids[0]``'s first) after a real KK handshake."""
    ka, kb = PartyKeys.from_rng(rng), PartyKeys.from_rng(rng)
    a = MeshHandshake.for_parties(
        local_id=ids[0],
        remote_id=ids[1],
        local_static_private=ka.private,
        remote_static_public=kb.public,
        roster_hash=roster_hash,
        max_message_size=max_message_size,
    )
    b = MeshHandshake.for_parties(
        local_id=ids[1],
        remote_id=ids[0],
        local_static_private=kb.private,
        remote_static_public=ka.public,
        roster_hash=roster_hash,
        max_message_size=max_message_size,
    )
    if a.is_initiator:
        return handshake(a, b, rng)
    cb, ca = handshake(b, a, rng)
    return ca, cb


def deliver(
    data: bytes | bytearray,
    receiver: SecureChannel,
    rng: random.Random,
    max_fragment: int = 4096,
) -> list[bytes]:
    """Feed ``data`` to ``receiver`` in random fragments; return every message completed."""
    out: list[bytes] = []
    for piece in fragments(data, rng, max_fragment):
        receiver.receive_data(piece)
        out.extend(receiver)
    return out


def transfer(
    sender: SecureChannel,
    receiver: SecureChannel,
    messages: Sequence[bytes],
    rng: random.Random,
    max_fragment: int = 4096,
) -> list[bytes]:
    """``sender.send_many(messages)`` delivered in fragments; the messages received."""
    return deliver(sender.send_many(messages), receiver, rng, max_fragment)
