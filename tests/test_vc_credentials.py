"""Issue and verify credentials and presentations: round trips and every failure
getting its own error (specs/credentials.md, "Verification")."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from didmesh.identity.credentials import (
    MAX_DOCUMENT_BYTES,
    VerifiedCredential,
    issue_credential,
    issue_presentation,
    parse_untrusted,
    verify_credential,
    verify_presentation,
)
from didmesh.identity.errors import (
    ChallengeMismatch,
    CredentialError,
    DocumentTooLarge,
    DomainMismatch,
    Expired,
    InvalidProof,
    KeyNotAuthorized,
    MalformedCredential,
    NotYetValid,
    RemoteError,
    UndefinedTerm,
    UnexpectedIssuer,
    UnknownContext,
    UnsupportedProof,
    WrongProofPurpose,
)
from vc_support import (
    CREATED,
    HOLDER,
    ISSUER,
    NOW,
    OTHER,
    V1_SUITES,
    V2_SUITES,
    presentation,
    sign_raw,
    v1_credential,
    v2_credential,
)

ROUND_TRIPS = [(2, s) for s in V2_SUITES] + [(1, s) for s in V1_SUITES]


def _cred(version: int) -> dict[str, Any]:
    return v2_credential() if version == 2 else v1_credential()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("version", "suite"), ROUND_TRIPS, ids=lambda x: f"v{x}" if x in (1, 2) else x
)
@pytest.mark.parametrize("form", ["dict", "str", "bytes"])
def test_credential_round_trip(version: int, suite: str, form: str) -> None:
    unsigned = _cred(version)
    before = copy.deepcopy(unsigned)
    signed = issue_credential(unsigned, ISSUER, suite=suite, created=CREATED)
    assert unsigned == before, "issue_credential must not change its input"
    doc: Any = {"dict": signed, "str": json.dumps(signed), "bytes": json.dumps(signed).encode()}[
        form
    ]
    got = verify_credential(doc, now=NOW, expected_issuer=ISSUER.did)
    assert isinstance(got, VerifiedCredential)
    assert got.issuer == ISSUER.did
    assert got.subject_ids == (HOLDER.did,)
    assert got.suite == suite
    assert got.document == signed
    assert signed["proof"]["proofPurpose"] == "assertionMethod"
    assert signed["proof"]["created"] == "2025-06-01T11:00:00Z"
    if version == 2:
        assert got.types == ("VerifiableCredential", "SessionInvite")
        assert got.valid_from == datetime(2025, 1, 1, tzinfo=UTC)
        assert got.valid_until == datetime(2026, 1, 1, tzinfo=UTC)
    else:
        assert got.valid_from == datetime(2025, 1, 1, tzinfo=UTC)
        assert got.valid_until is None


@pytest.mark.parametrize(
    ("version", "suite"), ROUND_TRIPS, ids=lambda x: f"v{x}" if x in (1, 2) else x
)
def test_presentation_round_trip(version: int, suite: str) -> None:
    c1 = issue_credential(_cred(version), ISSUER, suite=suite, created=CREATED)
    c2 = issue_credential(
        {**_cred(version), "id": "urn:uuid:second"}, ISSUER, suite="eddsa-jcs-2022"
    )
    vp = issue_presentation(
        presentation(version, [c1, c2]),
        HOLDER,
        challenge="nonce-123",
        domain="relay.example",
        suite=suite,
        created=CREATED,
    )
    got = verify_presentation(vp, now=NOW, challenge="nonce-123", domain="relay.example")
    assert got.holder == HOLDER.did
    assert got.suite == suite
    assert [c.document["id"] for c in got.credentials] == [c1["id"], "urn:uuid:second"]
    assert vp["proof"]["proofPurpose"] == "authentication"
    assert (got.challenge, got.domain) == ("nonce-123", "relay.example")


def test_presentation_holder_is_filled_in_and_may_be_empty() -> None:
    vp = presentation(2, [])
    del vp["holder"]
    del vp["verifiableCredential"]
    signed = issue_presentation(vp, HOLDER, challenge="c", domain="d")
    assert signed["holder"] == HOLDER.did
    got = verify_presentation(signed, now=NOW, challenge="c", domain="d")
    assert got.credentials == ()


def test_issuer_object_form_is_accepted() -> None:
    doc = v2_credential(issuer={"id": ISSUER.did, "name": "Alice"})
    got = verify_credential(issue_credential(doc, ISSUER), now=NOW)
    assert got.issuer == ISSUER.did


def test_ed25519_2020_issuance_adds_its_context_and_v1_di_adds_data_integrity() -> None:
    ed = issue_credential(v1_credential(), ISSUER, suite="Ed25519Signature2020")
    assert ed["@context"][-1] == "https://w3id.org/security/suites/ed25519-2020/v1"
    assert ed["proof"]["type"] == "Ed25519Signature2020"
    di = issue_credential(v1_credential(), ISSUER, suite="eddsa-rdfc-2022")
    assert di["@context"][-1] == "https://w3id.org/security/data-integrity/v2"


def test_jcs_proof_carries_the_document_context() -> None:
    signed = issue_credential(v2_credential(), ISSUER, suite="eddsa-jcs-2022")
    assert signed["proof"]["@context"] == signed["@context"]
    rdfc = issue_credential(v2_credential(), ISSUER, suite="eddsa-rdfc-2022")
    assert "@context" not in rdfc["proof"]


# --------------------------------------------------------------------------- bad credentials

Case = tuple[str, Callable[[], Any], type[Exception], str]


def _signed(suite: str = "eddsa-rdfc-2022", **changes: Any) -> dict[str, Any]:
    return issue_credential(v2_credential(**changes), ISSUER, suite=suite, created=CREATED)


def _tampered_subject(suite: str) -> dict[str, Any]:
    doc = _signed(suite)
    doc["credentialSubject"]["threshold"] = 2
    return doc


def _with(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out.update(changes)
    return out


def _proof_with(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["proof"].update(changes)
    return out


BAD_CREDENTIALS: list[Case] = [
    ("not-json", lambda: b"{not json", MalformedCredential, "not valid JSON"),
    ("json-array", lambda: b"[1, 2]", MalformedCredential, "not a JSON object"),
    ("not-utf8", lambda: b'{"a": "\xff"}', MalformedCredential, "UTF-8"),
    ("duplicate-key", lambda: b'{"a": 1, "a": 2}', MalformedCredential, "repeats the key"),
    ("nan", lambda: b'{"a": NaN}', MalformedCredential, "NaN"),
    (
        "oversized-bytes",
        lambda: b" " * (MAX_DOCUMENT_BYTES + 1),
        DocumentTooLarge,
        "limit",
    ),
    (
        "oversized-dict",
        lambda: v2_credential(description="x" * MAX_DOCUMENT_BYTES),
        DocumentTooLarge,
        "limit",
    ),
    (
        "unknown-context",
        lambda: _with(
            _signed(), **{"@context": [*_signed()["@context"], "https://evil.example/ctx"]}
        ),
        UnknownContext,
        "'https://evil.example/ctx' is not bundled; didmesh never fetches contexts",
    ),
    (
        "not-a-vc-context",
        lambda: _with(_signed(), **{"@context": ["https://w3id.org/security/v2"]}),
        MalformedCredential,
        "first @context",
    ),
    (
        "no-vc-type",
        lambda: _with(_signed(), type=["SessionInvite"]),
        MalformedCredential,
        "VerifiableCredential",
    ),
    (
        "no-issuer",
        lambda: {k: v for k, v in _signed().items() if k != "issuer"},
        MalformedCredential,
        "issuer",
    ),
    (
        "no-proof",
        lambda: {k: v for k, v in _signed().items() if k != "proof"},
        MalformedCredential,
        "no proof",
    ),
    (
        "proof-set-with-one-bad-proof",
        lambda: _with(
            _signed(),
            proof=[_signed()["proof"], {**_signed()["proof"], "created": "2025-06-01T11:30:00Z"}],
        ),
        InvalidProof,
        "proof #2 of 2",
    ),
    (
        "unsupported-type",
        lambda: _proof_with(_signed(), type="RsaSignature2018"),
        UnsupportedProof,
        "RsaSignature2018",
    ),
    (
        "unsupported-cryptosuite",
        lambda: _proof_with(_signed(), cryptosuite="ecdsa-rdfc-2019"),
        UnsupportedProof,
        "ecdsa-rdfc-2019",
    ),
    (
        "wrong-purpose",
        lambda: sign_raw(v2_credential(), ISSUER, proofPurpose="authentication"),
        WrongProofPurpose,
        "'authentication', expected 'assertionMethod'",
    ),
    (
        "key-of-another-did",
        lambda: sign_raw(v2_credential(), OTHER),
        KeyNotAuthorized,
        "not controlled by",
    ),
    (
        "key-not-listed",
        lambda: sign_raw(v2_credential(), ISSUER, verificationMethod=ISSUER.did + "#not-a-key"),
        KeyNotAuthorized,
        "not an assertionMethod method",
    ),
    (
        "unresolvable-method",
        lambda: sign_raw(
            v2_credential(issuer="did:web:example.com"),
            ISSUER,
            verificationMethod="did:web:example.com#key-1",
        ),
        KeyNotAuthorized,
        "cannot be resolved",
    ),
    (
        "tampered-rdfc",
        lambda: _tampered_subject("eddsa-rdfc-2022"),
        InvalidProof,
        "does not verify",
    ),
    ("tampered-jcs", lambda: _tampered_subject("eddsa-jcs-2022"), InvalidProof, "does not verify"),
    (
        "bad-proof-value",
        lambda: _proof_with(_signed(), proofValue="z1111"),
        InvalidProof,
        "64",
    ),
    (
        "proof-context-differs",
        lambda: _proof_with(
            _signed("eddsa-jcs-2022"), **{"@context": ["https://www.w3.org/ns/credentials/v2"]}
        ),
        InvalidProof,
        "differs",
    ),
    (
        "relative-id-rdfc",
        lambda: _with(_signed(), id="not-absolute"),
        MalformedCredential,
        "id must be a single URL, not 'not-absolute' (VC Data Model 2.0, 4.4 Identifiers)",
    ),
    (
        "undefined-term-rdfc",
        lambda: _with(_signed(), nickname="bob"),
        UndefinedTerm,
        "'nickname'",
    ),
    (
        "undefined-subject-term-rdfc",
        lambda: _with(
            _signed(), credentialSubject={**_signed()["credentialSubject"], "colour": "red"}
        ),
        UndefinedTerm,
        "'colour'",
    ),
    (
        "undefined-type-rdfc",
        lambda: _with(_signed(), type=["VerifiableCredential", "MadeUpType"]),
        UndefinedTerm,
        "'MadeUpType'",
    ),
    (
        "not-yet-valid",
        lambda: _signed(validFrom="2025-07-01T00:00:00Z"),
        NotYetValid,
        "2025-07-01T00:00:00+00:00",
    ),
    (
        "expired",
        lambda: _signed(validUntil="2025-05-01T00:00:00Z"),
        Expired,
        "expired at 2025-05-01T00:00:00+00:00",
    ),
    (
        "v1-not-yet-valid",
        lambda: issue_credential(
            v1_credential(issuanceDate="2025-07-01T00:00:00Z"), ISSUER, suite="Ed25519Signature2020"
        ),
        NotYetValid,
        "issuanceDate",
    ),
    (
        "v1-expired",
        lambda: issue_credential(
            v1_credential(expirationDate="2025-01-02T00:00:00Z"), ISSUER, suite="eddsa-jcs-2022"
        ),
        Expired,
        "expirationDate",
    ),
    (
        "proof-expired",
        lambda: sign_raw(v2_credential(), ISSUER, expires="2025-05-01T00:00:00Z"),
        Expired,
        "proof expired",
    ),
    (
        "bad-date",
        lambda: sign_raw(v2_credential(validFrom="yesterday"), ISSUER),
        MalformedCredential,
        "validFrom",
    ),
    (
        "date-without-zone",
        lambda: sign_raw(v2_credential(validFrom="2025-01-01T00:00:00"), ISSUER),
        MalformedCredential,
        "time zone",
    ),
    (
        "v1-date-in-v2",
        lambda: sign_raw(v2_credential(issuanceDate="2025-01-01T00:00:00Z"), ISSUER),
        MalformedCredential,
        "issuanceDate is not a VC 2.0 property",
    ),
]


@pytest.mark.parametrize(
    ("make", "error", "text"),
    [pytest.param(m, e, t, id=i) for i, m, e, t in BAD_CREDENTIALS],
)
def test_bad_credential_gets_its_error(
    make: Callable[[], Any], error: type[Exception], text: str
) -> None:
    doc = make()
    with pytest.raises(error) as info:
        verify_credential(doc, now=NOW)
    assert text in str(info.value)
    assert isinstance(info.value, CredentialError)
    assert isinstance(info.value, RemoteError)


def test_jcs_signs_the_json_itself_so_an_unknown_property_is_covered() -> None:
    # Under eddsa-jcs-2022 nothing is dropped: the property is signed, and changing it fails.
    doc = sign_raw(v2_credential(nickname="bob"), ISSUER, suite="eddsa-jcs-2022")
    assert verify_credential(doc, now=NOW).document["nickname"] == "bob"
    doc["nickname"] = "eve"
    with pytest.raises(InvalidProof):
        verify_credential(doc, now=NOW)


def test_messages_name_the_document() -> None:
    doc = _signed(validUntil="2025-05-01T00:00:00Z")
    with pytest.raises(Expired, match=r"credential urn:uuid:0b5c7a52"):
        verify_credential(doc, now=NOW)


def test_expected_issuer() -> None:
    doc = _signed()
    assert verify_credential(doc, now=NOW, expected_issuer=ISSUER.did).issuer == ISSUER.did
    with pytest.raises(UnexpectedIssuer, match="not by the expected"):
        verify_credential(doc, now=NOW, expected_issuer=OTHER.did)


def test_validity_edges_are_inclusive() -> None:
    doc = _signed()
    verify_credential(doc, now=datetime(2025, 1, 1, tzinfo=UTC))
    verify_credential(doc, now=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(NotYetValid):
        verify_credential(doc, now=datetime(2025, 1, 1, tzinfo=UTC) - timedelta(seconds=1))
    with pytest.raises(Expired):
        verify_credential(doc, now=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=1))


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_credential(_signed(), now=datetime(2025, 6, 1))


def test_parse_untrusted_checks_size_before_parsing() -> None:
    assert parse_untrusted('{"a": 1}') == {"a": 1}
    with pytest.raises(DocumentTooLarge, match="11 bytes; the limit is 10"):
        parse_untrusted(b'{"a": 123}\n', max_bytes=10)
    with pytest.raises(DocumentTooLarge):
        parse_untrusted("[" * 20, max_bytes=10)
    with pytest.raises(MalformedCredential, match="nested too deeply"):
        parse_untrusted("[" * 100_000 + "]" * 100_000, max_bytes=10**6)


# --------------------------------------------------------------------------- issuing misuse


def test_issue_rejects_what_it_cannot_sign_honestly() -> None:
    with pytest.raises(UnsupportedProof, match="Ed25519Signature2018"):
        issue_credential(v2_credential(), ISSUER, suite="Ed25519Signature2018")
    with pytest.raises(UnsupportedProof, match="bbs-2023"):
        issue_credential(v2_credential(), ISSUER, suite="bbs-2023")
    with pytest.raises(UnsupportedProof, match="only for VC 1.1"):
        issue_credential(v2_credential(), ISSUER, suite="Ed25519Signature2020")
    with pytest.raises(KeyNotAuthorized, match="signing key"):
        issue_credential(v2_credential(), OTHER)
    with pytest.raises(MalformedCredential, match="already has a proof"):
        issue_credential(_signed(), ISSUER)
    for suite in V2_SUITES:
        with pytest.raises(UndefinedTerm, match="'nickname'"):
            issue_credential(v2_credential(nickname="bob"), ISSUER, suite=suite)
    with pytest.raises(UnknownContext):
        issue_credential(
            v2_credential(**{"@context": [*v2_credential()["@context"], "https://x.example"]}),
            ISSUER,
        )
    with pytest.raises(KeyNotAuthorized, match="holder"):
        issue_presentation(presentation(2, []), OTHER, challenge="c", domain="d")
    with pytest.raises(ValueError, match="challenge"):
        issue_presentation(presentation(2, []), HOLDER, challenge="", domain="d")


# --------------------------------------------------------------------------- bad presentations


def _vp(
    creds: list[dict[str, Any]] | None = None,
    *,
    key: Any = HOLDER,
    suite: str = "eddsa-rdfc-2022",
    challenge: str = "c-1",
    domain: str = "d.example",
) -> dict[str, Any]:
    return issue_presentation(
        presentation(2, creds if creds is not None else [_signed()]),
        key,
        challenge=challenge,
        domain=domain,
        suite=suite,
        created=CREATED,
    )


def _vp_raw(**options: Any) -> dict[str, Any]:
    opts = {"proofPurpose": "authentication", "challenge": "c-1", "domain": "d.example"}
    opts.update(options)
    opts = {k: v for k, v in opts.items() if v is not None}
    return sign_raw(presentation(2, [_signed()]), HOLDER, suite="eddsa-rdfc-2022", **opts)


def _vp_raw_with(creds: list[Any]) -> dict[str, Any]:
    opts = {"proofPurpose": "authentication", "challenge": "c-1", "domain": "d.example"}
    return sign_raw(presentation(2, creds), HOLDER, **opts)


def _vp_with_credential(cred: dict[str, Any]) -> dict[str, Any]:
    return _vp([_signed(), cred])


BAD_PRESENTATIONS: list[Case] = [
    ("wrong-challenge", lambda: _vp(challenge="c-2"), ChallengeMismatch, "challenge"),
    ("wrong-domain", lambda: _vp(domain="evil.example"), DomainMismatch, "'evil.example'"),
    ("no-challenge", lambda: _vp_raw(challenge=None), ChallengeMismatch, "challenge"),
    ("no-domain", lambda: _vp_raw(domain=None), DomainMismatch, "domain"),
    (
        "assertion-purpose",
        lambda: _vp_raw(proofPurpose="assertionMethod"),
        WrongProofPurpose,
        "expected 'authentication'",
    ),
    (
        "signed-by-non-holder",
        lambda: sign_raw(
            presentation(2, []),
            OTHER,
            suite="eddsa-rdfc-2022",
            proofPurpose="authentication",
            challenge="c-1",
            domain="d.example",
        ),
        KeyNotAuthorized,
        "not controlled by",
    ),
    (
        "holder-removed-after-signing",
        lambda: {k: v for k, v in _vp().items() if k != "holder"},
        InvalidProof,
        "signature does not verify",
    ),
    (
        "no-vp-type",
        lambda: _with(_vp(), type=["VerifiableCredential"]),
        MalformedCredential,
        "VerifiablePresentation",
    ),
    ("tampered", lambda: _with(_vp(), holder=OTHER.did), KeyNotAuthorized, "not controlled"),
    (
        "tampered-credential-list",
        lambda: _with(_vp(), verifiableCredential=[]),
        InvalidProof,
        "does not verify",
    ),
    (
        "expired-credential",
        lambda: _vp_with_credential(_signed(validUntil="2025-05-01T00:00:00Z")),
        Expired,
        "credential #1 (urn:uuid:0b5c7a52-6f1e-4c3a-9d55-2d1f8e4b7a10) in presentation",
    ),
    (
        "forged-credential",
        lambda: _vp_with_credential(_tampered_subject("eddsa-jcs-2022")),
        InvalidProof,
        "credential #1",
    ),
    (
        "credential-by-wrong-key",
        lambda: _vp_with_credential(sign_raw(v2_credential(), OTHER)),
        KeyNotAuthorized,
        "credential #1",
    ),
    (
        "credential-not-object",
        lambda: _vp_raw_with(["eyJhbGciOi.e30.sig"]),
        MalformedCredential,
        "not an embedded credential",
    ),
    (
        "too-many-credentials",
        lambda: _with(_vp(), verifiableCredential=[{}] * 65),
        MalformedCredential,
        "limit is 64",
    ),
]


@pytest.mark.parametrize(
    ("make", "error", "text"),
    [pytest.param(m, e, t, id=i) for i, m, e, t in BAD_PRESENTATIONS],
)
def test_bad_presentation_gets_its_error(
    make: Callable[[], Any], error: type[Exception], text: str
) -> None:
    doc = make()
    with pytest.raises(error) as info:
        verify_presentation(doc, now=NOW, challenge="c-1", domain="d.example")
    assert text in str(info.value)


def test_presentation_credentials_use_the_same_now() -> None:
    vp = _vp([_signed(validFrom="2025-06-01T12:00:01Z")])
    with pytest.raises(NotYetValid, match="credential #0"):
        verify_presentation(vp, now=NOW, challenge="c-1", domain="d.example")
    later = NOW + timedelta(seconds=1)
    assert verify_presentation(vp, now=later, challenge="c-1", domain="d.example").credentials


@pytest.mark.parametrize(
    ("version", "suite"), ROUND_TRIPS, ids=lambda x: f"v{x}" if x in (1, 2) else x
)
def test_presentation_expires_is_signed_and_enforced(version: int, suite: str) -> None:
    """issue_presentation(expires=...) puts the proof's own ``expires`` under the signature:
    the presentation verifies until then, and is Expired after it."""
    expires = NOW + timedelta(hours=1)
    vp = issue_presentation(presentation(version, []), HOLDER, challenge="c", domain="d",
                            suite=suite, created=CREATED, expires=expires)  # fmt: skip
    assert vp["proof"]["expires"] == "2025-06-01T13:00:00Z"
    assert verify_presentation(vp, now=expires, challenge="c", domain="d").holder == HOLDER.did
    with pytest.raises(Expired, match="proof expired at 2025-06-01T13:00:00"):
        verify_presentation(vp, now=expires + timedelta(seconds=1), challenge="c", domain="d")
    pushed = _with(vp, proof={**vp["proof"], "expires": "2099-01-01T00:00:00Z"})
    with pytest.raises(InvalidProof):  # the expiry is signed: it cannot be pushed back
        verify_presentation(pushed, now=NOW, challenge="c", domain="d")


@pytest.mark.parametrize(("expires", "text"), [
    (CREATED, "after created"), (CREATED - timedelta(seconds=1), "after created"),
    (datetime(2026, 1, 1), "timezone-aware"),
], ids=["at-created", "before-created", "naive"])
def test_presentation_expires_must_be_aware_and_after_created(expires: datetime,
                                                             text: str) -> None:
    with pytest.raises(ValueError, match=text):
        issue_presentation(presentation(2, []), HOLDER, challenge="c", domain="d",
                           created=CREATED, expires=expires)
