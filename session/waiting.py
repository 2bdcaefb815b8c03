"""What a party's wait is waiting for, and who must act (specs/session-protocol.md, 9).

A pure function of the session's state: the CLI prints it when a wait starts, when the
session moves on, and in the timeout's message. Agreement needs every party to confirm
the roster, and a party confirms only while its didmesh runs (it verifies the roster
itself): so a wait names the parties whose confirmation is missing and the command that
confirms. A party's confirmation is sent once; it need not stay online afterwards.
"""

from __future__ import annotations

from .state import ACCEPTABLE, ACTIVE_SEATS, Role, SeatStatus, SessionState, Status

#: parties named one by one; beyond, "and N more"
MAX_NAMED = 4


def _who(did: str, labels: dict[str, str]) -> str:
    name = labels.get(did)
    short = did if len(did) <= 32 else did[:28] + "…"
    return f"{name!r} ({short})" if name else short


def _listing(items: list[str]) -> str:
    shown = items[:MAX_NAMED]
    more = len(items) - len(shown)
    if more:
        shown.append(f"{more} more")
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def waiting_for(state: SessionState, labels: dict[str, str] | None = None) -> str:
    """What this party waits for now, naming who must act and how."""
    labels = labels or {}
    sid = state.session_id[:8]
    organizer = str(state.manifest.get("organizer", ""))
    status = state.status
    if state.roster is not None and status == Status.CONFIRMING:
        parties = state.roster["credentialSubject"]["parties"]
        missing = [f"party {i} {_who(p['id'], labels)}" for i, p in enumerate(parties)
                   if p["id"] not in state.confirmations]  # fmt: skip
        return (
            f"{_listing(missing)} to confirm the roster of session {sid}: each confirms by "
            f"running 'didmesh status {sid}' (or 'status {sid} --wait', 'session wait {sid}') "
            "once; yours is sent, so you need not stay online: run "
            f"'didmesh status {sid} --wait' again later"
        )
    if state.role == Role.INVITEE:
        if status == Status.ACCEPTED:
            return (
                f"the organizer {_who(organizer, labels)} to publish the roster of session "
                f"{sid}: it does so once every seat has accepted, while its didmesh runs "
                f"('didmesh session wait {sid}' or 'didmesh status {sid}')"
            )
        if status in ACCEPTABLE:
            return f"you to accept the invite to session {sid}: didmesh accept {sid}"
        return f"session {sid} ({status})"
    if status == Status.COLLECTING:
        parts = []
        invited = [_who(s.did, labels) for s in state.seats
                   if s.status == SeatStatus.INVITED and s.did]  # fmt: skip
        if invited:
            parts.append(f"{_listing(invited)} to accept ('didmesh accept {sid}')")
        codes = [f"{s.nameplate}-..." for s in state.seats if s.status == SeatStatus.CODE]
        if codes:
            parts.append(f"someone to claim the open code {_listing(codes)}")
        active = sum(s.status in ACTIVE_SEATS for s in state.seats)
        free = int(state.manifest.get("parties", 0)) - 1 - active
        if free > 0:
            parts.append(f"{free} seat(s) still to invite ('didmesh invite {sid} --to "
                         "NAME_OR_DID')")  # fmt: skip
        return (" and ".join(parts) if parts else "the last acceptance") + (
            f", before session {sid}'s roster can be published")
    return f"session {sid} ({status})"
