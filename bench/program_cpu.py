"""Run an MPyC program and report the CPU it used, without start-up (a benchmark wrapper).

    python bench/program_cpu.py PROGRAM [program args...]     # as the MPyC program

Imports ``mpyc.runtime`` first (plain MPyC imports it inside the program, didmesh before
the mesh comes up), then runs PROGRAM as ``__main__`` and prints, to stderr, one line
``program cpu: USER SYS LOOPS``: this process's user and system CPU seconds spent in the
program (its MPyC rounds, and the transport under them) and the number of event-loop
iterations. ``bench_mesh.py --program-cpu`` wraps the examples with it, so the CPU of
the run itself can be compared between the modes apart from interpreter start-up,
imports and mesh set-up.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
from typing import Any

import mpyc.runtime  # noqa: F401  (its set-up is not counted)


def _count_loop_iterations() -> list[int]:
    """Count ``BaseEventLoop._run_once`` calls (patched on the class, this process only)."""
    counter = [0]
    cls: Any = asyncio.BaseEventLoop
    orig = cls._run_once

    def _run_once(self: Any) -> None:
        counter[0] += 1
        orig(self)

    cls._run_once = _run_once
    return counter


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: program_cpu.py PROGRAM [args...]")
    program = sys.argv[1]
    sys.argv = [program, *sys.argv[2:]]
    loops = _count_loop_iterations()
    t0 = os.times()
    try:
        runpy.run_path(program, run_name="__main__")
    finally:
        t1 = os.times()
        print(f"program cpu: {t1.user - t0.user:.4f} {t1.system - t0.system:.4f} {loops[0]}",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
