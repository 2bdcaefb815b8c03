"""Errors of the session layer (specs/session-protocol.md, "Errors").

They extend the one tree in :mod:`didmesh.identity.errors`:

* :class:`~didmesh.identity.errors.LocalError` (exit code 2): misuse or configuration on
  this machine -- an unknown session or contact, a command in the wrong state, a missing
  ``--yes``;
* :class:`~didmesh.identity.errors.RemoteError` (exit code 1): a document or message from
  another party failed a check. Every such message names the party (DID, and petname when
  known) and the cause; the CLI prints it as one line and nothing starts;
* :class:`WaitTimeout` (exit code 3): a wait ran out before the others answered.

A remote party is never told more than the ``code`` (STYLE.md, point 7).
"""

from __future__ import annotations

from didmesh.identity.errors import DidmeshError, LocalError, RemoteError


class SessionError(DidmeshError):
    """A session-layer failure."""

    code = "session_error"


# --------------------------------------------------------------------------- local misuse


class SessionUsageError(SessionError, LocalError):
    """The session command cannot be carried out as asked."""

    code = "session_usage"


class BadSessionParameters(SessionUsageError):
    """The session parameters are invalid (parties, threshold, relays, validity, program)."""

    code = "bad_session_parameters"


class SessionNotFound(SessionUsageError):
    """No session in this didmesh home matches (see 'didmesh sessions')."""

    code = "session_not_found"


class AmbiguousSession(SessionUsageError):
    """The session id prefix matches more than one session; give more characters."""

    code = "ambiguous_session"


class WrongIdentity(SessionUsageError):
    """The session belongs to another identity of this home (use --as NAME)."""

    code = "wrong_identity"


class UnexpectedEvent(SessionUsageError):
    """The event is not allowed in the session's current state."""

    code = "unexpected_event"

    def __init__(self, state: str, event: str, detail: str = "", session: str = "") -> None:
        self.state = state
        self.event = event
        extra = f": {detail}" if detail else ""
        if session:  # a person's command: say which session, and that it is the state
            super().__init__(f"session {session} is {state!r} now: {event!r} is not possible "
                             f"in that state (see: didmesh status {session}){extra}")  # fmt: skip
        else:
            super().__init__(f"cannot handle {event!r} in state {state!r}{extra}")


class RosterNotIssued(SessionUsageError):
    """Every seat accepted, but the organizer cannot issue the roster (e.g. it would be over
    the size a credential may have): the session fails and is cancelled for the invitees."""

    code = "roster_not_issued"


class SeatsFull(SessionUsageError):
    """Every seat of the session is already taken by a pending or accepted invite."""

    code = "seats_full"


class ConfirmationRequired(SessionUsageError):
    """accepting needs a 'yes': pass --yes (stdin is not a terminal, so didmesh cannot ask)."""

    code = "confirmation_required"


class NoRelay(SessionUsageError):
    """No relay is known: pass --relay URL (or set DIDMESH_RELAY)."""

    code = "no_relay"


class ContactError(SessionUsageError):
    """The address book cannot be used as asked."""

    code = "contact_error"


class UnknownContact(ContactError):
    """No contact has this name (see 'didmesh contacts list'), and it is not a DID."""

    code = "unknown_contact"


class ContactExists(ContactError):
    """A contact with this name exists already (use --force to replace it)."""

    code = "contact_exists"


class StateCorrupted(SessionUsageError):
    """A session state file is malformed or was altered; it is not used."""

    code = "state_corrupted"


class StoreBusy(SessionUsageError):
    """Another didmesh process holds this home's session lock; try again when it ends."""

    code = "store_busy"


class ProgramDigestMismatch(SessionUsageError):
    """The program file's SHA-256 differs from the digest in the session manifest."""

    code = "program_digest_mismatch"
    #: the first file that differs, and how (for the abort the peers are told)
    file: str | None = None
    problem: str = "differs from the agreed one"


class ProgramArgsMismatch(SessionUsageError):
    """The program arguments given here differ from the arguments the manifest agreed on."""

    code = "program_args_mismatch"
    #: the first argument that differs (for the abort the peers are told)
    argument: str | None = None


class MpycVersionMismatch(SessionUsageError):
    """The installed MPyC version is outside the session manifest's version range."""

    code = "mpyc_version_mismatch"


class InvalidCode(SessionUsageError):
    """The invite code is not of the form NUMBER-WORD-WORD (for example 4-orbit-lantern)."""

    code = "invalid_code"


# --------------------------------------------------------------------------- waiting


class WaitTimeout(SessionError):
    """The wait ended before the other parties answered (raise --timeout, or retry later)."""

    code = "timeout"
    exit_code = 3


class CodeNotAnswered(WaitTimeout):
    """Nobody answered on the code's nameplate: is the organizer's didmesh running?"""

    code = "code_not_answered"


# --------------------------------------------------------------------------- remote faults


class SessionRemoteError(SessionError, RemoteError):
    """A session document or message from another party failed a check."""

    code = "session_remote"

    def __init__(
        self, message: str | None = None, *, party: str | None = None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.party = party
        #: the cause in words for the party at fault (a refused invitee), without its name
        self.detail = detail


class MessageInvalid(SessionRemoteError):
    """A session message is malformed, too large, or not signed by its sender."""

    code = "message_invalid"


class ManifestInvalid(SessionRemoteError):
    """A session manifest is malformed."""

    code = "manifest_invalid"


class InviteInvalid(SessionRemoteError):
    """An invite failed verification."""

    code = "invite_invalid"


class InviteExpired(InviteInvalid):
    """The invite (or the session's validity window) has expired."""

    code = "invite_expired"


class InviteNotForYou(InviteInvalid):
    """The invite is addressed to another DID."""

    code = "invite_not_for_you"


class ManifestTampered(InviteInvalid):
    """A manifest differs from the one the organizer signed for this session."""

    code = "manifest_tampered"


class InviteWithdrawn(SessionRemoteError):
    """The organizer withdrew this invite."""

    code = "invite_withdrawn"


class AcceptanceInvalid(SessionRemoteError):
    """An acceptance failed verification."""

    code = "acceptance_invalid"


class AcceptanceReplayed(AcceptanceInvalid):
    """The acceptance was made for another session or another invite (challenge/domain)."""

    code = "acceptance_replayed"


class NotInvited(AcceptanceInvalid):
    """The acceptance is signed by someone who holds no (current) invite to this session."""

    code = "not_invited"


class GateCredentialMissing(AcceptanceInvalid):
    """The seat requires a credential from a named issuer, and the acceptance lacks a valid one."""

    code = "gate_credential_missing"


class GateCredentialInvalid(GateCredentialMissing):
    """The credential an acceptance presents for a gated seat fails verification."""

    code = "gate_credential_invalid"


class GateCredentialExpired(GateCredentialMissing):
    """The credential an acceptance presents for a gated seat has expired (or is not valid
    yet)."""

    code = "gate_credential_expired"


class PresentationExpired(AcceptanceInvalid):
    """The acceptance's own proof had expired when it arrived."""

    code = "presentation_expired"


class GateCredentialTooLarge(AcceptanceInvalid):
    """The credentials an acceptance presents for a gated seat would make the roster too
    large to issue or to carry through a relay (counted with the seats accepted so far)."""

    code = "gate_credential_too_large"


class RosterInvalid(SessionRemoteError):
    """The roster failed verification."""

    code = "roster_invalid"


class RosterEquivocation(RosterInvalid):
    """The organizer signed two different rosters for one session."""

    code = "roster_equivocation"


class ConfirmationInvalid(SessionRemoteError):
    """A roster confirmation failed verification."""

    code = "confirmation_invalid"


class ConfirmationMismatch(ConfirmationInvalid):
    """A party confirmed a roster hash other than the one this party holds."""

    code = "confirmation_mismatch"


class PartyWithdrew(SessionRemoteError):
    """A party withdrew its acceptance (or declined) after the roster was published."""

    code = "party_withdrew"


class LateMessage(SessionRemoteError):
    """A message came after the step it could change: a withdrawal, decline or cancel after
    every party confirmed the roster, or a second acceptance after the roster was
    published. It is ignored (the roster is final) and reported; the session stays as it is."""

    code = "late_message"


class SessionCancelled(SessionRemoteError):
    """The organizer cancelled the session."""

    code = "session_cancelled"


class CodeError(SessionRemoteError):
    """Claiming a seat with an invite code failed."""

    code = "code_error"


class WrongCode(CodeError):
    """The code does not match: it was mistyped, or it belongs to another invite."""

    code = "wrong_code"


class CodeAlreadyClaimed(CodeError):
    """Someone else already used this code (codes are single use); ask for a new one."""

    code = "code_already_claimed"


class CodeExpired(CodeError):
    """The code has expired; ask the organizer for a new one."""

    code = "code_expired"
