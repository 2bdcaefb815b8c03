"""Fuzzing the identity layer's parsers of untrusted input (issue 6, "Fuzzing").

DIDs and the resolver, multibase keys, credentials and presentations (parse and verify),
and keystore files. Property: any input -> a result or a DidmeshError (a KeystoreError for
keystore files); never another exception, never a hang; and a mutated eddsa-jcs-2022
document never verifies (JCS signs every member).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from adversary.fuzz import (
    budget,
    byte_mutations,
    dumps,
    fuzz_settings,
    mutate,
    nested,
    only_tree_errors,
)
from didmesh.identity.credentials import (
    issue_credential,
    issue_presentation,
    parse_untrusted,
    verify_credential,
    verify_presentation,
)
from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import CredentialError, KeystoreError, UnsupportedProof
from didmesh.identity.keys import IdentityKey
from didmesh.identity.keystore import Keystore, PassphraseSource
from didmesh.identity.multiformats import B58_ALPHABET, X25519_PUB, multibase_decode
from didmesh.identity.resolver import controller_of, ed25519_key_for, resolve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vc_support import HOLDER, ISSUER, NOW, presentation, v1_credential, v2_credential

GOOD_DID = ISSUER.did
b58 = st.text(alphabet=B58_ALPHABET, max_size=80)
did_like = st.one_of(
    st.text(max_size=300),
    b58.map(lambda s: "did:key:z" + s),
    st.builds(lambda s, f: f"did:key:z{s}#{f}", b58, st.text(max_size=20)),
    st.sampled_from(["did:web:example.com", "did:key:", "did:", "did:KEY:z6Mk", "did:key:z"]),
    st.builds(
        lambda i, c: GOOD_DID[:i] + c + GOOD_DID[i + 1 :],
        st.integers(0, len(GOOD_DID) - 1),
        st.characters(),
    ),
)


# --------------------------------------------------------------------------- DIDs


@fuzz_settings(300)
@given(did=did_like)
def test_fuzz_did_parse_and_resolve(did: str) -> None:
    key = only_tree_errors("DidKey.parse", DidKey.parse, did)
    doc = only_tree_errors("resolve", resolve, did)
    if key is not None:  # whatever parses resolves, to a document about that very DID
        assert doc is not None and doc["id"] == key.did
        assert DidKey.parse(key.did) == key  # round trip
    only_tree_errors("controller_of", controller_of, did)
    only_tree_errors("ed25519_key_for", ed25519_key_for, did, "assertionMethod")


@fuzz_settings(200)
@given(text=st.one_of(st.text(max_size=120), b58.map(lambda s: "z" + s)))
def test_fuzz_multibase_key(text: str) -> None:
    only_tree_errors("multibase_decode", multibase_decode, text, X25519_PUB, 32)


def test_multibase_key_length_is_capped_before_decoding() -> None:
    """A 250 kB sessionKey must not cost seconds of big-integer base58 work."""
    text = "z" + "2" * 250_000
    assert only_tree_errors("multibase_decode", multibase_decode, text, 0xEC, 32) is None


# --------------------------------------------------------------------------- documents

_JCS_VC = issue_credential(v2_credential(), ISSUER, suite="eddsa-jcs-2022", created=NOW)
_RDFC_VC = issue_credential(v2_credential(), ISSUER, suite="eddsa-rdfc-2022", created=NOW)
_V1_VC = issue_credential(v1_credential(), ISSUER, suite="Ed25519Signature2020", created=NOW)
_JCS_VP = issue_presentation(
    presentation(2, [_JCS_VC]), HOLDER, challenge="c-1", domain="d-1",
    suite="eddsa-jcs-2022", created=NOW,
)  # fmt: skip


def _sans_proof_context(doc: dict[str, Any]) -> dict[str, Any]:
    """The proof's own ``@context`` is optional and must equal the document's (which the
    proof configuration always carries): dropping it changes no signed byte. A proof set of
    one proof is that proof (specs/credentials.md section 4; the default profile accepts
    sets, the strict one refuses them): no signed byte changes either."""
    out = dict(doc)
    proof = out.get("proof")
    if isinstance(proof, list) and len(proof) == 1 and isinstance(proof[0], dict):
        out["proof"] = proof[0]
    if isinstance(out.get("proof"), dict):
        out["proof"] = {k: v for k, v in out["proof"].items() if k != "@context"}
    return out


@fuzz_settings(200)
@given(raw=st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_fuzz_parse_untrusted_random(raw: bytes | str) -> None:
    only_tree_errors("parse_untrusted", parse_untrusted, raw)


@pytest.mark.parametrize(
    "raw",
    [nested(5000), nested(5000, "{"), nested(100_000), '{"a":1,"a":2}', '{"x":NaN}', "[]",
     b"\xff\xfe{}", "\ud800", " " * 300_000],
    ids=["deep-list", "deep-object", "very-deep", "dup-key", "nan", "array", "bad-utf8",
         "lone-surrogate", "oversize"],
)  # fmt: skip
def test_parse_untrusted_classic_attacks(raw: bytes | str) -> None:
    assert only_tree_errors("parse_untrusted", parse_untrusted, raw) is None


@fuzz_settings(120)
@given(data=st.data())
def test_fuzz_mutated_jcs_credential_never_verifies(data: st.DataObject) -> None:
    doc = mutate(_JCS_VC, data)
    got = only_tree_errors("verify_credential", verify_credential, doc, now=NOW)
    if got is not None:  # JCS covers every member: only the untouched document verifies
        assert _sans_proof_context(doc) == _sans_proof_context(_JCS_VC)


def test_jcs_credential_with_its_proof_wrapped_in_a_set() -> None:
    """Found by the long fuzz profile (the ``wrap`` mutation at path ``proof``): the proof
    object put in a list is a proof set of one, which the default profile verifies as the
    same signed document (W3C Data Integrity 1.0, 2.1) and the strict profile refuses."""
    doc = dict(_JCS_VC, proof=[_JCS_VC["proof"]])
    assert verify_credential(doc, now=NOW).issuer == ISSUER.did
    with pytest.raises(UnsupportedProof, match="set of 1 proofs"):
        verify_credential(doc, now=NOW, strict=True)
    forged = dict(_JCS_VC, proof=[_JCS_VC["proof"], dict(_JCS_VC["proof"], proofValue="z1")])
    with pytest.raises(CredentialError):
        verify_credential(forged, now=NOW)


@settings(max_examples=budget(40), suppress_health_check=list(HealthCheck))
@given(data=st.data(), which=st.sampled_from(["rdfc", "v1"]))
def test_fuzz_mutated_rdf_credential(data: st.DataObject, which: str) -> None:
    base = _RDFC_VC if which == "rdfc" else _V1_VC
    doc = mutate(base, data)
    got = only_tree_errors("verify_credential", verify_credential, doc, now=NOW)
    if got is not None:  # a verified mutation names the same issuer and subjects
        assert got.issuer == ISSUER.did and got.subject_ids == (HOLDER.did,)


@fuzz_settings(120)
@given(data=st.data())
def test_fuzz_mutated_presentation(data: st.DataObject) -> None:
    doc = mutate(_JCS_VP, data, rounds=3)
    got = only_tree_errors(
        "verify_presentation", verify_presentation, doc, now=NOW, challenge="c-1", domain="d-1"
    )
    if got is not None:
        assert _sans_proof_context(doc) == _sans_proof_context(_JCS_VP)


@fuzz_settings(100)
@given(data=st.data())
def test_fuzz_credential_bytes(data: st.DataObject) -> None:
    raw = byte_mutations(json.dumps(_JCS_VC).encode(), data)
    got = only_tree_errors("verify_credential(bytes)", verify_credential, raw, now=NOW)
    if got is not None:
        assert _sans_proof_context(json.loads(raw)) == _sans_proof_context(_JCS_VC)


# --------------------------------------------------------------------------- keystore

_PLAIN_KEY = IdentityKey.from_seed(b"\x5a" * 32)


def _store(tmp: Path, encrypted: bool) -> tuple[Keystore, Path, bytes]:
    ks = Keystore(tmp)
    pw = PassphraseSource(value="correct horse") if encrypted else None
    entry = ks.create("alice", passphrase=pw, key=_PLAIN_KEY, force=True)
    return ks, entry.path, entry.path.read_bytes()


@pytest.fixture(scope="module")
def keystore_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = {}
    for enc in (False, True):
        _, _, raw = _store(tmp_path_factory.mktemp(f"ks{int(enc)}"), enc)
        out["enc" if enc else "plain"] = raw
    return out


def _load_corrupted(home: Path, raw: bytes) -> None:
    ks = Keystore(home)
    ks.dir.mkdir(parents=True, exist_ok=True)
    path = ks.dir / "alice.json"
    path.write_bytes(raw)
    os.chmod(path, 0o600)
    try:
        key = ks.load("alice", passphrase=PassphraseSource(value="correct horse"))
    except KeystoreError:
        return
    except Exception as exc:
        raise AssertionError(
            f"a corrupted keystore file raised {type(exc).__name__}: {exc!s:.200}"
        ) from exc
    assert key.did == _PLAIN_KEY.did  # whatever still loads is the right key


def _cheap_kdf(doc: object) -> bool:
    """Skip mutations that ask for an expensive (but legal) Argon2id cost: slow, not wrong."""
    kdf = doc.get("kdf") if isinstance(doc, dict) else None
    if not isinstance(kdf, dict):
        return True
    mem, ops = kdf.get("memlimit"), kdf.get("opslimit")
    return not (isinstance(mem, int) and mem > 2**27) and not (isinstance(ops, int) and ops > 4)


@settings(max_examples=budget(80), suppress_health_check=list(HealthCheck))
@given(data=st.data(), which=st.sampled_from(["plain", "enc"]))
def test_fuzz_keystore_json_mutations(
    tmp_path: Path, keystore_files: dict[str, bytes], data: st.DataObject, which: str
) -> None:
    doc = mutate(json.loads(keystore_files[which]), data)
    if not _cheap_kdf(doc):
        return
    _load_corrupted(tmp_path, dumps(doc).encode())


@settings(max_examples=budget(80), suppress_health_check=list(HealthCheck))
@given(data=st.data(), which=st.sampled_from(["plain", "enc"]))
def test_fuzz_keystore_byte_mutations(
    tmp_path: Path, keystore_files: dict[str, bytes], data: st.DataObject, which: str
) -> None:
    raw = byte_mutations(keystore_files[which], data)
    try:
        if not _cheap_kdf(json.loads(raw)):
            return
    except ValueError:
        pass
    _load_corrupted(tmp_path, raw)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: {**d, "kdf": {**d["kdf"], "memlimit": 1}},
        lambda d: {**d, "kdf": {**d["kdf"], "opslimit": 1, "memlimit": 4096}},
        lambda d: {**d, "kdf": {**d["kdf"], "salt": "AAAA"}},
        lambda d: {**d, "ciphertext": "!!"},
        lambda d: {**d, "ciphertext": ""},
        lambda d: {**d, "kdf": []},
    ],
    ids=["memlimit-below-argon2-minimum", "tiny-memlimit", "short-salt", "bad-b64",
         "empty-ciphertext", "kdf-list"],
)  # fmt: skip
def test_keystore_bad_kdf_parameters(
    tmp_path: Path, keystore_files: dict[str, bytes], edit: Callable[[Any], Any]
) -> None:
    doc = edit(json.loads(keystore_files["enc"]))
    _load_corrupted(tmp_path, json.dumps(doc).encode())


def test_keystore_deeply_nested_file(tmp_path: Path) -> None:
    _load_corrupted(tmp_path, nested(8000).encode())
