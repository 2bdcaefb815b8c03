"""``didmesh run`` trusts nothing it stored: the agreed roster is verified again (every
signature, against the manifest) each time a run starts, and a session file changed on
disk is refused before anything connects. The run path's lighter imports
(specs/mesh.md, 11) must not skip any of it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from didmesh.identity.keystore import Keystore
from didmesh.session.cli.main import main
from didmesh.session.testing import World


async def agreed_world(tmp_path: Path, m: int) -> World:
    world = World(tmp_path, m)
    world.invite_all()
    await world.deliver_invites()
    world.accept_all()
    await world.settle()
    return world


def _bump_port(roster: dict[str, Any]) -> None:
    entry = roster["credentialSubject"]["parties"][1]
    entry["endpoints"] = ["tcp://127.0.0.1:9"]


def _swap_key(roster: dict[str, Any]) -> None:
    parties = roster["credentialSubject"]["parties"]
    parties[0]["sessionKey"], parties[1]["sessionKey"] = (parties[1]["sessionKey"],
                                                          parties[0]["sessionKey"])


def _forge_signature(roster: dict[str, Any]) -> None:
    proof = roster["proof"]
    value = proof["proofValue"]
    proof["proofValue"] = value[:-4] + ("AAAA" if value[-4:] != "AAAA" else "BBBB")


TAMPERINGS: dict[str, Callable[[dict[str, Any]], None]] = {
    "endpoint changed": _bump_port,
    "session keys swapped": _swap_key,
    "signature altered": _forge_signature,
}


@pytest.mark.parametrize("tamper", list(TAMPERINGS))
async def test_a_tampered_stored_roster_is_refused_at_run_time(
        tmp_path: Path, tamper: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = await agreed_world(tmp_path, 3)
    party = world.parties[2]
    home = party.engine.store.home
    Keystore(home).create(passphrase=None, key=party.key)
    state_path = party.engine.store.root / world.sid / "state.json"
    state = json.loads(state_path.read_text())
    assert state["status"] == "agreed"
    TAMPERINGS[tamper](state["roster"])
    state_path.write_text(json.dumps(state))
    rc = main(["--home", str(home), "run", world.sid, "--direct-only", "--connect-timeout",
               "2", "--", str(world.program)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("didmesh: roster from organizer"), err
    assert len(err.strip().splitlines()) == 1


def test_run_imports_no_prompt_uuid_or_platformdirs(tmp_path: Path) -> None:
    """What ``didmesh run`` loads before it starts: not the passphrase prompt (getpass,
    termios), uuid (with platform) or platformdirs, none of which a run needs."""
    code = ("import sys; import didmesh.session.cli.run_cmd; "
            "print(sorted({'getpass', 'termios', 'uuid', 'platform', 'platformdirs'} "
            "& set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"
