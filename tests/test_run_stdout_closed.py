"""A party whose standard output's reader goes away (``didmesh run ... | head``) keeps
computing: its output is discarded, the run completes for every party, and nothing but
the usual lines appears on stderr (no logging-error flood, no traceback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_helpers import finish_all, spawn
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
