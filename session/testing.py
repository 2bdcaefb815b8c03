"""A fake world of parties, shipped as code (STYLE.md, point 11).

:class:`World` builds m parties, each with its own identity, didmesh home and
:class:`~didmesh.session.engine.Engine`, connected through a mailbox factory (the
in-memory :class:`~didmesh.session.mailbox.MemoryRelay` by default, or real relays).
Party 0 organizes. Used by the unit tests, the end-to-end tests and the benchmark::

    world = World(tmp_path, parties=10)
    world.invite_all()
    await world.deliver_invites()
    world.accept_all()
    await world.settle(timeout=10)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from didmesh.identity.keys import IdentityKey

from .engine import Engine, utcnow
from .mailbox import Mailbox, MemoryRelay
from .manifest import Manifest, new_manifest
from .state import ENDED, TERMINAL, Status
from .store import SessionStore

MailboxFactory = Callable[[IdentityKey, Sequence[str]], Mailbox]


@dataclass
class Party:
    name: str
    key: IdentityKey
    engine: Engine
    mailbox: Mailbox

    @property
    def did(self) -> str:
        return self.key.did


class World:
    def __init__(
        self,
        root: Path,
        parties: int,
        *,
        relays: Sequence[str] = ("http://127.0.0.1:1",),
        factory: MailboxFactory | None = None,
        clock: Callable[[], datetime] = utcnow,
        valid_for: timedelta = timedelta(hours=1),
        names: Sequence[str] | None = None,
        program: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.hub = MemoryRelay()
        self.factory: MailboxFactory = factory or (lambda ident, _urls: self.hub.mailbox(ident))
        self.clock = clock
        if program is None:  # a trivial program, unless one is given
            program = self.root / "program.py"
            program.write_text("from mpyc.runtime import mpc\n")
        self.program = program
        names = list(names or [f"p{i}" for i in range(parties)])
        self.parties: list[Party] = []
        for name in names[:parties]:
            key = IdentityKey.generate()
            engine = Engine(SessionStore(self.root / name), key, clock=clock)
            self.parties.append(Party(name, key, engine, self.factory(key, relays)))
        self.manifest: Manifest = new_manifest(
            organizer=self.organizer.did,
            program=self.program,
            parties=parties,
            relays=list(relays),
            now=clock(),
            valid_for=valid_for,
        )
        self.organizer.engine.create_session(self.manifest)

    @property
    def organizer(self) -> Party:
        return self.parties[0]

    @property
    def sid(self) -> str:
        return self.manifest.session_id

    def status(self, party: Party) -> Status:
        return party.engine.status_of(self.sid)

    def invite_all(self) -> None:
        for p in self.parties[1:]:
            self.organizer.engine.invite(self.sid, p.did)

    async def pump(self, party: Party, until: Callable[[], bool], timeout: float = 10) -> None:
        await party.engine.run(
            party.mailbox, until=until, timeout=timeout, factory=self.factory
        )

    async def deliver_invites(self, timeout: float = 10) -> None:
        await self.organizer.engine.flush(self.organizer.mailbox)
        def arrived(p: Party) -> Callable[[], bool]:
            return lambda: p.engine.store.exists(self.sid)

        await asyncio.gather(*(self.pump(p, arrived(p), timeout) for p in self.parties[1:]))

    def accept_all(self, parties: Sequence[Party] | None = None) -> None:
        for p in parties if parties is not None else self.parties[1:]:
            p.engine.accept(self.sid)

    async def flush_all(self) -> None:
        for p in self.parties:
            if p.engine.store.exists(self.sid):
                await p.engine.flush(p.mailbox)

    async def settle(self, timeout: float = 20, parties: Sequence[Party] | None = None) -> None:
        """Pump every party until its session is agreed or ended (not collecting)."""
        group = list(parties if parties is not None else self.parties)

        def done(p: Party) -> Callable[[], bool]:
            return lambda: self.status(p) in TERMINAL

        await asyncio.gather(*(self.pump(p, done(p), timeout) for p in group))

    def ended(self) -> list[Party]:
        return [p for p in self.parties if self.status(p) in ENDED]

    async def close(self) -> None:
        for p in self.parties:
            await p.mailbox.aclose()
