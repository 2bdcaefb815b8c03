"""Builders for the session-level scenarios: one agreed 3-party session as documents,
built with the real session functions at a fixed time (no I/O, deterministic)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from didmesh.identity.keys import IdentityKey
from didmesh.session.documents import (
    VerifiedAcceptance,
    build_acceptance,
    build_confirmation,
    build_invite,
    new_invite_id,
    verify_acceptance,
    verify_invite,
)
from didmesh.session.machine import x25519_public
from didmesh.session.manifest import Manifest, ProgramRef
from didmesh.session.roster import AgreedRoster, Seat, build_roster, roster_hash, verify_roster

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ORG, BOB, CAROL, MALLORY = (IdentityKey.from_seed(bytes([0x60 + i]) * 32) for i in range(4))
RELAYS = ("http://127.0.0.1:9",)


def counter_rng(tag: bytes) -> Any:
    """A deterministic rng: distinct, reproducible bytes per call."""
    state = {"n": 0}

    def rng(n: int) -> bytes:
        state["n"] += 1
        out = b""
        i = 0
        while len(out) < n:
            out += hashlib.sha256(tag + state["n"].to_bytes(4, "big") + bytes([i])).digest()
            i += 1
        return out[:n]

    return rng


def make_manifest(
    *,
    organizer: IdentityKey = ORG,
    parties: int = 3,
    program_sha: str = "ab" * 32,
    session_seed: bytes = b"s1",
    now: datetime = NOW,
    name: str = "adversarial sum",
) -> Manifest:
    sid = hashlib.sha256(b"sid" + session_seed).hexdigest()[:32]
    return Manifest(
        session_id=sid,
        name=name,
        organizer=organizer.did,
        program=ProgramRef("sum.py", program_sha, ">=0.10,<0.12", ()),
        parties=parties,
        threshold=(parties - 1) // 2,
        relays=RELAYS,
        valid_from=now,
        valid_until=now + timedelta(hours=2),
    )


@dataclass
class SessionDocs:
    """Every signed document of one agreed session (organizer ORG, invitees BOB, CAROL)."""

    manifest: Manifest
    invitees: list[IdentityKey]
    invites: dict[str, dict[str, Any]] = field(default_factory=dict)
    acceptances: dict[str, dict[str, Any]] = field(default_factory=dict)
    session_privates: dict[str, bytes] = field(default_factory=dict)
    roster: dict[str, Any] = field(default_factory=dict)
    confirmations: dict[str, dict[str, Any]] = field(default_factory=dict)
    agreed: AgreedRoster | None = None

    @property
    def roster_hash(self) -> bytes:
        return roster_hash(self.roster)

    def verified_acceptance(self, who: IdentityKey) -> VerifiedAcceptance:
        return verify_acceptance(self.acceptances[who.did], manifest=self.manifest, now=NOW)


def build_session(
    manifest: Manifest | None = None,
    invitees: tuple[IdentityKey, ...] = (BOB, CAROL),
    *,
    organizer: IdentityKey = ORG,
    tag: bytes = b"docs",
) -> SessionDocs:
    manifest = manifest or make_manifest(organizer=organizer, parties=len(invitees) + 1)
    rng = counter_rng(tag)
    docs = SessionDocs(manifest, list(invitees))
    seats = []
    org_private = rng(32)
    docs.session_privates[organizer.did] = org_private
    seats.append(Seat(organizer.did, x25519_public(org_private), (), None))
    for who in invitees:
        inv = build_invite(manifest, who.did, organizer, now=NOW, invite_id=new_invite_id(rng))
        docs.invites[who.did] = inv
        private = rng(32)
        docs.session_privates[who.did] = private
        acc = build_acceptance(
            verify_invite(inv, now=NOW, me=who.did),
            who,
            session_public=x25519_public(private),
            endpoints=[],
            now=NOW,
            rng=rng,
        )
        docs.acceptances[who.did] = acc
        seats.append(Seat(who.did, x25519_public(private), (), acc))
    docs.roster = build_roster(manifest, organizer, seats, now=NOW)
    docs.agreed = verify_roster(docs.roster, manifest=manifest, now=NOW)
    for who in (organizer, *invitees):
        docs.confirmations[who.did] = build_confirmation(
            manifest.session_id, docs.roster_hash, who, now=NOW
        )
    return docs


# --------------------------------------------------------------------------- a tiny network

Tap = Any  # (sender, to, payload) -> list of payloads to deliver (empty: drop)


class MiniNet:
    """Session machines wired in memory (no disk, no relay), with a tap for the attacker.

    Like :class:`didmesh.session.engine.Engine.deliver`: an invite for an unknown session
    creates the invitee's state; every other message goes to the recipient's machine.
    Errors raised by a machine are kept in :attr:`errors` as ``(recipient, error)``.
    """

    def __init__(
        self,
        manifest: Manifest,
        organizer: IdentityKey = ORG,
        *,
        now: datetime = NOW,
        tap: Tap | None = None,
        tag: bytes = b"net",
    ) -> None:
        import base64

        from didmesh.session.documents import encode_session_key
        from didmesh.session.machine import SessionMachine
        from didmesh.session.manifest import format_time
        from didmesh.session.state import Role, SessionState, Status

        self._b64 = base64
        self.manifest = manifest
        self.now = now
        self.rng = counter_rng(tag)
        self.tap = tap
        self.keys: dict[str, IdentityKey] = {organizer.did: organizer}
        self.privates: dict[str, bytes] = {organizer.did: self.rng(32)}
        state = SessionState(
            session_id=manifest.session_id, role=Role.ORGANIZER, me=organizer.did,
            status=Status.COLLECTING, manifest=manifest.to_json(), created=format_time(now),
            session_public=encode_session_key(x25519_public(self.privates[organizer.did])),
        )  # fmt: skip
        self.machines: dict[str, SessionMachine] = {
            organizer.did: SessionMachine(state, organizer, rng=self.rng)
        }
        self.organizer = organizer
        self.errors: list[tuple[str, Exception]] = []
        self.dropped: list[tuple[str, Exception]] = []

    # -- parties -----------------------------------------------------------------------
    def add(self, *keys: IdentityKey) -> None:
        for key in keys:
            self.keys[key.did] = key

    def invite(self, key: IdentityKey, **kw: Any) -> dict[str, Any]:
        self.add(key)
        return self.machines[self.organizer.did].invite(key.did, now=self.now, **kw)

    def accept(self, key: IdentityKey) -> dict[str, Any]:
        self.privates[key.did] = self.rng(32)
        return self.machines[key.did].accept(now=self.now, session_private=self.privates[key.did])

    def status(self, key: IdentityKey) -> str:
        return str(self.machines[key.did].state.status)

    # -- traffic -----------------------------------------------------------------------
    def inject(self, sender: IdentityKey, to: str, kind: str, body: dict[str, Any]) -> None:
        """A message signed by ``sender`` (an attacker may sign as itself only)."""
        from didmesh.session.messages import seal_message

        raw = seal_message(
            sender, kind, self.manifest.session_id, to, body, now_ms=1, rng=self.rng
        )
        self._deliver(sender.did, to, raw)

    def _deliver(self, sender: str, to: str, payload: bytes) -> None:
        from didmesh.identity.errors import DidmeshError
        from didmesh.session.documents import verify_invite
        from didmesh.session.machine import SessionMachine
        from didmesh.session.manifest import format_time
        from didmesh.session.messages import open_message
        from didmesh.session.state import Role, SessionState, Status

        key = self.keys.get(to)
        if key is None:
            return  # nobody reads this inbox
        try:
            msg = open_message(payload, me=to)
        except DidmeshError as exc:
            self.dropped.append((to, exc))
            return
        machine = self.machines.get(to)
        if machine is None:
            if msg.kind != "invite":
                return
            try:
                inv = verify_invite(msg.body.get("invite"), now=self.now, me=to)
            except DidmeshError as exc:
                self.dropped.append((to, exc))
                return
            state = SessionState(
                session_id=inv.manifest.session_id, role=Role.INVITEE, me=to,
                status=Status.INVITED, manifest=inv.manifest.to_json(),
                created=format_time(self.now), invite=inv.document,
            )  # fmt: skip
            self.machines[to] = SessionMachine(state, key, rng=self.rng)
            return
        try:
            machine.receive(msg, now=self.now)
        except DidmeshError as exc:
            self.errors.append((to, exc))

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = False
            for did, machine in list(self.machines.items()):
                out, machine.state.outbox = machine.state.outbox, []
                for entry in out:
                    moved = True
                    payload = self._b64.b64decode(entry["payload"])
                    items = [payload] if self.tap is None else self.tap(did, entry["to"], payload)
                    for item in items:
                        self._deliver(did, entry["to"], item)
            if not moved:
                return
        raise AssertionError("the mini network did not settle")

    def agreed_roster(self, key: IdentityKey) -> AgreedRoster | None:
        return self.machines[key.did].roster(now=self.now)
