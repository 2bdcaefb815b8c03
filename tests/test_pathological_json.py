"""The catalogue of pathological JSON (tests/data/pathological_json.json) against the one
strict parser and against the in-process parsers of untrusted input (issue 13, item 1).

Each case has a decided outcome at the parser (``accept`` or ``refuse`` with a specific
message); every other entry point either accepts what the parser accepted and then
checks it as it checks any value, or refuses it with an error of the DidmeshError tree.
The relay's HTTP endpoints get the same catalogue in tests/test_relay_pathological.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from adversary.pathological import CASES, PLACEHOLDER, VALUES, Case, params
from didmesh.identity.errors import DidmeshError, MalformedCredential
from didmesh.identity.strict_json import MAX_NUMBER_CHARS, loads_strict

CAP = 64 * 1024


def _parse(raw: bytes) -> Any:
    return loads_strict(raw, max_bytes=CAP, error=MalformedCredential, what="test doc")


def test_catalogue_covers_the_pathologies_of_issue_13() -> None:
    ids = {c.id for c in CASES}
    for needed in ("int-4301-digits", "float-1e400", "lone-high-surrogate", "utf8-bom",
                   "escaped-nul", "raw-nul-in-string", "max-array-of-ints",
                   "arrays-30000-deep", "objects-65-deep", "mixed-65-deep"):
        assert needed in ids


@pytest.mark.parametrize("case", params())
def test_parser_decision(case: Case) -> None:
    raw = case.splice({"a": [1, PLACEHOLDER]}, room=CAP)
    assert len(raw) <= CAP or not case.fills
    start = time.monotonic()
    if case.parser == "accept":
        value = _parse(raw)
        assert value["a"][0] == 1
    else:
        with pytest.raises(MalformedCredential) as info:
            _parse(raw)
        assert case.fragment in info.value.message, info.value.message
        assert info.value.message.startswith("test doc")
    assert time.monotonic() - start < 2.0


def test_fill_values_use_the_room() -> None:
    for case in (c for c in VALUES if c.fills):
        raw = case.splice({"a": PLACEHOLDER}, room=CAP)
        assert CAP * 0.97 < len(raw) <= CAP, (case.id, len(raw))


def test_number_length_boundary() -> None:
    assert _parse(b"1" * MAX_NUMBER_CHARS) == int("1" * MAX_NUMBER_CHARS)
    assert _parse(b"-" + b"1" * (MAX_NUMBER_CHARS - 1)) < 0
    with pytest.raises(MalformedCredential, match="number of 101 characters"):
        _parse(b"-" + b"1" * MAX_NUMBER_CHARS)


def test_str_input_gets_the_same_decisions() -> None:
    with pytest.raises(MalformedCredential, match="byte-order mark"):
        loads_strict("\ufeff{}", max_bytes=CAP, error=MalformedCredential)
    with pytest.raises(MalformedCredential, match="number of 4301"):
        loads_strict("9" * 4301, max_bytes=CAP, error=MalformedCredential)
    with pytest.raises(MalformedCredential, match="not UTF-8"):
        loads_strict('"\ud800"', max_bytes=CAP, error=MalformedCredential)


def only_tree(fn: Any, *args: Any, **kw: Any) -> Any:
    """Call an entry point: a result or a DidmeshError, never another exception, quickly."""
    start = time.monotonic()
    try:
        return fn(*args, **kw)
    except DidmeshError as exc:
        assert exc.code and exc.message
        return exc
    finally:
        assert time.monotonic() - start < 5.0, f"{fn.__name__} took too long"


# --------------------------------------------------------------------------- credentials

from didmesh.identity.credentials import (  # noqa: E402
    MAX_DOCUMENT_BYTES,
    issue_credential,
    issue_presentation,
    verify_credential,
    verify_presentation,
)
from vc_support import HOLDER, ISSUER, NOW, presentation, v1_credential, v2_credential  # noqa: E402

#: an absolute IRI: a term every suite signs without a context defining it
SCORE = "https://example.org/vocab#score"
SUITES = {
    "jcs": (v2_credential, "eddsa-jcs-2022"),
    "rdfc": (v2_credential, "eddsa-rdfc-2022"),
    "v1": (v1_credential, "Ed25519Signature2020"),
}
_ISSUED = {k: issue_credential(make(), ISSUER, suite=s, created=NOW)
           for k, (make, s) in SUITES.items()}  # fmt: skip


def _with_placeholder(doc: dict[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    out["credentialSubject"] = {**doc["credentialSubject"], SCORE: PLACEHOLDER}
    return out


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("case", params())
def test_credential_verify(case: Case, suite: str) -> None:
    """A signed credential with a pathological member: never verifies, never crashes."""
    raw = case.splice(_with_placeholder(_ISSUED[suite]), room=MAX_DOCUMENT_BYTES)
    got = only_tree(verify_credential, raw, now=NOW)
    if suite == "jcs":  # JCS signs every member
        assert isinstance(got, DidmeshError)
    elif not isinstance(got, DidmeshError):  # RDF suites sign the dataset: a member that
        # adds no triple (nested empty arrays) is unsigned, but cannot change who says what
        assert got.issuer == ISSUER.did and got.subject_ids == (HOLDER.did,)


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("case", params([c for c in VALUES if c.parser == "accept"]))
def test_credential_issue_and_verify_accepted_values(case: Case, suite: str) -> None:
    """What the parser accepts is either signed and then verifies, or refused at issuance
    with a specific error (JCS: integers beyond 2**53, RFC 8785)."""
    make, name = SUITES[suite]
    value = _parse(case.splice({"v": PLACEHOLDER}, room=CAP))["v"]
    doc = make()
    doc["credentialSubject"] = {**doc["credentialSubject"], SCORE: value}
    issued = only_tree(issue_credential, doc, ISSUER, suite=name, created=NOW)
    if isinstance(issued, DidmeshError):
        assert len(issued.message) < 400, "an error message must not echo a huge value"
        # undefined terms only where the value is an object with keys of its own
        assert "define" not in issued.message or isinstance(value, dict), issued.message
        return
    import json

    got = only_tree(verify_credential, json.dumps(issued).encode(), now=NOW)
    assert not isinstance(got, DidmeshError), got.message


@pytest.mark.parametrize("case", params())
def test_presentation_verify(case: Case) -> None:
    vp = issue_presentation(presentation(2, [_ISSUED["jcs"]]), HOLDER, challenge="c-1",
                            domain="d-1", suite="eddsa-jcs-2022", created=NOW)  # fmt: skip
    vp = {**vp, "holderNote": PLACEHOLDER}
    raw = case.splice(vp, room=MAX_DOCUMENT_BYTES)
    got = only_tree(verify_presentation, raw, now=NOW, challenge="c-1", domain="d-1")
    assert isinstance(got, DidmeshError)


def test_rdfc_poison_graph_is_refused_before_canonicalizing() -> None:
    """Alike blank nodes make RDFC-1.0 quadratic: 1,325 empty objects took 2.5 s; a
    256 KiB credential of them would take hours. Refused by count, at once."""
    from didmesh.identity.errors import DocumentTooLarge
    from didmesh.identity.jsonld import MAX_JSONLD_ITEMS, MAX_JSONLD_OBJECTS

    for value in ([{}] * 20_000, [[1]] * 20_000, list(range(20_000))):
        doc = dict(_ISSUED["rdfc"])
        doc["credentialSubject"] = {**doc["credentialSubject"], SCORE: value}
        start = time.monotonic()
        with pytest.raises(DocumentTooLarge,
                           match=f"at most {MAX_JSONLD_OBJECTS} and {MAX_JSONLD_ITEMS}"):
            verify_credential(doc, now=NOW)
        assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("case", params())
def test_jws_header(case: Case) -> None:
    """The detached JWS header of an Ed25519Signature2018 proof is untrusted JSON too (its
    400-character cap kept json.loads safe; it now goes through the one strict parser)."""
    import base64

    from didmesh.identity.proofs.ed25519_legacy import MAX_JWS_LENGTH

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = case.splice({"alg": "EdDSA", "b64": False, "crit": [PLACEHOLDER]},
                         room=MAX_JWS_LENGTH * 3 // 4 - 120)  # fmt: skip
    doc = dict(_ISSUED["v1"])
    proof = {k: v for k, v in doc["proof"].items() if k != "proofValue"}
    doc["proof"] = {**proof, "type": "Ed25519Signature2018",
                    "jws": b64(header) + ".." + b64(bytes(64))}  # fmt: skip
    got = only_tree(verify_credential, doc, now=NOW)
    assert isinstance(got, DidmeshError)
