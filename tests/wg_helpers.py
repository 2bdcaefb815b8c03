"""An agreed three-party session for the WireGuard tests (real engines, in memory)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from didmesh.session.testing import World


async def agreed_world(root: Path, endpoint: Callable[[int], str],
                       program: Path | None = None) -> World:
    """Three parties agree on a roster (on ``program``, else a trivial one); invitee
    ``i`` announces ``endpoint(i)`` (the organizer announces none)."""
    world = World(root, 3, program=program)
    world.invite_all()
    await world.deliver_invites()
    for i, p in enumerate(world.parties[1:], 1):
        p.engine.accept(world.sid, endpoints=[endpoint(i)])
    await world.settle()
    await world.close()
    return world
