"""Which refused acceptances the organizer answers with a ``refuse``, with which code and
reason (specs/session-protocol.md, section 4, "Refusal"). Pure functions, no I/O.

The organizer answers only an acceptance that is *authentic*: the session message
carrying it is signed by its holder (the message's ``from``), the presentation's own proof
verifies as the holder's, and the holder is a DID the organizer itself invited to this
session. Anything else (a bad signature, an unknown holder, someone else's acceptance
passed on) gets no answer: no oracle for strangers, and no message to an address an
attacker chose. Each invite gets at most :data:`MAX_REFUSALS_PER_INVITE` refusals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from didmesh.identity.credentials import verify_presentation_proof
from didmesh.identity.errors import DidmeshError, Expired

from .documents import SUITE, Gate
from .errors import (
    AcceptanceInvalid,
    AcceptanceReplayed,
    GateCredentialExpired,
    GateCredentialInvalid,
    GateCredentialMissing,
    GateCredentialTooLarge,
    InviteInvalid,
    LateMessage,
    ManifestTampered,
    NotInvited,
    PresentationExpired,
    SessionRemoteError,
)
from .messages import Message, doc_id
from .state import ACTIVE_SEATS, SeatRecord

#: refusals one invite (one seat record) gets at most; further bad acceptances get nothing
MAX_REFUSALS_PER_INVITE = 5

#: (error class, refusal code), most specific first; an error of none of them gets no refusal
_CODES: tuple[tuple[type[SessionRemoteError], str], ...] = (
    (LateMessage, ""),
    (GateCredentialTooLarge, "gate_credential_too_large"),
    (GateCredentialExpired, "gate_credential_expired"),
    (GateCredentialInvalid, "gate_credential_invalid"),
    (GateCredentialMissing, "gate_credential_missing"),
    (NotInvited, "invite_not_current"),
    (AcceptanceReplayed, "terms_mismatch"),
    (ManifestTampered, "terms_mismatch"),
    (PresentationExpired, "presentation_expired"),
    (InviteInvalid, "acceptance_invalid"),
    (AcceptanceInvalid, "acceptance_invalid"),
)


@dataclass(frozen=True)
class Refusal:
    """A ``refuse`` to send: to ``to``, about acceptance ``acceptance_id`` of ``invite_id``."""

    to: str
    invite_id: str
    acceptance_id: str
    code: str
    reason: str
    seat: SeatRecord


def code_for(exc: SessionRemoteError) -> str | None:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code or None
    return None


def _invite_id(doc: dict[str, Any]) -> str | None:
    creds = doc.get("verifiableCredential")
    for cred in creds if isinstance(creds, list) else [creds]:
        if isinstance(cred, dict):
            types = cred.get("type")
            if isinstance(types, list) and "SessionInvite" in types:
                return doc_id(cred.get("id"))
    return None


def authentic_holder(msg: Message, doc: object, *, invited: Sequence[str],
                     now: datetime) -> str | None:  # fmt: skip
    """The holder of ``doc`` if the acceptance is authentic (see the module docstring)."""
    if not isinstance(doc, dict):
        return None
    holder = doc.get("holder")
    if not isinstance(holder, str) or holder != msg.sender or holder not in invited:
        return None
    try:
        signer = verify_presentation_proof(doc, now=now, suites=(SUITE,))
    except Expired:  # raised only once the signature verified
        return holder
    except DidmeshError:
        return None
    return holder if signer == holder else None


def plan_refusal(
    msg: Message,
    exc: SessionRemoteError,
    *,
    seats: Sequence[SeatRecord],
    session_id: str,
    now: datetime,
) -> Refusal | None:
    """The refusal to send for ``msg`` (an ``accept`` rejected with ``exc``), or None."""
    code = code_for(exc)
    doc = msg.body.get("acceptance")
    if code is None or not isinstance(doc, dict):
        return None
    invited = [s.did for s in seats if s.did]
    holder = authentic_holder(msg, doc, invited=invited, now=now)
    invite_id, acceptance_id = _invite_id(doc), doc_id(doc.get("id"))
    if holder is None or invite_id is None or acceptance_id is None:
        return None
    mine = [s for s in seats if s.did == holder]
    seat = next((s for s in mine if s.invite_id == invite_id), mine[-1])
    current = next((s for s in mine if s.status in ACTIVE_SEATS), None)
    if code == "invite_not_current" and current is not None and current.invite_id == invite_id:
        code = "acceptance_invalid"  # its invite is current; something else in it is wrong
    reason = _reason(code, exc, session_id[:8], seat, current, invite_id)
    return Refusal(holder, invite_id, acceptance_id, code, reason, seat)


def _gate(seat: SeatRecord) -> str:
    try:
        return Gate.from_json(seat.requires, "seat").describe() if seat.requires else ""
    except DidmeshError:
        return ""


def _reason(code: str, exc: SessionRemoteError, sid: str, seat: SeatRecord,
            current: SeatRecord | None, invite_id: str) -> str:  # fmt: skip
    detail = exc.detail or "no detail"
    again = f"didmesh accept {sid}"
    with_cred = f"{again} --credential FILE"
    gate = _gate(seat)
    what = f" ({gate})" if gate else ""
    if code == "gate_credential_too_large":
        return exc.detail
    if code == "gate_credential_missing":
        return (f"{detail}, and your acceptance presents none; accept again presenting it: "
                f"{with_cred}")
    if code == "gate_credential_invalid":
        return (f"the credential you presented for the seat{what} is not valid: {detail}; "
                f"accept again presenting a valid one: {with_cred}")
    if code == "gate_credential_expired":
        return (f"the credential you presented for the seat{what} is not valid now: {detail}; "
                f"accept again presenting a current one: {with_cred}")
    if code == "invite_not_current":
        if current is not None and current.invite_id and current.invite_id != invite_id:
            return (f"your acceptance names invite {invite_id}, which the organizer replaced "
                    f"with a fresh invite ({current.invite_id}): accept that one "
                    f"(didmesh invites, then {again})")
        return (f"your acceptance names invite {invite_id}, which has ended (the organizer "
                "withdrew it, or you declined or withdrew): ask the organizer for a fresh "
                "invite")
    if code == "terms_mismatch":
        return (f"your acceptance does not match session {sid}'s terms: {detail}; accept "
                f"the invite again ({again}) or ask the organizer for a fresh one")
    if code == "presentation_expired":
        return f"your acceptance had expired when it arrived ({detail}); accept again: {again}"
    return (f"the organizer cannot use your acceptance: {detail}; accept again ({again}); "
            "if it is refused again, your didmesh and the organizer's may differ in version")
