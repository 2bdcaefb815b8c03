"""Envelope format and crypto (relay/envelope.py): what a relay can and cannot do to one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.envelope import (
    Envelope,
    b64url,
    b64url_decode,
    open_envelope,
    seal,
    signing_input,
)
from didmesh.relay.errors import (
    EnvelopeRejected,
    ForgedSender,
    InvalidEnvelope,
    TooLarge,
)

NOW = 1_700_000_000_000
ALICE = IdentityKey.from_seed(bytes(range(32)))
BOB = IdentityKey.from_seed(bytes(range(1, 33)))
MALLORY = IdentityKey.from_seed(bytes(range(2, 34)))


def sealed(plaintext: bytes = b"hello", **kw: Any) -> Envelope:
    return seal(ALICE, BOB.did, kw.pop("session", "s-1"), plaintext, now_ms=NOW, ttl=60, **kw)


def resign(env_dict: dict[str, Any], signer: IdentityKey) -> Envelope:
    """What an attacker holding ``signer`` can do: rebuild and sign an altered envelope."""
    env = Envelope.from_dict({**env_dict, "sig": b64url(bytes(64))})
    sig = signer.sign(signing_input(env.header(), env.body))
    return Envelope.from_dict({**env_dict, "sig": b64url(sig)})


def test_round_trip() -> None:
    env = sealed(b"secret message")
    again = Envelope.from_json(env.to_json())
    assert again == env
    assert open_envelope(BOB, again, now_ms=NOW + 1000) == b"secret message"
    assert b"secret" not in env.to_json()


def test_deterministic_with_injected_randomness() -> None:
    rng = iter([bytes([i]) * 16 if i % 2 else bytes([i]) * 32 for i in range(1, 10)])
    a = seal(ALICE, BOB.did, "s", b"x", now_ms=NOW, rng=lambda n: next(rng)[:n])
    rng = iter([bytes([i]) * 16 if i % 2 else bytes([i]) * 32 for i in range(1, 10)])
    b = seal(ALICE, BOB.did, "s", b"x", now_ms=NOW, rng=lambda n: next(rng)[:n])
    assert a == b


def test_only_recipient_can_open() -> None:
    env = sealed()
    with pytest.raises(EnvelopeRejected, match="addressed to"):
        open_envelope(MALLORY, env, now_ms=NOW)


# Tampering by the relay (which has no private key): every field is covered by the signature.
TAMPER = {
    "session": "s-2",
    "ts": NOW + 1,
    "ttl": 61,
    "to": MALLORY.did,
    "from": MALLORY.did,
    "id": b64url(b"\x01" * 16),
}


@pytest.mark.parametrize("field", sorted(TAMPER))
def test_tampered_field_is_a_forged_sender(field: str) -> None:
    d = sealed().to_dict()
    d[field] = TAMPER[field]
    env = Envelope.from_dict(d)
    with pytest.raises(ForgedSender):
        env.verify_signature()


def test_tampered_body_is_a_forged_sender() -> None:
    d = sealed().to_dict()
    body = bytearray(b64url_decode(d["body"]))
    body[-1] ^= 1
    d["body"] = b64url(bytes(body))
    with pytest.raises(ForgedSender):
        Envelope.from_dict(d).verify_signature()
    with pytest.raises(EnvelopeRejected):
        open_envelope(BOB, Envelope.from_dict(d), now_ms=NOW)


@pytest.mark.parametrize("field", ["session", "id", "ts"])
def test_spliced_body_does_not_decrypt_even_when_resigned_by_sender_key_holder(field: str) -> None:
    """Moving a body into another envelope fails the AEAD (header is associated data),
    even for someone able to sign; the relay cannot even sign."""
    d = sealed().to_dict()
    d[field] = TAMPER[field]
    env = resign(d, ALICE)
    env.verify_signature()
    with pytest.raises(EnvelopeRejected, match="does not decrypt"):
        open_envelope(BOB, env, now_ms=NOW)


def test_resigned_as_someone_else_does_not_decrypt() -> None:
    """Mallory takes Alice's body and signs it as herself: the static DH binds the sender."""
    d = sealed().to_dict()
    d["from"] = MALLORY.did
    env = resign(d, MALLORY)
    env.verify_signature()
    with pytest.raises(EnvelopeRejected, match="does not decrypt"):
        open_envelope(BOB, env, now_ms=NOW)


@pytest.mark.parametrize(
    ("now", "match"),
    [(NOW - 61_000, "future"), (NOW + 61_000, "expired")],
    ids=["future", "expired"],
)
def test_freshness(now: int, match: str) -> None:
    with pytest.raises(EnvelopeRejected, match=match):
        open_envelope(BOB, sealed(), now_ms=now)


def test_low_order_ephemeral_key_rejected() -> None:
    d = sealed().to_dict()
    body = b64url_decode(d["body"])
    d["body"] = b64url(bytes(32) + body[32:])
    env = resign(d, ALICE)
    with pytest.raises(EnvelopeRejected):
        open_envelope(BOB, env, now_ms=NOW)


def _good() -> dict[str, Any]:
    return sealed().to_dict()


MALFORMED: dict[str, Any] = {
    "not-object": [],
    "unknown-field": {**_good(), "extra": 1},
    "missing-sig": {k: v for k, v in _good().items() if k != "sig"},
    "version-2": {**_good(), "v": 2},
    "bool-ts": {**_good(), "ts": True},
    "float-ttl": {**_good(), "ttl": 1.5},
    "zero-ttl": {**_good(), "ttl": 0},
    "negative-ts": {**_good(), "ts": -1},
    "short-id": {**_good(), "id": b64url(b"\x00" * 8)},
    "padded-body": {**_good(), "body": _good()["body"] + "="},
    "non-canonical-b64": {**_good(), "sig": _good()["sig"][:-1] + "B"},
    "short-body": {**_good(), "body": b64url(b"\x00" * 10)},
    "bad-from": {**_good(), "from": "did:web:example.com"},
    "fragment-to": {**_good(), "to": BOB.did + "#frag"},
    "empty-session": {**_good(), "session": ""},
    "long-session": {**_good(), "session": "s" * 129},
    "space-session": {**_good(), "session": "a b"},
    "short-sig": {**_good(), "sig": b64url(b"\x00" * 63)},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_envelopes(case: str) -> None:
    with pytest.raises(InvalidEnvelope):
        Envelope.from_json(json.dumps(MALFORMED[case]))


def test_not_json_and_too_large() -> None:
    with pytest.raises(InvalidEnvelope, match="not valid JSON"):
        Envelope.from_json(b"{nope")
    with pytest.raises(TooLarge):
        Envelope.from_json(b" " * 2000, max_bytes=1000)


def test_x25519_only_recipient() -> None:
    x_did = BOB.did_key.x25519_fingerprint
    env = seal(ALICE, "did:key:" + x_did, "s", b"to a bare X25519 key", now_ms=NOW)
    assert env.to.startswith("did:key:z6LS")


def test_hostile_json_stays_in_the_error_tree() -> None:
    """Deep nesting and infinities (found by tests/test_fuzz_relay.py) raise tree errors."""
    from didmesh.relay.errors import MalformedRequest, RelayProtocolError
    from didmesh.relay.protocol import Linked, parse_link_request

    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(InvalidEnvelope, match="nested too deeply"):
        Envelope.from_json(deep)
    with pytest.raises(MalformedRequest):
        parse_link_request("[" * 2000 + "]" * 2000, ALICE.did)
    linked = ('{"type": "linked", "session": "s", "peer": "p", "link_id": "", '
              '"max_bytes": 1e999, "max_duration_s": 1, "max_frame": 1}')
    with pytest.raises(MalformedRequest):
        Linked.parse(linked)
    from didmesh.relay.client import RelayClient

    item = {"received_ms": float("inf"), "envelope": sealed().to_dict()}
    with pytest.raises(RelayProtocolError):
        RelayClient._parse_items([item])
