"""Plans for m parties on this machine (tests, benchmarks, the demo). Not for real sessions.

:func:`loopback_plans` makes fresh identities and per-session X25519 keys, picks free
loopback ports and returns one :class:`~.plan.MeshPlan` per party, all sharing one
(random) roster hash, as the session layer would after agreeing a roster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

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


class _FakeLink:
    """One end of an in-memory relayed link (``send``/``recv``/``close`` coroutines)."""

    def __init__(self, inbox: asyncio.Queue[bytes | None], outbox: asyncio.Queue[bytes | None]
                 ) -> None:
        self._in = inbox
        self._out = outbox
        self.closed = False

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionError("link closed")
        self._out.put_nowait(bytes(data))

    async def recv(self) -> bytes | None:
        return await self._in.get()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._out.put_nowait(None)


class FakeRelay:
    """An in-memory relay pairing link requests, like the real relay's ``/v1/link``.

    ``opener(did)`` is a :data:`~.connect.RelayOpener` for the party ``did``. The relay
    sees only what the parties send (ciphertext after the hello). ``drop_all()`` cuts
    every link, as a relay that fails would.
    """

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str, str], asyncio.Future[_FakeLink]] = {}
        self.links: list[_FakeLink] = []

    def opener(self, my_did: str) -> Callable[[str, str], Awaitable[_FakeLink]]:
        async def open_link(url: str, peer_did: str) -> _FakeLink:
            key = (url, peer_did, my_did)
            fut = self._waiting.pop(key, None)
            if fut is not None and not fut.done():
                a: asyncio.Queue[bytes | None] = asyncio.Queue()
                b: asyncio.Queue[bytes | None] = asyncio.Queue()
                mine, theirs = _FakeLink(a, b), _FakeLink(b, a)
                self.links += [mine, theirs]
                fut.set_result(theirs)
                return mine
            fut = asyncio.get_running_loop().create_future()
            self._waiting[(url, my_did, peer_did)] = fut
            return await fut

        return open_link

    def drop_all(self) -> None:
        for link in self.links:
            link.closed = True
            link._in.put_nowait(None)
