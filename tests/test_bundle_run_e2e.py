"""Done-when test of issue 15 (bundles and agreed arguments): three homes agree on a
program made of two modules and a data file (examples/weighted_score) with agreed
arguments, through a real relay on default settings; three ``didmesh run`` processes,
each with its own copy of the folder and its own private input, print what plain MPyC
prints. One changed byte in one party's data file, an added file, or other arguments
stop all three before the program starts, each naming the file or the argument.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from cli_helpers import agree_while_waiting, concurrently, finish_all, ok, run_cli, spawn
from didmesh.session.mesh.loopback import free_ports
from relay_helpers import relay_url  # noqa: F401  (fixture)

BUNDLE = Path(__file__).resolve().parent.parent / "examples" / "weighted_score"
NAMES = ("alice", "bob", "carol")
SCORES = ("40", "7", "19")
ARGS = ("--scale", "10")


def copy_bundle(dest: Path) -> Path:
    shutil.copytree(BUNDLE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def plain_output(folder: Path) -> str:
    """Plain MPyC, run from the bundle's folder, with the same inputs and arguments."""
    ports = free_ports(3)
    plist = [a for p in ports for a in ("-P", f"127.0.0.1:{p}")]
    procs = [subprocess.Popen([sys.executable, "main.py", *ARGS, "--no-log", *plist,
                               "-I", str(i)], cwd=folder, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "DIDMESH_INPUT_SCORE": SCORES[i]})
             for i in range(3)]
    outs = finish_all(procs)  # type: ignore[arg-type]
    assert all(rc == 0 for rc, _, _ in outs), outs
    assert outs[0][1] == outs[1][1] == outs[2][1]
    return outs[0][1]


@pytest.fixture
def agreed(tmp_path: Path, relay_url: str) -> tuple[str, list[Path], list[Path]]:  # noqa: F811
    homes = [tmp_path / n / "home" for n in NAMES]
    folders = [copy_bundle(tmp_path / n / "app") for n in NAMES]
    # each person's commands in order, the three people at once where the flow allows
    dids = [d["did"] for d in concurrently(
        *(partial(ok, h, "id", "new", "--no-passphrase") for h in homes))]
    made = ok(homes[0], "session", "new", "--program", str(folders[0]), "--parties", "3",
              "--relay", relay_url, "--name", "bundle e2e", "--arg=--scale", "--arg=10",
              "--input-name", "SCORE")
    sid = made["sessionId"]
    assert made["program"]["bundle"]["files"][0]["path"] == "data/weights.csv"
    for name, did in zip(NAMES[1:], dids[1:], strict=True):
        ok(homes[0], "contacts", "add", name, did)
        ok(homes[0], "invite", sid[:8], "--to", name)
    organizer = spawn(homes[0], "session", "wait", sid, "--timeout", "60", "--json")

    def bob() -> None:
        # the invitee sees the files, their sizes, the digest and the arguments before
        # accepting
        listed = run_cli(homes[1], "invites", "--relay", relay_url)
        assert listed.rc == 0, listed.err
        for f in made["program"]["bundle"]["files"]:
            assert f"{f['size']:>10}  {f['sha256'][:16]}  {f['path']}" in listed.out
        assert made["program"]["sha256"] in listed.out and "--scale 10" in listed.out
        assert "inputs      SCORE" in listed.out
        assert f"didmesh accept {sid[:12]}" in listed.out
        ok(homes[1], "accept", sid[:8], "--yes", "--program", str(folders[1]))

    def carol() -> None:
        ok(homes[2], "invites", "--relay", relay_url)
        # accept shows the same before asking (here without a terminal: it shows, then stops)
        asked = run_cli(homes[2], "accept", sid[:8])
        assert asked.rc == 2 and "bundle of 3 files" in asked.err and "scoring.py" in asked.err
        ok(homes[2], "accept", sid[:8], "--yes", "--program", str(folders[2]))

    agree_while_waiting(organizer, sid, homes[1:], bob, carol)
    return sid, homes, folders


def run_all(sid: str, homes: list[Path], folders: list[Path], *, extra: tuple[
        list[str], ...] = ([], [], []), receipts: bool = False) -> list[tuple[int, str, str]]:
    procs = []
    for i, (home, folder) in enumerate(zip(homes, folders, strict=True)):
        cwd = home.parent  # not the bundle's folder: run must chdir there by itself
        opts = ["--receipt", f"receipts/r{i}.json"] if receipts else []
        procs.append(spawn(home, "run", sid[:8], "--relay-only", "--timeout", "10",
                           "--connect-timeout", "40",
                           "--input", f"SCORE={SCORES[i]}", *opts, "--", str(folder),
                           *extra[i], cwd=cwd))
    return finish_all(procs)


def test_bundle_runs_like_plain_mpyc_and_any_difference_stops_everyone(
    agreed: tuple[str, list[Path], list[Path]],
) -> None:
    sid, homes, folders = agreed
    expected = plain_output(folders[0])
    assert "weighted total: 2590" in expected  # (5*40 + 3*7 + 2*19) * 10
    for home in homes:
        (home.parent / "receipts").mkdir()
    # alice and carol add MPyC's local --no-log; bob gives the agreed arguments himself
    results = run_all(sid, homes, folders, extra=(["--no-log"], [*ARGS, "--no-log"],
                                                  ["--no-log"]), receipts=True)
    for rc, out, err in results:
        assert rc == 0, err[-2500:]
        assert out == expected
        assert "connectivity check (all pairs)" in err and err.count("  relay ") >= 3
    receipts = [str(h.parent / "receipts" / f"r{i}.json") for i, h in enumerate(homes)]
    for path in receipts:
        assert json.loads(Path(path).read_text())["credentialSubject"]["digest"].startswith(
            "sha256:")
    trail = run_cli(homes[0], "verify", *receipts)
    assert trail.rc == 0 and "COMPLETE" in trail.out, trail.out + trail.err

    # a typo in an input's name is refused at once, here only (the others may wait for a
    # corrected run)
    typo = run_cli(homes[1], "run", sid[:8], "--input", "SCOER=7", "--", str(folders[1]))
    assert typo.rc == 2 and typo.err.startswith("didmesh: SCOER is not a private input")

    # one byte of bob's data file changed: nobody starts, everyone names the file
    data = folders[1] / "data" / "weights.csv"
    original = data.read_bytes()
    data.write_bytes(original.replace(b"0,5", b"0,6"))
    results = run_all(sid, homes, folders)
    data.write_bytes(original)
    for i, (rc, out, err) in enumerate(results):
        assert rc != 0 and out == "", (i, out, err)
        assert "data/weights.csv" in err, (i, err)
        assert "weighted total" not in out
        didmesh_lines = [line for line in err.splitlines() if line.startswith("didmesh:")]
        assert len(didmesh_lines) == 1, (i, err)
        if i != 1:
            assert "party 1" in didmesh_lines[0] and "differs" in didmesh_lines[0], err

    # an added file at carol
    (folders[2] / "notes.py").write_text("x = 1\n")
    results = run_all(sid, homes, folders)
    (folders[2] / "notes.py").unlink()
    for i, (rc, out, err) in enumerate(results):
        assert rc != 0 and out == "", (i, err)
        assert "notes.py" in err and ("added" in err or "not in the" in err), (i, err)

    # other arguments at alice: refused naming the argument, the others are told
    results = run_all(sid, homes, folders, extra=(["--scale", "11"], [], []))
    for i, (rc, out, err) in enumerate(results):
        assert rc != 0 and out == "", (i, err)
        assert "'11'" in err and "'10'" in err, (i, err)
