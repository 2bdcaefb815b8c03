"""Malformed DIDs, wrong multicodecs, truncated keys: each a specific error."""

from __future__ import annotations

import pytest
from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import DidmeshError, InvalidDID, UnsupportedDIDMethod
from didmesh.identity.keys import IdentityKey
from didmesh.identity.multiformats import b58encode, varint_encode
from didmesh.identity.resolver import resolve
from hypothesis import given
from hypothesis import strategies as st

GOOD = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


def _did(codec: int, raw: bytes) -> str:
    return "did:key:z" + b58encode(varint_encode(codec) + raw)


@pytest.mark.parametrize(
    ("did", "fragment"),
    [
        ("", "not a DID"),
        ("did:key:", "not a DID"),
        ("did:key:6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp", "expected did:key:z"),
        ("did:key:z6Mk0OIl", "expected did:key:z"),
        (_did(0xED, bytes(31)), "31-byte key"),
        (_did(0xED, bytes(33)), "33-byte key"),
        (_did(0xE7, bytes(33)), "multicodec 0xe7"),
        (_did(0x1200, bytes(32)), "multicodec 0x1200"),
        ("did:key:z" + "1" * 300, "longer than"),
    ],
)
def test_malformed(did: str, fragment: str) -> None:
    with pytest.raises(InvalidDID, match=fragment):
        resolve(did)


def test_not_a_curve_point() -> None:
    # y = 2 is not on edwards25519
    bad = (2).to_bytes(32, "little")
    with pytest.raises(InvalidDID, match="not a valid curve point"):
        DidKey.parse(_did(0xED, bad))


@pytest.mark.parametrize("did", ["did:web:example.com", "did:peer:2.Ez6LS", "did:ion:abc"])
def test_unsupported_method(did: str) -> None:
    with pytest.raises(UnsupportedDIDMethod, match="unsupported DID method"):
        resolve(did)


@given(st.binary(min_size=32, max_size=32))
def test_roundtrip(seed: bytes) -> None:
    key = IdentityKey.from_seed(seed)
    parsed = DidKey.parse(key.did)
    assert parsed.ed25519_public == key.ed25519_public
    assert parsed.did == key.did
    assert parsed.x25519_public == key.x25519_public


@given(st.text(max_size=120))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        resolve(text)
    except DidmeshError:
        pass


def test_good_parses() -> None:
    assert DidKey.parse(GOOD).did == GOOD
