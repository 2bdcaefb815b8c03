"""Where a party's start-up CPU goes: hello world at m parties, phase by phase (a tool).

    python bench/startup_phases.py [-m 10] [--repeats 3] [--relayed] [--wall]

Runs a trivial MPyC program (hello world, as ``bench_mesh.py --startup``) as plain MPyC
and as didmesh parties (direct, or ``--relayed`` through a relay process on loopback),
every party under a small wrapper (this file with ``--child``) that notes its CPU time
(``time.process_time``) at each phase: interpreter start-up before the first line,
imports, connecting (MPyC's import and set-up run alongside, in a worker thread), the
wait for MPyC's set-up, the connectivity check, the program, BYE, the receipt; the
process's whole CPU comes from the kernel (``os.wait4``), so "exit" is what the
interpreter spends after the last phase. Prints the median over all parties of all
repeats, per phase, in ms. With ten processes on two cores a phase's wall time is mostly
waiting for the CPU, so CPU is shown by default; ``--wall`` shows wall time per phase
instead (``time.time()``; "interpreter start-up" from the parent's spawn, "exit" until the
parent reaped the process): what a party waits for, e.g. its peers, at small m. Bounded:
every run is killed after 120 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WALL = os.environ.get("STARTUP_PHASES_CLOCK") == "wall"
CLOCK = time.time if WALL else time.process_time
T0 = CLOCK()  # the interpreter's start-up, before this file's first line

HERE = Path(__file__).resolve().parent
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
HELLO = """from mpyc.runtime import mpc
mpc.run(mpc.start())
print("hello from party", mpc.pid)
mpc.run(mpc.shutdown())
"""


def _child(kind: str, out: str) -> int:
    """One party, noting ``(phase, cpu seconds so far)``; written to ``out`` at the end."""
    marks: list[tuple[str, float]] = [("interpreter start-up", T0)]

    def mark(name: str) -> None:
        marks.append((name, CLOCK()))

    def timed(owner: Any, attr: str, name: str) -> None:
        fn = getattr(owner, attr)
        if hasattr(fn, "__code__") and fn.__code__.co_flags & 0x80:  # a coroutine function
            async def wrapped_async(*a: Any, **k: Any) -> Any:
                mark(f"(before {name})")
                result = await fn(*a, **k)
                mark(name)
                return result
            setattr(owner, attr, wrapped_async)
        else:
            def wrapped(*a: Any, **k: Any) -> Any:
                mark(f"(before {name})")
                result = fn(*a, **k)
                mark(name)
                return result
            setattr(owner, attr, wrapped)

    rc = 0
    try:
        if kind == "plain":
            import runpy

            import mpyc.runtime  # noqa: F401  (what the program imports first)

            mark("imports (MPyC)")
            runpy.run_path(sys.argv[0], run_name="__main__")
            mark("MPyC start, program, shutdown")
        else:
            import runpy

            from didmesh.session.mesh import mesh, mpyc_setup, runner

            mark("imports (the mesh)")
            # MPyC's import and set-up run in a worker thread while the mesh connects:
            # what connecting did not hide is the wait for the worker
            timed(mpyc_setup.BackgroundSetup, "alongside",
                  "connect, handshakes (+ MPyC import)")
            timed(mpyc_setup.BackgroundSetup, "wait", "MPyC import and set-up: the rest")
            timed(mesh.Mesh, "check", "connectivity check")
            timed(runpy, "run_path", "program (MPyC start to shutdown)")
            timed(mesh.Mesh, "finish", "BYE")
            timed(runner, "_with_receipt", "receipt")
            rc = runner.main()
    finally:
        mark("(end)")
        Path(out).write_text(json.dumps(marks))
    return rc


def _run(kind: str, m: int, workdir: Path, relay: str | None, wall: bool = False
         ) -> list[dict[str, float]]:
    program = workdir / "hello.py"
    procs: list[subprocess.Popen[bytes]] = []
    env = {**ENV, "STARTUP_PHASES_CLOCK": "wall" if wall else "cpu"}
    spawned: list[float] = []
    outs = [workdir / f"marks-{i}.json" for i in range(m)]
    if kind == "plain":
        from didmesh.session.mesh.loopback import free_ports

        plist = [a for p in free_ports(m) for a in ("-P", f"127.0.0.1:{p}")]
        for i in range(m):
            spawned.append(time.time())
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--child", "plain", str(outs[i]), str(program),
                 "--no-log", *plist, "-I", str(i)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env))
    else:
        from didmesh.session.mesh.loopback import loopback_plans
        from didmesh.session.mesh.runner import launch_document

        plans, ids = loopback_plans(m, relays=[relay] if relay else [])
        for i in range(m):
            doc = launch_document(plans[i], ids[i], str(program), ["--no-log"], timeout=60,
                                  connect_timeout=60, relay_only=bool(relay))
            spawned.append(time.time())
            p = subprocess.Popen([sys.executable, __file__, "--child", "didmesh", str(outs[i])],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, env=env)
            assert p.stdin is not None
            p.stdin.write(json.dumps(doc).encode())
            p.stdin.close()
            procs.append(p)
    totals: dict[int, float] = {}
    pending = {p.pid: i for i, p in enumerate(procs)}
    deadline = time.monotonic() + 120
    try:
        while pending and time.monotonic() < deadline:
            pid, status, ru = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(0.002 if wall else 0.01)
            elif pid in pending:
                i = pending.pop(pid)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise RuntimeError(f"{kind} party {i} failed")
                totals[i] = time.time() - spawned[i] if wall else ru.ru_utime + ru.ru_stime
    finally:
        for p in procs:
            if p.pid in pending:
                p.kill()
            p.returncode = 0  # reaped above
    if pending:
        raise RuntimeError(f"{kind} run timed out")
    rows = []
    for i in range(m):
        marks = json.loads(outs[i].read_text())
        if wall:  # absolute times: from the spawn on
            marks = [(name, at - spawned[i]) for name, at in marks]
        row = {marks[0][0]: marks[0][1]}
        for (_, before), (name, at) in zip(marks, marks[1:], strict=False):
            if name.startswith("(before") or name == "(end)":
                name = "between the phases"  # launch document, plan, event loop, ...
            row[name] = row.get(name, 0.0) + at - before
        row["exit (after the last phase)"] = totals[i] - marks[-1][1]
        row["whole process"] = totals[i]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, out = sys.argv[2], sys.argv[3]
        sys.argv = sys.argv[4:]  # the program and its arguments (plain)
        return _child(kind, out)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--relayed", action="store_true", help="didmesh through a relay process")
    ap.add_argument("--wall", action="store_true", help="wall time per phase instead of CPU")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from bench_mesh import start_relay

    relay, relay_proc = start_relay() if a.relayed else (None, None)
    figures: dict[str, dict[str, list[float]]] = {"plain": {}, "didmesh": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "hello.py").write_text(HELLO)
            for _ in range(a.repeats):
                for kind in ("plain", "didmesh"):  # interleaved
                    for row in _run(kind, a.m, workdir, relay if kind == "didmesh" else None,
                                    a.wall):
                        for name, cpu in row.items():
                            figures[kind].setdefault(name, []).append(cpu)
    finally:
        if relay_proc is not None:
            relay_proc.terminate()
            relay_proc.wait(10)
    mode = "relayed" if a.relayed else "direct"
    what = "wall time" if a.wall else "CPU"
    print(f"hello world, m={a.m}, {a.repeats} interleaved repeats: {what} per party, median "
          f"over all parties (ms); didmesh {mode}")
    for kind, phases in figures.items():
        print(f"  {kind}:")
        for name, xs in phases.items():
            print(f"    {name:36} {statistics.median(xs) * 1000:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
