"""A party's view of one session, as kept on disk (specs/session-protocol.md, "State").

Plain data with a strict JSON form. Secrets are not here: the per-session X25519 private
key lives in its own 0600 file (:mod:`didmesh.session.store`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from .errors import StateCorrupted

FORMAT = "didmesh-session/v1"
MAX_EVENTS = 200
MAX_REJECTED = 50
MAX_SEEN = 2000
#: said of a state file this version cannot read but a later one may have written
_NEWER = "; written by a newer didmesh? Upgrade didmesh to read it"


class Role(StrEnum):
    ORGANIZER = "organizer"
    INVITEE = "invitee"


class Status(StrEnum):
    COLLECTING = "collecting"  # organizer: invites out, waiting for acceptances
    INVITED = "invited"  # invitee: holds a verified invite
    ACCEPTED = "accepted"  # invitee: acceptance sent, waiting for the roster
    REFUSED = "refused"  # invitee: the organizer refused that acceptance; the invite stands
    CONFIRMING = "confirming"  # roster verified and confirmed, waiting for all m
    AGREED = "agreed"  # m valid confirmations of one hash
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"  # this invitee withdrew its acceptance
    REVOKED = "revoked"  # the organizer withdrew this invitee's invite
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"  # a check failed; ``error`` says which, naming the party


TERMINAL = frozenset(
    {
        Status.AGREED, Status.DECLINED, Status.WITHDRAWN, Status.REVOKED,
        Status.CANCELLED, Status.EXPIRED, Status.FAILED,
    }
)  # fmt: skip
ENDED = TERMINAL - {Status.AGREED}
#: an invitee's session that holds an invite it may accept (again, once refused)
ACCEPTABLE = frozenset({Status.INVITED, Status.REFUSED})
#: an invitee's session in one of these (and with no roster) takes a fresh invite from the
#: organizer: the organizer invited the same party again after a withdrawal or a decline
REOPENABLE = frozenset({Status.DECLINED, Status.WITHDRAWN, Status.REVOKED})
MAX_ENDED_INVITES = 64


class SeatStatus(StrEnum):
    CODE = "code"  # reserved for an open invite code, not claimed yet
    INVITED = "invited"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"  # by the organizer, or the invitee withdrew its acceptance
    LAPSED = "lapsed"  # an open code expired or was burned by a failed claim


ACTIVE_SEATS = frozenset({SeatStatus.CODE, SeatStatus.INVITED, SeatStatus.ACCEPTED})


@dataclass
class SeatRecord:
    """The organizer's record of one seat."""

    status: str
    created: str
    did: str | None = None
    invite_id: str | None = None
    invite: dict[str, Any] | None = None
    acceptance: dict[str, Any] | None = None
    requires: dict[str, Any] | None = None
    nameplate: int | None = None
    refusals: int = 0  # refuse messages sent for this invite (bounded)


@dataclass
class SessionState:
    session_id: str
    role: str
    me: str
    status: str
    manifest: dict[str, Any]
    created: str
    session_public: str | None = None  # multibase X25519
    endpoints: list[str] = field(default_factory=list)
    seats: list[SeatRecord] = field(default_factory=list)
    invite: dict[str, Any] | None = None
    acceptance: dict[str, Any] | None = None
    roster: dict[str, Any] | None = None
    roster_hash: str | None = None
    commitment: str | None = None
    confirmations: dict[str, dict[str, Any]] = field(default_factory=dict)
    early: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    outbox: list[dict[str, str]] = field(default_factory=list)
    events: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    ended_invites: list[str] = field(default_factory=list)  # invitee: ids withdrawn/declined

    # -- log ------------------------------------------------------------------------
    def note(self, at: str, what: str) -> None:
        self.events.append({"at": at, "what": what})
        del self.events[:-MAX_EVENTS]

    def reject(self, at: str, code: str, message: str, party: str | None) -> None:
        self.rejected.append({"at": at, "code": code, "message": message, "party": party})
        del self.rejected[:-MAX_REJECTED]

    def mark_seen(self, msg_id: str) -> bool:
        """Record ``msg_id``; False if it was seen before."""
        if msg_id in self.seen:
            return False
        self.seen.append(msg_id)
        del self.seen[:-MAX_SEEN]
        return True

    # -- JSON -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A shallow view for json.dumps (no deep copy: documents are shared)."""
        data: dict[str, Any] = {"format": FORMAT}
        for f in fields(self):
            data[f.name] = getattr(self, f.name)
        data["seats"] = [vars(s) for s in self.seats]
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "state") -> SessionState:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StateCorrupted(f"{where}: not a {FORMAT} file")
        values = {k: v for k, v in data.items() if k != "format"}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            shown = ", ".join(repr(k)[:40] for k in unknown[:3])
            raise StateCorrupted(f"{where}: fields this didmesh does not know ({shown}"
                                 f"{', …' if len(unknown) > 3 else ''}){_NEWER}")
        try:
            seats = [SeatRecord(**s) for s in values.pop("seats", [])]
            state = cls(**values, seats=seats)
        except TypeError as exc:
            raise StateCorrupted(f"{where}: {exc}") from None
        if not isinstance(state.role, str) or not isinstance(state.status, str):
            raise StateCorrupted(f"{where}: role and status must be strings")
        if state.role not in set(Role) or state.status not in set(Status):
            raise StateCorrupted(f"{where}: unknown role or status "
                                 f"({state.role[:20]!r}, {state.status[:20]!r}){_NEWER}")
        return state
