"""The session protocol's credentials: invite, acceptance, confirmation
(specs/session-protocol.md, "Credentials").

Build and verify. Every check failure is a session error naming the cause and the
party; the identity layer's detailed reason is kept in the message. All documents use
VC 2.0 with the didmesh context and the ``eddsa-jcs-2022`` cryptosuite (JCS signs every
JSON member; it verifies ~5x faster than eddsa-rdfc-2022 here, see the spec).
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from didmesh.identity.credentials import (
    VerifiedCredential,
    issue_credential,
    issue_presentation,
    verify_credential,
    verify_presentation,
)
from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import (
    ChallengeMismatch,
    CredentialError,
    DomainMismatch,
    Expired,
    IdentityError,
    NotYetValid,
    UnexpectedIssuer,
)
from didmesh.identity.jsonld import CREDENTIALS_V2, DIDMESH_V1
from didmesh.identity.keys import IdentityKey
from didmesh.identity.multiformats import X25519_PUB, multibase_decode, multibase_encode

from .errors import (
    AcceptanceInvalid,
    AcceptanceReplayed,
    ConfirmationInvalid,
    GateCredentialExpired,
    GateCredentialInvalid,
    GateCredentialMissing,
    InviteExpired,
    InviteInvalid,
    InviteNotForYou,
    ManifestInvalid,
    ManifestTampered,
    NotInvited,
    PresentationExpired,
)
from .manifest import Manifest, format_time

SUITE = "eddsa-jcs-2022"
CONTEXT = [CREDENTIALS_V2, DIDMESH_V1]
INVITE_TYPE = "SessionInvite"
ACCEPTANCE_TYPE = "SessionAcceptance"
ROSTER_TYPE = "SessionRoster"
CONFIRMATION_TYPE = "RosterConfirmation"
MAX_ENDPOINTS = 8
_ENDPOINT_RE = re.compile(
    r"^tcp://(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
    r":(\d{1,5})$"
)
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


def subject_urn(session_id: str) -> str:
    return f"urn:didmesh:session:{session_id}"


# --------------------------------------------------------------------------- small values


def encode_session_key(public: bytes) -> str:
    return multibase_encode(X25519_PUB, public)


def decode_session_key(text: object, who: str, error: type[Exception]) -> bytes:
    try:
        return multibase_decode(text, X25519_PUB, 32)
    except IdentityError as exc:
        raise error(f"{who}: sessionKey is not an X25519 multikey ({exc.message})") from None


def validate_endpoints(value: object, who: str, error: type[Exception]) -> tuple[str, ...]:
    """``tcp://host:port`` strings, at most 8, no repeats."""
    if not isinstance(value, list) or len(value) > MAX_ENDPOINTS:
        raise error(f"{who}: endpoints must be a list of at most {MAX_ENDPOINTS} strings")
    for item in value:
        match = _ENDPOINT_RE.match(item) if isinstance(item, str) else None
        if not match or not 0 < int(match.group(1)) < 65536:
            raise error(f"{who}: endpoint {str(item)[:60]!r} is not tcp://host:port")
    if len(set(value)) != len(value):
        raise error(f"{who}: endpoints repeat")
    return tuple(value)


def _types(doc: dict[str, Any]) -> list[str]:
    t = doc.get("type")
    if isinstance(t, list):
        return [x for x in t if isinstance(x, str)]
    return [t] if isinstance(t, str) else []  # (str() of a 5,000-digit int raises)


def _subject(doc: dict[str, Any], who: str, error: type[Exception]) -> dict[str, Any]:
    subject = doc.get("credentialSubject")
    if not isinstance(subject, dict):
        raise error(f"{who}: credentialSubject must be one object")
    return subject


@dataclass(frozen=True)
class Gate:
    """A seat's requirement: a credential issued by ``issuer`` (of ``type``, if given)."""

    issuer: str
    type: str | None = None

    def to_json(self) -> dict[str, str]:
        return {"issuer": self.issuer} | ({"type": self.type} if self.type else {})

    @classmethod
    def from_json(cls, data: object, who: str) -> Gate:
        if not isinstance(data, dict) or set(data) - {"issuer", "type"} or "issuer" not in data:
            raise InviteInvalid(f"{who}: requires must be {{issuer[, type]}}")
        issuer, typ = data["issuer"], data.get("type")
        if not isinstance(issuer, str) or not issuer.startswith("did:") or len(issuer) > 200:
            raise InviteInvalid(f"{who}: requires.issuer must be a DID")
        if typ is not None and (not isinstance(typ, str) or not 0 < len(typ) <= 100):
            raise InviteInvalid(f"{who}: requires.type must be a short string")
        return cls(issuer, typ)

    def describe(self) -> str:
        what = f"a {self.type} credential" if self.type else "a credential"
        return f"{what} from {self.issuer}"


# --------------------------------------------------------------------------- invites


@dataclass(frozen=True)
class VerifiedInvite:
    invite_id: str
    organizer: str
    invitee: str
    manifest: Manifest
    requires: Gate | None
    document: dict[str, Any]


def new_invite_id(rng: Callable[[int], bytes] = os.urandom) -> str:
    import uuid  # here: with platform it costs ~8 ms of every `didmesh run`, which needs none

    return uuid.UUID(bytes=rng(16), version=4).urn


def build_invite(
    manifest: Manifest,
    invitee: str,
    key: IdentityKey,
    *,
    now: datetime,
    invite_id: str,
    requires: Gate | None = None,
) -> dict[str, Any]:
    """The organizer's SessionInvite credential for ``invitee``."""
    subject: dict[str, Any] = {
        "id": invitee,
        "sessionId": manifest.session_id,
        "manifest": manifest.to_json(),
    }
    if requires is not None:
        subject["requires"] = requires.to_json()
    cred = {
        "@context": list(CONTEXT),
        "id": invite_id,
        "type": ["VerifiableCredential", INVITE_TYPE],
        "issuer": key.did,
        "validFrom": format_time(min(now, manifest.valid_until)),
        "validUntil": format_time(manifest.valid_until),
        "credentialSubject": subject,
    }
    return issue_credential(cred, key, suite=SUITE, created=now)


def verify_invite(
    doc: object,
    *,
    now: datetime,
    me: str | None = None,
    manifest: Manifest | None = None,
    signature_checked: bool = False,
) -> VerifiedInvite:
    """Verify an invite: signature, expiry, addressee (``me``), and that its manifest is
    well-formed, names the issuer as organizer and (if given) equals ``manifest``."""
    if not isinstance(doc, dict):
        raise InviteInvalid("invite is not a JSON object")
    issuer = doc.get("issuer")
    if not isinstance(issuer, str):
        raise InviteInvalid("invite: issuer must be the organizer's DID string")
    who = f"invite from {issuer[:100]}"
    if INVITE_TYPE not in _types(doc):
        raise InviteInvalid(f"{who}: type lacks {INVITE_TYPE}")
    try:
        if signature_checked:  # verified already, as part of a presentation
            issuer_did = issuer
        else:
            issuer_did = verify_credential(doc, now=now, suites=(SUITE,)).issuer
    except (Expired, NotYetValid) as exc:
        raise InviteExpired(f"{who}: {exc.message}", party=str(issuer)) from None
    except CredentialError as exc:
        raise InviteInvalid(f"{who}: {exc.message}", party=str(issuer)) from None
    subject = _subject(doc, who, InviteInvalid)
    unknown = set(subject) - {"id", "sessionId", "manifest", "requires"}
    if unknown:
        raise InviteInvalid(f"{who}: unknown field {sorted(unknown)[0][:40]!r} in the invite")
    invitee = subject.get("id")
    if not isinstance(invitee, str):
        raise InviteInvalid(f"{who}: credentialSubject.id must be the invitee's DID")
    if me is not None and not hmac.compare_digest(invitee.encode(), me.encode()):
        raise InviteNotForYou(
            f"{who} is addressed to {invitee[:100]}, not to you ({me})", party=issuer_did
        )
    try:
        got = Manifest.from_json(subject.get("manifest"))
    except ManifestInvalid as exc:
        raise ManifestTampered(f"{who}: {exc.message}", party=issuer_did) from None
    if got.organizer != issuer_did:
        raise ManifestTampered(
            f"{who}: its manifest names {got.organizer} as organizer, not the issuer",
            party=issuer_did,
        )
    if subject.get("sessionId") != got.session_id:
        raise ManifestTampered(f"{who}: sessionId differs from its manifest's", party=issuer_did)
    if manifest is not None and not manifest.same_as(got):
        raise ManifestTampered(
            f"{who} (for {invitee}) carries a manifest that differs from the session's "
            f"manifest {manifest.session_id[:8]}",
            party=issuer_did,
        )
    if now >= got.valid_until:
        raise InviteExpired(
            f"{who}: session {got.session_id[:8]} was valid until {format_time(got.valid_until)}",
            party=issuer_did,
        )
    requires = Gate.from_json(subject["requires"], who) if "requires" in subject else None
    ident = doc.get("id")
    if not isinstance(ident, str) or not ident.startswith("urn:uuid:") or len(ident) > 64:
        raise InviteInvalid(f"{who}: id must be a urn:uuid")
    return VerifiedInvite(ident, issuer_did, invitee, got, requires, doc)


# --------------------------------------------------------------------------- acceptances


@dataclass(frozen=True)
class VerifiedAcceptance:
    holder: str
    invite: VerifiedInvite
    session_key: bytes
    endpoints: tuple[str, ...]
    document: dict[str, Any]


def build_acceptance(
    invite: VerifiedInvite,
    key: IdentityKey,
    *,
    session_public: bytes,
    endpoints: Sequence[str],
    now: datetime,
    extra_credentials: Sequence[dict[str, Any]] = (),
    rng: Callable[[int], bytes] = os.urandom,
) -> dict[str, Any]:
    """The invitee's SessionAcceptance presentation (challenge = invite id, domain =
    the session)."""
    validate_endpoints(list(endpoints), "your endpoints", ValueError)
    vp = {
        "@context": list(CONTEXT),
        "id": new_invite_id(rng),
        "type": ["VerifiablePresentation", ACCEPTANCE_TYPE],
        "holder": key.did,
        "sessionId": invite.manifest.session_id,
        "sessionKey": encode_session_key(session_public),
        "endpoints": list(endpoints),
        "verifiableCredential": [invite.document, *extra_credentials],
    }
    return issue_presentation(
        vp,
        key,
        challenge=invite.invite_id,
        domain=invite.manifest.domain,
        suite=SUITE,
        created=now,
    )


def _embedded_invite(doc: dict[str, Any], who: str) -> dict[str, Any]:
    creds = doc.get("verifiableCredential")
    items = creds if isinstance(creds, list) else [creds]
    invites = [c for c in items if isinstance(c, dict) and INVITE_TYPE in _types(c)]
    if len(invites) != 1:
        raise AcceptanceInvalid(f"{who}: must hold exactly one {INVITE_TYPE}")
    return invites[0]


def verify_acceptance(
    doc: object, *, manifest: Manifest, now: datetime, party: str | None = None
) -> VerifiedAcceptance:
    """Verify an acceptance of ``manifest``'s session completely: the holder's proof, its
    challenge (the invite id) and domain (this session), the embedded invite (issued by
    the organizer, addressed to the holder, with this very manifest) and a gate credential
    if the invite requires one. ``party`` labels the seat in messages ("party 2")."""
    if not isinstance(doc, dict):
        raise AcceptanceInvalid("acceptance is not a JSON object")
    holder = doc.get("holder")
    if not isinstance(holder, str):
        raise AcceptanceInvalid("acceptance has no holder DID")
    label = f"{party} ({holder[:100]})" if party else holder[:100]
    who = f"acceptance by {label}"
    if ACCEPTANCE_TYPE not in _types(doc):
        raise AcceptanceInvalid(f"{who}: type lacks {ACCEPTANCE_TYPE}", party=holder)
    raw_invite = _embedded_invite(doc, who)
    challenge = raw_invite.get("id")
    if not isinstance(challenge, str) or not challenge:
        raise AcceptanceInvalid(f"{who}: the embedded invite has no id", party=holder)
    try:
        vp = verify_presentation(
            doc, now=now, challenge=challenge, domain=manifest.domain, suites=(SUITE,)
        )
    except (ChallengeMismatch, DomainMismatch) as exc:
        what = ("its proof's challenge is not the id of the invite it carries"
                if isinstance(exc, ChallengeMismatch) else
                "its proof is bound to another session (domain)")  # fmt: skip
        raise AcceptanceReplayed(
            f"{who} was made for another session or invite, not for session "
            f"{manifest.session_id[:8]} ({exc.message})",
            party=holder, detail=what,
        ) from None
    except CredentialError as exc:
        _blame_gate(doc, raw_invite, now, who, holder, exc)
        try:  # the invite it carries, or the holder's own proof?
            verify_invite(raw_invite, now=now)
        except InviteInvalid as inner:
            raise AcceptanceInvalid(
                f"in {who}: {inner.message}", party=holder,
                detail=f"the invite it carries is not valid ({inner.message})",
            ) from None
        if isinstance(exc, Expired):
            raise PresentationExpired(f"{who}: {exc.message}", party=holder,
                                      detail=exc.message) from None  # fmt: skip
        raise AcceptanceInvalid(f"{who}: {exc.message}", party=holder,
                                detail=exc.message) from None  # fmt: skip
    if any(INVITE_TYPE in c.types and c.suite != SUITE for c in vp.credentials):
        raise AcceptanceInvalid(
            f"{who}: the invite it carries is not signed with {SUITE}", party=holder,
            detail=f"the invite it carries is not signed with {SUITE}",
        )
    try:
        invite = verify_invite(raw_invite, now=now, signature_checked=True)
    except InviteInvalid as exc:
        raise type(exc)(f"in {who}: {exc.message}", party=holder,
                        detail=f"the invite it carries: {exc.message}") from None  # fmt: skip
    if invite.organizer != manifest.organizer:
        raise NotInvited(
            f"{who}: its invite was issued by {invite.organizer[:100]}, not by the organizer "
            f"{manifest.organizer}",
            party=holder, detail="the invite it carries was not issued by this organizer",
        )
    if not hmac.compare_digest(invite.invitee.encode(), holder.encode()):
        raise NotInvited(
            f"{who}: the invite it carries is addressed to {invite.invitee}; "
            f"{holder} was not invited",
            party=holder, detail=f"the invite it carries is addressed to {invite.invitee}",
        )
    if not manifest.same_as(invite.manifest):
        raise ManifestTampered(
            f"{who}: the organizer's invite to {holder} carries a different manifest than "
            f"session {manifest.session_id[:8]}'s",
            party=manifest.organizer,
            detail="the invite it carries has other terms (manifest) than the session's",
        )
    if doc.get("sessionId") != manifest.session_id:
        raise AcceptanceReplayed(f"{who}: sessionId is not this session's", party=holder,
                                 detail="its sessionId is another session's")  # fmt: skip
    session_key = decode_session_key(doc.get("sessionKey"), who, AcceptanceInvalid)
    endpoints = validate_endpoints(doc.get("endpoints"), who, AcceptanceInvalid)
    unknown = set(doc) - {
        "@context", "id", "type", "holder", "sessionId", "sessionKey", "endpoints",
        "verifiableCredential", "proof",
    }  # fmt: skip
    if unknown:
        raise AcceptanceInvalid(f"{who}: unknown field {sorted(unknown)[0][:40]!r}", party=holder)
    if invite.requires is not None:
        _check_gate(invite.requires, vp.credentials, holder, who)
    return VerifiedAcceptance(holder, invite, session_key, endpoints, doc)


def _check_gate(
    gate: Gate, creds: Sequence[VerifiedCredential], holder: str, who: str
) -> None:
    for vc in creds:
        if (
            vc.issuer == gate.issuer
            and holder in vc.subject_ids
            and (gate.type is None or gate.type in vc.types)
        ):
            return
    raise GateCredentialMissing(
        f"{who}: the seat requires {gate.describe()} about {holder}, "
        "and the acceptance presents none",
        party=holder, detail=f"the seat requires {gate.describe()} about you",
    )


def _blame_gate(
    doc: dict[str, Any],
    invite: dict[str, Any],
    now: datetime,
    who: str,
    holder: str,
    exc: CredentialError,
) -> None:
    """If the presentation failed because of a (gate) credential other than the invite,
    say so: raise GateCredentialExpired (outside its validity) or GateCredentialInvalid."""
    creds = doc.get("verifiableCredential")
    for cred in creds if isinstance(creds, list) else []:
        if cred is invite or not isinstance(cred, dict):
            continue
        try:
            verify_credential(cred, now=now)
        except CredentialError as inner:
            cls = (GateCredentialExpired if isinstance(inner, (Expired, NotYetValid))
                   else GateCredentialInvalid)  # fmt: skip
            raise cls(
                f"{who}: the credential it presents for the seat's requirement is not valid "
                f"({inner.message})",
                party=holder, detail=inner.message,
            ) from None
    del exc


# --------------------------------------------------------------------------- confirmations


def build_confirmation(
    session_id: str, roster_hash: bytes, key: IdentityKey, *, now: datetime
) -> dict[str, Any]:
    cred = {
        "@context": list(CONTEXT),
        "type": ["VerifiableCredential", CONFIRMATION_TYPE],
        "issuer": key.did,
        "validFrom": format_time(now),
        "credentialSubject": {
            "id": subject_urn(session_id),
            "sessionId": session_id,
            "rosterHash": roster_hash.hex(),
        },
    }
    return issue_credential(cred, key, suite=SUITE, created=now)


_warm: list[bool] = []


def warm_up() -> None:
    """Load what issuing a credential needs (PyLD and the processed session contexts:
    ~0.1-0.2 s of CPU, once per process) by issuing a throw-away confirmation, so that a
    party waiting for the roster does not pay it when the roster arrives."""
    if _warm:
        return
    _warm.append(True)
    key = IdentityKey.from_seed(bytes(32))  # a public dummy: the result is thrown away
    now = datetime.fromisoformat("2025-01-01T00:00:00+00:00")
    build_confirmation("0" * 64, bytes(32), key, now=now)


def verify_confirmation(
    doc: object, *, session_id: str, party: str, now: datetime, label: str | None = None
) -> bytes:
    """Verify ``party``'s RosterConfirmation for ``session_id``; return the hash it
    confirms (the caller compares it with its own)."""
    who = f"confirmation from {label or party}"
    if not isinstance(doc, dict) or CONFIRMATION_TYPE not in _types(doc):
        raise ConfirmationInvalid(f"{who}: not a {CONFIRMATION_TYPE} credential", party=party)
    try:
        verify_credential(doc, now=now, expected_issuer=party, suites=(SUITE,))
    except UnexpectedIssuer as exc:
        raise ConfirmationInvalid(f"{who}: {exc.message}", party=party) from None
    except CredentialError as exc:
        raise ConfirmationInvalid(f"{who}: {exc.message}", party=party) from None
    subject = _subject(doc, who, ConfirmationInvalid)
    if set(subject) != {"id", "sessionId", "rosterHash"}:
        raise ConfirmationInvalid(f"{who}: credentialSubject has the wrong fields", party=party)
    if subject["sessionId"] != session_id or subject["id"] != subject_urn(session_id):
        raise ConfirmationInvalid(
            f"{who} is for session {str(subject['sessionId'])[:40]}, not {session_id[:8]} "
            "(replayed from another session)",
            party=party,
        )
    value = subject["rosterHash"]
    if not isinstance(value, str) or not _HASH_RE.match(value):
        raise ConfirmationInvalid(f"{who}: rosterHash must be 64 hex digits", party=party)
    return bytes.fromhex(value)


def did_ok(did: str) -> bool:
    """True if ``did`` is a canonical Ed25519 did:key (one that can sign)."""
    try:
        key = DidKey.parse(did)
    except IdentityError:
        return False
    return key.can_sign and key.did == did
