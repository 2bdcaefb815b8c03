"""The keeper of ``wireguard-go`` (session/wireguard/keeper.py; specs/wireguard.md 6.1,
step 3), with ``sleep`` as the child: a killed run's child lives on for the grace, then
ends; an orderly stop ends it at once; the child's own end ends the keeper with its
status. No root needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from didmesh.session.wireguard.tunnel import KEEPER

GRACE = 1.0
#: a "run" process: starts the keeper as tunnel.Tunnel does, prints its pid, then waits
RUN = f"""
import subprocess, sys, time
p = subprocess.Popen([sys.executable, "-I", "-S", {str(KEEPER)!r}, str(__import__("os").getpid()),
                      "{GRACE:g}", *sys.argv[1:]], start_new_session=True)
print(p.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _child_of(pid: int, limit: float = 10) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        if kids:
            return int(kids[0])
        time.sleep(0.02)
    raise AssertionError(f"the keeper {pid} started no child within {limit} s")


def _wait_gone(pid: int, limit: float) -> float:
    t0 = time.monotonic()
    while _alive(pid) and time.monotonic() - t0 < limit:
        time.sleep(0.01)
    assert not _alive(pid), f"{pid} still running after {limit} s"
    return time.monotonic() - t0


def _start(*cmd: str) -> tuple[subprocess.Popen[str], int, int]:
    run = subprocess.Popen([sys.executable, "-c", RUN, *cmd], stdout=subprocess.PIPE,
                           text=True)
    assert run.stdout is not None
    keeper = int(run.stdout.readline())
    return run, keeper, _child_of(keeper)


def test_a_killed_runs_child_lives_for_the_grace_then_ends() -> None:
    run, keeper, child = _start("sleep", "60")
    run.kill()
    run.wait(10)
    time.sleep(GRACE / 2)
    assert _alive(child) and _alive(keeper)  # the grace: FIN and RST get out meanwhile
    took = _wait_gone(child, GRACE + 5)
    assert took <= GRACE + 1.5, took
    _wait_gone(keeper, 2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_an_orderly_stop_ends_the_child_at_once(sig: signal.Signals) -> None:
    run, keeper, child = _start("sleep", "60")
    try:
        os.kill(keeper, sig)
        assert _wait_gone(child, 5) < GRACE / 2
        _wait_gone(keeper, 2)
    finally:
        run.kill()
        run.wait(10)


def test_a_killed_keeper_takes_the_child_with_it() -> None:
    run, keeper, child = _start("sleep", "60")
    try:
        os.kill(keeper, signal.SIGKILL)
        assert _wait_gone(child, 5) < GRACE / 2
    finally:
        run.kill()
        run.wait(10)


@pytest.mark.parametrize(("cmd", "code", "err"), [
    (["sh", "-c", "exit 3"], 3, ""),
    (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM, ""),
    (["/nonexistent/wireguard-go", "-f", "x"], 127,
     "cannot start /nonexistent/wireguard-go: No such file or directory"),
])
def test_the_keeper_ends_with_its_childs_status(cmd: list[str], code: int, err: str) -> None:
    res = subprocess.run([sys.executable, "-I", "-S", str(KEEPER), str(os.getpid()),
                          f"{GRACE:g}", *cmd], capture_output=True, text=True, timeout=20)
    assert res.returncode == code, res.stderr
    assert res.stderr.strip() == err
