"""VC Data Model 2.0 and Data Integrity conformance (issue 14): inline contexts, presentations
without a holder, proof sets and chains, and the data-model rules the issuer enforces
before signing and the verifier reports. One test (or parametrized case) per rule."""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from didmesh.identity import jsonld
from didmesh.identity.credentials import (
    issue_credential,
    issue_presentation,
    verify_credential,
    verify_presentation,
)
from didmesh.identity.errors import (
    DataModelViolation,
    InvalidProof,
    KeyNotAuthorized,
    MalformedCredential,
    UndefinedTerm,
    UnknownContext,
    UnsupportedProof,
)
from didmesh.identity.jsonld import CREDENTIALS_V1, CREDENTIALS_V2
from didmesh.identity.keys import IdentityKey
from didmesh.identity.proofs import suite_named
from vc_support import CREATED, HOLDER, ISSUER, NOW, OTHER, V2_SUITES

EX = "https://vocab.didmesh.test/ns#"
INLINE = {"MemberCard": EX + "MemberCard", "club": EX + "club", "level": EX + "level"}


def card(**changes: Any) -> dict[str, Any]:
    """A VC 2.0 credential whose type and claims come from an inline context."""
    doc: dict[str, Any] = {
        "@context": [CREDENTIALS_V2, INLINE],
        "id": "urn:uuid:6f1b1f3e-0d2a-4a57-9a0e-6b3c1f0e2d11",
        "type": ["VerifiableCredential", "MemberCard"],
        "issuer": ISSUER.did,
        "validFrom": "2025-01-01T00:00:00Z",
        "credentialSubject": {"id": HOLDER.did, "club": "chess", "level": 3},
    }
    doc.update(changes)
    return doc


def issue(doc: dict[str, Any], suite: str = "eddsa-rdfc-2022") -> dict[str, Any]:
    return issue_credential(doc, ISSUER, suite=suite, created=CREATED)


def raw_proof(
    doc: dict[str, Any], key: IdentityKey, suite: str = "eddsa-rdfc-2022", **options: Any
) -> dict[str, Any]:
    opts = {
        "created": "2025-06-01T11:00:00Z",
        "verificationMethod": key.verification_method,
        "proofPurpose": "assertionMethod",
        **options,
    }
    out: dict[str, Any] = suite_named(suite).create(doc, opts, key.sign)
    return out


# --------------------------------------------------------------------------- inline contexts


@pytest.mark.parametrize("suite", V2_SUITES)
def test_inline_context_credential_issues_and_verifies(suite: str) -> None:
    signed = issue(card(), suite)
    got = verify_credential(signed, now=NOW)
    assert got.types == ("VerifiableCredential", "MemberCard")
    assert signed["@context"][1] == INLINE


def test_changing_an_inline_context_after_signing_breaks_the_proof() -> None:
    signed = issue(card())
    signed["@context"][1] = {**INLINE, "level": EX + "rank"}  # same data, other meaning
    with pytest.raises(InvalidProof):
        verify_credential(signed, now=NOW)


def test_inline_context_does_not_hide_an_undefined_term_from_the_issuer() -> None:
    doc = card()
    doc["credentialSubject"]["nickname"] = "bob"
    with pytest.raises(UndefinedTerm, match="'nickname'"):
        issue(doc)
    with pytest.raises(UndefinedTerm, match="'nickname'"):
        issue(doc, "eddsa-jcs-2022")


def test_inline_context_does_not_hide_an_undefined_term_from_the_verifier() -> None:
    signed = issue(card())
    signed["@context"][1] = {k: v for k, v in INLINE.items() if k != "club"}
    with pytest.raises(UndefinedTerm, match="'club'"):
        verify_credential(signed, now=NOW)


@pytest.mark.parametrize("where", ["top", "subject"])
def test_an_inline_context_pyld_cannot_process_is_malformed_not_a_crash(where: str) -> None:
    """``"@vocab": null`` with no vocabulary set made PyLD raise KeyError('@vocab'), which
    escaped issue and verify (a 500 from the VC API); it is a malformed document."""
    doc = card()
    if where == "top":
        doc["@context"] = [CREDENTIALS_V2, INLINE, {"@vocab": None}]
    else:
        doc["credentialSubject"]["@context"] = {"@vocab": None}
    with pytest.raises(MalformedCredential, match="not valid JSON-LD"):
        issue(doc)
    signed = issue(card())
    if where == "top":
        signed["@context"] = [CREDENTIALS_V2, INLINE, {"@vocab": None}]
    else:
        signed["credentialSubject"]["@context"] = {"@vocab": None}
    with pytest.raises(MalformedCredential, match="not valid JSON-LD"):
        verify_credential(signed, now=NOW)


@pytest.mark.parametrize(
    "redefinition",
    [
        {"VerifiableCredential": "https://evil.example/#Bad"},  # a type of credentials v2
        {"id": "https://evil.example/#id"},  # a keyword alias of credentials v2
        {"name": "https://evil.example/#name"},  # a top-level term of credentials v2
    ],
    ids=["type", "id", "name"],
)
def test_inline_context_cannot_redefine_a_protected_term(redefinition: dict[str, Any]) -> None:
    with pytest.raises(MalformedCredential, match="protected term"):
        issue(card(**{"@context": [CREDENTIALS_V2, INLINE, redefinition]}))


def test_embedded_context_cannot_redefine_a_protected_term() -> None:
    doc = card()
    doc["credentialSubject"]["@context"] = {"type": "https://evil.example/#type"}
    with pytest.raises(MalformedCredential, match="protected term"):
        issue(doc)


def test_type_scoped_terms_keep_their_meaning_under_an_inline_context() -> None:
    # credentials v2 defines credentialSubject inside the VerifiableCredential type's
    # scoped context, which applies after (and over) a top-level inline definition: the
    # signed statements are the same as without the inline definition.
    plain = card()
    shadow = card(
        **{"@context": [CREDENTIALS_V2, {**INLINE, "credentialSubject": "https://evil.example/s"}]}
    )
    assert jsonld.canonize(plain) == jsonld.canonize(shadow)


def test_inline_context_mapping_a_type_to_a_non_url_is_refused() -> None:
    ctx = {**INLINE, "MemberCard": "https ://not-a-url#MemberCard"}
    with pytest.raises((UndefinedTerm, MalformedCredential)):
        issue(card(**{"@context": [CREDENTIALS_V2, ctx]}))


def test_inline_context_naming_an_unbundled_url_is_refused_without_fetching() -> None:
    ctx = {**INLINE, "club": {"@id": EX + "club", "@context": "https://evil.example/c.jsonld"}}
    with pytest.raises(UnknownContext, match="never fetches"):
        issue(card(**{"@context": [CREDENTIALS_V2, ctx]}))
    with pytest.raises(UnknownContext, match="never fetches"):
        issue(card(**{"@context": [CREDENTIALS_V2, {**INLINE, "@import": "https://x.test/c"}]}))


@pytest.mark.parametrize(
    ("contexts", "text"),
    [
        ([CREDENTIALS_V2, {"pad": "x" * (jsonld.MAX_INLINE_CONTEXT_BYTES + 1)}], "bytes"),
        (
            [
                CREDENTIALS_V2,
                {
                    "a": {
                        "@context": {
                            "b": {
                                "@context": {
                                    "c": {
                                        "@context": {
                                            "d": {
                                                "@context": {
                                                    "e": {"@context": {"f": "https://x.test/f"}}
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
            ],
            "nested deeper",
        ),
        ([CREDENTIALS_V2] + [{f"t{i}": f"https://x.test/{i}"} for i in range(17)], "more than 16"),
        ([CREDENTIALS_V2, 123192875], "must be a URL or a context object"),
        ([CREDENTIALS_V2, "https ://not-a-url/contexts/example/v1"], "is not bundled"),
    ],
    ids=["too-large", "too-deep", "too-many", "number", "not-a-url"],
)
def test_context_list_caps_and_item_types(contexts: list[Any], text: str) -> None:
    with pytest.raises(
        MalformedCredential if "bundled" not in text else UnknownContext, match=text
    ):
        issue(card(**{"@context": contexts}))


def test_pinned_suites_keep_the_strict_profile_for_inline_contexts() -> None:
    signed = issue(card(), "eddsa-jcs-2022")
    with pytest.raises(UnknownContext, match="accepts only the URLs of bundled contexts"):
        verify_credential(signed, now=NOW, suites=("eddsa-jcs-2022",))
    assert verify_credential(signed, now=NOW, suites=("eddsa-jcs-2022",), strict=False)


@pytest.mark.parametrize(
    ("url", "doc"),
    [
        (
            "https://www.w3.org/2018/credentials/examples/v1",
            {
                "credentialSubject": {
                    "id": HOLDER.did,
                    "degree": {"type": "BachelorDegree", "name": "Bachelor of Arts"},
                },
                "type": ["VerifiableCredential", "UniversityDegreeCredential"],
            },
        ),
        (
            "https://w3id.org/vc/status-list/2021/v1",
            {
                "credentialStatus": {
                    "id": "https://status.didmesh.test/1#94567",
                    "type": "StatusList2021Entry",
                    "statusPurpose": "revocation",
                    "statusListIndex": "94567",
                    "statusListCredential": "https://status.didmesh.test/1",
                }
            },
        ),
    ],
    ids=["examples-v1", "status-list-2021"],
)
def test_bundled_vocabularies_for_vc_1_1(url: str, doc: dict[str, Any]) -> None:
    cred: dict[str, Any] = {
        "@context": [CREDENTIALS_V1, url],
        "id": "urn:uuid:1d9f0c4e-0a55-4d0e-9a36-5f2b7b2b0c01",
        "type": ["VerifiableCredential"],
        "issuer": ISSUER.did,
        "issuanceDate": "2025-01-01T00:00:00Z",
        "credentialSubject": {"id": HOLDER.did},
        **doc,
    }
    signed = issue_credential(cred, ISSUER, suite="Ed25519Signature2020", created=CREATED)
    assert verify_credential(signed, now=NOW).issuer == ISSUER.did


def test_bitstring_status_list_entry_in_a_vc_2_0_credential() -> None:
    status = {
        "id": "https://status.didmesh.test/3#94567",
        "type": "BitstringStatusListEntry",
        "statusPurpose": "revocation",
        "statusListIndex": "94567",
        "statusListCredential": "https://status.didmesh.test/3",
    }
    signed = issue(card(credentialStatus=status))
    assert verify_credential(signed, now=NOW)


# --------------------------------------------------------------------------- presentations


def _vp(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "@context": [CREDENTIALS_V2, INLINE],
        "type": ["VerifiablePresentation"],
        "verifiableCredential": [issue(card())],
    }
    doc.update(changes)
    return doc


def _sign_vp(
    doc: dict[str, Any], key: IdentityKey, suite: str = "eddsa-rdfc-2022"
) -> dict[str, Any]:
    proof = raw_proof(
        doc, key, suite, proofPurpose="authentication", challenge="c-1", domain="d.test"
    )
    return {**doc, "proof": proof}


def test_presentation_without_holder_verifies() -> None:
    vp = _sign_vp(_vp(), HOLDER)
    got = verify_presentation(vp, now=NOW, challenge="c-1", domain="d.test")
    assert got.holder is None
    assert got.signer == HOLDER.did
    assert got.credentials[0].types == ("VerifiableCredential", "MemberCard")


def test_presentation_with_a_holder_must_be_signed_by_it() -> None:
    vp = _sign_vp(_vp(holder=HOLDER.did), OTHER)
    with pytest.raises(KeyNotAuthorized, match="not controlled by"):
        verify_presentation(vp, now=NOW, challenge="c-1", domain="d.test")


def test_presentation_holder_must_be_a_url() -> None:
    vp = _sign_vp(_vp(holder="not a url"), HOLDER, "eddsa-jcs-2022")
    with pytest.raises(DataModelViolation, match="4.13"):
        verify_presentation(vp, now=NOW, challenge="c-1", domain="d.test")


def test_pinned_presentation_still_requires_a_holder() -> None:
    doc = {"@context": [CREDENTIALS_V2], "type": ["VerifiablePresentation"]}
    vp = _sign_vp(doc, HOLDER)
    with pytest.raises(MalformedCredential, match="holder"):
        verify_presentation(
            vp, now=NOW, challenge="c-1", domain="d.test", suites=("eddsa-rdfc-2022",)
        )


def test_issue_presentation_still_sets_the_holder() -> None:
    vp = issue_presentation(_vp(), HOLDER, challenge="c", domain="d", created=CREATED)
    assert vp["holder"] == HOLDER.did


# --------------------------------------------------------------------------- proof sets


def _proof_set(
    first: IdentityKey,
    second: IdentityKey,
    suite: str = "eddsa-rdfc-2022",
    doc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    doc = doc or card()
    return {**doc, "proof": [raw_proof(doc, first, suite), raw_proof(doc, second, suite)]}


@pytest.mark.parametrize("suite", V2_SUITES)
def test_proof_set_every_proof_verifies(suite: str) -> None:
    got = verify_credential(_proof_set(OTHER, ISSUER, suite), now=NOW)
    assert got.issuer == ISSUER.did and got.suite == suite


def test_proof_set_fails_when_any_proof_fails() -> None:
    doc = _proof_set(ISSUER, OTHER)
    doc["proof"][1]["created"] = "2025-06-01T11:30:00Z"
    with pytest.raises(InvalidProof, match="proof #2 of 2"):
        verify_credential(doc, now=NOW)


def test_proof_set_needs_a_proof_by_the_issuer() -> None:
    with pytest.raises(KeyNotAuthorized, match="none of its 2 proofs is by"):
        verify_credential(_proof_set(OTHER, HOLDER), now=NOW)


def test_proof_set_is_refused_by_the_strict_profile() -> None:
    with pytest.raises(UnsupportedProof, match="set of 2 proofs"):
        verify_credential(
            _proof_set(ISSUER, OTHER, doc=_v2()), now=NOW, suites=("eddsa-rdfc-2022",)
        )


def test_proof_set_size_is_capped() -> None:
    doc = card()
    proof = raw_proof(doc, ISSUER)
    with pytest.raises(MalformedCredential, match="the limit is"):
        verify_credential({**doc, "proof": [proof] * 9}, now=NOW)


# --------------------------------------------------------------------------- proof chains


def _chain(
    previous: Any, suite: str = "eddsa-rdfc-2022", doc: dict[str, Any] | None = None
) -> dict[str, Any]:
    """OTHER signs first (proof id urn:proof:1); ISSUER signs the document with that proof."""
    doc = doc or card()
    first = raw_proof(doc, OTHER, suite, id="urn:proof:1")
    second = raw_proof({**doc, "proof": [first]}, ISSUER, suite, previousProof=previous)
    return {**doc, "proof": [first, second]}


@pytest.mark.parametrize("suite", V2_SUITES)
@pytest.mark.parametrize("previous", ["urn:proof:1", ["urn:proof:1"]], ids=["string", "list"])
def test_proof_chain_verifies(previous: Any, suite: str) -> None:
    assert verify_credential(_chain(previous, suite), now=NOW).issuer == ISSUER.did


def test_proof_chain_covers_the_previous_proof() -> None:
    doc = _chain("urn:proof:1")
    # Re-sign the first proof with another date: it verifies alone, but the chained
    # proof signed the original one.
    replaced = raw_proof(card(), OTHER, id="urn:proof:1", created="2025-06-01T11:45:00Z")
    doc["proof"][0] = replaced
    with pytest.raises(InvalidProof, match="proof #2 of 2"):
        verify_credential(doc, now=NOW)


@pytest.mark.parametrize(
    ("previous", "error", "text"),
    [
        ("urn:proof:missing", InvalidProof, "names no other proof"),
        (["urn:proof:missing"], InvalidProof, "names no other proof"),
        (456321, MalformedCredential, "a proof id or a list of proof ids"),
    ],
    ids=["string-missing", "list-missing", "not-a-string"],
)
def test_proof_chain_errors(previous: Any, error: type[Exception], text: str) -> None:
    doc = _chain("urn:proof:1")
    doc["proof"][1]["previousProof"] = previous
    with pytest.raises(error, match=text):
        verify_credential(doc, now=NOW)


def test_single_proof_naming_a_previous_proof_is_refused() -> None:
    doc = _chain("urn:proof:1", doc=_v2())
    doc["proof"] = doc["proof"][1]
    with pytest.raises(InvalidProof, match="names no other proof"):
        verify_credential(doc, now=NOW)
    with pytest.raises(UnsupportedProof, match="previousProof"):
        verify_credential(doc, now=NOW, suites=("eddsa-rdfc-2022",))


# --------------------------------------------------------------------------- data-model rules

CV2_SHA384 = base64.b64encode(
    hashlib.sha384(jsonld.bundled_bytes(CREDENTIALS_V2) or b"").digest()
).decode()
CV2_SHA256_U = "u" + base64.urlsafe_b64encode(
    hashlib.sha256(jsonld.bundled_bytes(CREDENTIALS_V2) or b"").digest()
).decode().rstrip("=")
# the credentials v2 context as published in July 2024 (identity/contexts/revisions.json)
CV2_2024_SHA384 = "NSOcNpmdIVUxIJGvGUoe22FjTWrXiaXlsZ8q6912LdnR3KraQO2n75Ica4wK4Qeg"
CV2_2024_SHA256_U = "uJKGMkOmFbVJhEfKTduMC2XCyvRAYLjOVmZWwIH1wQ7k"


def _v2(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "@context": [CREDENTIALS_V2, "https://www.w3.org/ns/credentials/examples/v2"],
        "type": ["VerifiableCredential"],
        "issuer": ISSUER.did,
        "credentialSubject": {"id": "did:example:subject"},
    }
    doc.update(changes)
    return doc


TYPED = {"id": "https://x.test/1", "type": "ExampleThing"}
BROKEN: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    ("subject-empty", lambda: _v2(credentialSubject={}), "4.8 Credential Subject"),
    (
        "subject-one-of-two-empty",
        lambda: _v2(credentialSubject=[{"id": "did:example:s"}, {}]),
        "4.8 Credential Subject",
    ),
    ("id-not-url", lambda: _v2(id="not a url"), "4.4 Identifiers"),
    ("id-list", lambda: _v2(id=["urn:a", "urn:b"]), "4.4 Identifiers"),
    ("subject-id-not-url", lambda: _v2(credentialSubject={"id": "subject 1"}), "4.4 Identifiers"),
    (
        "name-extra-key",
        lambda: _v2(name={"@value": "n", "@language": "en", "url": "x"}),
        "4.6 Names and Descriptions",
    ),
    (
        "issuer-description-number",
        lambda: _v2(issuer={"id": ISSUER.did, "description": 5}),
        "4.6 Names and Descriptions",
    ),
    (
        "status-without-type",
        lambda: _v2(credentialStatus={"id": "https://x.test/s"}),
        "4.10 Status",
    ),
    ("status-id-not-url", lambda: _v2(credentialStatus={**TYPED, "id": "s 1"}), "4.10 Status"),
    (
        "schema-without-type",
        lambda: _v2(credentialSchema={"id": "https://x.test/schema"}),
        "4.11 Data Schemas",
    ),
    (
        "schema-without-id",
        lambda: _v2(credentialSchema={"type": "JsonSchema"}),
        "4.11 Data Schemas",
    ),
    (
        "refresh-without-type",
        lambda: _v2(refreshService={"id": "https://x.test/r"}),
        "5.4 Refreshing",
    ),
    (
        "terms-without-type",
        lambda: _v2(termsOfUse=[TYPED, {"id": "https://x.test/t"}]),
        "5.5 Terms of Use",
    ),
    ("evidence-without-type", lambda: _v2(evidence={"id": "https://x.test/e"}), "5.6 Evidence"),
    (
        "related-strings",
        lambda: _v2(relatedResource=[CREDENTIALS_V2]),
        "5.3 Integrity of Related Resources",
    ),
    (
        "related-without-id",
        lambda: _v2(relatedResource=[{"digestSRI": "sha384-" + CV2_SHA384}]),
        "5.3 Integrity of Related Resources",
    ),
    (
        "related-duplicate-id",
        lambda: _v2(
            relatedResource=[
                {"id": CREDENTIALS_V2, "digestSRI": "sha384-" + CV2_SHA384},
                {"id": CREDENTIALS_V2, "digestMultibase": CV2_SHA256_U},
            ]
        ),
        "5.3 Integrity of Related Resources",
    ),
    (
        "related-without-digest",
        lambda: _v2(relatedResource=[{"id": CREDENTIALS_V2}]),
        "5.3 Integrity of Related Resources",
    ),
    (
        "related-wrong-sri",
        lambda: _v2(
            relatedResource=[
                {
                    "id": CREDENTIALS_V2,
                    "digestSRI": "sha384-" + base64.b64encode(b"\0" * 48).decode(),
                }
            ]
        ),
        "digestSRI does not match",
    ),
    (
        "related-wrong-multibase",
        lambda: _v2(
            relatedResource=[
                {
                    "id": CREDENTIALS_V2,
                    "digestMultibase": "uM4RgWQc3RUDtjJCSgTJtTfvpZ7SPEg_LNO0ESlovQC0",
                }
            ]
        ),
        "digestMultibase does not match",
    ),
    (
        "related-sri-not-sri",
        lambda: _v2(
            relatedResource=[{"id": CREDENTIALS_V2, "digestSRI": "sha384-_rCVIV7fSXXTNIvpiq26jRDy"}]
        ),
        "not an SRI hash expression",
    ),
    (
        "valid-until-before-valid-from",
        lambda: _v2(validFrom="2025-03-01T00:00:00Z", validUntil="2025-02-01T00:00:00Z"),
        "4.9 Validity Period",
    ),
]


@pytest.mark.parametrize(("make", "rule"), [pytest.param(m, r, id=i) for i, m, r in BROKEN])
def test_issuer_refuses_what_the_data_model_forbids(make: Callable[[], Any], rule: str) -> None:
    with pytest.raises(DataModelViolation, match=rule):
        issue(make())


@pytest.mark.parametrize(("make", "rule"), [pytest.param(m, r, id=i) for i, m, r in BROKEN])
def test_verifier_reports_what_the_data_model_forbids(make: Callable[[], Any], rule: str) -> None:
    doc = make()
    signed = {**doc, "proof": raw_proof(doc, ISSUER, "eddsa-jcs-2022")}
    with pytest.raises(DataModelViolation, match=rule):
        verify_credential(signed, now=NOW)


@pytest.mark.parametrize(
    "related",
    [
        {"id": CREDENTIALS_V2, "digestSRI": "sha384-" + CV2_SHA384},
        {"id": CREDENTIALS_V2, "digestMultibase": CV2_SHA256_U},
        {
            "id": CREDENTIALS_V2,
            "digestSRI": "sha384-" + CV2_2024_SHA384,
            "mediaType": "application/ld+json",
        },
        {"id": CREDENTIALS_V2, "digestMultibase": CV2_2024_SHA256_U},
        # a resource didmesh does not hold: only the form of the digest can be checked
        {
            "id": "https://files.didmesh.test/terms.pdf",
            "digestSRI": "sha256-" + base64.b64encode(b"\1" * 32).decode(),
        },
    ],
    ids=[
        "bundled-sri",
        "bundled-multibase",
        "published-2024-sri",
        "published-2024-multibase",
        "not-held-offline",
    ],
)
def test_related_resource_digests_that_match(related: dict[str, Any]) -> None:
    signed = issue(_v2(relatedResource=[related]))
    assert verify_credential(signed, now=NOW).issuer == ISSUER.did


@pytest.mark.parametrize(
    "field", ["credentialStatus", "credentialSchema", "refreshService", "termsOfUse", "evidence"]
)
def test_typed_properties_with_a_type_issue(field: str) -> None:
    value = {"id": "https://x.test/1", "type": "ExampleThing"}
    signed = issue(_v2(**{field: [value, copy.deepcopy(value) | {"id": "https://x.test/2"}]}))
    assert verify_credential(signed, now=NOW)


def test_language_values_for_names_issue() -> None:
    doc = _v2(
        name=[
            {"@value": "Carte", "@language": "fr"},
            {"@value": "Card", "@language": "en", "@direction": "ltr"},
        ],
        description="A card",
    )
    assert verify_credential(issue(doc), now=NOW)


def test_blank_node_count_is_capped_before_canonicalizing() -> None:
    # RDFC-1.0 work grows faster than linearly in blank nodes; a document with more than
    # MAX_BLANK_NODES objects without ids is refused before any hashing.
    items = [{"club": f"c{i}"} for i in range(jsonld.MAX_BLANK_NODES + 1)]
    doc = card(credentialSubject={"id": HOLDER.did, "level": items})
    with pytest.raises(MalformedCredential, match="blank nodes"):
        issue(doc)
    ok = card(credentialSubject={"id": HOLDER.did, "level": items[:100]})
    assert verify_credential(issue(ok), now=NOW)
