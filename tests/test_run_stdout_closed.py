"""A party whose standard output's reader goes away (``didmesh run ... | head``) keeps
computing: its output is discarded, the run completes for every party, and nothing but
the usual lines appears on stderr (no logging-error flood, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import env_for, finish_all, spawn
from didmesh.session.cli.stdout_guard import ReaderGoneStdout
from relay_helpers import relay_url  # noqa: F401  (fixture)
from test_mesh_cli_e2e import agreed_session

CHATTY = """from mpyc.runtime import mpc
mpc.run(mpc.start())
secint = mpc.SecInt()
for i in range(3):
    total = mpc.run(mpc.output(mpc.sum(mpc.input(secint(i)))))
    for _ in range(3000):
        print("round", i, "total", total)
mpc.run(mpc.shutdown())
"""


def test_guard_swallows_a_broken_pipe_and_keeps_swallowing() -> None:
    r, w = os.pipe()
    inner = os.fdopen(w, "w", buffering=1)
    guard = ReaderGoneStdout(inner)
    assert guard.write("first\n") == 6
    assert os.read(r, 100) == b"first\n"
    os.close(r)
    assert guard.write("second\n") == 7  # EPIPE here: swallowed, fd 1 of it is /dev/null
    assert guard.reader_gone
    guard.write("third\n")
    guard.flush()
    inner.close()


@pytest.mark.slow
def test_run_survives_its_stdout_reader_going_away(tmp_path: Path,
                                                    relay_url: str) -> None:  # noqa: F811
    program = tmp_path / "chatty.py"
    program.write_text(CHATTY)
    sid, homes = agreed_session(tmp_path, relay_url, program)
    procs = [spawn(h, "run", sid[:8], "--timeout", "20", "--connect-timeout", "30",
                   "--", str(program)) for h in homes]
    for p in procs:  # like `| head -c 10`: take a little, then close the pipe
        assert p.stdout is not None
        p.stdout.read(10)
        p.stdout.close()
        p.stdout = None  # type: ignore[assignment]
    results = finish_all(procs)
    for rc, _, err in results:
        assert rc == 0, err[-2500:]
        assert "Traceback" not in err and "Logging error" not in err, err[-2500:]
        assert "the rest of the program's output was discarded" in err
        assert err.count("didmesh:") == 0, err


@pytest.mark.slow
def test_run_survives_its_whole_output_going_to_a_reader_that_leaves(
        tmp_path: Path, relay_url: str) -> None:  # noqa: F811
    """``didmesh run ... 2>&1 | head -1``: the reader leaves after the first line, before
    the connectivity table is printed. Before, that print raised BrokenPipeError inside
    mpc.start(): this party died of SIGPIPE (141) without a word and every other party's
    run failed ("aborted by party 0: BrokenPipeError: [Errno 32] Broken pipe")."""
    program = tmp_path / "chatty.py"
    program.write_text(CHATTY)
    sid, homes = agreed_session(tmp_path, relay_url, program)
    args = ["run", sid[:8], "--timeout", "20", "--connect-timeout", "30", "--",
            str(program)]
    first = subprocess.Popen([sys.executable, "-m", "didmesh.session.cli.main", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, text=True, env=env_for(homes[0]))
    procs = [first]
    for i, h in enumerate(homes[1:]):  # the others' output to files: nothing blocks them
        with open(tmp_path / f"out-{i}", "w") as out, open(tmp_path / f"err-{i}", "w") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "didmesh.session.cli.main", *args], stdout=out,
                stderr=err, stdin=subprocess.DEVNULL, text=True, env=env_for(h)))
    assert first.stdout is not None
    assert first.stdout.readline().startswith("running ")  # `| head -1`
    first.stdout.close()
    first.stdout = None  # type: ignore[assignment]
    codes = [rc for rc, _, _ in finish_all(procs)]
    errs = [(tmp_path / f"err-{i}").read_text() for i in range(len(homes) - 1)]
    assert codes == [0] * len(homes), errs
    for err in errs:
        assert err.count("didmesh:") == 0 and "run complete" in err, err
