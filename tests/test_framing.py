"""Mesh framing and the KK recipe, over an in-memory pipe delivering random fragments.

The pipe and the channel pair are the shipped fakes in didmesh.session.mesh.testing;
the handshake, ciphers and framing are the real ones.
"""

from __future__ import annotations

import random
import struct

import pytest
from didmesh.session.mesh.channel import (
    MESH_PROLOGUE_LABEL,
    MeshHandshake,
    SecureChannel,
    didmesh_prologue,
)
from didmesh.session.mesh.errors import (
    ChannelClosed,
    DecryptFailed,
    FrameError,
    FrameMalformed,
    FrameTooLarge,
    FrameTruncated,
    HandshakeFailed,
    MessageTooLarge,
    NoiseUsageError,
    NonceExhausted,
    RecordRejected,
)
from didmesh.session.mesh.framing import (
    FLAG_END,
    FLAG_MORE,
    MAX_ITEM_DATA,
    MAX_RECORD_PLAINTEXT,
    FrameDecoder,
    FrameEncoder,
)
from didmesh.session.mesh.noise import CipherState
from didmesh.session.mesh.primitives import CIPHER_FUNCTIONS, MAX_NONCE
from didmesh.session.mesh.testing import (
    PartyKeys,
    channel_pair,
    deliver,
    fragments,
    handshake,
    transfer,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NOT_AUTHENTIC = "altered in transit, or the peer holds another roster or key"

ROSTER = bytes(range(32))


def split_records(wire: bytes | bytearray) -> list[bytes]:
    out, pos = [], 0
    while pos < len(wire):
        (n,) = struct.unpack_from(">H", wire, pos)
        out.append(bytes(wire[pos : pos + 2 + n]))
        pos += 2 + n
    assert pos == len(wire)
    return out


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20240601)


@pytest.fixture
def pair(rng: random.Random) -> tuple[SecureChannel, SecureChannel]:
    return channel_pair(rng)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [0, 1, 65514, 65515, 65516, 65519, 65520, 2 * 65515 + 1, 1 << 20])
def test_message_sizes_both_ways(
    size: int, pair: tuple[SecureChannel, SecureChannel], rng: random.Random
) -> None:
    a, b = pair
    msg = rng.randbytes(size)
    assert transfer(a, b, [msg], rng) == [msg]
    assert transfer(b, a, [msg], rng) == [msg]
    assert transfer(a, b, [msg, b"after"], rng, max_fragment=70000) == [msg, b"after"]


def test_record_boundaries(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, _ = pair
    assert len(split_records(a.send(bytes(MAX_ITEM_DATA)))) == 1
    assert len(split_records(a.send(bytes(MAX_ITEM_DATA + 1)))) == 2
    assert a.send_many([]) == b""
    rec = split_records(a.send(b""))
    assert len(rec) == 1 and len(rec[0]) == 2 + 4 + 16


def test_encrypt_many_coalesces_into_full_records(
    pair: tuple[SecureChannel, SecureChannel], rng: random.Random
) -> None:
    a, b = pair
    msgs = [rng.randbytes(rng.randint(0, 300)) for _ in range(3000)]
    wire = a.send_many(msgs)
    payload = sum(4 + len(m) for m in msgs)
    records = split_records(wire)
    # Every record but the last is full (up to 3 bytes that cannot hold an item header);
    # a message split across records costs one extra 4-byte header per split.
    assert all(len(r) >= 2 + 65535 - 3 for r in records[:-1])
    assert len(records) == -(-(payload + 4 * (len(records) - 1)) // MAX_RECORD_PLAINTEXT)
    assert deliver(wire, b, rng) == msgs


def _cut(data: bytes, rng: random.Random, pieces: int) -> list[bytes]:
    """``data`` cut at random points into ``pieces`` parts (some may be empty)."""
    cuts = sorted(rng.randint(0, len(data)) for _ in range(pieces - 1))
    return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize(
    "size", [0, 1, 300, MAX_ITEM_DATA, MAX_ITEM_DATA + 1, 2 * MAX_ITEM_DATA + 7, 400_000]
)
@pytest.mark.parametrize("pieces", [1, 2, 7, 40])
def test_send_parts_is_one_message_of_the_joined_parts(
    size: int, pieces: int, rng: random.Random
) -> None:
    a, b = channel_pair(rng)
    twin_a, _ = channel_pair(random.Random(7))
    msg = rng.randbytes(size)
    parts = _cut(msg, rng, pieces)
    wire = a.send_parts([bytearray(parts[0]), *map(memoryview, parts[1:])])
    # same records (lengths) as sending the joined message
    assert [len(r) for r in split_records(wire)] == [
        len(r) for r in split_records(twin_a.send(msg))
    ]
    assert deliver(wire + a.send(b"next"), b, rng, 70_000) == [msg, b"next"]


def test_send_parts_too_large_is_refused_without_side_effects(rng: random.Random) -> None:
    a, b = channel_pair(rng, max_message_size=1000)
    with pytest.raises(MessageTooLarge, match="1001 bytes"):
        a.send_parts([bytes(600), bytes(401)])
    assert transfer(a, b, [bytes(1000)], rng) == [bytes(1000)]  # no nonce was used


def test_decoder_does_not_alias_a_callers_mutable_buffer(
    pair: tuple[SecureChannel, SecureChannel], rng: random.Random
) -> None:
    # receive_data parses bytes in place when nothing is pending; a bytearray (which the
    # caller may reuse) must be copied first, so changing it afterwards changes nothing.
    a, b = pair
    wire = bytearray(a.send(b"first") + a.send(b"second"))
    cut = len(wire) - 5  # a tail of the second record stays pending
    head = bytearray(wire[:cut])
    b.receive_data(head)
    head[:] = bytes(len(head))
    assert list(b) == [b"first"]
    b.receive_data(bytes(wire[cut:]))
    assert list(b) == [b"second"]


def test_decoder_adopted_bytes_then_more(
    pair: tuple[SecureChannel, SecureChannel], rng: random.Random
) -> None:
    # whole records and a partial one in one bytes object, the rest in later pieces
    a, b = pair
    msgs = [rng.randbytes(n) for n in (10, 70_000, 3, 200_000, 0)]
    wire = bytes(b"".join(a.send(m) for m in msgs) + a.close())
    got: list[bytes] = []
    pos = 0
    for n in (70_100, 1, 2, 131_000, 50, len(wire)):
        b.receive_data(wire[pos : pos + n])
        pos += n
        got.extend(b)
    b.receive_eof()
    assert got == msgs and b.next_message() is None and b.state == "closed"


def test_receive_buffer_stays_bounded(
    pair: tuple[SecureChannel, SecureChannel], rng: random.Random
) -> None:
    # Regression: consumed records must be dropped even when next_message() returns
    # a message on every call (the buffer once grew without bound and slowed to O(n^2)).
    a, b = pair
    for i in range(300):
        msg = rng.randbytes(rng.choice([10, 5000, 70_000]))
        b.receive_data(a.send(msg))
        assert b.next_message() == msg, i
        assert len(b.decoder._buf) <= 2 * (2 + 65535)


def test_leftover_after_handshake_reaches_the_channel(rng: random.Random) -> None:
    ka, kb = PartyKeys.from_rng(rng), PartyKeys.from_rng(rng)
    prologue = didmesh_prologue(ROSTER, 3, 7)
    a = MeshHandshake.initiator(ka.private, kb.public, prologue)
    b = MeshHandshake.responder(kb.private, ka.public, prologue)
    reply = b.step(a.step())
    assert b.complete
    cb = b.into_channel()
    early = cb.send(b"first words")  # the responder may send right after message 2
    assert a.step(reply + early) == b""
    ca = a.into_channel()
    assert list(ca) == [b"first words"]
    assert ca.handshake_hash == cb.handshake_hash and ca.remote_static == kb.public


# --------------------------------------------------------------------------- handshake


def _hs(
    rng: random.Random, *, wrong_key: str = "", pro_a: bytes = b"", pro_b: bytes = b""
) -> tuple[MeshHandshake, MeshHandshake]:
    ka, kb, kx = (PartyKeys.from_rng(rng) for _ in range(3))
    pro_a = pro_a or didmesh_prologue(ROSTER, 0, 1)
    pro_b = pro_b or pro_a
    a = MeshHandshake.initiator(
        kx.private if wrong_key == "initiator_static" else ka.private,
        kx.public if wrong_key == "initiator_view" else kb.public,
        pro_a,
    )
    b = MeshHandshake.responder(
        kb.private, kx.public if wrong_key == "responder_view" else ka.public, pro_b
    )
    return a, b


@pytest.mark.parametrize("wrong_key", ["initiator_static", "initiator_view", "responder_view"])
def test_wrong_static_key_fails_the_handshake(wrong_key: str, rng: random.Random) -> None:
    a, b = _hs(rng, wrong_key=wrong_key)
    with pytest.raises(HandshakeFailed, match=NOT_AUTHENTIC) as e:
        handshake(a, b, rng)
    assert e.value.reason == "mismatch"
    with pytest.raises(ChannelClosed, match="failed earlier"):
        b.step(b"")


@pytest.mark.parametrize(
    "other",
    [
        didmesh_prologue(bytes(32), 0, 1),  # another roster
        didmesh_prologue(ROSTER, 0, 2),  # another responder id
        didmesh_prologue(ROSTER, 1, 2),  # another initiator id
    ],
    ids=["roster_hash", "responder_id", "initiator_id"],
)
def test_different_prologue_fails_the_handshake(other: bytes, rng: random.Random) -> None:
    a, b = _hs(rng, pro_b=other)
    with pytest.raises(HandshakeFailed, match=NOT_AUTHENTIC):
        handshake(a, b, rng)


def test_handshake_rejects_wrong_length_and_payload(rng: random.Random) -> None:
    a, b = _hs(rng)
    with pytest.raises(HandshakeFailed, match="expected 48") as e:
        b.step(b"\x00\x31" + bytes(49))
    assert e.value.reason == "malformed"
    a, b = _hs(rng)
    assert a.step() != b""
    with pytest.raises(NoiseUsageError, match="not complete"):
        a.into_channel()


def test_for_parties_lower_id_initiates(rng: random.Random) -> None:
    ka, kb = PartyKeys.from_rng(rng), PartyKeys.from_rng(rng)
    hi = MeshHandshake.for_parties(
        local_id=5, remote_id=2, local_static_private=ka.private,
        remote_static_public=kb.public, roster_hash=ROSTER,
    )  # fmt: skip
    lo = MeshHandshake.for_parties(
        local_id=2, remote_id=5, local_static_private=kb.private,
        remote_static_public=ka.public, roster_hash=ROSTER,
    )  # fmt: skip
    assert lo.is_initiator and not hi.is_initiator
    assert hi.step() == b""  # the responder waits
    c_lo, c_hi = handshake(lo, hi, rng)
    assert transfer(c_hi, c_lo, [b"x"], rng) == [b"x"]
    with pytest.raises(NoiseUsageError, match="itself"):
        MeshHandshake.for_parties(
            local_id=1, remote_id=1, local_static_private=ka.private,
            remote_static_public=kb.public, roster_hash=ROSTER,
        )  # fmt: skip


def test_prologue_encoding() -> None:
    p = didmesh_prologue(bytes.fromhex("aa" * 32), 1, 258)
    expected = (
        b"\x00\x0fdidmesh/mesh/v1"
        + b"\x00\x20" + b"\xaa" * 32
        + b"\x00\x04\x00\x00\x00\x01"
        + b"\x00\x04\x00\x00\x01\x02"
    )  # fmt: skip
    assert MESH_PROLOGUE_LABEL == b"didmesh/mesh/v1"
    assert p == expected
    for bad in [(b"\x01" * 15, 0, 1), (ROSTER, 1, 1), (ROSTER, 2, 1), (ROSTER, -1, 1),
                (ROSTER, 0, 2**32), (ROSTER, False, 1)]:  # fmt: skip
        with pytest.raises(NoiseUsageError):
            didmesh_prologue(*bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- attacks on frames


def _three_records(
    pair: tuple[SecureChannel, SecureChannel],
) -> tuple[SecureChannel, SecureChannel, list[bytes]]:
    a, b = pair
    recs = [bytes(a.send(f"message {i}".encode())) for i in range(3)]
    return a, b, recs


def _assert_dead(ch: SecureChannel) -> None:
    assert ch.state == "aborted"
    with pytest.raises(ChannelClosed):
        ch.next_message()
    with pytest.raises(ChannelClosed):
        ch.receive_data(b"\x00")
    with pytest.raises(ChannelClosed):
        ch.send(b"x")


@pytest.mark.parametrize("scenario", ["altered", "altered_tag", "replayed", "reordered", "dropped"])
def test_record_attacks_are_rejected_and_abort(
    scenario: str, pair: tuple[SecureChannel, SecureChannel]
) -> None:
    a, b, (r0, r1, r2) = _three_records(pair)
    if scenario == "altered":
        r1 = r1[:5] + bytes([r1[5] ^ 0x01]) + r1[6:]
        wire = [r0, r1, r2]
    elif scenario == "altered_tag":
        wire = [r0, r1[:-1] + bytes([r1[-1] ^ 0x80]), r2]
    elif scenario == "replayed":
        wire = [r0, r0, r1]
    elif scenario == "reordered":
        wire = [r0, r2, r1]
    else:
        wire = [r0, r2]
    b.receive_data(b"".join(wire))
    assert b.next_message() == b"message 0"
    with pytest.raises(RecordRejected, match="record 1 did not authenticate") as e:
        b.next_message()
    assert isinstance(e.value, FrameError) and isinstance(e.value, DecryptFailed)
    _assert_dead(b)


def test_truncated_inside_record(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b, (r0, r1, _) = _three_records(pair)
    b.receive_data(r0 + r1[:-3])
    assert list(b) == [b"message 0"]
    b.receive_eof()
    with pytest.raises(FrameTruncated, match="channel closed mid-frame.*inside a record"):
        b.next_message()
    _assert_dead(b)


def test_truncated_inside_message(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    recs = split_records(a.send(bytes(200_000)))
    b.receive_data(b"".join(recs[:2]))
    assert b.next_message() is None
    b.receive_eof()
    with pytest.raises(FrameTruncated, match="mid-frame.*inside a message"):
        b.next_message()


def test_eof_without_close_record_is_truncation(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b, (r0, _, _) = _three_records(pair)
    b.receive_data(r0)
    b.receive_eof()
    assert b.next_message() == b"message 0"
    with pytest.raises(FrameTruncated, match="without the peer's close record"):
        b.next_message()


def test_clean_close(pair: tuple[SecureChannel, SecureChannel], rng: random.Random) -> None:
    a, b = pair
    wire = a.send_many([b"one", b"two"]) + a.close()
    with pytest.raises(ChannelClosed, match="closed by this side"):
        a.send(b"three")
    assert deliver(wire, b, rng, max_fragment=5) == [b"one", b"two"]
    b.receive_eof()
    assert b.next_message() is None
    assert b.state == "closed"
    assert transfer(b, a, [b"still open this way"], rng) == [b"still open this way"]


def test_data_after_close_record(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    b.receive_data(a.close() + b"\x00\x14" + bytes(20))
    with pytest.raises(FrameMalformed, match="after its close record"):
        b.next_message()
    _assert_dead(b)


def test_short_length_prefix(pair: tuple[SecureChannel, SecureChannel]) -> None:
    _, b = pair
    b.receive_data(b"\x00\x13" + bytes(19))
    with pytest.raises(FrameMalformed, match="shorter than a tag"):
        b.next_message()


# --------------------------------------------------------------------------- size limits


def test_local_message_too_large_is_refused_without_side_effects(rng: random.Random) -> None:
    a, b = channel_pair(rng, max_message_size=1000)
    with pytest.raises(MessageTooLarge, match="message 1 is 1001 bytes"):
        a.send_many([b"ok", bytes(1001)])
    assert transfer(a, b, [bytes(1000)], rng) == [bytes(1000)]


@pytest.mark.parametrize("size", [1001, 200_000])
def test_peer_message_too_large(size: int, rng: random.Random) -> None:
    a, b = channel_pair(rng)
    b.decoder.max_message_size = 1000
    b.receive_data(a.send(bytes(size)))
    with pytest.raises(FrameTooLarge, match="limit of 1000 bytes"):
        b.next_message()
    _assert_dead(b)


# --------------------------------------------------------------------------- malformed plaintext


def _crafted(plaintext: bytes) -> FrameDecoder:
    key = bytes(range(32))
    cipher = CIPHER_FUNCTIONS["ChaChaPoly"]
    dec = FrameDecoder(CipherState(cipher, key))
    ct = CipherState(cipher, key).encrypt_with_ad(b"", plaintext)
    dec.receive_data(struct.pack(">H", len(ct)) + ct)
    return dec


@pytest.mark.parametrize(
    ("plaintext", "match"),
    [
        (struct.pack(">I", 0x0001_0000), "reserved bits"),
        (struct.pack(">I", 5) + b"abc", "overruns"),
        (struct.pack(">I", 0) + b"ab", "inside an item header"),
        (struct.pack(">I", FLAG_MORE | 1) + b"a" + struct.pack(">I", 0), "end its record"),
        (struct.pack(">I", FLAG_MORE), "non-empty"),
        (struct.pack(">I", FLAG_END | 1) + b"x", "malformed close record"),
        (struct.pack(">I", FLAG_END) + struct.pack(">I", 0), "malformed close record"),
    ],
    ids=[
        "reserved",
        "overrun",
        "short_header",
        "more_mid_record",
        "empty_more",
        "end_data",
        "end_not_last",
    ],  # fmt: skip
)
def test_malformed_record_contents(plaintext: bytes, match: str) -> None:
    dec = _crafted(plaintext)
    with pytest.raises(FrameMalformed, match=match):
        dec.next_message()
    assert dec.state == "aborted"


def test_encoder_refuses_unkeyed_cipher() -> None:
    with pytest.raises(ValueError, match="keyed"):
        FrameEncoder(CipherState(CIPHER_FUNCTIONS["ChaChaPoly"]))


# --------------------------------------------------------------------------- nonces, rekey


def test_nonce_exhaustion_cipherstate() -> None:
    cs = CipherState(CIPHER_FUNCTIONS["ChaChaPoly"], bytes(32))
    cs.set_nonce(MAX_NONCE - 1)
    cs.encrypt_with_ad(b"", b"last one")
    with pytest.raises(NonceExhausted):
        cs.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(NoiseUsageError):
        cs.set_nonce(MAX_NONCE + 1)


def test_nonce_exhaustion_aborts_the_channel(
    pair: tuple[SecureChannel, SecureChannel], rng: random.Random
) -> None:
    a, b = pair
    a.encoder._cipher.set_nonce(MAX_NONCE - 1)
    b.decoder._cipher.set_nonce(MAX_NONCE - 1)
    assert transfer(a, b, [b"last"], rng) == [b"last"]
    with pytest.raises(NonceExhausted):
        a.send(b"next")
    with pytest.raises(ChannelClosed):
        a.send(b"next")
    with pytest.raises(ChannelClosed):
        a.next_message()


@pytest.mark.parametrize("cipher_name", ["ChaChaPoly", "AESGCM"])
def test_rekey(cipher_name: str) -> None:
    cipher = CIPHER_FUNCTIONS[cipher_name]
    k = bytes(range(32))
    snd, rcv = CipherState(cipher, k), CipherState(cipher, k)
    assert rcv.decrypt_with_ad(b"ad", snd.encrypt_with_ad(b"ad", b"before")) == b"before"
    snd.rekey()
    # REKEY(k) = first 32 bytes of ENCRYPT(k, 2**64-1, zerolen, zeros[32]) (spec 4.2)
    nonce = b"\x00" * 4 + MAX_NONCE.to_bytes(8, "little" if cipher_name == "ChaChaPoly" else "big")
    expected = cipher.aead(k).encrypt(nonce, bytes(32), b"")[:32]
    assert snd.n == 1 and cipher.rekey(k) == expected
    ct = snd.encrypt_with_ad(b"", b"after")
    with pytest.raises(DecryptFailed):
        rcv.decrypt_with_ad(b"", ct)  # the receiver has not rekeyed yet
    rcv.rekey()
    assert rcv.decrypt_with_ad(b"", ct) == b"after"


# --------------------------------------------------------------------------- properties


_HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_HYP
@given(
    messages=st.lists(st.one_of(st.binary(max_size=300), st.integers(60_000, 140_000)), max_size=8),
    seed=st.integers(0, 2**32 - 1),
    max_fragment=st.sampled_from([1, 3, 100, 4096, 70_000]),
)
def test_random_splits_reassemble_exactly(
    messages: list[bytes | int], seed: int, max_fragment: int
) -> None:
    rng = random.Random(seed)
    msgs = [m if isinstance(m, bytes) else rng.randbytes(m) for m in messages]
    if max_fragment == 1:
        msgs = [m[:2000] for m in msgs]  # keep byte-at-a-time delivery fast
    a, b = channel_pair(rng)
    wire = a.send_many(msgs[: len(msgs) // 2])
    for m in msgs[len(msgs) // 2 :]:
        wire += a.send(m)
    wire += a.close()
    assert deliver(wire, b, rng, max_fragment) == msgs
    b.receive_eof()
    assert b.next_message() is None and b.state == "closed"


@_HYP
@given(data=st.data())
def test_random_byte_flips_are_always_detected(data: st.DataObject) -> None:
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    a, b = channel_pair(rng)
    msgs = [rng.randbytes(rng.choice([0, 5, 700, 70_000])) for _ in range(4)]
    wire = bytearray(a.send_many(msgs[:2]) + a.send(msgs[2]) + a.send(msgs[3]) + a.close())
    index = data.draw(st.integers(0, len(wire) - 1))
    wire[index] ^= data.draw(st.integers(1, 255))
    got: list[bytes] = []
    with pytest.raises(FrameError):
        for piece in fragments(wire, rng, 5000):
            b.receive_data(piece)
            got.extend(b)
        b.receive_eof()
        got.extend(b)
    assert got == msgs[: len(got)]  # only untouched messages before the flip came out
    assert b.state == "aborted"


# --------------------------------------------------------------------------- error tree


def test_mesh_errors_fit_the_tree() -> None:
    from didmesh.identity.errors import DidmeshError, LocalError, RemoteError
    from didmesh.session.mesh import errors as me

    classes = [
        c for c in vars(me).values()
        if isinstance(c, type) and issubclass(c, me.MeshError) and c.__module__ == me.__name__
    ]  # fmt: skip
    assert len({c.code for c in classes}) == len(classes)  # stable, unique codes
    for c in classes:
        assert issubclass(c, DidmeshError)
        if c is not me.MeshError:
            assert issubclass(c, LocalError) != issubclass(c, RemoteError), c
    for remote in (me.HandshakeFailed, me.DecryptFailed, me.FrameError, me.RecordRejected):
        assert issubclass(remote, RemoteError)
    for local in (me.NonceExhausted, me.ChannelClosed, me.MessageTooLarge, me.NoiseUsageError):
        assert issubclass(local, LocalError)
