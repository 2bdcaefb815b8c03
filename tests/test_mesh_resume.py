"""Link resumption, sans-IO (session/mesh/resume.py; specs/mesh.md, "Link resumption").

Two :class:`ResumeStream` ends joined by a lossy fake relay: the relay cuts the link at
any point (part of the bytes in flight delivered, the rest lost), both ends exchange RESUME
messages, the writer resends; the receiver must get every byte exactly once, in order, and
a Noise channel on top must go on without a nonce used twice. Then what the relay may try:
forged, replayed, reflected or stale RESUME messages and acknowledgements.
"""

from __future__ import annotations

import os
import random

import pytest
from didmesh.session.mesh.channel import MeshHandshake, SecureChannel
from didmesh.session.mesh.errors import RecordRejected
from didmesh.session.mesh.resume import (
    RESUME_LEN,
    ResumeFailed,
    ResumeStream,
    resume_link_id,
)

SECRET = bytes(range(32))


def pair(max_unacked: int = 1 << 20, secret: bytes = SECRET) -> tuple[ResumeStream, ResumeStream]:
    a, b = ResumeStream(max_unacked=max_unacked), ResumeStream(max_unacked=max_unacked)
    a.arm(secret, True)
    b.arm(secret, False)
    return a, b


def pump(src: ResumeStream, dst: ResumeStream, out: bytearray, *, limit: int = 700,
         deliver: int | None = None) -> None:
    """Send everything ``src`` has; the relay delivers the first ``deliver`` bytes only."""
    sent = 0
    while (batch := src.next_batch(limit)) is not None:
        n = len(batch) if deliver is None else max(0, min(len(batch), deliver - sent))
        sent += len(batch)
        if n:
            out += batch[:n]
            dst.on_received(n)


def resume(a: ResumeStream, b: ResumeStream) -> tuple[int, int]:
    ma, mb = a.resume_message(), b.resume_message()
    assert len(ma) == len(mb) == RESUME_LEN
    return b.on_resume_message(ma), a.on_resume_message(mb)


@pytest.mark.parametrize("seed", range(12), ids=lambda s: f"seed{s}")
def test_every_byte_arrives_once_in_order_across_cuts(seed: int) -> None:
    rnd = random.Random(seed)
    a, b = pair()
    written, got = bytearray(), bytearray()
    for _round in range(6):
        for _ in range(rnd.randrange(1, 20)):
            chunk = rnd.randbytes(rnd.randrange(1, 3000))
            written += chunk
            a.write(chunk)
        in_flight = a.written - a.wire
        cut = rnd.randrange(0, in_flight + 1)  # the relay dies after `cut` bytes
        pump(a, b, got, limit=rnd.choice([1, 100, 1000, 65536]), deliver=cut)
        if rnd.random() < 0.5:
            a.on_ack(b.received)  # an ACK got through before the cut
        _, resend = resume(a, b)  # what a sends again
        assert resend == len(written) - len(got)
        pump(a, b, got)
        assert got == written
    assert a.resumes == b.resumes == 6


def test_noise_records_go_on_after_a_cut_inside_a_record() -> None:
    """The resent bytes are the ciphertext sent before: the channel's nonces continue."""
    hs_i = MeshHandshake.for_parties(local_id=0, remote_id=1, local_static_private=KEY0,
                                     remote_static_public=PUB1, roster_hash=b"r" * 32)
    hs_r = MeshHandshake.for_parties(local_id=1, remote_id=0, local_static_private=KEY1,
                                     remote_static_public=PUB0, roster_hash=b"r" * 32)
    hs_i.step(hs_r.step(hs_i.step()))
    ci, cr = hs_i.into_channel(), hs_r.into_channel()
    assert ci.exporter == cr.exporter and len(ci.exporter) == 32
    assert ci.exporter != ci.handshake_hash
    a, b = pair(secret=ci.exporter)
    msgs = [os.urandom(n) for n in (10, 70000, 5, 1000)]
    for m in msgs:
        a.write(bytes(ci.send(m)))
    first = bytearray()
    pump(a, b, first, deliver=40)  # inside the first record
    resume(a, b)
    rest = bytearray()
    pump(a, b, rest)
    cr.receive_data(bytes(first) + bytes(rest))
    assert list(cr) == msgs
    assert a.written == len(first) + len(rest)  # every byte once: nothing encrypted twice


def _keys() -> tuple[bytes, bytes, bytes, bytes]:
    from didmesh.session.mesh.primitives import DH25519

    k0, k1 = DH25519().keypair(b"\x11" * 32), DH25519().keypair(b"\x22" * 32)
    return k0.private, k0.public, k1.private, k1.public


KEY0, PUB0, KEY1, PUB1 = _keys()


def test_acks_trim_the_resend_buffer() -> None:
    a, b = pair()
    got = bytearray()
    for _ in range(10):
        a.write(b"x" * 1000)
    pump(a, b, got)
    assert a.unacked_bytes == 10000
    a.on_ack(4500)
    assert (a.base, a.unacked_bytes) == (4500, 5500)
    a.on_ack(10000)
    assert a.unacked_bytes == 0


def test_ack_due_every_ack_every_bytes_once_armed() -> None:
    s = ResumeStream(ack_every=100)
    s.on_received(500)
    assert s.ack_due() is None  # not armed: no acknowledgements
    s.arm(SECRET, True)
    assert s.ack_due() == 500 and s.ack_due() is None
    s.on_received(99)
    assert s.ack_due() is None
    s.on_received(1)
    assert s.ack_due() == 600


def test_the_resend_buffer_is_bounded_and_says_so_when_it_was_needed() -> None:
    a, b = pair(max_unacked=5000)
    got = bytearray()
    for _ in range(8):
        a.write(b"y" * 1000)
    pump(a, b, got, deliver=1000)  # 7000 bytes lost, only the last 5000 kept
    assert a.unacked_bytes <= 5000
    with pytest.raises(ResumeFailed, match="gone from the resend buffer .*bounded at 5000"):
        resume(a, b)


@pytest.mark.parametrize(
    "tamper, match",
    [
        (lambda m, old, own: m[:-1] + bytes([m[-1] ^ 1]), "did not authenticate"),
        (lambda m, old, own: m[:12] + bytes([m[12] ^ 1]) + m[13:], "did not authenticate"),
        (lambda m, old, own: old, "was used already"),  # replayed from the first resumption
        (lambda m, old, own: own, "did not authenticate"),  # our own, reflected
        (lambda m, old, own: m[:20], "not a RESUME"),
        (lambda m, old, own: b"", "not a RESUME"),
    ],
    ids=["tag-flipped", "count-flipped", "replayed", "reflected", "truncated", "empty"],
)
def test_a_relay_cannot_forge_replay_or_reflect_a_resume(tamper, match) -> None:  # type: ignore[no-untyped-def]
    a, b = pair()
    got = bytearray()
    a.write(b"z" * 5000)
    pump(a, b, got, deliver=2000)
    old = b.resume_message()
    a.on_resume_message(old)
    a.resume_message()
    pump(a, b, got, deliver=0)
    new, own = b.resume_message(), a.resume_message()
    with pytest.raises(ResumeFailed, match=match):
        a.on_resume_message(tamper(new, old, own))
    a.on_resume_message(new)  # the genuine one still works after a rejected one


def test_another_channel_or_party_cannot_resume_this_link() -> None:
    a, _ = pair()
    _, other = pair(secret=bytes(32))
    with pytest.raises(ResumeFailed, match="did not authenticate"):
        a.on_resume_message(other.resume_message())
    assert resume_link_id(SECRET) != resume_link_id(bytes(32))
    assert resume_link_id(SECRET).startswith("r") and len(resume_link_id(SECRET)) == 17


def test_inconsistent_counts_are_refused() -> None:
    a, b = pair()
    got = bytearray()
    a.write(b"w" * 3000)
    pump(a, b, got)
    with pytest.raises(ResumeFailed, match="acknowledged 3001 bytes"):
        a.on_ack(3001)  # beyond what was sent
    a.on_ack(2000)
    with pytest.raises(ResumeFailed, match="acknowledged 1000 bytes"):
        a.on_ack(1000)  # acknowledgements only grow
    liar = ResumeStream()
    liar.arm(SECRET, False)
    liar.on_received(1500)  # says less than it acknowledged inside the channel
    with pytest.raises(ResumeFailed, match="it acknowledged 2000 already"):
        a.on_resume_message(liar.resume_message())
    liar2 = ResumeStream()
    liar2.arm(SECRET, False)
    liar2.on_received(9999)
    with pytest.raises(ResumeFailed, match="3000 were sent"):
        a.on_resume_message(liar2.resume_message())


def test_not_armed_cannot_resume() -> None:
    s = ResumeStream()
    with pytest.raises(ResumeFailed, match="before its channel is established"):
        s.resume_message()
    with pytest.raises(ResumeFailed, match="before its channel is established"):
        s.on_resume_message(b"\0" * RESUME_LEN)


def test_a_resent_record_already_received_is_rejected_by_noise() -> None:
    """If a relay managed to make a writer resend what the reader had (it cannot: the
    RESUME is authenticated), the Noise records would still not decrypt twice."""
    hs_i = MeshHandshake.for_parties(local_id=0, remote_id=1, local_static_private=KEY0,
                                     remote_static_public=PUB1, roster_hash=b"r" * 32)
    hs_r = MeshHandshake.for_parties(local_id=1, remote_id=0, local_static_private=KEY1,
                                     remote_static_public=PUB0, roster_hash=b"r" * 32)
    hs_i.step(hs_r.step(hs_i.step()))
    ci: SecureChannel = hs_i.into_channel()
    cr = hs_r.into_channel()
    rec = bytes(ci.send(b"once"))
    cr.receive_data(rec)
    assert list(cr) == [b"once"]
    cr.receive_data(rec)
    with pytest.raises(RecordRejected):
        list(cr)
