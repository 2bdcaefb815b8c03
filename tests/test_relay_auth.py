"""Challenge -> signature -> token (relay/auth.py), with injected time."""

from __future__ import annotations

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.auth import Authenticator, challenge_signing_input, sign_challenge
from didmesh.relay.envelope import b64url
from didmesh.relay.errors import AuthExpired, AuthInvalid, DidNotControlled, MalformedRequest

NOW = 1_700_000_000_000
SECRET = bytes(range(32))
ALICE = IdentityKey.from_seed(bytes(range(32)))
MALLORY = IdentityKey.from_seed(bytes(range(5, 37)))


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(SECRET, "relay-test", challenge_ttl_ms=60_000, token_ttl_ms=600_000)


def test_happy_path(auth: Authenticator) -> None:
    ch = auth.issue_challenge(ALICE.did, now_ms=NOW)
    sig = sign_challenge(ALICE, "relay-test", ch.encoded)
    redeemed = auth.redeem(ALICE.did, ch.encoded, sig, now_ms=NOW + 1000)
    assert redeemed.nonce == ch.nonce
    tok = auth.issue_token(ALICE.did, now_ms=NOW)
    assert auth.verify_token(tok.encoded, now_ms=NOW + 599_999).did == ALICE.did


def test_did_not_controlled(auth: Authenticator) -> None:
    """Mallory asks for a challenge for Alice's DID and signs it with her own key."""
    ch = auth.issue_challenge(ALICE.did, now_ms=NOW)
    sig = b64url(MALLORY.sign(challenge_signing_input("relay-test", ALICE.did, ch.encoded)))
    with pytest.raises(DidNotControlled):
        auth.redeem(ALICE.did, ch.encoded, sig, now_ms=NOW)


def test_challenge_for_another_did(auth: Authenticator) -> None:
    ch = auth.issue_challenge(ALICE.did, now_ms=NOW)
    sig = sign_challenge(MALLORY, "relay-test", ch.encoded)
    with pytest.raises(AuthInvalid, match="another DID"):
        auth.redeem(MALLORY.did, ch.encoded, sig, now_ms=NOW)


def test_signature_for_another_relay(auth: Authenticator) -> None:
    ch = auth.issue_challenge(ALICE.did, now_ms=NOW)
    sig = sign_challenge(ALICE, "relay-other", ch.encoded)
    with pytest.raises(DidNotControlled):
        auth.redeem(ALICE.did, ch.encoded, sig, now_ms=NOW)


def test_expiry(auth: Authenticator) -> None:
    ch = auth.issue_challenge(ALICE.did, now_ms=NOW)
    with pytest.raises(AuthExpired):
        auth.redeem(ALICE.did, ch.encoded, sign_challenge(ALICE, "relay-test", ch.encoded),
                    now_ms=NOW + 60_001)
    tok = auth.issue_token(ALICE.did, now_ms=NOW)
    with pytest.raises(AuthExpired):
        auth.verify_token(tok.encoded, now_ms=NOW + 600_001)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BA"),  # MAC
        lambda t: t.replace("t1.", "c1."),  # a challenge is not a token
        lambda t: "t1." + t.split(".")[1],
        lambda t: "x" * 2000,
        lambda t: "t1.!!!.???",
    ],
    ids=["mac", "kind", "parts", "long", "b64"],
)
def test_tampered_tokens(auth: Authenticator, mutate: object) -> None:
    tok = auth.issue_token(ALICE.did, now_ms=NOW).encoded
    with pytest.raises(AuthInvalid):
        auth.verify_token(mutate(tok), now_ms=NOW)  # type: ignore[operator]


def test_token_from_another_relay_secret(auth: Authenticator) -> None:
    other = Authenticator(bytes(32), "relay-test")
    with pytest.raises(AuthInvalid):
        auth.verify_token(other.issue_token(ALICE.did, now_ms=NOW).encoded, now_ms=NOW)


X25519_DID = "did:key:z6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc"


@pytest.mark.parametrize("did", ["did:web:x", X25519_DID, 5])
def test_only_signing_did_keys(auth: Authenticator, did: object) -> None:
    with pytest.raises(MalformedRequest):
        auth.issue_challenge(did, now_ms=NOW)  # type: ignore[arg-type]
