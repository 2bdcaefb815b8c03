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
