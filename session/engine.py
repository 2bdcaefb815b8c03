"""The engine: session machines + the on-disk store + mailboxes
(specs/session-protocol.md, "Driving the protocol").

:class:`Engine` is the one place that loads a session, applies a command or a batch of
received messages to its :class:`~didmesh.session.machine.SessionMachine`, saves it, and
flushes its outbox. Every load-modify-save holds the home's session lock briefly, so a
``didmesh status`` can run while a ``didmesh session wait`` pumps. :meth:`Engine.run`
is the asyncio pump (receive -> deliver -> flush) with a deadline; it also serves open
invite codes. Time and randomness are injected.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey

from .codes import CODE_SESSION, Burned, Claimed, CodeClaim, CodeOffer, Reply, rendezvous_key
from .documents import Gate, encode_session_key, verify_invite, warm_up
from .errors import (
    BadSessionParameters,
    CodeError,
    CodeNotAnswered,
    MessageInvalid,
    SessionUsageError,
    WaitTimeout,
    WrongCode,
    WrongIdentity,
)
from .mailbox import Mailbox
from .manifest import Manifest, format_time
from .messages import open_message
from .state import ACCEPTABLE, ENDED, TERMINAL, Role, SessionState, Status
from .store import SessionStore
from .words import new_code, parse_code

Clock = Callable[[], datetime]
Rng = Callable[[int], bytes]
MailboxFactory = Callable[[IdentityKey, Sequence[str]], Mailbox]
DEFAULT_CODE_TTL = timedelta(minutes=30)
_WILL_ISSUE = frozenset({Status.COLLECTING, Status.INVITED, Status.ACCEPTED, Status.REFUSED})


def utcnow() -> datetime:
    return datetime.now(UTC)


#: what the organizer's wait shows of the seats' events (the status changes are shown anyway):
#: a seat that became free needs someone else invited
_SEAT_EVENTS = ("; the seat is free",)


@dataclass(frozen=True)
class Note:
    """Something to tell the user while pumping (``level``: info, warning, error)."""

    level: str
    text: str
    session_id: str | None = None


class Engine:
    def __init__(
        self,
        store: SessionStore,
        key: IdentityKey,
        *,
        clock: Clock = utcnow,
        rng: Rng = os.urandom,
        labels: dict[str, str] | None = None,
    ) -> None:
        from .machine import SessionMachine

        self._machine_cls = SessionMachine
        self.store = store
        self.key = key
        self.me = key.did
        self._sent: set[str] = set()  # outbox entries a relay took (persisted lazily)
        self._cache: dict[str, tuple[tuple[int, int], SessionState]] = {}
        self.clock = clock
        self.rng = rng
        self.labels = labels or {}

    # ----------------------------------------------------------------------- helpers
    def machine(self, state: SessionState) -> Any:
        return self._machine_cls(state, self.key, rng=self.rng, labels=self.labels)

    def load(self, session_id: str) -> SessionState:
        """A fresh copy of the session's state (for changing it, under the lock)."""
        state = self.store.load_state(session_id)
        if state.me != self.me:
            raise WrongIdentity(
                f"session {session_id[:8]} belongs to {state.me}, not to the identity in use "
                f"({self.me}); pick the right one with --as NAME"
            )
        return state

    def peek(self, session_id: str) -> SessionState:
        """The session's state for reading only (cached while the file is unchanged)."""
        path = self.store.root / session_id / "state.json"
        try:
            st = path.stat()
        except OSError:
            return self.load(session_id)
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._cache.get(session_id)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        state = self.load(session_id)
        self._cache[session_id] = (stamp, state)
        return state

    def save(self, state: SessionState) -> None:
        """Save, dropping outbox entries a relay already took."""
        if self._sent and state.outbox:
            state.outbox = [e for e in state.outbox if _entry_key(e) not in self._sent]
        self.store.save_state(state)

    def _mutate(self, session_id: str, fn: Callable[[Any], Any]) -> Any:
        with self.store.lock():
            state = self.load(session_id)
            machine = self.machine(state)
            try:
                result = fn(machine)
            finally:
                self.save(state)
            return result

    def my_sessions(self) -> list[SessionState]:
        out = []
        for sid in self.store.ids():
            try:
                state = self.peek(sid)
            except DidmeshError:
                continue
            if state.me == self.me:
                out.append(state)
        return out

    # ----------------------------------------------------------------------- organizer
    def create_session(self, manifest: Manifest, endpoints: Sequence[str] = ()) -> SessionState:
        from .documents import validate_endpoints
        from .machine import x25519_public

        if manifest.organizer != self.me:
            raise BadSessionParameters("the manifest's organizer must be the identity in use")
        validate_endpoints(list(endpoints), "--endpoint", BadSessionParameters)
        private = self.rng(32)
        now = self.clock()
        state = SessionState(
            session_id=manifest.session_id,
            role=Role.ORGANIZER,
            me=self.me,
            status=Status.COLLECTING,
            manifest=manifest.to_json(),
            created=format_time(now),
            session_public=encode_session_key(x25519_public(private)),
            endpoints=list(endpoints),
        )
        state.note(format_time(now), "created the session")
        with self.store.lock():
            if self.store.exists(manifest.session_id):
                raise BadSessionParameters("a session with this id exists already")
            self.store.save_session_key(manifest.session_id, private)
            self.save(state)
        return state

    def invite(self, session_id: str, invitee: str, requires: Gate | None = None) -> dict[str, Any]:
        return self._mutate(
            session_id, lambda m: m.invite(invitee, now=self.clock(), requires=requires)
        )

    def withdraw_invite(self, session_id: str, invitee: str) -> None:
        self._mutate(session_id, lambda m: m.withdraw_invite(invitee, now=self.clock()))

    def withdraw_code(self, session_id: str, nameplate: int) -> None:
        """Withdraw an open code seat; a later claim of the code is told it was used."""
        with self.store.lock():
            state = self.load(session_id)
            self.machine(state).withdraw_code_seat(nameplate, now=self.clock())
            offers = self.store.load_codes(session_id)
            for offer in offers:
                if offer.nameplate == nameplate and offer.active:
                    offer.status, offer.key = "burned", None
                    offer.log.append("withdrawn by the organizer")
            self.store.save_codes(session_id, offers)
            self.save(state)

    def cancel(self, session_id: str) -> None:
        self._mutate(session_id, lambda m: m.cancel(now=self.clock()))

    def open_code(
        self, session_id: str, *, words: int = 2, ttl: timedelta = DEFAULT_CODE_TTL
    ) -> CodeOffer:
        """Reserve a seat for an open invite code; returns the offer (``.code``)."""
        with self.store.lock():
            state = self.load(session_id)
            if state.role != Role.ORGANIZER:
                raise SessionUsageError("only the organizer can open invite codes")
            busy = {o.nameplate for o in self.active_offers()}
            for _ in range(20):
                nameplate, code = new_code(words, self.rng)
                if nameplate not in busy:
                    break
            now = self.clock()
            manifest = Manifest.from_json(state.manifest)
            expires = min(now + ttl, manifest.valid_until)
            machine = self.machine(state)
            machine.reserve_code_seat(nameplate, now=now)
            offer = CodeOffer(nameplate, code, session_id, int(expires.timestamp() * 1000))
            offers = self.store.load_codes(session_id)
            self.store.save_codes(session_id, [*offers, offer])
            self.save(state)
            return offer

    def active_offers(self) -> list[CodeOffer]:
        """Codes to listen for: open ones, and used ones until they expire (so that a
        second claimant is told "already claimed" instead of hearing nothing)."""
        now_ms = int(self.clock().timestamp() * 1000)
        out: list[CodeOffer] = []
        for state in self.my_sessions():
            if state.role == Role.ORGANIZER and state.status not in ENDED:
                out.extend(
                    o
                    for o in self.store.load_codes(state.session_id)
                    if o.active or (o.status != "expired" and now_ms < o.expires_ms)
                )
        return out

    def handle_code(self, session_id: str, nameplate: int, payload: bytes | None) -> list[Reply]:
        """Feed one rendezvous message (or None: just expire) to the offer."""
        now = self.clock()
        now_ms = int(now.timestamp() * 1000)
        replies: list[Reply] = []
        with self.store.lock():
            state = self.load(session_id)
            machine = self.machine(state)
            offers = self.store.load_codes(session_id)
            offer = next((o for o in offers if o.nameplate == nameplate and o.status != "expired"),
                         None)  # fmt: skip
            if offer is None:
                return []
            manifest = Manifest.from_json(state.manifest)
            try:
                actions = (
                    offer.tick(now_ms)
                    if payload is None
                    else offer.handle(
                        payload, now_ms=now_ms, organizer=self.me, name=manifest.name,
                        rng=self.rng,
                    )
                )
            except MessageInvalid:
                actions = []
            for action in actions:
                if isinstance(action, Reply):
                    replies.append(action)
                elif isinstance(action, Burned):
                    machine.release_code_seat(nameplate, now=now, why=action.reason)
                elif isinstance(action, Claimed):
                    try:
                        invite = machine.fill_code_seat(nameplate, action.did, now=now)
                    except DidmeshError as exc:
                        offer.status = "burned"
                        state.note(format_time(now), f"code claim refused: {exc.message}")
                    else:
                        replies.append(offer.complete(invite, self.rng))
            self.store.save_codes(session_id, offers)
            self.save(state)
        return replies

    # ----------------------------------------------------------------------- invitee

    def _invited_state(self, sid: str, inv: Any, now: Any) -> tuple[SessionState, str]:
        """A new invitee state for a verified invite, noted with the organizer's name."""
        state = SessionState(
            session_id=sid,
            role=Role.INVITEE,
            me=self.me,
            status=Status.INVITED,
            manifest=inv.manifest.to_json(),
            created=format_time(now),
            invite=inv.document,
        )
        org = self.labels.get(inv.organizer, inv.organizer)
        state.note(format_time(now), f"invited by {org}")
        return state, org
    def import_invite(self, doc: object, *, organizer: str | None = None) -> SessionState:
        """Verify an invite addressed to us and record the session (idempotent)."""
        now = self.clock()
        inv = verify_invite(doc, now=now, me=self.me)
        if organizer is not None and inv.organizer != organizer:
            raise CodeError(
                f"the invite came from {inv.organizer}, not from {organizer} who answered the code"
            )
        sid = inv.manifest.session_id
        with self.store.lock():
            if self.store.exists(sid):
                state = self.load(sid)
                if state.role != Role.INVITEE:
                    raise SessionUsageError(f"you organize session {sid[:8]}; it is not an invite")
                machine = self.machine(state)
                if not machine.manifest.same_as(inv.manifest):
                    from .errors import ManifestTampered

                    raise ManifestTampered(
                        f"organizer {inv.organizer} sent an invite for session {sid[:8]} "
                        "with another manifest than before",
                        party=inv.organizer,
                    )
                if state.status in ACCEPTABLE and (
                    state.invite != inv.document
                ):
                    state.invite = inv.document
                    self.save(state)
                elif machine.can_reopen(inv.invite_id):  # invited again after it ended
                    machine.reopen(inv, now=now)
                    self.save(state)
                return state
            state, _org = self._invited_state(sid, inv, now)
            self.save(state)
            return state

    def accept(
        self,
        session_id: str,
        *,
        endpoints: Sequence[str] = (),
        credentials: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        def go(m: Any) -> Any:
            if m.role != Role.INVITEE:
                raise SessionUsageError("the organizer takes part already; only invitees accept")
            m._allow("accept")
            private = self.rng(32)
            self.store.save_session_key(session_id, private)
            return m.accept(
                now=self.clock(),
                session_private=private,
                endpoints=endpoints,
                extra_credentials=credentials,
            )

        return self._mutate(session_id, go)

    def decline(self, session_id: str) -> None:
        self._mutate(session_id, lambda m: m.decline(now=self.clock()))

    def withdraw(self, session_id: str) -> None:
        self._mutate(session_id, lambda m: m.withdraw(now=self.clock()))

    # ----------------------------------------------------------------------- messages
    def deliver(self, items: Iterable[tuple[str, bytes]]) -> list[Note]:
        """Apply received messages (one lock, each session loaded and saved once).

        One message never blocks the others (issue 13, inbox poisoning): a message that
        fails a check is dropped with a warning naming its sender; one that fails in a way
        no check foresaw is set aside in the store (``quarantine/``) with an error note.
        Either way the caller acknowledges it, so it is reported once."""
        notes: list[Note] = []
        now = self.clock()
        with self.store.lock():
            states: dict[str, SessionState] = {}
            machines: dict[str, Any] = {}
            for sender, payload in items:
                who = self.labels.get(sender, sender)
                try:
                    self._deliver_one(payload, now, states, machines, notes, who)
                except DidmeshError as exc:
                    notes.append(Note("warning", f"dropped a message from {who}: {exc.message}"))
                except Exception as exc:  # noqa: BLE001 (isolation: see the docstring)
                    kept = self.store.set_aside(payload, now=now.timestamp())
                    notes.append(Note(
                        "error",
                        f"set aside a message from {who} that didmesh failed to process "
                        f"({type(exc).__name__}); kept as {kept}; please report it",
                    ))  # fmt: skip
            for sid, machine in machines.items():  # the batch is in: a roster may be due
                before = machine.state.status
                try:
                    machine.end_batch(now=now)
                except DidmeshError as exc:
                    notes.append(Note("error", f"session {sid[:8]}: {exc.message}", sid))
                _status_note(notes, machine.state, before)
            for state in states.values():
                self.save(state)
        return notes

    def _deliver_one(
        self,
        payload: bytes,
        now: datetime,
        states: dict[str, SessionState],
        machines: dict[str, Any],
        notes: list[Note],
        who: str,
    ) -> None:
        try:
            msg = open_message(payload, me=self.me)
        except MessageInvalid as exc:
            notes.append(Note("warning", f"dropped a message from {who}: {exc.message}"))
            return
        sid = msg.session_id
        state = states.get(sid)
        if state is None and self.store.exists(sid):
            state = states[sid] = self.load(sid)
        if state is None:
            if msg.kind != "invite":
                notes.append(Note("warning", f"dropped {msg.kind} for unknown session {sid[:8]}"))
                return
            try:
                inv = verify_invite(msg.body.get("invite"), now=now, me=self.me)
            except DidmeshError as exc:
                notes.append(Note("warning", f"rejected an invite from {who}: {exc.message}", sid))
                return
            if inv.manifest.session_id != sid:
                notes.append(Note("warning", "rejected an invite sent under another id"))
                return
            state, org = self._invited_state(sid, inv, now)
            states[sid] = state
            notes.append(Note("info", f"new invite to {inv.manifest.name!r} from {org}", sid))
            return
        before = state.status
        seen = len(state.events)
        if sid not in machines:
            machines[sid] = self.machine(state)
            machines[sid].begin_batch()
        try:
            machines[sid].receive(msg, now=now)
        except DidmeshError as exc:
            notes.append(Note("warning", f"rejected {msg.kind} from {who}: {exc.message}", sid))
        notes.extend(
            Note("info", f"session {sid[:8]}: {e['what']}", sid)
            for e in state.events[seen:]
            if e["what"].endswith(_SEAT_EVENTS)
        )
        _status_note(notes, state, before)

    def tick(self) -> list[Note]:
        notes = []
        now = self.clock()
        for state in self.my_sessions():
            if state.status in TERMINAL:
                continue
            if now >= Manifest.from_json(state.manifest).valid_until:
                self._mutate(state.session_id, lambda m: m.tick(now=now))
                notes.append(Note("error", f"session {state.session_id[:8]} expired"))
        return notes

    async def flush(self, mailbox: Mailbox, only: str | None = None) -> int:
        """Send every queued message. An entry a relay took is remembered and dropped from
        the outbox at the session's next save (:meth:`persist_sent` forces it); if the
        process dies first it is sent again, which receivers ignore (same message id)."""
        sent = 0
        for state in self.my_sessions():
            if not state.outbox or (only and state.session_id != only):
                continue
            manifest = Manifest.from_json(state.manifest)
            ttl = int((manifest.valid_until - self.clock()).total_seconds())
            todo = [e for e in state.outbox if _entry_key(e) not in self._sent]
            slots = asyncio.Semaphore(16)
            results = await asyncio.gather(
                *(self._send_one(mailbox, state.session_id, e, max(ttl, 60), slots)
                  for e in todo),  # fmt: skip
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            sent += len(todo)
        return sent

    async def _send_one(
        self, mailbox: Mailbox, sid: str, entry: dict[str, str], ttl: int, slots: asyncio.Semaphore
    ) -> None:
        async with slots:
            await mailbox.send(entry["to"], sid, base64.b64decode(entry["payload"]), ttl=ttl)
        self._sent.add(_entry_key(entry))

    def persist_sent(self) -> None:
        """Drop sent entries from the outboxes on disk now."""
        if not self._sent:
            return
        with self.store.lock():
            for sid in self.store.ids():
                state = self.peek(sid)
                if state.me == self.me and any(_entry_key(e) in self._sent for e in state.outbox):
                    self.save(self.load(sid))

    # ----------------------------------------------------------------------- the pump
    def warm_up(self) -> None:
        """If a session of ours will still issue a credential (the roster, a confirmation),
        load what that needs now, while waiting, rather than when the roster arrives."""
        if any(s.status in _WILL_ISSUE for s in self.my_sessions()):
            warm_up()

    async def run(
        self,
        mailbox: Mailbox,
        *,
        until: Callable[[], bool],
        timeout: float,
        on_note: Callable[[Note], None] = lambda _n: None,
        factory: MailboxFactory | None = None,
        what: str | Callable[[], str] = "the other parties",
        serve_codes: bool = True,
    ) -> None:
        """Pump messages until ``until()`` or raise :class:`WaitTimeout` after ``timeout``
        seconds (its message says what was awaited: ``what``, or what it returns then).
        Serves this identity's open invite codes (needs ``factory``)."""
        deadline = time.monotonic() + timeout
        code_boxes: dict[int, tuple[str, Mailbox]] = {}
        try:
            await self.flush(mailbox)
            self.warm_up()
            while True:
                if until():
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    awaited = what() if callable(what) else what
                    raise WaitTimeout(f"timed out after {timeout:g} s waiting for {awaited}")
                if serve_codes and factory is not None:
                    await self._serve_codes(code_boxes, factory, on_note)
                first = await mailbox.receive(min(left, 0.25 if code_boxes else 1.0))
                batch = []
                if first is not None:
                    batch.append(first)
                    while len(batch) < 256:
                        more = await mailbox.receive(0)
                        if more is None:
                            break
                        batch.append(more)
                for note in self.deliver(batch) + self.tick():
                    on_note(note)
                # the batch is saved: acknowledge it while sending what it produced
                ack = asyncio.ensure_future(mailbox.commit()) if batch else None
                try:
                    await self.flush(mailbox)
                finally:
                    if ack is not None:
                        await ack
        finally:
            self.persist_sent()
            for _sid, box in code_boxes.values():
                await box.aclose()

    async def _serve_codes(
        self,
        boxes: dict[int, tuple[str, Mailbox]],
        factory: MailboxFactory,
        on_note: Callable[[Note], None],
    ) -> None:
        offers = {o.nameplate: o for o in self.active_offers()}
        for nameplate in list(boxes):
            if nameplate not in offers:
                await boxes.pop(nameplate)[1].aclose()
        for nameplate, offer in offers.items():
            if nameplate not in boxes:
                state = self.load(offer.session_id)
                urls = Manifest.from_json(state.manifest).relays
                boxes[nameplate] = (offer.session_id, factory(rendezvous_key(nameplate), urls))
            sid, box = boxes[nameplate]
            replies = self.handle_code(sid, nameplate, None)
            while True:
                item = await box.receive(0)
                if item is None:
                    break
                replies += self.handle_code(sid, nameplate, item[1])
            await box.commit()
            for reply in replies:
                await box.send(reply.to, CODE_SESSION, reply.payload, ttl=600)
            after = next((o for o in self.store.load_codes(sid) if o.nameplate == nameplate), None)
            if after is not None and after.status != offer.status:
                level = "info" if after.status in ("claiming", "claimed") else "warning"
                detail = f" by {self.labels.get(after.claimant or '', after.claimant)}" if (
                    after.status == "claimed"
                ) else (f": {after.log[-1]}" if after.log else "")
                on_note(Note(level, f"code {nameplate}-...: {after.status}{detail}", sid))

    # ----------------------------------------------------------------------- claiming
    async def claim(
        self,
        code: str,
        relays: Sequence[str],
        factory: MailboxFactory,
        *,
        timeout: float,
    ) -> SessionState:
        """Claim a seat with an invite code; returns the invited session."""
        nameplate, normalized = parse_code(code)
        reply_identity = IdentityKey.from_seed(self.rng(32))
        box = factory(reply_identity, relays)
        target = rendezvous_key(nameplate).did
        claim = CodeClaim(nameplate, normalized, self.key, reply_identity.did, self.rng)
        deadline = time.monotonic() + timeout
        try:
            await box.send(target, CODE_SESSION, claim.hello(), ttl=600)
            while claim.invite is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CodeNotAnswered(
                        f"nobody answered on nameplate {nameplate} within {timeout:g} s: check "
                        "the code and the relay, and that the organizer's didmesh is running "
                        "('didmesh session wait' or 'didmesh invite --code')"
                    )
                item = await box.receive(left)
                if item is None:
                    continue
                await box.commit()
                try:
                    nxt = claim.handle(item[1])
                except WrongCode:
                    await box.send(target, CODE_SESSION, claim.abandon(), ttl=600)
                    raise
                except MessageInvalid:
                    continue
                if nxt is not None:
                    await box.send(target, CODE_SESSION, nxt, ttl=600)
        finally:
            await box.aclose()
        state = self.import_invite(claim.invite, organizer=claim.organizer)
        if state.session_id != claim.session_id:
            raise CodeError("the invite is for another session than the code announced")
        return state

    # ----------------------------------------------------------------------- queries
    def status_of(self, session_id: str) -> Status:
        return Status(self.peek(session_id).status)


def _status_note(notes: list[Note], state: SessionState, before: str) -> None:
    """Tell the user of a status change (why, if the session ended)."""
    if state.status == before:
        return
    sid = state.session_id
    level = "error" if state.status in ENDED else "info"
    text = f"session {sid[:8]}: {before} -> {state.status}"
    if state.error and state.status in ENDED:
        text += f": {state.error['message']}"
    notes.append(Note(level, text, sid))


def _entry_key(entry: dict[str, str]) -> str:
    return entry["to"] + "\0" + entry["payload"][-120:]


def session_relays(states: Iterable[SessionState]) -> list[str]:
    urls: list[str] = []
    for state in states:
        for url in state.manifest.get("relays", []):
            if url not in urls:
                urls.append(url)
    return urls

