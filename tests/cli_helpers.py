"""Run the real ``didmesh`` CLI in a subprocess with a given home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    stdin: str | None = None,
) -> Result:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    full_env["DIDMESH_HOME"] = str(home)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "didmesh.session.cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        input=stdin if stdin is not None else "",
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def env_for(home: Path) -> dict[str, str]:
    """The environment of a CLI process of ``home``: no DIDMESH_* setting leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    env["DIDMESH_HOME"] = str(home)
    return env


def ok(home: Path, *args: str, timeout: float = 60) -> Any:
    """Run ``didmesh ARGS --json`` in ``home``; it must succeed; its JSON answer."""
    res = run_cli(home, *args, "--json", timeout=timeout)
    assert res.rc == 0, f"{args}: rc={res.rc} {res.err[-2000:]}"
    return res.json()


def spawn(home: Path, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start ``didmesh ARGS`` in ``home`` (stdout and stderr piped, no stdin)."""
    return subprocess.Popen([sys.executable, "-m", "didmesh.session.cli.main", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=env_for(home), cwd=cwd)


def finish_all(procs: list[subprocess.Popen[str]], timeout: float = 90
               ) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each process; any still running at the end is
    killed."""
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=timeout)
            out.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def concurrently(*steps: Callable[[], T]) -> list[T]:
    """Run ``steps`` at once (each in a thread, the CLI processes they start in parallel),
    as people at their own machines would; their results in order. An exception of any
    step is raised once all have ended. Give each home's commands to one step only: a
    home's own commands run one after the other, as in a shell."""
    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        futures = [pool.submit(step) for step in steps]
        return [f.result() for f in futures]


def agree_while_waiting(organizer: subprocess.Popen[str], sid: str, invitees: list[Path],
                        *steps: Callable[[], object]) -> None:
    """The invitees' ``steps`` at once while ``organizer`` (its ``session wait``) runs;
    then each invitee's ``status --wait``: every one of them must end with 0. The
    organizer's process is killed if a step fails."""
    try:
        concurrently(*steps)
    except BaseException:
        organizer.kill()
        organizer.communicate()
        raise
    waits = [spawn(h, "status", sid, "--wait", "--timeout", "60", "--json") for h in invitees]
    for rc, _, err in finish_all([organizer, *waits]):
        assert rc == 0, err[-2000:]
