"""The frozen document loader, canonicalization and the undefined-term check
(identity/jsonld.py), and the didmesh-v1 context."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from didmesh.identity import jsonld
from didmesh.identity.errors import MalformedCredential, UndefinedTerm, UnknownContext
from vc_support import HOLDER, ISSUER, v1_credential, v2_credential

CONTEXT_DIR = resources.files("didmesh.identity.contexts")
NS = "https://didmesh.dev/ns/v1#"


def test_every_bundled_file_is_mapped_and_documented() -> None:
    files = sorted(p.name for p in CONTEXT_DIR.iterdir() if p.name.endswith(".jsonld"))
    assert sorted(jsonld.BUNDLED_CONTEXTS.values()) == files
    readme = (Path(__file__).parents[1] / "identity" / "contexts" / "README.md").read_text()
    for url, name in jsonld.BUNDLED_CONTEXTS.items():
        assert name in readme and url in readme, name


@pytest.mark.parametrize("url", list(jsonld.BUNDLED_CONTEXTS))
def test_loader_serves_bundled_context(url: str) -> None:
    remote = jsonld.document_loader(url, {})
    assert remote["documentUrl"] == url
    assert "@context" in remote["document"]


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/ctx",
        "http://www.w3.org/ns/credentials/v2",  # http, not https
        "https://www.w3.org/ns/credentials/v2/",  # trailing slash
        "file:///etc/passwd",
    ],
)
def test_loader_refuses_everything_else(url: str) -> None:
    with pytest.raises(UnknownContext, match="is not bundled; didmesh never fetches contexts"):
        jsonld.document_loader(url, {})


def test_nested_unknown_context_is_refused_during_canonicalization() -> None:
    doc = v2_credential()
    doc["credentialSubject"]["@context"] = "https://evil.example/nested"
    with pytest.raises(UnknownContext, match="evil.example/nested"):
        jsonld.canonize(doc)


def test_canonize_v1_undefined_property_names_it() -> None:
    with pytest.raises(UndefinedTerm, match="'favouriteColour'"):
        jsonld.canonize(v1_credential(favouriteColour="blue"))


def test_canonize_undefined_nested_property_names_it() -> None:
    doc = v2_credential()
    doc["credentialSubject"]["shoeSize"] = 44
    with pytest.raises(UndefinedTerm, match="'shoeSize'"):
        jsonld.canonize(doc)


def test_canonize_undefined_type_names_it() -> None:
    with pytest.raises(UndefinedTerm, match="'Gizmo'"):
        jsonld.canonize(v2_credential(type=["VerifiableCredential", "Gizmo"]))


def test_relative_iri_is_refused() -> None:
    with pytest.raises(MalformedCredential, match="relative IRI 'bob'"):
        jsonld.canonize(v2_credential(issuer="bob"))


def test_protected_term_cannot_be_redefined() -> None:
    doc = v2_credential()
    doc["credentialSubject"]["@context"] = {"sessionId": "https://evil.example/sid"}
    with pytest.raises(MalformedCredential, match="protected term redefinition"):
        jsonld.canonize(doc)


def test_examples_context_vocab_defines_its_terms() -> None:
    doc = {
        "@context": [jsonld.CREDENTIALS_V2, jsonld.CREDENTIALS_EXAMPLES_V2],
        "type": ["VerifiableCredential", "AnyType"],
        "issuer": ISSUER.did,
        "credentialSubject": {"id": HOLDER.did, "anything": "goes"},
    }
    assert "<https://www.w3.org/ns/credentials/examples#anything>" in jsonld.canonize(doc)


# --------------------------------------------------------------------------- didmesh-v1

DIDMESH_TYPES = [
    "SessionInvite",
    "SessionAcceptance",
    "SessionRoster",
    "RosterConfirmation",
    "RunReceipt",
    "Membership",
]
JSON_TERMS = ["manifest", "parties", "relays", "endpoints", "roster", "requires", "claims"]
PLAIN_TERMS = [
    "session",
    "sessionId",
    "program",
    "digest",
    "threshold",
    "seat",
    "sessionKey",
    "rosterHash",
    "partyId",
]


def _didmesh_context() -> dict[str, Any]:
    ctx: dict[str, Any] = jsonld.load_context(jsonld.DIDMESH_V1)["@context"]
    return ctx


def test_didmesh_context_is_protected_and_complete() -> None:
    ctx = _didmesh_context()
    assert ctx["@protected"] is True
    defined = {k for k in ctx if not k.startswith("@")} - {"id", "type"}
    assert defined == set(DIDMESH_TYPES + JSON_TERMS + PLAIN_TERMS)
    for term in JSON_TERMS:
        assert ctx[term] == {"@id": NS + term, "@type": "@json"}
    for term in DIDMESH_TYPES + PLAIN_TERMS:
        assert ctx[term] == NS + term


@pytest.mark.parametrize("type_", DIDMESH_TYPES)
def test_didmesh_types_expand(type_: str) -> None:
    nquads = jsonld.canonize(v2_credential(type=["VerifiableCredential", type_]))
    assert f"<{NS}{type_}>" in nquads


def test_didmesh_terms_all_sign() -> None:
    doc = v2_credential()
    subject = {"id": HOLDER.did}
    subject.update({t: {"k": [1, "two"]} for t in JSON_TERMS})
    subject.update({t: f"value-{t}" for t in PLAIN_TERMS})
    doc["credentialSubject"] = subject
    nquads = jsonld.canonize(doc)
    for term in JSON_TERMS + PLAIN_TERMS:
        assert f"<{NS}{term}>" in nquads, term
    # JSON literals are signed as canonical JSON (RFC 8785), typed rdf:JSON
    assert '"{\\"k\\":[1,\\"two\\"]}"^^<http://www.w3.org/1999/02/22-rdf-syntax-ns#JSON>' in nquads


def test_json_literal_keeps_order_of_parties() -> None:
    a = v2_credential()
    b = json.loads(json.dumps(a))
    b["credentialSubject"]["parties"].reverse()
    assert jsonld.canonize(a) != jsonld.canonize(b)


def test_canonical_output_is_nquads() -> None:
    out = jsonld.canonize(v2_credential())
    assert out.endswith(" .\n")
    assert all(re.match(r"^(<[^>]+>|_:c14n\d+) <[^>]+> .+ \.$", line) for line in out.splitlines())
