"""The CLI points of issue 15 (item 6) and the receipt paths (item 5): a closed pipe is
quiet for every command, ``--version``, ``run`` without a program, the relay's default
port in ``--help``, ``session wait S`` prints only S's events, and a receipt that cannot
be written where asked is saved elsewhere with one line."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli
from didmesh.relay.config import RelayConfig
from didmesh.session.cli import main as cli_main
from didmesh.session.cli import run_cmd
from didmesh.session.manifest import Manifest
from relay_helpers import relay_url  # noqa: F401  (fixture)

RELAY = "http://127.0.0.1:9"  # never contacted by the offline commands below


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    env["DIDMESH_HOME"] = str(home)
    return env


@pytest.fixture
def home_with_session(tmp_path: Path) -> tuple[Path, str]:
    home = tmp_path / "home"
    prog = tmp_path / "prog.py"
    prog.write_text("print('hello')\n")
    assert run_cli(home, "id", "new", "--no-passphrase").rc == 0
    res = run_cli(home, "session", "new", "--program", str(prog), "--parties", "3",
                  "--relay", RELAY, "--json")
    assert res.rc == 0, res.err
    return home, res.json()["sessionId"]


def test_each_command_word_loads_the_module_that_registers_it() -> None:
    """main.COMMANDS (a command's parser loads only its module) names, for every command
    word, the one module whose register() adds it, and every word is in it."""
    registered: dict[str, str] = {}
    for name in cli_main.COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(name).register(sub, argparse.ArgumentParser(add_help=False))
        registered.update(dict.fromkeys(sub.choices, name))
    assert cli_main.COMMANDS == registered
    assert set(cli_main.COMMANDS.values()) == set(cli_main.COMMAND_MODULES)
    assert cli_main._command_of(["--relay-ca", "ca.pem", "--json", "id", "list"]) == "id"
    for word in cli_main.COMMANDS:  # the parser of one command word parses its --help
        parser = cli_main.build_parser(word)
        with pytest.raises(SystemExit) as done, contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args([word, "--help"])
        assert done.value.code == 0


def test_version() -> None:
    res = subprocess.run([sys.executable, "-m", "didmesh.session.cli.main", "--version"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0
    assert res.stdout.startswith("didmesh 0.") and "MPyC 0." in res.stdout


@pytest.mark.parametrize("command", [
    ["status", "SID", "--offline"], ["session", "show", "SID"], ["sessions"], ["id", "list"],
    ["status", "SID", "--offline", "--json"], ["--help"],
], ids=lambda c: "-".join(c).replace("SID", "s"))
def test_a_closed_pipe_is_quiet(home_with_session: tuple[Path, str], command: list[str]) -> None:
    home, sid = home_with_session
    args = [sid[:8] if a == "SID" else a for a in command]
    proc = subprocess.Popen([sys.executable, "-m", "didmesh.session.cli.main", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=_env(home))
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes (like `| head -0`)
    err = proc.stderr.read().decode()
    proc.wait(timeout=30)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == (141 if command != ["--help"] else 0)  # help: argparse exits 0


def test_a_pipe_into_head(home_with_session: tuple[Path, str]) -> None:
    home, sid = home_with_session
    cmd = f"{sys.executable} -m didmesh.session.cli.main status {sid[:8]} --offline | head -3"
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, env=_env(home),
                         timeout=30)
    assert len(res.stdout.splitlines()) == 3 and res.stderr == ""


def test_run_without_a_program_says_what_to_give(home_with_session: tuple[Path, str]) -> None:
    home, sid = home_with_session
    res = run_cli(home, "run", sid[:8])
    assert res.rc == 2
    assert res.err.splitlines() == [
        f"didmesh: which program? session {sid[:8]} agreed on prog.py: give its file "
        f"prog.py, as in: didmesh run {sid[:8]} -- PATH"
    ]
    assert "ARGS" not in res.err


def test_run_refuses_a_resume_bound_out_of_range(home_with_session: tuple[Path, str]) -> None:
    home, sid = home_with_session
    for bound in ("-1", "nan", "3601"):
        res = run_cli(home, "run", sid[:8], "--resume-timeout", bound, "--", "prog.py")
        assert res.rc != 0, bound
        assert res.err.splitlines() == [
            "didmesh: --resume-timeout: give seconds in [0, 3600]"], bound


def test_agreed_arguments_may_not_set_what_didmesh_sets(tmp_path: Path) -> None:
    home = tmp_path / "home"
    prog = tmp_path / "prog.py"
    prog.write_text("print('hello')\n")
    assert run_cli(home, "id", "new", "--no-passphrase").rc == 0
    res = run_cli(home, "session", "new", "--program", str(prog), "--parties", "3",
                  "--relay", RELAY, "--arg=-M5")
    assert res.rc == 2 and res.err.startswith("didmesh: --arg: the program's arguments set")
    assert run_cli(home, "sessions", "--json").json() == []  # nothing was created


def test_relay_serve_help_states_the_default_port(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "relay", "serve", "--help")
    assert res.rc == 0
    assert f"(default {RelayConfig().port};" in " ".join(res.out.split())


def test_session_wait_prints_only_its_session(tmp_path: Path, relay_url: str) -> None:  # noqa: F811
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    prog = tmp_path / "p.py"
    prog.write_text("print(1)\n")
    run_cli(alice, "id", "new", "--no-passphrase")
    bob_did = run_cli(bob, "id", "new", "--no-passphrase", "--json").json()["did"]
    sids = []
    for name in ("first", "second"):
        res = run_cli(alice, "session", "new", "--program", str(prog), "--parties", "2",
                      "--relay", relay_url, "--name", name, "--json")
        assert res.rc == 0, res.err
        sids.append(res.json()["sessionId"])
        assert run_cli(alice, "invite", sids[-1], "--to", bob_did).rc == 0
    listed = run_cli(bob, "invites", "--relay", relay_url)
    for sid in sids:  # the hint names the real session, not a placeholder
        assert f"didmesh accept {sid[:12]}" in listed.out
        assert run_cli(bob, "accept", sid, "--yes").rc == 0
    # bob never confirms, so the wait ends by its timeout; meanwhile alice's pump takes in
    # bob's acceptances of both sessions
    res = run_cli(alice, "session", "wait", sids[0], "--timeout", "6", timeout=60)
    assert res.rc == 3, res.err
    assert f"session {sids[0][:8]}:" in res.err  # its own events are shown
    assert sids[1][:8] not in res.err, res.err  # the other session's are not
    shown = run_cli(alice, "session", "show", sids[1], "--json").json()
    assert shown["status"] != "inviting"  # ...though they were handled


def test_receipt_write_failure_is_one_line_and_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = Manifest.from_json({
        "v": 1, "sessionId": "ab" * 16, "name": "n",
        "organizer": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
        "program": {"name": "p.py", "sha256": "0" * 64, "mpyc": ">=0.1", "args": []},
        "parties": 2, "threshold": 0, "relays": ["http://127.0.0.1:1"],
        "validFrom": "2026-01-01T00:00:00Z", "validUntil": "2026-01-02T00:00:00Z",
    })
    doc = {"receipt": True}
    fallback = tmp_path / "session" / "receipt-1.json"
    fallback.parent.mkdir()
    wanted = tmp_path / "missing-dir" / "r.json"
    got = run_cmd._write_receipt(doc, wanted, fallback, manifest)
    assert got == fallback and fallback.read_text().startswith("{")
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"didmesh: could not write the receipt to {wanted} (No such file or directory); "
        f"it is in {fallback}"
    ]
    # neither the path asked for nor the session folder: a temporary file
    got = run_cmd._write_receipt(doc, wanted, tmp_path / "gone" / "x.json", manifest)
    try:
        assert got.name.startswith("didmesh-receipt-abababab-") and got.read_text()
        assert len(capsys.readouterr().err.splitlines()) == 1
    finally:
        got.unlink()
