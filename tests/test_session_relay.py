"""The session protocol through a real relay process (library level, RelayMailbox):
10 parties agree on one roster; an invite code is claimed through the relay."""

from __future__ import annotations

import asyncio
from pathlib import Path

from didmesh.session.mailbox import RelayMailbox
from didmesh.session.state import Status
from didmesh.session.testing import World
from didmesh.session.words import sas_words
from relay_helpers import RelayProcess, shared_relay  # noqa: F401  (fixture)


def relay_world(tmp_path: Path, url: str, m: int) -> World:
    return World(tmp_path, m, relays=[url], factory=lambda ident, urls: RelayMailbox(urls, ident))


async def test_ten_parties_agree_through_a_real_relay(
    tmp_path: Path, shared_relay: RelayProcess  # noqa: F811
) -> None:
    world = relay_world(tmp_path, shared_relay.url, 10)
    try:
        world.invite_all()
        await world.deliver_invites(timeout=30)
        world.accept_all()
        await world.settle(timeout=60)
        rosters = [p.engine.store.load(world.sid).agreed_roster for p in world.parties]
        assert all(r is not None for r in rosters)
        assert len({r.roster_hash for r in rosters if r}) == 1
        assert len({sas_words(r.roster_hash) for r in rosters if r}) == 1
    finally:
        await world.close()


async def test_code_claim_through_a_real_relay(
    tmp_path: Path, shared_relay: RelayProcess  # noqa: F811
) -> None:
    world = relay_world(tmp_path, shared_relay.url, 2)
    org, carol = world.parties
    try:
        offer = org.engine.open_code(world.sid)
        serve = asyncio.create_task(
            world.pump(org, lambda: world.status(org) == Status.AGREED, timeout=40)
        )
        state = await carol.engine.claim(
            offer.code, [shared_relay.url], world.factory, timeout=30
        )
        assert state.session_id == world.sid and state.status == Status.INVITED
        carol.engine.accept(world.sid)
        await asyncio.gather(
            serve, world.pump(carol, lambda: world.status(carol) == Status.AGREED, timeout=40)
        )
        seats = org.engine.load(world.sid).seats
        assert [(s.did, s.status) for s in seats] == [(carol.did, "accepted")]
    finally:
        await world.close()
