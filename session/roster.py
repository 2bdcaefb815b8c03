"""The roster: who takes part, in which order, with which session keys
(specs/session-protocol.md, "Roster", "Roster hash" and "Confirmations").

The organizer issues one ``SessionRoster`` credential listing the parties in MPyC order
(party 0 is the organizer), each with its per-session X25519 key and endpoints, and for
every invitee the acceptance presentation itself, so that every party verifies every
acceptance on its own. :func:`verify_roster` does all of that.

The roster hash is ``SHA-256("didmesh/roster/v1" || 0x00 || JCS(roster without proof))``.
The organizer also signs a small *commitment* to ``(session, hash)``; parties pass it
along with their confirmations, so a party that sees a confirmation of another hash can
tell organizer equivocation (the organizer signed both) from a lying party.

:class:`AgreedRoster` is what the mesh consumes once all m confirmations are in.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from didmesh.identity.credentials import issue_credential, verify_credential
from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import CredentialError, IdentityError, InvalidProof
from didmesh.identity.jcs import canonicalize
from didmesh.identity.jsonld import canonize
from didmesh.identity.keys import IdentityKey, verify_ed25519

from .documents import (
    CONTEXT,
    ROSTER_TYPE,
    SUITE,
    _types,
    decode_session_key,
    encode_session_key,
    subject_urn,
    validate_endpoints,
    verify_acceptance,
)
from .errors import (
    AcceptanceInvalid,
    InviteInvalid,
    ManifestInvalid,
    ManifestTampered,
    RosterInvalid,
)
from .manifest import Manifest, format_time

HASH_LABEL = b"didmesh/roster/v1\0"
COMMIT_LABEL = b"didmesh/roster-commitment/v1\0"


@dataclass(frozen=True)
class RosterParty:
    party_id: int
    did: str
    session_public_key: bytes  # X25519, 32 bytes
    endpoints: tuple[str, ...]  # "tcp://host:port"


@dataclass(frozen=True)
class AgreedRoster:
    session_id: str
    roster_hash: bytes  # 32 bytes
    manifest: Manifest
    parties: tuple[RosterParty, ...]
    relays: tuple[str, ...]

    def party(self, did: str) -> RosterParty:
        for p in self.parties:
            if p.did == did:
                return p
        raise KeyError(did)


# --------------------------------------------------------------------------- hashing


def roster_hash(doc: dict[str, Any]) -> bytes:
    unsecured = {k: v for k, v in doc.items() if k != "proof"}
    return hashlib.sha256(HASH_LABEL + canonicalize(unsecured, what="roster")).digest()


# --------------------------------------------------------------------------- on the wire

#: stands, in a ``roster`` message, for the roster's own manifest inside each embedded
#: invite (specs/session-protocol.md, 4): a manifest is always an object, never this
MANIFEST_REF = "#roster-manifest"
#: a manifest restored by :func:`unpack_roster` is at most this large (a valid one is far
#: smaller), which bounds what a hostile roster message can inflate to
MAX_MANIFEST_BYTES = 64 * 1024


def _invites(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The credentialSubject of every credential embedded in the roster's acceptances."""
    subject = doc.get("credentialSubject")
    entries = subject.get("parties") if isinstance(subject, dict) else None
    out = []
    for entry in entries if isinstance(entries, list) else []:
        acc = entry.get("acceptance") if isinstance(entry, dict) else None
        creds = acc.get("verifiableCredential") if isinstance(acc, dict) else None
        for cred in creds if isinstance(creds, list) else []:
            sub = cred.get("credentialSubject") if isinstance(cred, dict) else None
            if isinstance(sub, dict) and "manifest" in sub:
                out.append(sub)
    return out


def pack_roster(doc: dict[str, Any]) -> dict[str, Any]:
    """The roster as the ``roster`` message carries it: every embedded invite whose
    manifest is the roster's own (every honest one) refers to it by :data:`MANIFEST_REF`
    instead of repeating it, so the manifest travels once and not m times.
    :func:`unpack_roster` restores the signed document byte for byte."""
    out = copy.deepcopy(doc)
    own = canonicalize(out["credentialSubject"]["manifest"], what="manifest")
    for sub in _invites(out):
        if isinstance(sub["manifest"], dict) and canonicalize(sub["manifest"]) == own:
            sub["manifest"] = MANIFEST_REF
    return out


def unpack_roster(doc: dict[str, Any]) -> dict[str, Any]:
    """Undo :func:`pack_roster` (a roster without references is returned as it is). A
    reference to a missing or oversized manifest is left in place; verifying the roster
    then fails on it, blaming the organizer."""
    subject = doc.get("credentialSubject")
    manifest = subject.get("manifest") if isinstance(subject, dict) else None
    subs = [s for s in _invites(doc) if s["manifest"] == MANIFEST_REF]
    if not subs or not isinstance(manifest, dict):
        return doc
    try:
        if len(canonicalize(manifest, what="manifest")) > MAX_MANIFEST_BYTES:
            return doc
    except Exception:  # noqa: BLE001 (not canonicalizable: verification names it)
        return doc
    out = copy.deepcopy(doc)
    for sub in _invites(out):
        if sub["manifest"] == MANIFEST_REF:
            sub["manifest"] = copy.deepcopy(manifest)
    return out


def _commit_input(session_id: str, digest: bytes) -> bytes:
    return COMMIT_LABEL + session_id.encode() + b"\0" + digest


def commit(key: IdentityKey, session_id: str, digest: bytes) -> str:
    """The organizer's signature over ``(session, roster hash)``, base64url."""
    sig = key.sign(_commit_input(session_id, digest))
    return base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def commitment_valid(organizer: str, session_id: str, digest: bytes, value: object) -> bool:
    if not isinstance(value, str) or len(value) > 100:
        return False
    try:
        sig = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        verify_ed25519(
            DidKey.parse(organizer).ed25519_public, _commit_input(session_id, digest), sig
        )
    except (binascii.Error, ValueError, InvalidProof, IdentityError):
        return False
    return True


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class Seat:
    """One roster entry as the organizer builds it."""

    did: str
    session_public_key: bytes
    endpoints: tuple[str, ...]
    acceptance: dict[str, Any] | None  # None for the organizer (party 0)


def build_roster(
    manifest: Manifest, key: IdentityKey, seats: Sequence[Seat], *, now: datetime
) -> dict[str, Any]:
    """The organizer's SessionRoster credential; ``seats[0]`` is the organizer."""
    if len(seats) != manifest.parties or seats[0].did != key.did:
        raise ValueError("a roster lists exactly m seats, the organizer first")
    parties = []
    for i, seat in enumerate(seats):
        entry: dict[str, Any] = {
            "partyId": i,
            "id": seat.did,
            "sessionKey": encode_session_key(seat.session_public_key),
            "endpoints": list(seat.endpoints),
        }
        if seat.acceptance is not None:
            entry["acceptance"] = seat.acceptance
        parties.append(entry)
    cred = {
        "@context": list(CONTEXT),
        "id": f"{subject_urn(manifest.session_id)}:roster",
        "type": ["VerifiableCredential", ROSTER_TYPE],
        "issuer": key.did,
        "validFrom": format_time(min(now, manifest.valid_until)),
        "validUntil": format_time(manifest.valid_until),
        "credentialSubject": {
            "id": subject_urn(manifest.session_id),
            "sessionId": manifest.session_id,
            "manifest": manifest.to_json(),
            "parties": parties,
            "relays": list(manifest.relays),
        },
    }
    check_roster_terms(cred)
    return issue_credential(cred, key, suite=SUITE, created=now, check_terms=False)


def check_roster_terms(cred: dict[str, Any]) -> None:
    """The term check of issuance (every term defined by the contexts), on the roster
    with an empty ``parties`` list: ``parties`` is a JSON literal (``@type: @json`` in
    the didmesh context), so JSON-LD never looks inside it and the result is the same,
    but the whole roster holds ~20-30 JSON objects per party and from m ~ 20 (bundles:
    each file is one more object per party) it went over the identity layer's cap on
    documents given to JSON-LD (MAX_JSONLD_OBJECTS), so a roster could not be issued."""
    subject = dict(cred["credentialSubject"], parties=[])
    canonize(dict(cred, credentialSubject=subject), what="roster")


# --------------------------------------------------------------------------- verifying


def verify_roster(
    doc: object,
    *,
    manifest: Manifest,
    now: datetime,
    me: str | None = None,
    my_key: bytes | None = None,
    my_endpoints: Sequence[str] | None = None,
) -> AgreedRoster:
    """Verify the organizer's roster and *every* acceptance in it, against the manifest
    this party holds. If ``me`` is given, the roster must list it with ``my_key`` and
    ``my_endpoints`` exactly. Returns the (not yet confirmed) roster with its hash."""
    organizer = manifest.organizer
    who = f"roster from organizer {organizer}"
    if not isinstance(doc, dict) or ROSTER_TYPE not in _types(doc):
        raise RosterInvalid(f"{who}: not a {ROSTER_TYPE} credential", party=organizer)
    try:
        verify_credential(doc, now=now, expected_issuer=organizer, suites=(SUITE,))
    except CredentialError as exc:
        raise RosterInvalid(f"{who}: {exc.message}", party=organizer) from None
    subject = doc.get("credentialSubject")
    if not isinstance(subject, dict) or set(subject) != {
        "id", "sessionId", "manifest", "parties", "relays"
    }:  # fmt: skip
        raise RosterInvalid(f"{who}: credentialSubject has the wrong fields", party=organizer)
    if subject["sessionId"] != manifest.session_id or subject["id"] != subject_urn(
        manifest.session_id
    ):
        raise RosterInvalid(
            f"{who} is for session {str(subject['sessionId'])[:40]}, not "
            f"{manifest.session_id[:8]}",
            party=organizer,
        )
    try:
        got = Manifest.from_json(subject["manifest"])
    except ManifestInvalid as exc:
        raise ManifestTampered(f"{who}: {exc.message}", party=organizer) from None
    if not manifest.same_as(got):
        raise ManifestTampered(
            f"{who}: its manifest differs from the one in your invite "
            f"(program digest {got.program.sha256[:12]}... vs {manifest.program.sha256[:12]}..., "
            f"parties {got.parties} vs {manifest.parties})",
            party=organizer,
        )
    if subject["relays"] != list(manifest.relays):
        raise RosterInvalid(f"{who}: relays differ from the manifest's", party=organizer)
    entries = subject["parties"]
    if not isinstance(entries, list) or len(entries) != manifest.parties:
        raise RosterInvalid(
            f"{who}: lists {len(entries) if isinstance(entries, list) else '?'} parties, "
            f"the manifest says {manifest.parties}",
            party=organizer,
        )
    parties: list[RosterParty] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        label = f"party {i}"
        if not isinstance(entry, dict) or entry.get("partyId") != i:
            raise RosterInvalid(f"{who}: entry {i} is malformed or out of order", party=organizer)
        keys = {"partyId", "id", "sessionKey", "endpoints"} | ({"acceptance"} if i else set())
        if set(entry) != keys:
            raise RosterInvalid(f"{who}: entry {i} has the wrong fields", party=organizer)
        did = entry["id"]
        if not isinstance(did, str) or did in seen:
            raise RosterInvalid(f"{who}: {label} is missing or repeats a DID", party=organizer)
        seen.add(did)
        session_key = decode_session_key(entry["sessionKey"], f"{who}, {label}", RosterInvalid)
        endpoints = validate_endpoints(entry["endpoints"], f"{who}, {label}", RosterInvalid)
        if i == 0:
            if did != organizer:
                raise RosterInvalid(f"{who}: party 0 must be the organizer", party=organizer)
        else:
            try:
                acc = verify_acceptance(
                    entry["acceptance"], manifest=manifest, now=now, party=label
                )
            except (AcceptanceInvalid, InviteInvalid) as exc:
                raise type(exc)(f"roster rejected: {exc.message}", party=exc.party) from None
            if acc.holder != did:
                raise RosterInvalid(
                    f"{who}: {label} is listed as {did} but its acceptance is by {acc.holder}",
                    party=organizer,
                )
            if not hmac.compare_digest(acc.session_key, session_key) or acc.endpoints != endpoints:
                raise RosterInvalid(
                    f"{who}: {label} ({did}) is listed with a session key or endpoints other "
                    "than its acceptance's",
                    party=organizer,
                )
        parties.append(RosterParty(i, did, session_key, endpoints))
    if me is not None:
        mine = next((p for p in parties if p.did == me), None)
        if mine is None:
            raise RosterInvalid(f"{who}: you ({me}) are not in it", party=organizer)
        if my_key is not None and not hmac.compare_digest(mine.session_public_key, my_key):
            raise RosterInvalid(f"{who}: it lists another session key for you", party=organizer)
        if my_endpoints is not None and mine.endpoints != tuple(my_endpoints):
            raise RosterInvalid(f"{who}: it lists other endpoints for you", party=organizer)
    return AgreedRoster(
        session_id=manifest.session_id,
        roster_hash=roster_hash(doc),
        manifest=manifest,
        parties=tuple(parties),
        relays=manifest.relays,
    )
