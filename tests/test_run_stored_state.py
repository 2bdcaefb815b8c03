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
from test_session_protocol import agreed_world


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


@pytest.mark.parametrize("value", ["2025-01-01T00:00:00Z", "2024-02-29T23:59:59Z",
                                   "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"])
def test_manifest_times_parse_as_strptime_did(value: str) -> None:
    """The manifest's times are read by position (no strptime on the run path): the same
    datetime as ``strptime`` with the format, in UTC."""
    from datetime import UTC, datetime

    from didmesh.session.manifest import parse_time

    assert parse_time(value, "t") == datetime.strptime(
        value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@pytest.mark.parametrize("value", [
    "2025-02-30T00:00:00Z", "2023-02-29T00:00:00Z", "2025-13-01T00:00:00Z",
    "2025-01-01T24:00:00Z", "2025-01-01T00:60:00Z", "2025-01-01T00:00:61Z",
    "0000-01-01T00:00:00Z", "2025-01-01T00:00:00Z\n", "2025-01-01 00:00:00Z",
    "2025-01-01T00:00:00+00:00", "+025-01-01T00:00:00Z", 20250101, None,
])
def test_manifest_times_that_are_not_real_are_refused(value: object) -> None:
    from didmesh.session.errors import ManifestInvalid
    from didmesh.session.manifest import parse_time

    with pytest.raises(ManifestInvalid):
        parse_time(value, "t")
