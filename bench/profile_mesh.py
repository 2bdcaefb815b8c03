"""Profile one party of an example run, plain MPyC or didmesh direct (a tool, not a figure).

    python bench/profile_mesh.py --mode direct --example secret_santa -m 5 --party 2 \
        [--profiler cprofile|pyspy|none] [--out /tmp/prof]

All ``m`` parties run as local processes on loopback, as in ``bench_mesh.py``; party
``--party`` runs under ``cProfile`` (``--out``.pstats; the 25 functions with most own
time are printed) or ``py-spy record`` (``--out``.svg). Every party's user+sys CPU
seconds are printed (from ``os.wait4``), so where the CPU of a mode goes can be compared
party by party. Bounded: the run is killed after ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

from didmesh.session.lab.procs import feed
from didmesh.session.mesh.loopback import free_ports, loopback_plans
from didmesh.session.mesh.runner import launch_document, spawn_party

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "secure_sum": (ROOT / "examples" / "secure_sum.py", []),
    "secret_santa": (ROOT / "examples" / "secret_santa.py", ["-n", "24", "--seed", "1"]),
    "matrix_product": (ROOT / "examples" / "matrix_product.py", ["-n", "200", "--seed", "1"]),
}
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _wrap(cmd: list[str], profiler: str, out: str) -> list[str]:
    if profiler == "cprofile":
        return [cmd[0], "-m", "cProfile", "-o", out + ".pstats", *cmd[1:]]
    if profiler == "pyspy":
        return ["py-spy", "record", "--native", "-r", "200", "-o", out + ".svg", "--", *cmd]
    return cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["plain", "direct"], default="direct")
    ap.add_argument("--example", choices=sorted(EXAMPLES), default="secret_santa")
    ap.add_argument("-m", type=int, default=5)
    ap.add_argument("--party", type=int, default=2)
    ap.add_argument("--profiler", choices=["cprofile", "pyspy", "none"], default="cprofile")
    ap.add_argument("--out", default="/tmp/didmesh-prof")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--args", nargs=argparse.REMAINDER, help="the example's arguments")
    a = ap.parse_args(argv)
    program, args = EXAMPLES[a.example]
    if a.args:
        args = a.args
    procs: list[subprocess.Popen[bytes]] = []
    if a.mode == "plain":
        plist = [x for p in free_ports(a.m) for x in ("-P", f"127.0.0.1:{p}")]
        for i in range(a.m):
            cmd = [sys.executable, str(program), *args, *plist, "-I", str(i)]
            if i == a.party:
                cmd = _wrap(cmd, a.profiler, a.out)
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, env=ENV))
    else:
        plans, ids = loopback_plans(a.m)
        opts = {"timeout": 60, "connect_timeout": 60, "receipt": False}
        for i in range(a.m):
            doc = launch_document(plans[i], ids[i], str(program), args, **opts)
            if i == a.party and a.profiler != "none":
                import json

                cmd = _wrap([sys.executable, "-m", "didmesh.session.mesh.runner"],
                            a.profiler, a.out)
                p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=ENV)
                feed(p, json.dumps(doc).encode())
                procs.append(p)
            else:
                procs.append(spawn_party(doc, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, env=ENV))
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    cpu: dict[int, float] = {}
    user_sys = [0.0, 0.0]
    pending = {p.pid: i for i, p in enumerate(procs)}
    try:
        while pending and time.monotonic() < deadline:
            pid, status, ru = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(0.01)
                continue
            if pid in pending:
                cpu[pending.pop(pid)] = ru.ru_utime + ru.ru_stime
                user_sys[0] += ru.ru_utime
                user_sys[1] += ru.ru_stime
                if os.waitstatus_to_exitcode(status) != 0:
                    print(f"party exited with {os.waitstatus_to_exitcode(status)}")
    finally:
        for p in procs:
            if p.pid in pending:
                p.kill()
    for p in procs:
        p.returncode = 0  # reaped by wait4 above
    print(f"wall {time.monotonic() - t0:.3f} s; CPU per party: "
          + ", ".join(f"{i}: {c:.3f}" for i, c in sorted(cpu.items()))
          + f"; total {sum(cpu.values()):.3f} s (user {user_sys[0]:.3f}, sys {user_sys[1]:.3f})")
    if a.profiler == "cprofile" and Path(a.out + ".pstats").exists():
        pstats.Stats(a.out + ".pstats").sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
