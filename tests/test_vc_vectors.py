"""W3C vc-di-eddsa test vectors, reproduced byte for byte (tests/vectors/SOURCES.md).

For each suite every intermediate file is checked: the canonical document, its hash,
the canonical proof configuration, its hash, the combined hash, the signature (hex and
multibase) and the signed document (as the exact file text).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from conftest import VECTORS
from didmesh.identity.keys import IdentityKey
from didmesh.identity.multiformats import ED25519_PRIV, multibase_decode
from didmesh.identity.proofs import SUITES, Suite, suite_for_proof

BASE = VECTORS / "vc-di-eddsa"
# suite name -> (folder, file suffix)
CASES = {
    "eddsa-rdfc-2022": ("eddsa-rdfc-2022", "DataInt"),
    "eddsa-jcs-2022": ("eddsa-jcs-2022", "JCS"),
    "Ed25519Signature2020": ("Ed25519Signature2020", "EdSig"),
}
ARTIFACTS = [
    "canonDoc",
    "docHash",
    "proofCanon",
    "proofHash",
    "combinedHash",
    "sigHex",
    "sigBTC58",
    "signed",
]


def _file(suite: str, artifact: str, ext: str = "txt") -> str:
    folder, suffix = CASES[suite]
    return (BASE / folder / f"{artifact}{suffix}.{ext}").read_text()


def _key() -> IdentityKey:
    pair = json.loads((BASE / "keyPair.json").read_text())
    return IdentityKey.from_seed(multibase_decode(pair["privateKeyMultibase"], ED25519_PRIV, 32))


def _signed(suite: str) -> dict[str, Any]:
    return json.loads(_file(suite, "signed", "json"))


def _unsecured(suite: str) -> dict[str, Any]:
    doc = _signed(suite)
    del doc["proof"]
    return doc


def _options(suite: str) -> dict[str, Any]:
    """The proof options as the issuer chose them (from proofConfig*.json)."""
    config = json.loads(_file(suite, "proofConfig", "json"))
    return {k: config[k] for k in ("created", "verificationMethod", "proofPurpose")}


def _produce(suite_name: str, artifact: str) -> str:
    suite: Suite = SUITES[suite_name]
    unsecured = _unsecured(suite_name)
    proof = _signed(suite_name)["proof"]
    canon_doc = suite.canonical_document(unsecured)
    canon_proof = suite.canonical_proof_config(suite.proof_config(unsecured, proof))
    if artifact == "canonDoc":
        return canon_doc.decode()
    if artifact == "docHash":
        return hashlib.sha256(canon_doc).hexdigest()
    if artifact == "proofCanon":
        return canon_proof.decode()
    if artifact == "proofHash":
        return hashlib.sha256(canon_proof).hexdigest()
    if artifact == "combinedHash":
        return suite.hash_data(unsecured, proof).hex()
    signature = _key().sign(suite.hash_data(unsecured, proof))
    if artifact == "sigHex":
        return signature.hex()
    if artifact == "sigBTC58":
        return suite.encode_signature(unsecured, proof, signature)
    assert artifact == "signed"
    # Issue from scratch with the vector's options; the file is 2-space indented JSON.
    created = suite.create(unsecured, _options(suite_name), _key().sign)
    return json.dumps({**unsecured, "proof": created}, indent=2)


@pytest.mark.parametrize("artifact", ARTIFACTS)
@pytest.mark.parametrize("suite", list(CASES))
def test_vector_artifact(suite: str, artifact: str) -> None:
    expected = _file(suite, artifact, "json" if artifact == "signed" else "txt")
    if artifact.endswith(("Hash", "Hex")):
        expected = expected.strip()
    assert _produce(suite, artifact) == expected


@pytest.mark.parametrize("suite", list(CASES))
def test_vector_proof_config_is_what_is_canonicalized(suite: str) -> None:
    expected = json.loads(_file(suite, "proofConfig", "json"))
    proof = _signed(suite)["proof"]
    assert SUITES[suite].proof_config(_unsecured(suite), proof) == expected


@pytest.mark.parametrize("suite", list(CASES))
def test_vector_signed_document_verifies(suite: str) -> None:
    proof = _signed(suite)["proof"]
    chosen = suite_for_proof(proof)
    assert chosen.name == suite
    chosen.verify(_unsecured(suite), proof, _key().ed25519_public)


def test_vector_key_is_the_published_did() -> None:
    pair = json.loads((BASE / "keyPair.json").read_text())
    assert _key().did == "did:key:" + pair["publicKeyMultibase"]


def test_vector_unsigned_matches_signed_body() -> None:
    unsigned = json.loads((BASE / "unsigned.json").read_text())
    for suite in ("eddsa-rdfc-2022", "eddsa-jcs-2022"):
        assert _unsecured(suite) == unsigned
