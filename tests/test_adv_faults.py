"""Faults (issue 6): the relay process killed (SIGKILL) and restarted mid-session on its
durable SQLite store -- the session continues and nothing is lost.

(A party killed mid-handshake and mid-run, and unresponsive peers, are covered by
tests/test_mesh_connect.py and tests/test_mpyc_runs.py; the direct path cut by network
namespaces is tests/test_adv_netns.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.session.mailbox import RelayMailbox
from didmesh.session.state import Status
from didmesh.session.testing import World
from relay_helpers import RelayProcess, free_port, spawn_relay

ARGS = ["--rate-ip-per-s", "0", "--rate-did-per-s", "1000", "--rate-did-burst", "1000"]


class Restartable:
    """One relay on a fixed port and SQLite file, killed and restarted on demand."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.store = f"sqlite:{home / 'relay.sqlite3'}"
        self.proc: RelayProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = spawn_relay(self.store, [*ARGS, "--port", str(self.port)], home=self.home)
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no graceful shutdown, no flush
        self.proc.proc.wait(10)
        if self.proc.proc.stdout:
            self.proc.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.alive():
            self.kill()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Restartable]:
    r = Restartable(tmp_path / "relay-home")
    r.home.mkdir()
    r.start()
    try:
        yield r
    finally:
        r.stop()


def _factory(ident: IdentityKey, urls: Sequence[str]) -> RelayMailbox:
    return RelayMailbox(list(urls), ident, timeout=3.0)


async def test_relay_killed_and_restarted_at_every_phase(
    tmp_path: Path, relay: Restartable
) -> None:
    (tmp_path / "w").mkdir()
    world = World(tmp_path / "w", 3, relays=[relay.url], factory=_factory)
    try:
        # 1. invites are stored, then the relay dies before anyone fetched them
        world.invite_all()
        await world.organizer.engine.flush(world.organizer.mailbox)
        relay.kill()
        relay.start()
        await world.deliver_invites(timeout=20)  # nothing lost: every invite arrives
        # 2. acceptances are posted, the relay dies again before the organizer reads them
        world.accept_all()
        await world.flush_all()
        relay.kill()
        relay.start()
        # 3. and once more while rosters and confirmations are in flight
        at_kill: list[list[Status]] = []

        async def kill_when_roster_is_out() -> None:
            for _ in range(1000):
                if world.status(world.organizer) != Status.COLLECTING:
                    break
                await asyncio.sleep(0.01)
            at_kill.append([world.status(p) for p in world.parties])
            relay.kill()
            await asyncio.sleep(0.3)
            relay.start()

        killer = asyncio.ensure_future(kill_when_roster_is_out())
        await world.settle(timeout=40)
        await killer
        assert at_kill and not all(s == Status.AGREED for s in at_kill[0]), at_kill
        assert relay.starts == 4
        assert all(world.status(p) == Status.AGREED for p in world.parties)
        rosters = [p.engine.store.load(world.sid).agreed_roster for p in world.parties]
        assert len({r.roster_hash for r in rosters if r}) == 1
        assert all(not p.engine.store.load_state(world.sid).outbox for p in world.parties)
    finally:
        with contextlib.suppress(Exception):
            await world.close()
