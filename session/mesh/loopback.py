"""Plans for m parties on this machine (tests, benchmarks, the demo). Not for real sessions.

:func:`loopback_plans` makes fresh identities and per-session X25519 keys, picks free
loopback ports and returns one :class:`~.plan.MeshPlan` per party, all sharing one
(random) roster hash, as the session layer would after agreeing a roster.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence

from didmesh.identity.keys import IdentityKey

from .plan import MeshPlan, PlanParty, format_endpoint
from .primitives import DH25519


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


def loopback_plans(
    m: int,
    *,
    relays: Sequence[str] = (),
    endpoints: bool = True,
    host: str = "127.0.0.1",
    petnames: Sequence[str] | None = None,
    session_id: str | None = None,
    identities: Sequence[IdentityKey] | None = None,
) -> tuple[list[MeshPlan], list[IdentityKey]]:
    ids = list(identities) if identities is not None else [IdentityKey.generate() for _ in range(m)]
    dh = DH25519()
    keys = [dh.generate_keypair() for _ in range(m)]
    ports = free_ports(m, host) if endpoints else []
    parties = tuple(
        PlanParty(i, ids[i].did, keys[i].public,
                  (format_endpoint(host, ports[i]),) if endpoints else ())
        for i in range(m)
    )
    names = list(petnames) if petnames is not None else [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    ]
    pets = {ids[i].did: names[i] for i in range(min(m, len(names)))}
    sid = session_id or "loopback-" + os.urandom(6).hex()
    roster_hash = os.urandom(32)
    plans = [
        MeshPlan(sid, roster_hash, i, keys[i].private, parties, tuple(relays), pets)
        for i in range(m)
    ]
    return plans, ids
