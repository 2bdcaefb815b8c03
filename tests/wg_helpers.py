"""An agreed three-party session for the WireGuard tests (real engines, in memory)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from didmesh.identity.keystore import Keystore
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


def invitee_home(root: Path, program: Path) -> tuple[Path, str, Path]:
    """A session agreed in ``root`` on a copy of ``program`` (invitee ``i`` announcing
    ``tcp://10.215.0.<i+1>:5182<i>``), party 1's keystore written unencrypted: party 1's
    home, the session id and the program's copy."""
    copy = root / program.name
    shutil.copy(program, copy)
    world = asyncio.run(agreed_world(root, lambda i: f"tcp://10.215.0.{i + 1}:5182{i}",
                                     program=copy))
    party = world.parties[1]
    Keystore(root / party.name).create(passphrase=None, key=party.key)
    return root / party.name, world.sid, copy
