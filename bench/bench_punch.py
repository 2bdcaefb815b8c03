"""Benchmark of punched paths in the Internet lab (needs root; a few minutes).

Run: ``python bench/bench_punch.py [--repeats 2] [--rtts 0,20,80]``. For each home-to-home
round trip (default 0, 20 and 80 ms) one lab: two homes behind endpoint-independent NATs
(``p1``, ``p2``), two public hosts with the same links (``q0``, ``q1``) and the relay, 40 ms
round trip from every site. In one interleaved loop, for the many-round example
(``secret_santa.py -n 24``), the large-message one (``cnn_layer.py --images 8``: an input
message of megabytes) and a latency-bound one (``bench/mpc_rounds.py -n 40``: 40
dependent rounds of small messages, little CPU: the path's per-round cost):

* ``mpyc-nat``: plain MPyC between ``p1`` and ``p2``, its port opened by hand through
  both NATs (a DNAT rule on each home router: the best a user can do today);
* ``punched``: didmesh between ``p1`` and ``p2`` (no flag; the pair is punched);
* ``relayed``: didmesh between ``p1`` and ``p2`` with ``relay_only``;
* ``direct``: didmesh between the public ``q0`` and ``q1`` (same path length).

Printed per row: the program's own elapsed time (MPyC's ``elapsed time``; plain MPyC's
includes its own connection set-up, didmesh's starts once the mesh is up), the whole
process wall time (start-up, imports, set-up, program), didmesh's set-up time (mesh up
and connectivity check, from the later party's start) and, for ``punched``, the time to
the punched path from the later party's start (party 0's ``punched in``, counted from its
own start, less how much earlier it started), each with its ratio to plain MPyC, and the
CPU time (user + system) of a party's whole process, the mean of the run's parties, with
its ratio: on two cores with both parties starting at once, start-up is CPU-bound, so the
wall time's gap to plain MPyC follows the CPU's. Last, the paired wall ratio: the median
over repeats of each repeat's wall time over plain MPyC's in the same repeat (they ran back
to back), with a 90 % bootstrap interval of that median: less moved by the machine's
drift between repeats than the ratio of the two medians. The machine is shared: figures are noisy
(the load average is printed).

The path column counts, for ``punched``, the runs whose pair was punched (``12/12``); a
run that was not says why on stderr at once (the connectivity table's path and link), as
does a run that failed (counted in the total, left out of the medians).
``--modes`` picks modes (``mpyc-nat`` always); ``--ab DIR`` adds ``punched-base``: the
punched run with another revision's didmesh, e.g. before a change (``git archive REV
identity session relay`` unpacked into SRC, and DIR/didmesh/{identity,session,relay}
linked to SRC's), interleaved with the others in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from didmesh.session.lab import Lab, available
from didmesh.session.lab.procs import communicate, feed
from didmesh.session.mesh.candidates import port_range
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.plan import format_endpoint
from didmesh.session.mesh.runner import launch_document

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = {
    "many-round": (ROOT / "examples" / "secret_santa.py", ["-n", "24", "--seed", "3"]),
    "large-msg": (ROOT / "examples" / "cnn_layer.py", ["--images", "8", "--seed", "3"]),
    "rounds": (ROOT / "bench" / "mpc_rounds.py", ["-n", "40"]),
}
RELAY_PORT = 8470
#: the party process spawn_party starts (it pre-dials the early punch before its imports)
PARTY = "didmesh.session.mesh.party"
MPYC_PORT = 11365
RELAY_RTT_MS = 40.0
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
ELAPSED = re.compile(r"elapsed time: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
PUNCHED_IN = re.compile(r"punched in ([\d.]+) s")


def _elapsed(text: str) -> float | None:
    m = ELAPSED.search(text)
    if not m:
        return None
    h, mi, s = m.groups()
    return int(h) * 3600 + int(mi) * 60 + float(s)


def _children_cpu() -> float:
    """User+sys CPU seconds of this process's reaped children so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _finish(procs: list[subprocess.Popen[bytes]], timeout: float = 300) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        o, err = communicate(p, timeout)
        out.append((p.returncode, (o or b"").decode(errors="replace")
                    + err.decode(errors="replace")))
    return out


def _open_port(lab: Lab, home: str, node: str, port: int) -> None:
    """DNAT ``port`` on ``home``'s router to ``node`` (what a user does by hand)."""
    script = f"""\
add chain ip didmesh_lab prerouting {{ type nat hook prerouting priority dstnat; }}
add rule ip didmesh_lab prerouting iifname "wan" tcp dport {port} dnat to {lab.address(node)}
insert rule ip didmesh_lab forward ct status dnat accept
"""
    subprocess.run(lab.exec(home, "nft", "-f", "-"), input=script, text=True, check=True,
                   timeout=10)


def run_mpyc(lab: Lab, nodes: list[str], public: list[str], program: Path,
             args: list[str]) -> dict[str, Any]:
    plist = [a for n in public for a in ("-P", f"{n}:{MPYC_PORT}")]
    t0, cpu0 = time.perf_counter(), _children_cpu()
    procs = [lab.spawn(node, sys.executable, str(program), *args, *plist, "-I", str(i),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
             for i, node in enumerate(nodes)]
    res = _finish(procs)
    wall = time.perf_counter() - t0
    cpu = (_children_cpu() - cpu0) / len(procs)
    if any(code for code, _ in res):
        raise RuntimeError(f"plain MPyC failed: {res[0][1][-800:]} {res[1][1][-800:]}")
    return {"elapsed": max(_elapsed(e) or 0 for _, e in res), "wall": wall, "cpu": cpu}


def run_didmesh(lab: Lab, nodes: list[str], url: str, program: Path, args: list[str],
                env: dict[str, str] | None = None, entry: str = PARTY,
                **options: Any) -> dict[str, Any]:
    plans, ids = loopback_plans(len(nodes), relays=[url], endpoints=False)
    lo, hi = port_range()  # below the ephemeral range: no TIME_WAIT holds it
    ports = random.SystemRandom().sample(range(lo, hi + 1), len(nodes))
    parties = []
    for p in plans[0].parties:
        node, port = nodes[p.party_id], ports[p.party_id]
        eps = [format_endpoint(lab.address(node), port)]
        if lab.public_address(node) != lab.address(node):
            eps.append(format_endpoint(lab.public_address(node), port))
        parties.append(dataclasses.replace(p, endpoints=tuple(eps)))
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        t0, cpu0 = time.perf_counter(), _children_cpu()
        for i, node in enumerate(nodes):
            plan = dataclasses.replace(plans[i], parties=tuple(parties))
            doc = launch_document(plan, ids[i], str(program), args, timeout=60,
                                  connect_timeout=60, result_path=f"{tmp}/r{i}.json",
                                  **options)
            proc = lab.spawn(node, sys.executable, "-m", entry,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env or ENV)
            feed(proc, json.dumps(doc).encode())
            procs.append(proc)
        res = _finish(procs)
        wall = time.perf_counter() - t0
        cpu = (_children_cpu() - cpu0) / len(procs)
        if any(code for code, _ in res):
            raise RuntimeError(f"didmesh failed: {res[0][1][-800:]} {res[1][1][-800:]}")
        results = [json.loads(Path(f"{tmp}/r{i}.json").read_text())
                   for i in range(len(nodes))]
    setups = [r["setup_seconds"] for r in results]
    punched = PUNCHED_IN.search(res[0][1])
    # party 0's "punched in" counts from its own mesh start; both parties end their
    # connectivity check together, so party 0 started setup0 - min(setups) before the later
    # party: the time to the punched path from the moment both were up is the difference
    punch = float(punched[1]) - (setups[0] - min(setups)) if punched else None
    row = results[0]["table"][0]
    return {"elapsed": max(_elapsed(e) or 0 for _, e in res), "wall": wall, "cpu": cpu,
            "setup": min(setups), "path": row["path"], "via": row["via"], "punch": punch}


def _paired(base: list[dict[str, Any]], rows: list[dict[str, Any]],
            resamples: int = 2000) -> str:
    """The median over repeats of this mode's wall time over plain MPyC's in the same
    repeat (the two ran back to back), with a 90 % bootstrap interval of that median:
    the figure the machine's drift between repeats moves least."""
    plain = {x["repeat"]: x["wall"] for x in base}
    ratios = [x["wall"] / plain[x["repeat"]] for x in rows if x["repeat"] in plain]
    if len(ratios) < 2:
        return ""
    rng = random.Random(1)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                  for _ in range(resamples))
    lo, hi = meds[int(0.05 * resamples)], meds[int(0.95 * resamples) - 1]
    return f"{statistics.median(ratios):.3f} [{lo:.3f}, {hi:.3f}]"


MODES = ("mpyc-nat", "punched", "relayed", "direct")
#: ``--ab DIR``: also "punched" with the didmesh found in DIR (a folder holding a
#: ``didmesh`` directory whose identity/session/relay are another revision's, e.g. from
#: ``git archive``): before and after a change, interleaved in one run
BASE = "punched-base"
AB_PATH: list[str] = []


def one(lab: Lab, mode: str, url: str, nat_public: list[str], prog: Path, args: list[str]
        ) -> dict[str, Any]:
    if mode == "mpyc-nat":
        return run_mpyc(lab, ["p1", "p2"], nat_public, prog, args)
    if mode == BASE:
        # a revision from before the party entry (session/mesh/party.py) runs the runner
        has_party = (Path(AB_PATH[0]) / "didmesh/session/mesh/party.py").is_file()
        return run_didmesh(lab, ["p1", "p2"], url, prog, args,
                           env={**ENV, "PYTHONPATH": AB_PATH[0]},
                           entry=PARTY if has_party else "didmesh.session.mesh.runner")
    if mode == "direct":
        return run_didmesh(lab, ["q0", "q1"], url, prog, args)
    return run_didmesh(lab, ["p1", "p2"], url, prog, args, relay_only=mode == "relayed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rtts", default="0,20,80", help="home-to-home round trips, ms")
    p.add_argument("--programs", default=",".join(PROGRAMS),
                   help=f"which of {', '.join(PROGRAMS)}")
    p.add_argument("--ab", metavar="DIR",
                   help=f"also run mode {BASE!r}: punched with the didmesh in DIR")
    p.add_argument("--modes", default=",".join(MODES), help=f"which of {', '.join(MODES)}")
    a = p.parse_args()
    modes = tuple(a.modes.split(","))
    if set(modes) - set(MODES) or "mpyc-nat" not in modes:
        raise SystemExit(f"didmesh: --modes is a list of {', '.join(MODES)} with mpyc-nat")
    if a.ab:
        AB_PATH.append(str(Path(a.ab).resolve()))
        modes += (BASE,)
    unknown = set(a.programs.split(",")) - set(PROGRAMS)
    if unknown:
        raise SystemExit(f"didmesh: no such program {', '.join(sorted(unknown))}; "
                         f"choose among {', '.join(PROGRAMS)}")
    why = available()
    if why is not None:
        raise SystemExit(f"didmesh: cannot build a lab here: {why}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'RTT':>4} {'program':>10} {'mode':>12} {'path':>8} {'elapsed s':>10} "
          f"{'wall s':>7} {'setup s':>8} {'punch s':>8} {'x mpyc':>7} {'wall x':>7} "
          f"{'cpu s':>6} {'cpu x':>6}  paired wall x [90 %]")
    for rtt in (float(x) for x in a.rtts.split(",")):
        d = rtt / 4  # one way on each home's access link: home to home is 2 * (d + d)
        r = RELAY_RTT_MS / 2 - d  # relay to each home: 2 * (d + r) = RELAY_RTT_MS
        if r < 0:
            raise SystemExit(f"didmesh: home RTT {rtt:g} ms exceeds twice the relay's")
        with tempfile.TemporaryDirectory() as home, \
                Lab([f"relay@{r:g}", f"eim:h1:p1@{d:g}", f"eim:h2:p2@{d:g}",
                     f"public:q0@{d:g}", f"public:q1@{d:g}"]) as lab:
            url = lab.serve_relay(home, RELAY_PORT, env=ENV)
            _open_port(lab, "h1", "p1", MPYC_PORT)
            _open_port(lab, "h2", "p2", MPYC_PORT)
            nat_public = [lab.public_address("p1"), lab.public_address("p2")]
            rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
            failed: dict[tuple[str, str], int] = {}
            for rep in range(a.repeats):
                for name in a.programs.split(","):
                    prog, args = PROGRAMS[name]
                    for mode in modes:
                        try:
                            got = one(lab, mode, url, nat_public, prog, args)
                        except RuntimeError as exc:  # counted and said, not the end
                            failed[(name, mode)] = failed.get((name, mode), 0) + 1
                            print(f"  ({rtt:g} ms {name} {mode}: failed: {exc})",
                                  file=sys.stderr, flush=True)
                            continue
                        got["repeat"] = rep
                        rows.setdefault((name, mode), []).append(got)
                        if mode in ("punched", BASE) and got["path"] != "punched":
                            print(f"  ({rtt:g} ms {name} {mode}: not punched: "
                                  f"{got['path']} via {got['via']})", file=sys.stderr,
                                  flush=True)
            for name in a.programs.split(","):
                base = statistics.median(x["elapsed"] for x in rows[(name, "mpyc-nat")])
                wbase = statistics.median(x["wall"] for x in rows[(name, "mpyc-nat")])
                cbase = statistics.median(x["cpu"] for x in rows[(name, "mpyc-nat")])
                for mode in modes:
                    xs = rows[(name, mode)]
                    el = statistics.median(x["elapsed"] for x in xs)
                    wall = statistics.median(x["wall"] for x in xs)
                    cpu = statistics.median(x["cpu"] for x in xs)
                    setup = [x["setup"] for x in xs if "setup" in x]
                    punch = [x["punch"] for x in xs if x.get("punch") is not None]
                    paths = ",".join(sorted({x.get("path", "mpyc") for x in xs}))
                    if mode in ("punched", BASE):  # the target is every pair punched
                        runs = len(xs) + failed.get((name, mode), 0)
                        paths = f"{sum(x['path'] == 'punched' for x in xs)}/{runs}"
                    print(f"{rtt:>4g} {name:>10} {mode:>12} {paths:>8} {el:>10.3f} {wall:>7.2f} "
                          f"{statistics.median(setup) if setup else float('nan'):>8.2f} "
                          f"{statistics.median(punch) if punch else float('nan'):>8.3f} "
                          f"{el / base if base else float('nan'):>7.3f} "
                          f"{wall / wbase:>7.3f} {cpu:>6.3f} {cpu / cbase:>6.3f} "
                          f"{_paired(rows[(name, 'mpyc-nat')], xs)}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
