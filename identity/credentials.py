"""Verifiable Credentials and Presentations: issue and verify (specs/credentials.md).

The recipe layer over :mod:`didmesh.identity.proofs`. Verification checks, in order:

1. size (before parsing) and JSON well-formedness (no duplicate keys, no NaN);
2. structure: ``@context`` made of bundled context URLs, VC 2.0 or 1.1 first; ``type``
   includes VerifiableCredential / VerifiablePresentation; ``issuer`` (string or
   ``{"id"}``) and ``credentialSubject`` for a VC, ``holder`` for a VP;
3. exactly one proof, of an accepted suite (anything else is UnsupportedProof);
4. ``proofPurpose``: assertionMethod for a VC, authentication for a VP;
5. the verification method belongs to the issuer (VC) or holder (VP) and is listed
   under that relationship in the resolved DID document;
6. the signature;
7. the validity window against the caller's ``now`` (v2 validFrom/validUntil, v1
   issuanceDate/expirationDate, and a proof's ``expires``);
8. for a VP: challenge and domain (constant-time), then every embedded credential,
   each with the same ``now``.
"""

from __future__ import annotations

import copy
import functools
import hmac
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import datamodel
from .errors import (
    ChallengeMismatch,
    CredentialError,
    DataModelViolation,
    DocumentTooLarge,
    DomainMismatch,
    Expired,
    IdentityError,
    InvalidProof,
    KeyNotAuthorized,
    MalformedCredential,
    NotYetValid,
    UnexpectedIssuer,
    UnsupportedProof,
    WrongProofPurpose,
)
from .jsonld import (
    CREDENTIALS_V1,
    CREDENTIALS_V2,
    DATA_INTEGRITY_V2,
    ED25519_2020_V1,
    canonize,
    check_context_list,
)
from .keys import IdentityKey
from .proofs import ISSUABLE, Suite, suite_for_proof, suite_named
from .resolver import controller_of, ed25519_key_for
from .strict_json import loads_strict

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_CREDENTIALS_PER_PRESENTATION = 64
MAX_PROOFS = 8

VERIFIABLE_CREDENTIAL = "VerifiableCredential"
VERIFIABLE_PRESENTATION = "VerifiablePresentation"
ASSERTION_METHOD = "assertionMethod"
AUTHENTICATION = "authentication"

_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

Json = dict[str, Any]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class VerifiedCredential:
    issuer: str
    subject_ids: tuple[str, ...]
    types: tuple[str, ...]
    valid_from: datetime | None
    valid_until: datetime | None
    suite: str
    document: dict[str, Any]


@dataclass(frozen=True)
class VerifiedPresentation:
    holder: str | None  # None: the presentation names no holder (VC 2.0 allows that)
    signer: str  # the DID whose key made the (first, or holder's) proof
    credentials: tuple[VerifiedCredential, ...]
    suite: str
    challenge: str | None
    domain: str | None
    document: dict[str, Any]


# --------------------------------------------------------------------------- keys


@functools.lru_cache(maxsize=1024)
def _did_key_for(verification_method: str, relationship: str) -> bytes:
    return ed25519_key_for(verification_method, relationship)


def key_for(verification_method: str, relationship: str) -> bytes:
    """The Ed25519 key of a verification method listed under ``relationship``.

    did:key resolution is a pure function of the DID string, so its results are cached
    (building a did:key document costs more than checking a JCS proof); other methods
    are resolved every time.
    """
    if verification_method.startswith("did:key:"):
        return _did_key_for(verification_method, relationship)
    return ed25519_key_for(verification_method, relationship)


# --------------------------------------------------------------------------- parsing


def parse_untrusted(data: bytes | str, max_bytes: int = MAX_DOCUMENT_BYTES) -> dict[str, Any]:
    """Parse a credential or presentation received from elsewhere.

    The size is checked before parsing (:class:`DocumentTooLarge`); anything that is not
    one JSON object in UTF-8, repeats a key, contains NaN/Infinity or is nested too deeply
    is a :class:`MalformedCredential` (identity/strict_json.py).
    """
    doc = loads_strict(
        data,
        max_bytes=max_bytes,
        error=MalformedCredential,
        too_large=DocumentTooLarge,
        what="document",
    )
    if not isinstance(doc, dict):
        raise MalformedCredential(f"document is a JSON {type(doc).__name__}, not a JSON object")
    return doc


def _as_document(doc: dict[str, Any] | bytes | str, what: str) -> Json:
    if isinstance(doc, dict):
        try:
            text = json.dumps(doc, ensure_ascii=False, allow_nan=False)  # no NaN/Infinity
            size = len(text.encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError, RecursionError):
            raise MalformedCredential(f"{what} is not plain JSON") from None
        if size > MAX_DOCUMENT_BYTES:
            raise DocumentTooLarge(f"{what} is {size} bytes; the limit is {MAX_DOCUMENT_BYTES}")
        # the same decisions as for bytes (strict_json: depth, number length, lone
        # surrogates), whoever built this dict
        parse_untrusted(json.dumps(doc, allow_nan=False), max_bytes=6 * MAX_DOCUMENT_BYTES)
        return doc
    return parse_untrusted(doc)


def _received(doc: dict[str, Any] | bytes | str, kind: str, now: datetime) -> tuple[Json, str]:
    """Once ``now`` is checked, the document to verify and how its errors name it:
    ``kind`` (credential, presentation), with the document's id if it has one."""
    _check_now(now)
    document = _as_document(doc, kind)
    ident = document.get("id")
    return document, f"{kind} {ident[:80]}" if isinstance(ident, str) else kind


# --------------------------------------------------------------------------- helpers


def parse_datetime(value: object, field: str, what: str) -> datetime:
    """An XML Schema dateTime with a time zone (``2024-01-01T00:00:00Z``)."""
    if not isinstance(value, str):
        raise MalformedCredential(f"{what}: {field} must be a dateTime string")
    m = _DATETIME.match(value)
    if not m:
        raise MalformedCredential(
            f"{what}: {field} {value[:40]!r} is not a dateTime with a time zone "
            "(like 2024-01-01T00:00:00Z)"
        )
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise MalformedCredential(f"{what}: {field} {value[:40]!r} is not a valid date") from None


def format_datetime(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("created must be a timezone-aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_now(now: datetime) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")


def _version(contexts: list[Any], what: str) -> int:
    if contexts[0] == CREDENTIALS_V2:
        return 2
    if contexts[0] == CREDENTIALS_V1:
        return 1
    raise MalformedCredential(
        f"{what}: the first @context must be {CREDENTIALS_V2} (VC 2.0) or "
        f"{CREDENTIALS_V1} (VC 1.1), not {str(contexts[0])[:80]!r}"
    )


def _types(doc: Mapping[str, Any], required: str, what: str) -> tuple[str, ...]:
    t = doc.get("type")
    types = t if isinstance(t, list) else [t]
    if not all(isinstance(x, str) for x in types) or required not in types:
        raise MalformedCredential(f"{what}: type must include {required!r} (got {t!r:.80})")
    return tuple(types)


def _id_of(value: object, field: str, what: str) -> str:
    """A string or an object with a string ``id``."""
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise MalformedCredential(f"{what}: {field} must be a URL or an object with an id")
    return value


def _subject_ids(doc: Mapping[str, Any], what: str) -> tuple[str, ...]:
    subject = doc.get("credentialSubject")
    subjects: list[Any] = subject if isinstance(subject, list) else [subject]
    if not subjects or not all(isinstance(s, dict) for s in subjects):
        raise MalformedCredential(f"{what}: credentialSubject must be an object or objects")
    return tuple(s["id"] for s in subjects if isinstance(s.get("id"), str))


_V1_ONLY = ("issuanceDate", "expirationDate")
_V2_ONLY = ("validFrom", "validUntil")


def _validity(
    doc: Mapping[str, Any], version: int, what: str
) -> tuple[datetime | None, datetime | None]:
    start_f, end_f = _V2_ONLY if version == 2 else _V1_ONLY
    wrong = [f for f in (_V1_ONLY if version == 2 else _V2_ONLY) if f in doc]
    if wrong:
        raise MalformedCredential(
            f"{what}: {wrong[0]} is not a VC {'2.0' if version == 2 else '1.1'} property "
            f"(use {start_f}/{end_f})"
        )
    if version == 1 and start_f not in doc:
        raise MalformedCredential(f"{what}: a VC 1.1 credential needs issuanceDate")
    start = parse_datetime(doc[start_f], start_f, what) if start_f in doc else None
    end = parse_datetime(doc[end_f], end_f, what) if end_f in doc else None
    if start is not None and end is not None and end < start:
        raise DataModelViolation(
            f"{what}: {end_f} is before {start_f}, so it is never valid "
            "(VC Data Model 2.0, 4.9 Validity Period)"
        )
    return start, end


def _check_window(
    start: datetime | None,
    end: datetime | None,
    now: datetime,
    names: tuple[str, str],
    what: str,
) -> None:
    if start is not None and now < start:
        raise NotYetValid(
            f"{what} is not valid until {start.isoformat()} ({names[0]}); now is {now.isoformat()}"
        )
    if end is not None and now > end:
        raise Expired(f"{what} expired at {end.isoformat()} ({names[1]}); now is {now.isoformat()}")


def _proofs(doc: Mapping[str, Any], what: str, strict: bool) -> list[Json]:
    """The document's proofs: one object, or a proof set (a list). The strict profile
    (protocols that pin suites) accepts exactly one proof object and no chain."""
    proof = doc.get("proof")
    if proof is None:
        raise MalformedCredential(f"{what} has no proof")
    if isinstance(proof, list):
        if strict:
            raise UnsupportedProof(
                f"{what} has a set of {len(proof)} proofs; this protocol accepts exactly "
                "one proof object"
            )
        if not proof:
            raise MalformedCredential(f"{what}: proof is an empty list")
        if len(proof) > MAX_PROOFS:
            raise MalformedCredential(
                f"{what} has {len(proof)} proofs; the limit is {MAX_PROOFS}"
            )
        if not all(isinstance(p, dict) for p in proof):
            raise MalformedCredential(f"{what}: each proof must be an object")
        return list(proof)
    if not isinstance(proof, dict):
        raise MalformedCredential(f"{what}: proof must be an object")
    if strict and "previousProof" in proof:
        raise UnsupportedProof(f"{what}: proof chains (previousProof) are not accepted here")
    return [proof]


def _previous_proofs(proof: Json, proofs: list[Json], what: str) -> list[Json] | None:
    """The proofs a chained proof signs over (Data Integrity 1.0, "previousProof"):
    each id must name another proof of the set (else PROOF_VERIFICATION_ERROR)."""
    if "previousProof" not in proof:
        return None
    prev = proof["previousProof"]
    ids = [prev] if isinstance(prev, str) else prev
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise MalformedCredential(
            f"{what}: previousProof must be a proof id or a list of proof ids"
        )
    matching = []
    for ident in ids:
        found = [p for p in proofs if p is not proof and p.get("id") == ident]
        if not found:
            raise InvalidProof(
                f"{what}: previousProof {ident[:80]!r} names no other proof of the document"
            )
        matching.append(found[0])
    return matching


def _verify_one(
    unsecured: Json,
    proof: Json,
    controller: str | None,
    purpose: str,
    what: str,
    now: datetime,
    suites: Collection[str] | None,
) -> tuple[Suite, str]:
    """One proof: suite (pinned?), purpose, key, signature, own expiry. ``controller``,
    if given, must control the verification method. Returns the suite and the signer."""
    suite = suite_for_proof(proof)
    if suites is not None and suite.name not in suites:
        raise UnsupportedProof(
            f"{what}: proof suite {suite.name} is not accepted here "
            f"(expected {', '.join(sorted(suites))})"
        )
    got = proof.get("proofPurpose")
    if got != purpose:
        raise WrongProofPurpose(f"{what}: proofPurpose is {str(got)[:40]!r}, expected {purpose!r}")
    vm = proof.get("verificationMethod")
    if not isinstance(vm, str):
        raise MalformedCredential(f"{what}: proof has no verificationMethod string")
    try:
        signer = controller_of(vm)
        if controller is not None and signer != controller:
            raise KeyNotAuthorized(
                f"{what}: verification method {vm[:120]} is not controlled by {controller[:120]}"
            )
        public = key_for(vm, purpose)
    except CredentialError:
        raise
    except IdentityError as exc:  # InvalidDID, UnsupportedDIDMethod, InvalidKey
        raise KeyNotAuthorized(
            f"{what}: verification method {vm[:120]!r} cannot be resolved: {exc.message}"
        ) from None
    try:
        suite.verify(unsecured, proof, public)
    except CredentialError as exc:  # name the document in the message
        raise type(exc)(f"{what}: {exc.message}") from None
    if "created" in proof:
        parse_datetime(proof["created"], "proof.created", what)
    if "expires" in proof:
        expires = parse_datetime(proof["expires"], "proof.expires", what)
        if now > expires:
            raise Expired(f"{what}: its proof expired at {expires.isoformat()}")
    return suite, signer


def _verify_proof(
    doc: Json,
    controller: str | None,
    purpose: str,
    what: str,
    now: datetime,
    suites: Collection[str] | None = None,
    strict: bool = True,
) -> tuple[Suite, list[Json], str]:
    """Checks 3-6 for every proof and each proof's own expiry.

    One proof: it must be by ``controller`` (when given). A proof set: every proof must
    verify (each under its own verification method, chained proofs over the proofs they
    name), and at least one must be by ``controller``. ``suites`` pins the accepted
    suites (a protocol's downgrade resistance); it is checked before any key is resolved
    or signature verified. Returns the suite of the controller's (or first) proof, every
    proof, and that proof's signer."""
    proofs = _proofs(doc, what, strict)
    base = {k: v for k, v in doc.items() if k != "proof"}
    if len(proofs) == 1 and "previousProof" not in proofs[0]:
        suite, signer = _verify_one(base, proofs[0], controller, purpose, what, now, suites)
        return suite, proofs, signer
    results = []
    for i, proof in enumerate(proofs):
        label = f"{what} (proof #{i + 1} of {len(proofs)})"
        previous = _previous_proofs(proof, proofs, label)
        unsecured = base if previous is None else {**base, "proof": previous}
        results.append(_verify_one(unsecured, proof, None, purpose, label, now, suites))
    if controller is None:
        return results[0][0], proofs, results[0][1]
    for suite, signer in results:
        if signer == controller:
            return suite, proofs, signer
    raise KeyNotAuthorized(f"{what}: none of its {len(proofs)} proofs is by {controller[:120]}")


def _to_sign(document: dict[str, Any], doc_type: str, what: str, suite: str
             ) -> tuple[Suite, dict[str, Any], int]:
    """The proof suite, a copy of ``document`` to sign and its VC version (1 or 2), once
    ``document`` is checked to be an unsigned ``doc_type`` with valid contexts."""
    proof_suite = _check_issuable(suite)
    doc = copy.deepcopy(document)
    if "proof" in doc:
        raise MalformedCredential(f"{what} already has a proof")
    version = _version(check_context_list(doc, what=what), what)
    _types(doc, doc_type, what)
    return proof_suite, doc, version


def _check_issuable(suite: str) -> Suite:
    if suite not in ISSUABLE:
        raise UnsupportedProof(
            f"didmesh does not issue with {suite!r} (it issues with {', '.join(ISSUABLE)})"
        )
    return suite_named(suite)


def _prepare_contexts(doc: Json, version: int, suite: Suite, what: str) -> None:
    """Add the proof suite's context where the base context lacks its terms."""
    contexts = list(doc["@context"]) if isinstance(doc["@context"], list) else [doc["@context"]]
    if suite.name == "Ed25519Signature2020":
        if version != 1:
            raise UnsupportedProof(
                f"{what}: Ed25519Signature2020 is issued only for VC 1.1 documents; "
                "use eddsa-rdfc-2022 or eddsa-jcs-2022 for VC 2.0"
            )
        needed = ED25519_2020_V1
    elif version == 1:
        needed = DATA_INTEGRITY_V2
    else:
        return
    if needed not in contexts:
        doc["@context"] = [*contexts, needed]


# --------------------------------------------------------------------------- credentials


def issue_credential(
    credential: dict[str, Any],
    key: IdentityKey,
    *,
    suite: str = "eddsa-rdfc-2022",
    created: datetime | None = None,
    check_terms: bool = True,
) -> dict[str, Any]:
    """Sign ``credential`` (its ``issuer`` must be ``key``'s DID) with an
    assertionMethod proof. Returns a new document; the input is not changed.

    With eddsa-jcs-2022 the document is first expanded as JSON-LD so that no term goes
    out undefined; ``check_terms=False`` skips that (PyLD costs 0.1-0.3 s) for a
    document whose shape is fixed by code and checked by a test (run receipts)."""
    what = "credential"
    proof_suite, doc, version = _to_sign(credential, VERIFIABLE_CREDENTIAL, what, suite)
    issuer = _id_of(doc.get("issuer"), "issuer", what)
    if issuer != key.did:
        raise KeyNotAuthorized(
            f"{what}: issuer is {issuer[:120]}, but the signing key is {key.did}"
        )
    _subject_ids(doc, what)
    _validity(doc, version, what)
    datamodel.check_credential(doc, what)
    _prepare_contexts(doc, version, proof_suite, what)
    if proof_suite.name == "eddsa-jcs-2022" and check_terms:
        canonize(doc, what=what)  # never issue a term no context defines
    options = {
        "created": format_datetime(created or datetime.now(UTC)),
        "verificationMethod": key.verification_method,
        "proofPurpose": ASSERTION_METHOD,
    }
    doc["proof"] = proof_suite.create(doc, options, key.sign)
    return doc


def _verify_credential(
    doc: Json,
    now: datetime,
    expected_issuer: str | None,
    what: str,
    suites: Collection[str] | None = None,
    strict: bool = True,
) -> VerifiedCredential:
    version = _version(check_context_list(doc, what=what, allow_inline=not strict), what)
    types = _types(doc, VERIFIABLE_CREDENTIAL, what)
    issuer = _id_of(doc.get("issuer"), "issuer", what)
    subjects = _subject_ids(doc, what)
    start, end = _validity(doc, version, what)
    datamodel.check_credential(doc, what)
    if expected_issuer is not None and not hmac.compare_digest(
        issuer.encode(), expected_issuer.encode()
    ):
        raise UnexpectedIssuer(
            f"{what} was issued by {issuer[:120]}, not by the expected {expected_issuer[:120]}"
        )
    suite, _, _ = _verify_proof(doc, issuer, ASSERTION_METHOD, what, now, suites, strict)
    names = ("validFrom", "validUntil") if version == 2 else ("issuanceDate", "expirationDate")
    _check_window(start, end, now, names, what)
    return VerifiedCredential(
        issuer=issuer,
        subject_ids=subjects,
        types=types,
        valid_from=start,
        valid_until=end,
        suite=suite.name,
        document=doc,
    )


def verify_credential(
    doc: dict[str, Any] | bytes | str,
    *,
    now: datetime,
    expected_issuer: str | None = None,
    suites: Collection[str] | None = None,
    strict: bool | None = None,
) -> VerifiedCredential:
    """Verify a credential completely (see the module docstring) or raise a
    :class:`~didmesh.identity.errors.CredentialError` subclass saying what failed.
    ``suites``, if given, is the set of proof suites accepted (others: UnsupportedProof).
    ``strict`` (default: whether ``suites`` is given) selects the protocol profile: one
    proof object, no chain, only bundled context URLs; otherwise inline contexts,
    proof sets and chains are accepted as the W3C specifications define them."""
    document, what = _received(doc, "credential", now)
    strict = suites is not None if strict is None else strict
    return _verify_credential(document, now, expected_issuer, what, suites, strict)


# --------------------------------------------------------------------------- presentations


def issue_presentation(
    presentation: dict[str, Any],
    key: IdentityKey,
    *,
    challenge: str,
    domain: str,
    suite: str = "eddsa-rdfc-2022",
    created: datetime | None = None,
    expires: datetime | None = None,
) -> dict[str, Any]:
    """Sign ``presentation`` with an authentication proof bound to ``challenge`` and
    ``domain``. ``holder`` is set to ``key``'s DID if absent and must equal it if
    present. Embedded credentials are signed as they are (not re-verified). ``expires``
    (timezone-aware, after ``created``) puts the proof's own ``expires`` in it: a verifier
    refuses the presentation after that moment (:class:`~.errors.Expired`)."""
    what = "presentation"
    if not isinstance(challenge, str) or not challenge:
        raise ValueError("challenge must be a non-empty string")
    if not isinstance(domain, str) or not domain:
        raise ValueError("domain must be a non-empty string")
    created = created or datetime.now(UTC)
    if expires is not None:
        if expires.tzinfo is None:
            raise ValueError("expires must be a timezone-aware datetime")
        if created.tzinfo is not None and expires <= created:
            raise ValueError("expires must be after created")
    proof_suite, doc, version = _to_sign(presentation, VERIFIABLE_PRESENTATION, what, suite)
    doc.setdefault("holder", key.did)
    holder = _id_of(doc.get("holder"), "holder", what)
    if holder != key.did:
        raise KeyNotAuthorized(
            f"{what}: holder is {holder[:120]}, but the signing key is {key.did}"
        )
    _embedded(doc, what)
    _prepare_contexts(doc, version, proof_suite, what)
    if proof_suite.name == "eddsa-jcs-2022":
        canonize(doc, what=what)
    options = {
        "created": format_datetime(created),
        "verificationMethod": key.verification_method,
        "proofPurpose": AUTHENTICATION,
        "challenge": challenge,
        "domain": domain,
    }
    if expires is not None:
        options["expires"] = format_datetime(expires)
    doc["proof"] = proof_suite.create(doc, options, key.sign)
    return doc


def _embedded(doc: Mapping[str, Any], what: str) -> list[Json]:
    creds = doc.get("verifiableCredential", [])
    items = creds if isinstance(creds, list) else [creds]
    if len(items) > MAX_CREDENTIALS_PER_PRESENTATION:
        raise MalformedCredential(
            f"{what} holds {len(items)} credentials; the limit is "
            f"{MAX_CREDENTIALS_PER_PRESENTATION}"
        )
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise MalformedCredential(
                f"{what}: verifiableCredential #{i} is not an embedded credential object "
                "(enveloped or referenced credentials are not accepted)"
            )
    return items


def _equal(a: object, b: str) -> bool:
    return isinstance(a, str) and hmac.compare_digest(a.encode(), b.encode())


def verify_presentation(
    doc: dict[str, Any] | bytes | str,
    *,
    now: datetime,
    challenge: str | None,
    domain: str | None,
    suites: Collection[str] | None = None,
    strict: bool | None = None,
) -> VerifiedPresentation:
    """Verify a presentation, its challenge and domain, and every credential in it.

    ``suites`` pins the suite of the presentation's own proof (embedded credentials may
    come from other issuers; their callers check their suites in the result). ``strict``
    (default: whether ``suites`` is given) is the protocol profile: ``holder`` required,
    one proof object, bundled context URLs only. ``challenge``/``domain`` None means the
    caller does not check that value (a verifier service whose client gave none); every
    proof must carry the given ones."""
    document, what = _received(doc, "presentation", now)
    strict = suites is not None if strict is None else strict
    _version(check_context_list(document, what=what, allow_inline=not strict), what)
    _types(document, VERIFIABLE_PRESENTATION, what)
    holder: str | None = None
    if strict or "holder" in document:
        holder = _id_of(document.get("holder"), "holder", what)
    datamodel.check_presentation(document, what)
    embedded = _embedded(document, what)
    suite, proofs, signer = _verify_proof(
        document, holder, AUTHENTICATION, what, now, suites, strict
    )
    for proof in proofs:
        if challenge is not None and not _equal(proof.get("challenge"), challenge):
            raise ChallengeMismatch(f"{what}: the proof's challenge is not the one expected")
        if domain is not None and not _equal(proof.get("domain"), domain):
            raise DomainMismatch(
                f"{what}: the proof is for domain {str(proof.get('domain'))[:80]!r}, "
                f"not {domain[:80]!r}"
            )
    credentials = []
    for i, cred in enumerate(embedded):
        cid = cred.get("id")
        label = f"credential #{i}" + (f" ({cid[:80]})" if isinstance(cid, str) else "")
        credentials.append(
            _verify_credential(cred, now, None, f"{label} in {what}", strict=False)
        )
    return VerifiedPresentation(
        holder=holder,
        signer=signer,
        credentials=tuple(credentials),
        suite=suite.name,
        challenge=challenge,
        domain=domain,
        document=document,
    )


def verify_presentation_proof(
    doc: dict[str, Any] | bytes | str,
    *,
    now: datetime,
    suites: Collection[str] | None = None,
) -> str:
    """Verify only a presentation's own proof (strict profile: one proof, by the
    ``holder``), not its challenge, domain or embedded credentials; returns the holder.

    For telling *who* sent a presentation that failed :func:`verify_presentation` for
    another reason. :class:`~didmesh.identity.errors.Expired` is raised only after the
    signature verified (the proof's own ``expires`` passed)."""
    _check_now(now)
    what = "presentation"
    document = _as_document(doc, what)
    _version(check_context_list(document, what=what, allow_inline=False), what)
    _types(document, VERIFIABLE_PRESENTATION, what)
    holder = _id_of(document.get("holder"), "holder", what)
    _verify_proof(document, holder, AUTHENTICATION, what, now, suites, True)
    return holder
