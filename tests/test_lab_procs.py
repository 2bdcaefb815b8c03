"""session/lab/procs.py: collecting processes with bounded waits (no root needed)."""

from __future__ import annotations

import subprocess
import sys
import time

from didmesh.session.lab.procs import communicate, feed, finish, stop

ECHO = "import sys; d = sys.stdin.read(); print(d.upper()); print('e', file=sys.stderr)"


def _py(code: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_finish_gives_exit_codes_and_decoded_output_in_order() -> None:
    procs = [_py("print('a')"), _py("import sys; print('b'); sys.exit(3)")]
    assert finish(procs, 30) == [(0, "a\n", ""), (3, "b\n", "")]


def test_a_process_still_running_at_its_timeout_is_killed_with_what_it_wrote() -> None:
    proc = _py("import time; print('early', flush=True); time.sleep(60)")
    t0 = time.monotonic()
    out, _ = communicate(proc, 1.0)
    assert time.monotonic() - t0 < 20
    assert out == b"early\n"
    assert proc.returncode == -9


def test_feed_writes_stdin_once_and_closes_it() -> None:
    proc = _py(ECHO, stdin=subprocess.PIPE)
    feed(proc, b"doc")
    assert proc.stdin is None
    assert finish([proc], 30) == [(0, "DOC\n", "e\n")]


def test_stop_ends_a_process_that_ignores_sigterm_by_sigkill_after_the_grace() -> None:
    proc = _py("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "print('ready', flush=True); time.sleep(60)")
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    t0 = time.monotonic()
    stop(proc, 0.5)
    assert proc.returncode == -9 and time.monotonic() - t0 < 20


def test_stop_ends_a_server_by_sigterm() -> None:
    proc = _py("import time; print('ready', flush=True); time.sleep(60)")
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    stop(proc)
    assert proc.returncode == -15
