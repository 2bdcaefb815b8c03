"""The session state machine, sans I/O (specs/session-protocol.md, "State machine").

:class:`SessionMachine` wraps a :class:`~didmesh.session.state.SessionState` and the
party's identity key. Local commands (``invite``, ``accept``, ...) and received
messages (:meth:`SessionMachine.receive`) change the state and append signed messages
to ``state.outbox``; the caller persists the state and flushes the outbox through a
mailbox. Time (``now``) and randomness (``rng``) are parameters.

:data:`TABLE` lists, per (role, status), the events allowed. A local command outside the
table raises :class:`~didmesh.session.errors.UnexpectedEvent` naming state and event; a
received message outside it is recorded as rejected (it may be a late duplicate) and
changes nothing. Checks that fail on a message *authenticated* as coming from a party
of the session and proving misbehaviour (an invalid roster, equivocation, a
confirmation of another hash, a withdrawal after the roster and before agreement) move
the session to ``failed`` with the error naming the cause and the party: nothing starts.
Once agreed, the roster is final: a late withdrawal or cancel is recorded and reported
(``LateMessage``), never fatal. Messages received together are one step
(:meth:`SessionMachine.begin_batch`): the organizer publishes the roster at the batch's end.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey
from nacl import bindings

from .budget import gate_bytes, gates_fit, presented
from .documents import (
    Gate,
    build_acceptance,
    build_confirmation,
    build_invite,
    decode_session_key,
    did_ok,
    new_invite_id,
    validate_endpoints,
    verify_acceptance,
    verify_confirmation,
    verify_invite,
)
from .errors import (
    BadSessionParameters,
    ConfirmationMismatch,
    GateCredentialTooLarge,
    InviteExpired,
    InviteWithdrawn,
    LateMessage,
    MessageInvalid,
    NotInvited,
    PartyWithdrew,
    RosterEquivocation,
    RosterInvalid,
    RosterNotIssued,
    SeatsFull,
    SessionCancelled,
    SessionRemoteError,
    SessionUsageError,
    StateCorrupted,
    UnexpectedEvent,
)
from .manifest import Manifest, format_time
from .messages import ENDING_REFUSALS, Message, parse_refusal, refusal_body, seal_message
from .refusals import MAX_REFUSALS_PER_INVITE, plan_refusal
from .roster import (
    AgreedRoster,
    Seat,
    build_roster,
    commit,
    commitment_valid,
    pack_roster,
    roster_hash,
    unpack_roster,
    verify_roster,
)
from .state import (
    ACCEPTABLE,
    ACTIVE_SEATS,
    MAX_ENDED_INVITES,
    REOPENABLE,
    TERMINAL,
    Role,
    SeatRecord,
    SeatStatus,
    SessionState,
    Status,
)

Rng = Callable[[int], bytes]

O, I = Role.ORGANIZER, Role.INVITEE  # noqa: E741
S = Status
#: (role, status) -> events allowed. Local events are plain words, received messages
#: are "msg:<kind>". Everything else is unexpected.
TABLE: dict[tuple[Role, Status], frozenset[str]] = {
    (O, S.COLLECTING): frozenset(
        {"invite", "code-seat", "withdraw-invite", "cancel", "tick",
         "msg:accept", "msg:decline", "msg:withdraw"}
    ),
    (O, S.CONFIRMING): frozenset(
        {"cancel", "tick", "msg:confirm", "msg:accept", "msg:decline", "msg:withdraw"}
    ),
    (O, S.AGREED): frozenset({"msg:confirm", "msg:accept", "msg:decline", "msg:withdraw"}),
    (I, S.INVITED): frozenset(
        {"accept", "decline", "tick", "msg:invite", "msg:withdraw-invite", "msg:cancel"}
    ),
    (I, S.ACCEPTED): frozenset(
        {"withdraw", "tick", "msg:invite", "msg:roster", "msg:confirm",
         "msg:withdraw-invite", "msg:cancel", "msg:refuse"}
    ),
    (I, S.REFUSED): frozenset(
        {"accept", "decline", "tick", "msg:invite", "msg:withdraw-invite", "msg:cancel"}
    ),
    # the organizer may invite a party again after a withdrawal or decline (a fresh invite)
    (I, S.DECLINED): frozenset({"msg:invite"}),
    (I, S.WITHDRAWN): frozenset({"msg:invite"}),
    (I, S.REVOKED): frozenset({"msg:invite"}),
    (I, S.CONFIRMING): frozenset(
        {"withdraw", "tick", "msg:roster", "msg:confirm", "msg:withdraw", "msg:cancel"}
    ),
    (I, S.AGREED): frozenset({"msg:roster", "msg:confirm", "msg:withdraw", "msg:cancel"}),
}  # fmt: skip
#: received in state agreed, these come too late to change anything: the roster is final,
#: every party confirmed it. Each is recorded as rejected (``LateMessage``) and reported.
LATE = frozenset({"msg:decline", "msg:withdraw", "msg:cancel"})
MAX_EARLY = 128


def x25519_public(private: bytes) -> bytes:
    return bindings.crypto_scalarmult_base(private)


def _ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)


class SessionMachine:
    def __init__(
        self,
        state: SessionState,
        key: IdentityKey,
        *,
        rng: Rng = os.urandom,
        labels: dict[str, str] | None = None,
    ) -> None:
        if state.me != key.did:
            raise SessionUsageError(f"session {state.session_id[:8]} belongs to {state.me}")
        self.state = state
        self.key = key
        self.me = state.me  # == key.did (checked above); computing it is not free
        self.rng = rng
        self.manifest = Manifest.from_json(state.manifest)
        self.labels = labels or {}
        self._batch = False  # between begin_batch and end_batch
        self._publish_due = False  # an acceptance came in during the batch

    # ----------------------------------------------------------------------- helpers
    @property
    def role(self) -> Role:
        return Role(self.state.role)

    @property
    def status(self) -> Status:
        return Status(self.state.status)

    def _allow(self, event: str, detail: str = "") -> None:
        if event not in TABLE.get((self.role, self.status), frozenset()):
            raise UnexpectedEvent(self.status.value, event, detail,
                                  session=self.state.session_id[:8])

    def _send(self, to: str, kind: str, body: dict[str, Any], now: datetime) -> None:
        payload = seal_message(
            self.key, kind, self.state.session_id, to, body, now_ms=_ms(now), rng=self.rng
        )
        self.state.outbox.append({"to": to, "payload": base64.b64encode(payload).decode()})

    def _fail(self, exc: SessionRemoteError, now: datetime) -> None:
        self.state.error = {"code": exc.code, "message": exc.message, "party": exc.party}
        self.state.status = Status.FAILED
        self.state.note(format_time(now), f"failed: {exc.message}")

    def _end(self, status: Status, exc: SessionRemoteError | None, now: datetime) -> None:
        if exc is not None:
            self.state.error = {"code": exc.code, "message": exc.message, "party": exc.party}
        self.state.status = status
        self.state.note(format_time(now), f"{status.value}" + (f": {exc.message}" if exc else ""))

    def label(self, did: str | None) -> str:
        if did is None:
            return "(open code seat)"
        name = self.labels.get(did)
        return f"{name} ({did})" if name else did

    def roster(self, *, now: datetime) -> AgreedRoster | None:
        """The verified roster this party holds (confirmed by all iff status is agreed)."""
        if self.state.roster is None:
            return None
        return verify_roster(self.state.roster, manifest=self.manifest, now=now)

    # ----------------------------------------------------------------------- organizer
    def _active_seats(self) -> list[SeatRecord]:
        return [s for s in self.state.seats if s.status in ACTIVE_SEATS]

    def _seat_for(self, did: str) -> SeatRecord | None:
        for seat in self.state.seats:
            if seat.did == did and seat.status in ACTIVE_SEATS:
                return seat
        return None

    def invite(
        self, invitee: str, *, now: datetime, requires: Gate | None = None
    ) -> dict[str, Any]:
        """Issue an invite to ``invitee`` (queues it for delivery); returns the VC."""
        self._allow("invite")
        if not did_ok(invitee):
            raise BadSessionParameters(
                f"{invitee[:100]!r} is not an Ed25519 did:key (one looks like did:key:z6Mk...)"
            )
        if invitee == self.me:
            raise BadSessionParameters("the organizer holds seat 0 already")
        if self._seat_for(invitee) is not None:
            raise SessionUsageError(f"{self.label(invitee)} is already invited to this session")
        if len(self._active_seats()) >= self.manifest.parties - 1:
            raise SeatsFull(
                f"all {self.manifest.parties - 1} seats of session {self.state.session_id[:8]} "
                "are taken (withdraw an invite first)"
            )
        seat = SeatRecord(status=SeatStatus.INVITED, created=format_time(now))
        self.state.seats.append(seat)
        return self._fill(seat, invitee, now, requires)

    def _fill(
        self, seat: SeatRecord, invitee: str, now: datetime, requires: Gate | None
    ) -> dict[str, Any]:
        invite_id = new_invite_id(self.rng)
        doc = build_invite(
            self.manifest, invitee, self.key, now=now, invite_id=invite_id, requires=requires
        )
        seat.status, seat.did, seat.invite_id, seat.invite = (
            SeatStatus.INVITED, invitee, invite_id, doc,
        )  # fmt: skip
        seat.requires = requires.to_json() if requires else None
        self._send(invitee, "invite", {"invite": doc}, now)
        self.state.note(format_time(now), f"invited {self.label(invitee)}")
        return doc

    def reserve_code_seat(self, nameplate: int, *, now: datetime) -> None:
        self._allow("code-seat")
        if len(self._active_seats()) >= self.manifest.parties - 1:
            raise SeatsFull(
                f"all {self.manifest.parties - 1} seats of session {self.state.session_id[:8]} "
                "are taken (withdraw an invite first)"
            )
        self.state.seats.append(
            SeatRecord(status=SeatStatus.CODE, created=format_time(now), nameplate=nameplate)
        )
        self.state.note(format_time(now), f"opened a code seat (nameplate {nameplate})")

    def _code_seat(self, nameplate: int) -> SeatRecord | None:
        for seat in self.state.seats:
            if seat.status == SeatStatus.CODE and seat.nameplate == nameplate:
                return seat
        return None

    def fill_code_seat(self, nameplate: int, invitee: str, *, now: datetime) -> dict[str, Any]:
        """A code was claimed by ``invitee``: issue it the seat's invite."""
        self._allow("code-seat")
        seat = self._code_seat(nameplate)
        if seat is None:
            raise SessionUsageError(f"no open code seat with nameplate {nameplate}")
        if not did_ok(invitee) or invitee == self.me or self._seat_for(invitee):
            seat.status = SeatStatus.LAPSED
            raise BadSessionParameters(
                f"the code was claimed by {invitee[:100]}, who cannot take a seat "
                "(not an Ed25519 did:key, the organizer, or invited already)"
            )
        return self._fill(seat, invitee, now, None)

    def release_code_seat(self, nameplate: int, *, now: datetime, why: str) -> None:
        seat = self._code_seat(nameplate)
        if seat is not None:
            seat.status = SeatStatus.LAPSED
            self.state.note(format_time(now), f"code seat {nameplate} lapsed: {why}")

    def withdraw_code_seat(self, nameplate: int, *, now: datetime) -> None:
        """The organizer takes back an open code (read to the wrong person, or lost)."""
        self._allow(
            "withdraw-invite",
            "the roster is published already; cancel the session instead"
            if self.status == Status.CONFIRMING
            else "",
        )
        seat = self._code_seat(nameplate)
        if seat is None:
            raise SessionUsageError(
                f"no open code {nameplate}-... in session {self.state.session_id[:8]} "
                "(see: didmesh status SESSION)"
            )
        seat.status = SeatStatus.LAPSED
        self.state.note(format_time(now), f"withdrew the open code {nameplate}-...")

    def withdraw_invite(self, invitee: str, *, now: datetime) -> None:
        self._allow(
            "withdraw-invite",
            "the roster is published already; cancel the session instead"
            if self.status == Status.CONFIRMING
            else "",
        )
        seat = self._seat_for(invitee)
        if seat is None or seat.did is None:
            raise SessionUsageError(f"{self.label(invitee)} holds no invite to this session")
        seat.status = SeatStatus.WITHDRAWN
        self._send(invitee, "withdraw-invite", {"inviteId": seat.invite_id}, now)
        self.state.note(format_time(now), f"withdrew the invite of {self.label(invitee)}")

    def cancel(self, *, now: datetime) -> None:
        self._allow("cancel")
        for did in self._others():
            self._send(did, "cancel", {}, now)
        self._end(Status.CANCELLED, None, now)

    def _others(self) -> list[str]:
        """Everyone this party talks to: roster parties, or the organizer's invitees."""
        if self.state.roster is not None:
            parties = self.state.roster["credentialSubject"]["parties"]
            return [p["id"] for p in parties if p["id"] != self.me]
        if self.role == Role.ORGANIZER:
            return [s.did for s in self._active_seats() if s.did]
        return [self.manifest.organizer]

    def _on_accept(self, msg: Message, now: datetime) -> None:
        try:
            self._take_acceptance(msg, now)
        except SessionRemoteError as exc:
            self._refuse(msg, exc, now)
            raise

    def _refuse(self, msg: Message, exc: SessionRemoteError, now: datetime) -> None:
        """Tell an authentic invitee why its acceptance was refused (a signed ``refuse``),
        at most MAX_REFUSALS_PER_INVITE times per invite (session/refusals.py)."""
        plan = plan_refusal(msg, exc, seats=self.state.seats,
                            session_id=self.state.session_id, now=now)  # fmt: skip
        if plan is None:
            return
        seat = plan.seat
        if seat.refusals >= MAX_REFUSALS_PER_INVITE:
            if seat.refusals == MAX_REFUSALS_PER_INVITE:
                seat.refusals += 1
                self.state.note(
                    format_time(now),
                    f"{self.label(plan.to)} was refused {MAX_REFUSALS_PER_INVITE} times for "
                    "this invite; further refused acceptances are not answered",
                )
            return
        seat.refusals += 1
        body = refusal_body(plan.invite_id, plan.acceptance_id, plan.code, plan.reason)
        self._send(plan.to, "refuse", body, now)
        self.state.note(format_time(now),
                        f"refused the acceptance of {self.label(plan.to)} ({plan.code}); "
                        "told them why")  # fmt: skip

    def _take_acceptance(self, msg: Message, now: datetime) -> None:
        acc = verify_acceptance(msg.body.get("acceptance"), manifest=self.manifest, now=now)
        seat = self._seat_for(acc.holder)
        if seat is None or seat.invite_id != acc.invite.invite_id:
            raise NotInvited(
                f"acceptance by {self.label(acc.holder)} carries invite "
                f"{acc.invite.invite_id}, which is not a current invite of this session "
                "(withdrawn, replaced or never issued)",
                party=acc.holder,
            )
        if self.status != Status.COLLECTING:
            if seat.acceptance != acc.document:
                raise LateMessage(
                    f"a second acceptance by {self.label(acc.holder)} came after the roster "
                    "was published: too late, ignored (the roster holds the first one)",
                    party=acc.holder,
                )
            return
        self._check_gate_bytes(seat, acc.document, acc.holder, now)
        seat.status, seat.acceptance = SeatStatus.ACCEPTED, acc.document
        self.state.note(format_time(now), f"{self.label(acc.holder)} accepted")
        if self._batch:
            self._publish_due = True  # decided at end_batch, once the whole batch is in
        else:
            self._maybe_publish(now)

    def _check_gate_bytes(
        self, seat: SeatRecord, acceptance: dict[str, Any], who: str, now: datetime
    ) -> None:
        """The roster must still fit with this acceptance's gate credentials and those of
        the seats accepted so far: refused now, not once every seat accepted. The invitee
        is told why (a signed ``refuse``), so its wait ends at once."""
        mine = gate_bytes(presented(acceptance))
        if not mine.raw:
            return
        others = [gate_bytes(presented(s.acceptance)) for s in self.state.seats
                  if s.status == SeatStatus.ACCEPTED and s is not seat]  # fmt: skip
        why = gates_fit(self.manifest, [*others, mine])
        if why is not None:
            reason = (
                f"your gate credentials take {mine.raw} bytes ({mine.framed} compressed); with "
                f"those of the {len(others)} other seat(s) accepted so far {why}; present "
                "smaller credentials (the seat needs only the one it names) and accept again: "
                f"didmesh accept {self.state.session_id[:8]} --credential FILE"
            )
            raise GateCredentialTooLarge(
                f"acceptance by {self.label(who)} presents gate credentials of {mine.raw} "
                f"bytes ({mine.framed} compressed); with the {len(others)} other seat(s) "
                f"accepted so far {why}; the seat stays invited: withdraw the invite "
                f"(didmesh withdraw {self.state.session_id[:8]} --invite DID) or wait for a "
                "smaller credential (the invitee is told why, at most 5 times per invite)",
                party=who, detail=reason,
            )

    def _maybe_publish(self, now: datetime) -> None:
        accepted = [s for s in self.state.seats if s.status == SeatStatus.ACCEPTED]
        if len(accepted) != self.manifest.parties - 1 or self.state.session_public is None:
            return
        own = decode_session_key(self.state.session_public, "own state", StateCorrupted)
        seats = [Seat(self.me, own, tuple(self.state.endpoints), None)]
        for s in accepted:
            assert s.did is not None and s.acceptance is not None
            acc = s.acceptance
            seats.append(
                Seat(
                    s.did,
                    decode_session_key(acc["sessionKey"], "own state", StateCorrupted),
                    tuple(acc["endpoints"]),
                    acc,
                )
            )
        try:
            doc = build_roster(self.manifest, self.key, seats, now=now)
        except DidmeshError as exc:  # e.g. over a credential's size: no acceptance's fault
            self._roster_not_issued(exc, now)
            return
        digest = roster_hash(doc)
        self.state.roster, self.state.roster_hash = doc, digest.hex()
        self.state.commitment = commit(self.key, self.state.session_id, digest)
        self.state.status = Status.CONFIRMING
        self.state.note(format_time(now), f"published the roster {digest.hex()[:16]}")
        packed = pack_roster(doc)
        for did in self._others():
            body = {"roster": packed, "commitment": self.state.commitment}
            self._send(did, "roster", body, now)
        self._confirm(digest, now)

    def _roster_not_issued(self, exc: DidmeshError, now: datetime) -> None:
        """Every seat accepted but the roster cannot be issued: the session cannot start.
        The organizer says why and cancels, rather than rejecting the last acceptance
        (which blamed its sender) and waiting for ever."""
        reason = (f"the organizer could not issue the roster of {self.manifest.parties} "
                  f"parties: {exc.message}")
        for did in self._others():
            self._send(did, "cancel", {"reason": reason[:300]}, now)
        self.state.error = {"code": RosterNotIssued.code,
                            "message": f"{reason}; nothing starts", "party": self.me}
        self.state.status = Status.FAILED
        self.state.note(format_time(now), f"failed: {reason}")

    def _on_decline(self, msg: Message, now: datetime, withdraw: bool) -> None:
        seat = self._seat_for(msg.sender)
        if seat is None or seat.invite_id != msg.body.get("inviteId"):
            raise NotInvited(
                f"{msg.kind} from {self.label(msg.sender)} names no current invite",
                party=msg.sender,
            )
        if self.status == Status.CONFIRMING:
            exc = PartyWithdrew(
                f"{self.label(msg.sender)} withdrew after the roster was published; "
                "the session cannot start",
                party=msg.sender,
            )
            for did in self._others():
                if did != msg.sender:
                    self._send(did, "cancel", {"reason": exc.message[:300]}, now)
            self._fail(exc, now)
            return
        seat.status = SeatStatus.WITHDRAWN if withdraw else SeatStatus.DECLINED
        seat.acceptance = None
        verb = "withdrew its acceptance" if withdraw else "declined"
        self.state.note(format_time(now), f"{self.label(msg.sender)} {verb}; the seat is free")

    # ----------------------------------------------------------------------- invitee
    def accept(
        self,
        *,
        now: datetime,
        session_private: bytes,
        endpoints: Sequence[str] = (),
        extra_credentials: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        self._allow("accept")
        invite = verify_invite(self.state.invite, now=now, me=self.me)
        validate_endpoints(list(endpoints), "--endpoint", BadSessionParameters)
        mine = gate_bytes(extra_credentials)
        why = gates_fit(self.manifest, [mine])
        if why is not None:
            raise BadSessionParameters(
                f"the credentials you present take {mine.raw} bytes ({mine.framed} compressed) "
                f"inside the roster of {self.manifest.parties} parties: {why}; nothing was "
                "sent; present a smaller credential (the seat needs only the one it names)"
            )
        public = x25519_public(session_private)
        doc = build_acceptance(
            invite,
            self.key,
            session_public=public,
            endpoints=endpoints,
            now=now,
            extra_credentials=extra_credentials,
            rng=self.rng,
        )
        again = self.status == Status.REFUSED
        self.state.acceptance = doc
        self.state.session_public = doc["sessionKey"]
        self.state.endpoints = list(endpoints)
        self.state.status = Status.ACCEPTED
        self.state.error = None  # a refusal of an earlier acceptance
        self._send(self.manifest.organizer, "accept", {"acceptance": doc}, now)
        self.state.note(format_time(now), "accepted again" if again else "accepted")
        return doc

    def decline(self, *, now: datetime) -> None:
        self._allow("decline")
        assert self.state.invite is not None
        self._send(self.manifest.organizer, "decline", {"inviteId": self.state.invite["id"]}, now)
        self._end(Status.DECLINED, None, now)

    def withdraw(self, *, now: datetime) -> None:
        if self.status == Status.REFUSED:  # no acceptance stands: withdrawing is declining
            self.decline(now=now)
            return
        self._allow("withdraw")
        assert self.state.invite is not None
        for did in self._others():
            self._send(did, "withdraw", {"inviteId": self.state.invite["id"]}, now)
        self._end(Status.WITHDRAWN, None, now)

    def _on_invite(self, msg: Message, now: datetime) -> None:
        inv = verify_invite(
            msg.body.get("invite"), now=now, me=self.me, manifest=self.manifest
        )
        if inv.invite_id == (self.state.invite or {}).get("id"):
            return  # a duplicate (another relay, or the code channel)
        if self.status in REOPENABLE:
            self.reopen(inv, now=now)
        elif self.status == Status.ACCEPTED:
            # the organizer issues a fresh invite to a party only once its seat was freed:
            # it withdrew the invite we accepted (that notice may come later, or with this)
            if inv.invite_id in self._ended_invites():
                raise InviteWithdrawn(
                    f"invite {inv.invite_id} from {self.label(inv.organizer)} ended before; "
                    "ignored", party=inv.organizer)  # fmt: skip
            self._end(Status.REVOKED, None, now)
            self.reopen(inv, now=now)
        elif self.status in ACCEPTABLE:
            self.state.invite = inv.document
            self.state.note(format_time(now), "the organizer re-issued the invite")

    def can_reopen(self, invite_id: str) -> bool:
        """Whether a fresh invite (``invite_id``) may reopen this ended invitee session:
        declined, withdrawn or revoked before any roster, and an invite not ended before."""
        return (
            self.role == Role.INVITEE
            and self.status in REOPENABLE
            and self.state.roster is None
            and invite_id != (self.state.invite or {}).get("id")
            and invite_id not in self._ended_invites()
        )

    def _ended_invites(self) -> list[str]:
        """The ids of this invitee's invites that ended (a state file with anything else
        there is read as having none)."""
        ended = self.state.ended_invites
        return ended if isinstance(ended, list) else []

    def reopen(self, inv: Any, *, now: datetime) -> None:
        """The organizer invited this party again after its invite was withdrawn or it
        declined or withdrew: back to invited with the fresh invite (a verified invite of
        this session's manifest). The old invite stays ended: it never reopens anything."""
        if not self.can_reopen(inv.invite_id):
            why = ("the roster was published already" if self.state.roster is not None
                   else f"invite {inv.invite_id} ended before")  # fmt: skip
            raise InviteWithdrawn(
                f"an invite from {self.label(inv.organizer)} for session "
                f"{self.state.session_id[:8]}, which is {self.status.value}: {why}; ignored",
                party=inv.organizer,
            )
        was = self.status.value
        old = (self.state.invite or {}).get("id")
        if isinstance(old, str):
            ended = self._ended_invites()
            ended.append(old)
            self.state.ended_invites = ended[-MAX_ENDED_INVITES:]
        self.state.invite = inv.document
        self.state.status = Status.INVITED
        self.state.acceptance = self.state.session_public = self.state.error = None
        self.state.endpoints, self.state.early, self.state.confirmations = [], [], {}
        self.state.note(
            format_time(now), f"invited again by {self.label(inv.organizer)} (was {was})"
        )

    def _on_refuse(self, msg: Message, now: datetime) -> None:
        """The organizer refused our acceptance (``refusal.code`` says why): the invite
        stands (``refused``: the user learns why and may accept again), unless the invite
        it named ended (``invite_not_current``: revoked; a fresh invite reopens it)."""
        org = self.manifest.organizer
        if msg.sender != org:
            raise MessageInvalid(
                f"refuse from {self.label(msg.sender)}, not the organizer: ignored"
            )
        refusal = parse_refusal(msg.body)
        current = (self.state.acceptance or {}).get("id")
        if refusal.invite_id != (self.state.invite or {}).get("id") or (
            refusal.acceptance_id != current
        ):
            self.state.note(format_time(now), "ignored a refusal of an earlier acceptance")
            return
        message = f"organizer {self.label(org)} refused your acceptance: {refusal.reason}"
        self.state.acceptance = None
        self.state.error = {"code": refusal.code, "message": message, "party": org}
        if refusal.code in ENDING_REFUSALS:  # the invite it named ended: a fresh one may come
            self.state.status = Status.REVOKED
            self.state.note(format_time(now), f"revoked: {refusal.reason}")
            return
        self.state.status = Status.REFUSED
        self.state.note(format_time(now), f"refused: {refusal.reason}")

    def _on_withdraw_invite(self, msg: Message, now: datetime) -> None:
        if msg.sender != self.manifest.organizer or msg.body.get("inviteId") != (
            self.state.invite or {}
        ).get("id"):
            raise MessageInvalid(f"withdraw-invite from {self.label(msg.sender)} is not ours")
        self._end(
            Status.REVOKED,
            InviteWithdrawn(
                f"organizer {self.label(msg.sender)} withdrew your invite", party=msg.sender
            ),
            now,
        )

    def _on_cancel(self, msg: Message, now: datetime) -> None:
        if msg.sender != self.manifest.organizer:
            raise MessageInvalid(f"cancel from {self.label(msg.sender)}, not the organizer")
        reason = msg.body.get("reason")
        why = f": {reason[:300]}" if isinstance(reason, str) and reason.isprintable() else ""
        self._end(
            Status.CANCELLED,
            SessionCancelled(
                f"organizer {self.label(msg.sender)} cancelled the session{why}",
                party=msg.sender,
            ),
            now,
        )

    def _on_roster(self, msg: Message, now: datetime) -> None:
        org = self.manifest.organizer
        if msg.sender != org:
            raise MessageInvalid(f"roster from {self.label(msg.sender)}, not the organizer")
        doc = msg.body.get("roster")
        if not isinstance(doc, dict):
            raise RosterInvalid(f"roster message from organizer {self.label(org)} has no roster")
        doc = unpack_roster(doc)
        digest = roster_hash(doc)
        if self.state.roster_hash is not None:
            if digest.hex() == self.state.roster_hash:
                return  # duplicate (another relay)
            exc = RosterEquivocation(
                f"organizer {self.label(org)} sent two different rosters for session "
                f"{self.state.session_id[:8]} ({self.state.roster_hash[:16]} and "
                f"{digest.hex()[:16]}): it equivocates; nothing starts",
                party=org,
            )
            if self.status == Status.AGREED:
                self.state.reject(format_time(now), exc.code, exc.message, org)
                return
            self._fail(exc, now)
            return
        if not commitment_valid(org, self.state.session_id, digest, msg.body.get("commitment")):
            raise RosterInvalid(
                f"roster from organizer {self.label(org)}: bad commitment", party=org
            )
        own = decode_session_key(self.state.session_public, "own state", StateCorrupted)
        try:
            verify_roster(
                doc,
                manifest=self.manifest,
                now=now,
                me=self.me,
                my_key=own,
                my_endpoints=self.state.endpoints,
            )
        except SessionRemoteError as exc:
            self._fail(exc, now)
            return
        self.state.roster, self.state.roster_hash = doc, digest.hex()
        self.state.commitment = msg.body["commitment"]
        self.state.status = Status.CONFIRMING
        self.state.note(format_time(now), f"verified the roster {digest.hex()[:16]}")
        self._confirm(digest, now)
        early, self.state.early = self.state.early, []
        for item in early:
            if self.status != Status.CONFIRMING:
                break
            self._apply_confirm(item["from"], item["body"], now)

    # ----------------------------------------------------------------------- both
    def _confirm(self, digest: bytes, now: datetime) -> None:
        doc = build_confirmation(self.state.session_id, digest, self.key, now=now)
        self.state.confirmations[self.me] = doc
        for did in self._others():
            body = {"confirmation": doc, "commitment": self.state.commitment}
            self._send(did, "confirm", body, now)
        self._check_agreed(now)

    def _on_confirm(self, msg: Message, now: datetime) -> None:
        if self.state.roster is None:
            if len(self.state.early) < MAX_EARLY:
                self.state.early.append({"from": msg.sender, "body": msg.body})
            return
        self._apply_confirm(msg.sender, msg.body, now)

    def _apply_confirm(self, sender: str, body: dict[str, Any], now: datetime) -> None:
        assert self.state.roster is not None and self.state.roster_hash is not None
        parties = [p["id"] for p in self.state.roster["credentialSubject"]["parties"]]
        if sender not in parties:
            raise NotInvited(f"confirmation from {self.label(sender)}, who is not in the roster")
        if sender in self.state.confirmations:
            return
        digest = verify_confirmation(
            body.get("confirmation"),
            session_id=self.state.session_id,
            party=sender,
            now=now,
            label=f"party {parties.index(sender)} {self.label(sender)}",
        )
        if digest.hex() != self.state.roster_hash:
            org = self.manifest.organizer
            if commitment_valid(org, self.state.session_id, digest, body.get("commitment")):
                exc: SessionRemoteError = RosterEquivocation(
                    f"organizer {self.label(org)} signed two different rosters for session "
                    f"{self.state.session_id[:8]}: party {parties.index(sender)} "
                    f"{self.label(sender)} holds {digest.hex()[:16]}, you hold "
                    f"{self.state.roster_hash[:16]}; nothing starts",
                    party=org,
                )
            else:
                exc = ConfirmationMismatch(
                    f"party {parties.index(sender)} {self.label(sender)} confirmed roster hash "
                    f"{digest.hex()[:16]}, but the roster you hold has hash "
                    f"{self.state.roster_hash[:16]}; nothing starts",
                    party=sender,
                )
            if self.status == Status.AGREED:
                self.state.reject(format_time(now), exc.code, exc.message, exc.party)
                return
            self._fail(exc, now)
            return
        self.state.confirmations[sender] = body["confirmation"]
        self._check_agreed(now)

    def _check_agreed(self, now: datetime) -> None:
        if self.status != Status.CONFIRMING or self.state.roster is None:
            return
        parties = [p["id"] for p in self.state.roster["credentialSubject"]["parties"]]
        if all(p in self.state.confirmations for p in parties):
            self.state.status = Status.AGREED
            self.state.note(format_time(now), f"all {len(parties)} parties confirmed the roster")

    def _on_party_withdraw(self, msg: Message, now: datetime) -> None:
        if msg.sender not in self._others():
            raise NotInvited(f"withdraw from {self.label(msg.sender)}, who is not in the roster")
        self._fail(
            PartyWithdrew(
                f"{self.label(msg.sender)} withdrew its acceptance; the session cannot start",
                party=msg.sender,
            ),
            now,
        )

    def tick(self, *, now: datetime) -> None:
        """Expire the session once its validity window has passed (before agreement)."""
        if self.status in TERMINAL or now < self.manifest.valid_until:
            return
        self._end(
            Status.EXPIRED,
            InviteExpired(
                f"session {self.state.session_id[:8]} expired at "
                f"{format_time(self.manifest.valid_until)} before every party agreed",
                party=self.manifest.organizer,
            ),
            now,
        )

    def _on_late(self, msg: Message, now: datetime) -> None:
        """A decline, withdrawal or cancel after every party confirmed the roster: the
        session stays agreed; the message is recorded as rejected and reported."""
        who = self.label(msg.sender)
        if msg.kind == "cancel":
            if msg.sender != self.manifest.organizer:
                raise MessageInvalid(f"cancel from {who}, not the organizer")
            reason = msg.body.get("reason")
            why = f" ({reason[:300]})" if isinstance(reason, str) and reason.isprintable() else ""
            what = f"the organizer {who} cancelled the session{why}"
        else:
            if msg.sender not in self._others():
                raise NotInvited(f"{msg.kind} from {who}, who is not in the roster")
            what = f"{who} {'declined' if msg.kind == 'decline' else 'withdrew'}"
        raise LateMessage(
            f"{what} after every party had confirmed the roster: too late, ignored; the "
            f"session stays agreed, but {who} will not take part in the run",
            party=msg.sender,
        )

    # ----------------------------------------------------------------------- dispatch
    def begin_batch(self) -> None:
        """Apply the messages received next as one step, until :meth:`end_batch`: the
        organizer decides whether to publish the roster only once the whole batch is in,
        so a withdrawal that came with the last acceptance frees its seat instead of
        failing a roster its sender never saw (specs/session-protocol.md, section 7)."""
        self._batch = True

    def end_batch(self, *, now: datetime) -> None:
        self._batch = False
        due, self._publish_due = self._publish_due, False
        if due and self.role == Role.ORGANIZER and self.status == Status.COLLECTING:
            self._maybe_publish(now)

    def receive(self, msg: Message, *, now: datetime) -> None:
        """Apply one authenticated message. Rejections are recorded in ``state.rejected``
        (and re-raised as the :class:`SessionRemoteError` they are, for the caller to
        show); fatal ones also move the session to ``failed``."""
        if msg.session_id != self.state.session_id:
            raise MessageInvalid("message for another session")
        if not self.state.mark_seen(msg.msg_id):
            return
        self.tick(now=now)
        event = f"msg:{msg.kind}"
        if event not in TABLE.get((self.role, self.status), frozenset()):
            self.state.note(
                format_time(now),
                f"ignored {msg.kind} from {self.label(msg.sender)} in state {self.status.value}",
            )
            return
        handlers: dict[str, Callable[[], None]] = {
            "msg:invite": lambda: self._on_invite(msg, now),
            "msg:accept": lambda: self._on_accept(msg, now),
            "msg:decline": lambda: self._on_decline(msg, now, withdraw=False),
            "msg:withdraw": lambda: (
                self._on_decline(msg, now, withdraw=True)
                if self.role == Role.ORGANIZER
                else self._on_party_withdraw(msg, now)
            ),
            "msg:withdraw-invite": lambda: self._on_withdraw_invite(msg, now),
            "msg:cancel": lambda: self._on_cancel(msg, now),
            "msg:roster": lambda: self._on_roster(msg, now),
            "msg:confirm": lambda: self._on_confirm(msg, now),
            "msg:refuse": lambda: self._on_refuse(msg, now),
        }
        late = self.status == Status.AGREED and event in LATE
        handler = (lambda: self._on_late(msg, now)) if late else handlers[event]
        try:
            handler()
        except DidmeshError as exc:
            party = getattr(exc, "party", None) or msg.sender
            self.state.reject(format_time(now), exc.code, exc.message, party)
            raise
