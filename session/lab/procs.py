"""Collecting the processes a lab run (or any test or benchmark) started: bounded waits.

:func:`communicate` waits for one process and kills it when its time is up;
:func:`finish` does so for several, each given ``timeout`` seconds in turn; :func:`feed`
hands a process its one input (a launch document, say) and closes its stdin; :func:`stop`
ends a server (SIGTERM, SIGKILL after a grace period).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from typing import Any

#: how long a killed process may take to end and hand over what it wrote
KILLED_TIMEOUT = 10.0


def communicate(proc: subprocess.Popen[Any], timeout: float) -> tuple[Any, Any]:
    """``proc``'s (stdout, stderr) once it ends; killed if still running after ``timeout``
    seconds (what it wrote until then is returned)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=KILLED_TIMEOUT)


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode() if isinstance(data, bytes) else data


def finish(procs: Iterable[subprocess.Popen[Any]], timeout: float) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each process, in order (:func:`communicate`)."""
    out = []
    for proc in procs:
        stdout, stderr = communicate(proc, timeout)
        out.append((proc.returncode, _text(stdout), _text(stderr)))
    return out


def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """End ``proc``: SIGTERM, then SIGKILL if it has not ended within ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(KILLED_TIMEOUT)


def feed(proc: subprocess.Popen[Any], data: bytes | str) -> None:
    """Write ``data`` to ``proc``'s stdin (opened with ``stdin=PIPE``) and close it, so that
    a later :func:`communicate` does not write to it again."""
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.close()
    proc.stdin = None
