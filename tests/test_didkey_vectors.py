"""did:key against the did-method-key test vectors (tests/vectors/did-key, see SOURCES.md)."""

from __future__ import annotations

import base64

import pytest
from conftest import load_json
from didmesh.identity.didkey import DidKey
from didmesh.identity.keys import IdentityKey
from didmesh.identity.multiformats import b58encode
from didmesh.identity.resolver import resolve

ED = load_json("did-key/ed25519-x25519.json")
X = load_json("did-key/x25519.json")["didDocument"]


def _representation(doc: dict) -> str:
    t = doc["verificationMethod"][0]["type"]
    return "jwk" if t == "JsonWebKey2020" else "legacy"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("did", sorted(ED), ids=lambda d: d[8:20])
def test_ed25519_vector_document(did: str) -> None:
    v = ED[did]
    key = IdentityKey.from_seed(bytes.fromhex(v["seed"]))
    assert key.did == did
    parsed = DidKey.parse(did)
    assert parsed.did == did
    assert parsed.document(_representation(v["didDocument"])) == v["didDocument"]


@pytest.mark.parametrize("did", sorted(ED), ids=lambda d: d[8:20])
def test_ed25519_vector_private_key_agreement(did: str) -> None:
    v = ED[did]
    key = IdentityKey.from_seed(bytes.fromhex(v["seed"]))
    ka = v["keyAgreementKeyPair"]
    if "privateKeyBase58" in ka:
        assert b58encode(key.x25519_private) == ka["privateKeyBase58"]
        assert b58encode(key.x25519_public) == ka["publicKeyBase58"]
    else:
        assert _b64url(key.x25519_private) == ka["privateKeyJwk"]["d"]
        assert _b64url(key.x25519_public) == ka["publicKeyJwk"]["x"]


@pytest.mark.parametrize("did", sorted(X), ids=lambda d: d[8:20])
def test_x25519_vector_document(did: str) -> None:
    doc = X[did]
    parsed = DidKey.parse(did)
    assert parsed.did == did
    assert not parsed.can_sign
    assert parsed.document(_representation(doc)) == doc


def test_resolver_default_is_multikey() -> None:
    did = sorted(ED)[0]
    doc = resolve(did + "#frag")
    assert doc["id"] == did
    assert doc["verificationMethod"][0]["type"] == "Multikey"
    assert doc["assertionMethod"] == [f"{did}#{did[8:]}"]
