"""Where a party's start-up CPU goes: hello world at m parties, phase by phase (a tool).

    python bench/startup_phases.py [-m 10] [--repeats 3] [--relayed] [--wall] [--via-cli]

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
parent reaped the process): what a party waits for, e.g. its peers, at small m.
``--via-cli`` adds a third kind, ``didmesh run`` as a user types it: a session is agreed
once through the real CLI (``bench/cli_session.py``, not timed) and every party is a whole
``didmesh run SESSION --direct-only`` (or ``--relay-only``) process, with the command's
own steps as phases (its imports, the identity, the session state, the program and
argument checks, the roster verified again, the plan) before the mesh's. Bounded: every
run is killed after 120 s.
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
from collections.abc import Sequence
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
        if kind == "cli":
            return _cli_child(mark, timed)
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


def _cli_child(mark: Any, timed: Any) -> int:
    """One ``didmesh run`` party (``sys.argv``: the command's arguments), its steps marked.
    The command's module is imported by its parser, so the marks go in once it is built
    (the command line pauses the collector before, as it does unwrapped)."""
    from didmesh.session import store
    from didmesh.session.cli import main as cli_main

    build = cli_main.build_parser

    def build_marked(command: str | None = None) -> Any:
        parser = build(command)
        mark("imports (didmesh run: CLI, mesh)")
        from didmesh.session.cli import run_cmd
        from didmesh.session.mesh import mesh, mpyc_setup, runner

        timed(run_cmd, "load_identity", "identity (keystore)")
        timed(store.SessionStore, "load", "session state")
        timed(run_cmd, "verify_program", "program and arguments checked")
        timed(run_cmd, "check_args", "program and arguments checked")
        roster = store.StoredSession.agreed_roster.fget
        assert roster is not None

        def agreed_roster(self: Any) -> Any:
            mark("(before roster)")
            result = roster(self)
            mark("roster verified again")
            return result

        store.StoredSession.agreed_roster = property(agreed_roster)
        timed(run_cmd, "from_roster", "plan")
        timed(mpyc_setup.BackgroundSetup, "alongside", "connect, handshakes (+ MPyC import)")
        timed(mpyc_setup.BackgroundSetup, "wait", "MPyC import and set-up: the rest")
        timed(mesh.Mesh, "check", "connectivity check")
        import runpy

        timed(runpy, "run_path", "program (MPyC start to shutdown)")
        timed(mesh.Mesh, "finish", "BYE")
        timed(runner, "_with_receipt", "receipt")
        timed(run_cmd, "_write_receipt", "receipt")
        return parser

    cli_main.build_parser = build_marked
    return cli_main.main(sys.argv)


def _run(kind: str, m: int, workdir: Path, relay: str | None, wall: bool = False,
         cli: tuple[str, list[Path], bool] | None = None, args: Sequence[str] = ("--no-log",)
         ) -> list[dict[str, float]]:
    program = workdir / "program.py"
    procs: list[subprocess.Popen[bytes]] = []
    env = {**ENV, "STARTUP_PHASES_CLOCK": "wall" if wall else "cpu"}
    spawned: list[float] = []
    outs = [workdir / f"marks-{i}.json" for i in range(m)]
    if kind == "cli":
        import cli_session

        assert cli is not None
        sid, homes, relay_only = cli
        for i in range(m):
            spawned.append(time.time())
            cmd = cli_session.run_command(sid, program, relay_only=relay_only,
                                          receipt=workdir / f"receipt-{i}.json")
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--child", "cli", str(outs[i]), *cmd[3:]],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env=cli_session.env_of(homes[i], env)))
    elif kind == "plain":
        from didmesh.session.mesh.loopback import free_ports

        plist = [a for p in free_ports(m) for a in ("-P", f"127.0.0.1:{p}")]
        for i in range(m):
            spawned.append(time.time())
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--child", "plain", str(outs[i]), str(program),
                 *args, *plist, "-I", str(i)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env))
    else:
        from didmesh.session.mesh.loopback import loopback_plans
        from didmesh.session.mesh.runner import launch_document

        plans, ids = loopback_plans(m, relays=[relay] if relay else [])
        for i in range(m):
            doc = launch_document(plans[i], ids[i], str(program), list(args), timeout=60,
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
    ap.add_argument("--via-cli", action="store_true",
                    help="also every party as a whole `didmesh run` process (a session "
                    "agreed through the CLI first, not timed)")
    ap.add_argument("--program", type=Path, default=None,
                    help="run this MPyC program instead of hello world")
    ap.add_argument("--args", nargs=argparse.REMAINDER, default=[],
                    help="the program's arguments (last; --no-log is added)")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from bench_mesh import start_relay

    relay, relay_proc = start_relay() if a.relayed or a.via_cli else (None, None)
    kinds = ("plain", "didmesh", "cli") if a.via_cli else ("plain", "didmesh")
    figures: dict[str, dict[str, list[float]]] = {kind: {} for kind in kinds}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "program.py").write_text(HELLO if a.program is None
                                                else a.program.read_text())
            args = [*a.args, "--no-log"]
            cli = None
            if a.via_cli:
                import cli_session

                assert relay is not None
                sid, homes = cli_session.agree(a.m, relay, workdir / "program.py", args,
                                               workdir, ENV)
                cli = (sid, homes, a.relayed)
            for _ in range(a.repeats):
                for kind in kinds:  # interleaved
                    for row in _run(kind, a.m, workdir,
                                    relay if kind == "didmesh" and a.relayed else None,
                                    a.wall, cli, args):
                        for name, cpu in row.items():
                            figures[kind].setdefault(name, []).append(cpu)
    finally:
        if relay_proc is not None:
            relay_proc.terminate()
            relay_proc.wait(10)
    mode = "relayed" if a.relayed else "direct"
    what = "wall time" if a.wall else "CPU"
    name = "hello world" if a.program is None else " ".join([a.program.name, *a.args])
    print(f"{name}, m={a.m}, {a.repeats} interleaved repeats: {what} per party, median "
          f"over all parties (ms); didmesh {mode}")
    for kind, phases in figures.items():
        print(f"  {dict(cli='didmesh run').get(kind, kind)}:")
        for name, xs in phases.items():
            print(f"    {name:40} {statistics.median(xs) * 1000:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
