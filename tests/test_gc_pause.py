"""The collector paused while a one-run process starts (session/gc_pause.py; specs/mesh.md,
11): ``didmesh run`` pauses it for its start-up only, gives it back on every way out, and
no other command touches it. The program itself runs with the collector on
(tests/test_mpyc_runs.py, ``test_the_program_runs_with_the_collector_on``)."""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from didmesh.session import gc_pause
from didmesh.session.cli import main as cli_main
from didmesh.session.cli import run_cmd
from didmesh.session.cli.output import Output
from didmesh.session.errors import SessionUsageError

#: (steps, expected collector state after each step); each script runs in a fresh
#: interpreter (gc.freeze there must not touch the test process's objects)
SCRIPTS: dict[str, tuple[str, list[str]]] = {
    "pause then resume freezes and turns it on": (
        "pause resume", ["True off paused", "True on frozen"]),
    "resume without freezing": ("pause resume-nofreeze", ["True off paused", "True on -"]),
    "resume without a pause does nothing": ("resume", ["False on -"]),
    "a collector off already stays off": ("disable pause resume",
                                          ["None off -", "False off -", "False off -"]),
    "a second pause is no pause": ("pause pause resume resume",
                                   ["True off paused", "False off paused",
                                    "True on frozen", "False on frozen"]),
}

_DRIVER = """
import gc, sys
from didmesh.session import gc_pause
for step in sys.argv[1].split():
    if step == "disable":
        did = gc.disable()
    elif step == "pause":
        did = gc_pause.pause()
    elif step == "resume":
        did = gc_pause.resume()
    else:
        did = gc_pause.resume(freeze=False)
    state = "paused" if gc_pause.paused() else ("frozen" if gc.get_freeze_count() else "-")
    print(did, "on" if gc.isenabled() else "off", state)
"""


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_pause_and_resume(name: str) -> None:
    steps, expected = SCRIPTS[name]
    out = subprocess.run([sys.executable, "-c", _DRIVER, steps], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.splitlines() == expected


@pytest.fixture
def collector_on() -> Iterator[None]:
    assert gc.isenabled() and not gc_pause.paused()
    yield
    gc.enable()  # whatever the test did


def _parse_with(monkeypatch: pytest.MonkeyPatch, body: object) -> None:
    """``didmesh run`` with ``body`` as its command function (the real parser)."""
    monkeypatch.setattr(run_cmd, "cmd_run", body)


@pytest.mark.parametrize("ending", ["returns", "raises a didmesh error", "is interrupted"])
def test_run_pauses_the_collector_and_always_gives_it_back(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, collector_on: None,
        ending: str, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[bool] = []

    def body(args: argparse.Namespace, out: Output) -> int:
        seen.append(gc.isenabled())
        if ending == "raises a didmesh error":
            raise SessionUsageError("no such thing")
        if ending == "is interrupted":
            raise KeyboardInterrupt
        return 0

    _parse_with(monkeypatch, body)
    rc = cli_main.main(["--home", str(tmp_path), "run", "abcd", "--", "prog.py"])
    assert seen == [False]  # paused while the command ran
    assert gc.isenabled() and not gc_pause.paused()
    assert gc.get_freeze_count() == 0  # an ended command freezes nothing on its way out
    assert rc == {"returns": 0, "raises a didmesh error": 2, "is interrupted": 130}[ending]
    capsys.readouterr()


def test_a_command_line_mistake_gives_it_back(tmp_path: Path, collector_on: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main.main(["--home", str(tmp_path), "run", "abcd", "--no-such-flag"])
    assert gc.isenabled() and not gc_pause.paused()
    assert capsys.readouterr().err.startswith("didmesh: ")


def test_a_real_failing_run_gives_it_back(tmp_path: Path, collector_on: None,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main.main(["--home", str(tmp_path), "run", "abcd", "--", "prog.py"])
    assert rc != 0 and capsys.readouterr().err.startswith("didmesh: ")
    assert gc.isenabled() and not gc_pause.paused()


def test_other_commands_leave_the_collector_alone(tmp_path: Path, collector_on: None,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    paused: list[bool] = []
    monkeypatch.setattr(gc_pause, "pause", lambda: paused.append(True) or True)
    assert cli_main.main(["--home", str(tmp_path), "id", "list"]) == 0
    assert paused == [] and gc.isenabled()
    capsys.readouterr()


@pytest.mark.parametrize("transport", ["noise", "wireguard", "refused"])
async def test_when_a_real_run_hands_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          collector_on: None, transport: str) -> None:
    """``didmesh run`` of an agreed session: the mesh's runner starts with the collector
    still paused (its worker turns it on once MPyC is imported); over WireGuard it is on
    before the tunnel's set-up, which waits for STUN and handshakes first; a party whose
    program differs turns it on before it connects to tell its peers."""
    from didmesh.identity.keystore import Keystore
    from didmesh.session.errors import ProgramDigestMismatch
    from didmesh.session.mesh.faults import PlanError
    from test_session_protocol import agreed_world

    world = await agreed_world(tmp_path, 3)
    party = world.parties[1]
    home = party.engine.store.home
    Keystore(home).create(passphrase=None, key=party.key)
    seen: list[bool] = []

    def runner(*args: object, **kwargs: object) -> None:
        seen.append(gc.isenabled())
        raise PlanError("stopped here by the test")

    if transport == "wireguard":
        from didmesh.session.wireguard import impl, preflight
        from didmesh.session.wireguard import run as wg_run

        monkeypatch.setattr(impl, "choose", lambda _impl: "userspace")
        monkeypatch.setattr(preflight, "check", lambda _impl: None)
        monkeypatch.setattr(wg_run, "run_over_wireguard", runner)
    else:
        monkeypatch.setattr(run_cmd, "run_program", runner)
    program = Path(world.program)
    if transport == "refused":
        program = tmp_path / "changed.py"
        program.write_bytes(Path(world.program).read_bytes() + b"\n# changed\n")
    monkeypatch.setenv("DIDMESH_DEBUG", "1")  # the error comes out instead of os._exit
    try:
        with pytest.raises(ProgramDigestMismatch if transport == "refused" else PlanError):
            cli_main.main(["--home", str(home), "run", world.sid, "--transport",
                           "wireguard" if transport == "wireguard" else "noise",
                           "--", str(program)])
        assert seen == [transport != "noise"]
        assert gc.isenabled() and not gc_pause.paused()
    finally:
        gc.unfreeze()  # a resume froze this test process's objects
