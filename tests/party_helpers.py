"""Ending a test's party processes, each watched by a reader thread."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol


class Watched(Protocol):
    """A party process (``proc``) whose output a thread (``_thread``) reads."""

    proc: subprocess.Popen[Any]
    _thread: threading.Thread


def reap(parties: Iterable[Watched], limit: float = 60.0) -> None:
    """Wait for every party to end, all within ``limit`` seconds; kill one still running
    then. Each reader thread is given 10 s more to finish reading."""
    deadline = time.monotonic() + limit
    for p in parties:
        try:
            p.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(5)
        if p._thread.is_alive():
            p._thread.join(10)
