"""What a stranger following README.md ran into (one test per defect found): each failure
is one ``didmesh:`` line that says what actually went wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import run_cli

RELAY = "http://127.0.0.1:9"  # nothing listens there: the relay is down


@pytest.fixture
def home_with_session(tmp_path: Path) -> tuple[Path, str]:
    home = tmp_path / "home"
    prog = tmp_path / "prog.py"
    prog.write_text("print('hello')\n")
    assert run_cli(home, "id", "new", "--no-passphrase").rc == 0
    res = run_cli(home, "session", "new", "--program", str(prog), "--parties", "2",
                  "--relay", RELAY, "--no-direct", "--json")
    assert res.rc == 0, res.err
    return home, res.json()["sessionId"]


@pytest.mark.parametrize("command", [["session", "wait", "SID"], ["status", "SID", "--wait"]])
def test_a_wait_that_times_out_with_the_relay_down_names_the_relay(
    home_with_session: tuple[Path, str], command: list[str]
) -> None:
    """A wait whose relay never answered does not blame the other parties alone: its
    timeout line names the relay and why it was not reached."""
    home, sid = home_with_session
    args = [sid if a == "SID" else a for a in command]
    res = run_cli(home, *args, "--timeout", "3", timeout=60)
    assert res.rc == 3, res.err
    last = res.err.strip().splitlines()[-1]
    assert last.startswith("didmesh: timed out after 3 s"), res.err
    assert RELAY in last and "Traceback" not in res.err, res.err
