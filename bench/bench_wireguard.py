"""Benchmark: MPyC over a didmesh WireGuard tunnel vs the Noise mesh vs plain TCP, on one
Internet-lab path (needs root, wireguard-go, nft, /dev/net/tun).

    python bench/bench_wireguard.py [--repeats 3] [--delays 0 5] [--budget 900]

Three public hosts of the Internet lab (specs/lab.md), every access link with the same
one-way delay d (RTT between two parties = 4 d: 0 and 20 ms by default). For each d and
each example (secret_santa: many small rounds; matrix_product: 200x200, large messages),
the three modes run interleaved, ``--repeats`` times:

* ``plain``: plain MPyC over TCP between the hosts' addresses (``-P``/``-I``);
* ``noise``: ``didmesh run --direct-only`` (the Noise mesh, direct TCP);
* ``wireguard``: ``didmesh run --transport wireguard`` (wireguard-go brought up, run, down).

Figures: the median of MPyC's own "elapsed time" (end of ``mpc.start()`` to shutdown,
slowest party) and of the wall time of the whole command (slowest party: start-up,
connecting, the run, teardown), and where each transport's time goes, as the runs report
it (slowest party, medians): ``setup`` is the mesh runner's connect + connectivity check
(``setup_seconds`` of ``--json``; over WireGuard its control channels inside the tunnel);
for WireGuard also ``pre`` (preflight), ``rdv`` (STUN + the endpoint exchange through the
relay, specs/wireguard.md 6.3; 0 without a relay), ``up`` (interface bring-up), ``hs``
(the handshake wait), ``prog`` (the mesh runner with the program: setup, MPyC, BYE) and
``down`` (teardown). ``--nat`` puts parties a and b behind two different
endpoint-independent NATs and a relay answering STUN on the lab's public side (the
sessions then name it, so the WireGuard runs exchange endpoints through it and punch UDP
holes; plain MPyC cannot run there and is left out). Noisy on a shared machine: the load
average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from didmesh.identity.keystore import Keystore
from didmesh.session.lab import Lab, LabError, available
from didmesh.session.lab.topology import Topology
from didmesh.session.testing import World

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {"secret_santa": ROOT / "examples" / "secret_santa.py",
            "matrix_product": ROOT / "examples" / "matrix_product.py"}
NODES = ["a", "b", "c"]
PORTS = [51820, 51821, 51822]
MPYC_PORT = 11400
ELAPSED = re.compile(r"elapsed time: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
PRE = re.compile(r"WireGuard preflight ([\d.]+) s, STUN ([\d.]+) s, endpoint exchange ([\d.]+) s")
PROG = re.compile(r"WireGuard run: program ([\d.]+) s")
SETUP = re.compile(r'"setup_seconds": ([\d.]+)')
UP = re.compile(r"WireGuard interface \S+ up in ([\d.]+) s")
SHAKE = re.compile(r"WireGuard handshakes with all peers complete \(([\d.]+) s\)")
DOWN = re.compile(r"WireGuard interface \S+ removed \(([\d.]+) s\)")
RUN_TIMEOUT = 300.0


async def _agree(root: Path, program: Path, topo: Topology, relays: list[str]) -> World:
    world = World(root, 3, program=program, **({"relays": relays} if relays else {}))
    world.invite_all()
    await world.deliver_invites()
    for i, p in enumerate(world.parties[1:], 1):
        p.engine.accept(world.sid, endpoints=[
            f"tcp://{topo.address(NODES[i])}:{PORTS[i]}"])
    await world.settle()
    await world.close()
    for p in world.parties:
        Keystore(world.root / p.name).create(passphrase=None, key=p.key)
    return world


def _elapsed(text: str) -> float | None:
    found = [int(h) * 3600 + int(m) * 60 + float(s) for h, m, s in ELAPSED.findall(text)]
    return max(found) if found else None


def _run(lab: Lab, cmds: list[list[str]], envs: list[dict[str, str]]) -> tuple[float, str]:
    t0 = time.perf_counter()
    procs = [lab.spawn(NODES[i], *cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, text=True, env=envs[i])
             for i, cmd in enumerate(cmds)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=RUN_TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    wall = time.perf_counter() - t0
    bad = [i for i, p in enumerate(procs) if p.returncode != 0]
    if bad:
        raise SystemExit(f"didmesh: party {bad[0]} failed:\n{outs[bad[0]][-2000:]}")
    return wall, "\n".join(outs)


def _mode(lab: Lab, world: World, mode: str, nat: bool = False) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    envs = [{**base, "DIDMESH_HOME": str(world.root / p.name)} for p in world.parties]
    if mode == "plain":
        plist = [a for n in NODES for a in ("-P", f"{lab.public_address(n)}:{MPYC_PORT}")]
        cmds = [[sys.executable, str(world.program), *plist, "-I", str(i)] for i in range(3)]
    else:
        extra = ["--transport", "wireguard"] if mode == "wireguard" else (
            [] if nat else ["--direct-only"])  # behind NATs the mesh may punch or relay
        cmds = [[sys.executable, "-m", "didmesh.session.cli.main", "--json", "run",
                 world.sid[:8], *extra, "--", str(world.program)] for _ in range(3)]
    wall, out = _run(lab, cmds, envs)
    row: dict[str, Any] = {"wall": wall, "elapsed": _elapsed(out)}
    for key, pat in (("up", UP), ("handshake", SHAKE), ("down", DOWN), ("prog", PROG),
                     ("setup", SETUP)):
        got = [float(x) for x in pat.findall(out)]
        row[key] = max(got) if got else None
    pre = PRE.findall(out)
    row["pre"] = max(float(a) for a, _, _ in pre) if pre else None
    row["rdv"] = max(float(b) + float(c) for _, b, c in pre) if pre else None
    return row


def _relay(lab: Lab, tmp: Path) -> str:
    """A relay on the lab's public side answering STUN on 3478 and 3479 (ended by the lab)."""
    try:
        return lab.serve_relay(tmp / "relayhome", 8470,
                               "--stun-port", "3478", "--stun-alt-port", "3479")
    except LabError as exc:
        raise SystemExit(f"didmesh: {exc}") from None


def _med(rows: list[dict[str, Any]], key: str) -> str:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return f"{statistics.median(vals):8.3f}" if vals else f"{'-':>8}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--delays", type=float, nargs="+", default=[0, 5],
                   help="one-way access-link delays in ms (RTT = 4 x delay)")
    p.add_argument("--budget", type=float, default=900, help="stop starting runs after S s")
    p.add_argument("--examples", nargs="+", choices=list(EXAMPLES), default=list(EXAMPLES))
    p.add_argument("--nat", action="store_true",
                   help="a and b behind two endpoint-independent NATs, a STUN relay public")
    args = p.parse_args()
    why = available() or (None if shutil.which("wireguard-go") else "wireguard-go is missing")
    if why is not None:
        raise SystemExit(f"didmesh: cannot run this benchmark here: {why}")
    started = time.monotonic()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cols = ("elapsed", "wall", "setup", "pre", "rdv", "up", "hs", "prog", "down")
    keys = ("elapsed", "wall", "setup", "pre", "rdv", "up", "handshake", "prog", "down")
    print(f"{'RTT ms':>6} {'example':<15} {'mode':<10} "
          + " ".join(f"{c:>8}" for c in cols) + "  (medians, s)")
    with tempfile.TemporaryDirectory(prefix="bench-wg-") as tmp:
        for delay in args.delays:
            tokens = [f"public:{n}@{delay:g}" for n in NODES]
            if args.nat:
                tokens = [f"relay@{delay:g}", f"eim:h1:a@{delay:g}", f"eim:h2:b@{delay:g}",
                          f"public:c@{delay:g}"]
            topo = Topology.parse(tokens)
            with Lab(tokens) as lab:
                relays = [_relay(lab, Path(tmp))] if args.nat else []
                for name in args.examples:
                    example = EXAMPLES[name]
                    root = Path(tmp) / f"d{delay:g}-{name}"
                    root.mkdir()
                    program = root / example.name
                    shutil.copy(example, program)
                    world = asyncio.run(_agree(root, program, topo, relays))
                    modes = ("noise", "wireguard") if args.nat else ("plain", "noise",
                                                                      "wireguard")
                    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
                    for _ in range(args.repeats):
                        for mode in rows:  # interleaved: the load hits every mode alike
                            if time.monotonic() - started > args.budget:
                                break
                            rows[mode].append(_mode(lab, world, mode, args.nat))
                    for mode, got in rows.items():
                        print(f"{4 * delay:6g} {name:<15} {mode:<10} "
                              + " ".join(_med(got, k) for k in keys), flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
