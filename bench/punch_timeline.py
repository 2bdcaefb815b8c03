"""Where a punched party's set-up time goes: a per-phase wall-time timeline (a tool; root).

    python bench/punch_timeline.py [--rtts 0,20,80] [--repeats 1] [--relay-only]

Builds the lab of ``bench_punch.py`` (two homes behind endpoint-independent NATs, the
relay 40 ms round trip from each) and runs ``bench/mpc_rounds.py -n 4`` as two didmesh
parties, each under a small wrapper (this file with ``--child``) that wraps the set-up's
steps (reading the launch document and pre-dialing the early punch, as the party entry
does; imports, MPyC's set-up, the relay's challenge, token and WebSocket link, the
observation, the punch exchange and dial, each Noise handshake, the connectivity check,
the start barrier; then the goodbye, the receipt, the relay clients' and the loop's
closing) and notes each one's start and end in wall time from the moment the parent
spawned the process. Prints both parties' timelines, in ms. Nothing of the wrapper
changes what a step does. Bounded: every run is killed after 60 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
T0_ENV = "DIDMESH_TIMELINE_T0"


# --------------------------------------------------------------------------- child

def _child(out: str) -> int:
    t0 = float(os.environ[T0_ENV])
    sink = open(out, "a", buffering=1)  # noqa: SIM115 - one line per event, kept open

    def note(name: str, a: float, b: float | None = None) -> None:
        sink.write(json.dumps({"n": name, "a": round((a - t0) * 1000, 1),
                               "b": None if b is None else round((b - t0) * 1000, 1)}) + "\n")

    note("interpreter up", time.time())
    # as the party entry (session/mesh/party.py): read the launch document, send the early
    # punch's SYNs, and only then import the rest
    a = time.time()
    doc = json.loads(sys.stdin.buffer.read(1 << 20))
    from didmesh.session.mesh.predial import from_launch

    predialed = from_launch(doc)
    note(f"pre-dial ({len(predialed) if predialed else 0} SYNs)", a, time.time())
    a = time.time()
    from didmesh.relay import linkclient
    from didmesh.session.mesh import (
        connect,
        handshake,
        mesh,
        mpyc_bridge,
        peer,
        puncher,
        runner,
    )
    note("imports (runner, mesh, link client)", a, time.time())

    def wrap(owner: Any, attr: str, label: Any = None) -> None:
        fn = getattr(owner, attr)
        name = f"{getattr(owner, '__name__', owner)}.{attr}"

        def lab(args: tuple[Any, ...]) -> str:
            return name + (f" [{label(*args)}]" if label is not None else "")

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def aw(*args: Any, **kw: Any) -> Any:
                s = time.time()
                try:
                    return await fn(*args, **kw)
                finally:
                    note(lab(args), s, time.time())
            setattr(owner, attr, aw)
        else:
            @functools.wraps(fn)
            def sw(*args: Any, **kw: Any) -> Any:
                s = time.time()
                try:
                    return fn(*args, **kw)
                finally:
                    note(lab(args), s, time.time())
            setattr(owner, attr, sw)

    wrap(mpyc_bridge.MpycBridge, "install")
    wrap(mpyc_bridge.MpycBridge, "_start")
    wrap(connect.MeshConnector, "connect_all")
    wrap(linkclient.LinkClient, "_connect")
    wrap(linkclient.LinkClient, "_json_once", lambda self, m, p, *r: f"{m} {p}")
    wrap(linkclient.LinkClient, "_upgrade_once")
    wrap(linkclient.LinkClient, "open_link")
    wrap(linkclient.LinkClient, "token")
    wrap(linkclient, "observe")
    wrap(puncher.Puncher, "_make_offer")
    wrap(puncher.Puncher, "as_initiator")
    wrap(puncher.Puncher, "as_responder")
    wrap(puncher.Puncher, "_attempt")
    wrap(puncher, "dial_from")
    wrap(puncher, "finish_connect")
    wrap(handshake.PairHandshake, "initiate", lambda self, link, *r: link.kind)
    wrap(handshake.PairHandshake, "respond", lambda self, link, *r: link.kind)
    wrap(mesh.Mesh, "announce")
    wrap(mesh.Mesh, "wait_ready")
    wrap(mpyc_bridge.MpycBridge, "start_barrier")
    wrap(mesh.Mesh, "finish")
    wrap(connect.MeshConnector, "aclose")
    wrap(runner, "_close_loop")
    wrap(runner, "_with_receipt")
    wrap(linkclient.WsLink, "close")
    wrap(peer.PeerChannel, "ping")
    import runpy
    wrap(runpy, "run_path")
    import atexit
    atexit.register(lambda: note("exit", time.time()))
    try:
        return runner.run_document(doc, predialed=predialed)
    finally:
        note("runner.run_document returned", time.time())


# --------------------------------------------------------------------------- parent

def _run(lab: Any, url: str, relay_only: bool, tmp: str,
         program: tuple[str, list[str]]) -> list[list[dict[str, Any]]]:
    from didmesh.session.lab.procs import communicate, feed
    from didmesh.session.mesh.candidates import port_range
    from didmesh.session.mesh.loopback import loopback_plans
    from didmesh.session.mesh.plan import format_endpoint
    from didmesh.session.mesh.runner import launch_document

    nodes = ["p1", "p2"]
    plans, ids = loopback_plans(2, relays=[url], endpoints=False)
    lo, hi = port_range()  # below the ephemeral range: no TIME_WAIT holds it
    ports = random.SystemRandom().sample(range(lo, hi + 1), 2)
    parties = []
    for p in plans[0].parties:
        node, port = nodes[p.party_id], ports[p.party_id]
        eps = [format_endpoint(lab.address(node), port),
               format_endpoint(lab.public_address(node), port)]
        parties.append(dataclasses.replace(p, endpoints=tuple(eps)))
    procs, outs = [], []
    for i, node in enumerate(nodes):
        plan = dataclasses.replace(plans[i], parties=tuple(parties))
        doc = launch_document(plan, ids[i], program[0], program[1],
                              timeout=30, connect_timeout=30, relay_only=relay_only)
        out = f"{tmp}/t{i}-{time.monotonic_ns()}.jsonl"
        outs.append(out)
        env = {**os.environ, T0_ENV: repr(time.time())}
        proc = lab.spawn(node, sys.executable, str(Path(__file__).resolve()), "--child", out,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
        feed(proc, json.dumps(doc).encode())
        procs.append(proc)
    for p in procs:
        o, e = communicate(p, 60)
        if p.returncode:
            print(f"party failed ({p.returncode}): {(o + e).decode(errors='replace')[-600:]}")
    return [[json.loads(line) for line in Path(o).read_text().splitlines()] for o in outs]


def _show(party: int, events: list[dict[str, Any]]) -> None:
    print(f"  party {party}:")
    for ev in sorted(events, key=lambda e: (e["a"], -(e["b"] or 0))):
        span = f"{ev['a']:7.1f} -> {ev['b']:7.1f} ({ev['b'] - ev['a']:6.1f})" \
            if ev["b"] is not None else f"{ev['a']:7.1f}"
        print(f"    {span:>32}  {ev['n']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    p.add_argument("--rtts", default="0,20,80")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--relay-only", action="store_true")
    p.add_argument("--program", default="short",
                   help="short (mpc_rounds -n 4) or one of bench_punch.py's programs")
    a = p.parse_args()
    if a.child:
        sys.exit(_child(a.child))
    from didmesh.session.lab import Lab, available

    sys.path.insert(0, str(HERE))
    from bench_punch import PROGRAMS

    programs = {"short": (str(HERE / "mpc_rounds.py"), ["-n", "4"]),
                **{k: (str(v[0]), list(v[1])) for k, v in PROGRAMS.items()}}
    if a.program not in programs:
        raise SystemExit(f"didmesh: --program is one of {', '.join(programs)}")

    why = available()
    if why is not None:
        raise SystemExit(f"didmesh: cannot build a lab here: {why}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for rtt in (float(x) for x in a.rtts.split(",")):
        d = rtt / 4
        r = 20.0 - d
        with tempfile.TemporaryDirectory() as tmp, \
                Lab([f"relay@{r:g}", f"eim:h1:p1@{d:g}", f"eim:h2:p2@{d:g}"]) as lab:
            url = lab.serve_relay(tmp, 8470)
            for _ in range(a.repeats):
                print(f"home RTT {rtt:g} ms (relay 40 ms from each home)"
                      f"{', relay only' if a.relay_only else ''}:")
                for i, evs in enumerate(_run(lab, url, a.relay_only, tmp, programs[a.program])):
                    _show(i, evs)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
