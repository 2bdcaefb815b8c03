"""What the mesh needs to know about a session: :class:`MeshPlan` (specs/mesh.md, "Paths").

The session layer agrees a roster; the mesh only needs a small, verified view of it:
the session id and roster hash (bound into every Noise prologue), this party's id and
per-session X25519 private key, and for every party its id, DID, per-session static
public key and announced endpoints, plus the session's relays. :func:`from_roster`
adapts the session layer's ``AgreedRoster``.

Endpoints are ``tcp://host:port`` (``tcp://[::1]:port`` for IPv6 literals).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .endpoints import format_endpoint, parse_endpoint
from .faults import PlanError
from .primitives import x25519_private_key

MAX_PARTIES = 1000

#: re-exported: the endpoint form lives in :mod:`.endpoints` (light, for the pre-dial)
__all__ = ["MAX_PARTIES", "MeshPlan", "PlanParty", "format_endpoint", "from_roster",
           "parse_endpoint"]


@dataclass(frozen=True)
class PlanParty:
    """One roster member as the mesh sees it."""

    party_id: int
    did: str
    static_public: bytes
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True, repr=False)
class MeshPlan:
    """The verified roster view of one party. ``repr`` never shows the private key."""

    session_id: str
    roster_hash: bytes
    my_party_id: int
    my_static_private: bytes
    parties: tuple[PlanParty, ...]
    relays: tuple[str, ...] = ()
    #: DID -> petname, for messages ("party 2 'bob'")
    petnames: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parties", tuple(self.parties))
        object.__setattr__(self, "relays", tuple(self.relays))
        self.validate()

    def __repr__(self) -> str:
        return (
            f"MeshPlan(session={self.session_id!r}, me={self.my_party_id}, "
            f"m={len(self.parties)}, relays={list(self.relays)})"
        )

    # ------------------------------------------------------------------ checks

    def validate(self) -> None:
        m = len(self.parties)
        if not 1 <= m <= MAX_PARTIES:
            raise PlanError(f"a mesh needs 1..{MAX_PARTIES} parties, the plan has {m}")
        if len(self.roster_hash) != 32:
            raise PlanError(f"roster hash is {len(self.roster_hash)} bytes, expected 32")
        ids = [p.party_id for p in self.parties]
        if ids != list(range(m)):
            raise PlanError(f"party ids must be 0..{m - 1} in order, got {ids}")
        if len({p.did for p in self.parties}) != m:
            raise PlanError("a DID appears twice in the plan")
        if len({p.static_public for p in self.parties}) != m:
            raise PlanError("a session key appears twice in the plan")
        for p in self.parties:
            if len(p.static_public) != 32:
                raise PlanError(f"party {p.party_id}: session key must be 32 bytes")
            for e in p.endpoints:
                parse_endpoint(e)
        if not 0 <= self.my_party_id < m:
            raise PlanError(f"my party id {self.my_party_id} is not in the plan")
        if len(self.my_static_private) != 32:
            raise PlanError("my session private key must be 32 bytes")
        pub = x25519_private_key(self.my_static_private).public_key()
        if pub.public_bytes_raw() != self.me.static_public:
            raise PlanError(
                f"my session private key does not match the roster's key for party "
                f"{self.my_party_id} (wrong key file or stale roster)"
            )

    # ------------------------------------------------------------------ views

    @property
    def m(self) -> int:
        return len(self.parties)

    @property
    def me(self) -> PlanParty:
        return self.parties[self.my_party_id]

    def party(self, party_id: int) -> PlanParty:
        return self.parties[party_id]

    def peers(self) -> list[PlanParty]:
        return [p for p in self.parties if p.party_id != self.my_party_id]

    def party_by_did(self, did: str) -> PlanParty | None:
        return next((p for p in self.parties if p.did == did), None)

    def describe(self, party_id: int) -> str:
        """``party 2 'bob' (did:key:z6Mk…Xyz1)`` — how messages name a party."""
        if not 0 <= party_id < self.m:
            return f"party {party_id} (not in the roster)"
        p = self.parties[party_id]
        pet = self.petnames.get(p.did)
        short = p.did if len(p.did) <= 24 else f"{p.did[:16]}…{p.did[-6:]}"
        return f"party {party_id} '{pet}' ({short})" if pet else f"party {party_id} ({short})"

    def describe_pair(self, a: int, b: int) -> str:
        lo, hi = sorted((a, b))
        return f"{self.describe(lo)} <-> {self.describe(hi)}"

    # ------------------------------------------------------------------ (de)serialise

    def to_launch_dict(self) -> dict[str, Any]:
        """A JSON-able dict INCLUDING the private key: only for handing to a child process."""
        return {
            "session_id": self.session_id,
            "roster_hash": self.roster_hash.hex(),
            "my_party_id": self.my_party_id,
            "my_static_private": self.my_static_private.hex(),
            "parties": [
                {
                    "party_id": p.party_id,
                    "did": p.did,
                    "static_public": p.static_public.hex(),
                    "endpoints": list(p.endpoints),
                }
                for p in self.parties
            ],
            "relays": list(self.relays),
            "petnames": dict(self.petnames),
        }

    @classmethod
    def from_launch_dict(cls, d: Mapping[str, Any]) -> MeshPlan:
        try:
            return cls(
                session_id=str(d["session_id"]),
                roster_hash=bytes.fromhex(d["roster_hash"]),
                my_party_id=int(d["my_party_id"]),
                my_static_private=bytes.fromhex(d["my_static_private"]),
                parties=tuple(
                    PlanParty(
                        int(p["party_id"]),
                        str(p["did"]),
                        bytes.fromhex(p["static_public"]),
                        tuple(p["endpoints"]),
                    )
                    for p in d["parties"]
                ),
                relays=tuple(d.get("relays", ())),
                petnames=dict(d.get("petnames", {})),
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise PlanError(f"malformed mesh plan: {exc!s:.200}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_launch_dict())


def from_roster(
    roster: Any,
    *,
    my_did: str,
    my_static_private: bytes,
    petnames: Mapping[str, str] | None = None,
) -> MeshPlan:
    """Adapt the session layer's ``AgreedRoster`` (duck-typed: ``session_id``,
    ``roster_hash``, ``parties`` of ``RosterParty(party_id, did, session_public_key,
    endpoints)``, ``relays``) to a :class:`MeshPlan` for the party ``my_did``."""
    parties: Iterable[Any] = roster.parties
    plan_parties = tuple(
        PlanParty(p.party_id, p.did, bytes(p.session_public_key), tuple(p.endpoints))
        for p in sorted(parties, key=lambda p: p.party_id)
    )
    mine = [p.party_id for p in plan_parties if p.did == my_did]
    if not mine:
        raise PlanError(f"{my_did} is not a member of session {roster.session_id}")
    return MeshPlan(
        session_id=roster.session_id,
        roster_hash=bytes(roster.roster_hash),
        my_party_id=mine[0],
        my_static_private=bytes(my_static_private),
        parties=plan_parties,
        relays=tuple(roster.relays),
        petnames=dict(petnames or {}),
    )
