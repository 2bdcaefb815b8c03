"""Benchmark: time from the last acceptance to every party holding a verified, fully
confirmed roster, through one real relay process on loopback (issue 4, "Speed").

    python bench/bench_roster.py                 # m = 3, 10, 25, both modes
    python bench/bench_roster.py 10 --runs 5 --mode processes

Two modes:

* ``processes`` (the realistic one): every party is its own OS process with its own
  didmesh home, identity and relay connection, as on separate machines (here they share
  the machine's cores). Invites and acceptances are set up first; the last invitee's
  process holds its signed acceptance until every process is connected, then sends it
  (t0); each process reports when it holds m valid confirmations of one roster.
* ``inprocess``: all parties in this one asyncio loop, so every party's work runs one
  after another on one core: a pessimistic bound.

Steps timed: the organizer verifies the last acceptance, issues and signs the roster,
sends it to m-1 parties; each verifies the roster and all m-1 acceptances in it, signs
and sends m-1 confirmations; each verifies m-1 confirmations; every step persists the
state (fsync) before acknowledging the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc_stats import process_cpu  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from didmesh.identity.keys import IdentityKey  # noqa: E402
from didmesh.session.engine import Engine  # noqa: E402
from didmesh.session.mailbox import RelayMailbox  # noqa: E402
from didmesh.session.state import SeatStatus, Status  # noqa: E402
from didmesh.session.store import SessionStore  # noqa: E402
from didmesh.session.testing import Party, World  # noqa: E402
from relay_helpers import start_relay  # noqa: E402

CPU_SECONDS: list[float] = []  # processes mode: CPU time all parties spent after t0, per run
RELAY_CPU_SECONDS: list[float] = []  # ... and the relay process
RELAY_PID: list[int] = []
RELAY_ARGS = ["--rate-ip-per-s", "0", "--rate-did-per-s", "10000", "--rate-did-burst", "10000"]


async def one_run(url: str, m: int, root: Path) -> float:
    world = World(root, m, relays=[url], factory=lambda ident, urls: RelayMailbox(urls, ident))
    try:
        world.invite_all()
        await world.deliver_invites(timeout=60)
        org, last = world.organizer, world.parties[-1]
        world.accept_all(world.parties[1:-1])
        await world.flush_all()

        def accepted() -> bool:
            seats = org.engine.load(world.sid).seats
            return sum(s.status == SeatStatus.ACCEPTED for s in seats) == m - 2

        await world.pump(org, accepted, timeout=60)
        done_at: dict[str, float] = {}

        def agreed(p: Party) -> Callable[[], bool]:
            def check() -> bool:
                if world.status(p) == Status.AGREED:
                    done_at.setdefault(p.did, time.perf_counter())
                    return True
                if world.status(p) != Status.CONFIRMING and world.status(p) != Status.ACCEPTED \
                        and world.status(p) != Status.COLLECTING:  # fmt: skip
                    raise RuntimeError(f"{p.name} ended in {world.status(p)}")
                return False

            return check

        last.engine.accept(world.sid)  # the last acceptance is signed ...
        pumps = [asyncio.create_task(world.pump(p, agreed(p), timeout=120))
                 for p in world.parties[:-1]]  # fmt: skip
        await asyncio.sleep(0.2)  # every pump is connected and idle
        t0 = time.perf_counter()  # ... and sent now
        pumps.append(asyncio.create_task(world.pump(last, agreed(last), timeout=120)))
        await asyncio.gather(*pumps)
        rosters = {p.engine.store.load(world.sid).agreed_roster for p in world.parties}
        assert len({r.roster_hash for r in rosters if r}) == 1 and None not in rosters
        return max(done_at.values()) - t0
    finally:
        await world.close()


# --------------------------------------------------------------------------- processes


async def _worker(home: str, sid: str, url: str, hold: bool) -> None:
    key = IdentityKey.from_seed(bytes.fromhex(sys.stdin.readline().strip()))
    engine = Engine(SessionStore(home), key)
    box = RelayMailbox([url], key)
    await box.receive(0)  # connect the inbox stream
    await engine.flush(box) if not hold else None
    engine.warm_up()  # as Engine.run does first: a waiting party has long done it
    print("ready", flush=True)
    if hold:
        sys.stdin.readline()  # "go": send the last acceptance now
    trace = os.environ.get("BENCH_TRACE")
    prof_dir = os.environ.get("BENCH_PROFILE")  # a folder: one cProfile file per party
    profiler = None
    if prof_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu0 = time.process_time()
    await engine.run(
        box,
        until=lambda: engine.status_of(sid) == Status.AGREED,
        timeout=120,
        on_note=lambda n: print(f"{time.time():.3f} {n.text}", file=sys.stderr)
        if trace
        else None,
    )
    cpu = time.process_time() - cpu0
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.path.join(prof_dir, f"{key.did[-12:]}.prof"))
    stored = engine.store.load(sid)
    assert stored.agreed_roster is not None
    print(f"agreed {time.time():.6f} {cpu:.6f}", flush=True)
    await box.aclose()


async def setup_world(url: str, m: int, root: Path) -> World:
    world = World(root, m, relays=[url], factory=lambda ident, urls: RelayMailbox(urls, ident))
    world.invite_all()
    await world.deliver_invites(timeout=60)
    world.accept_all(world.parties[1:-1])
    await world.flush_all()
    org = world.organizer

    def accepted() -> bool:
        seats = org.engine.load(world.sid).seats
        return sum(s.status == SeatStatus.ACCEPTED for s in seats) == m - 2

    await world.pump(org, accepted, timeout=60)
    world.parties[-1].engine.accept(world.sid)  # signed, not sent yet
    await world.close()
    return world


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("a party process did not answer in time")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"a party process died: {err}")
            return line.strip()


def processes_run(url: str, m: int, root: Path) -> float:
    world = asyncio.run(setup_world(url, m, root))
    procs = []
    try:
        for i, party in enumerate(world.parties):
            hold = i == m - 1
            cmd = [sys.executable, __file__, "--worker", str(root / party.name), world.sid, url]
            proc = subprocess.Popen(
                cmd + (["--hold"] if hold else []),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert proc.stdin is not None
            proc.stdin.write(party.key.seed_bytes().hex() + "\n")
            proc.stdin.flush()
            procs.append(proc)
        deadline = time.monotonic() + 60
        for proc in procs:
            assert _read_line(proc, deadline) == "ready"
        time.sleep(0.2)
        relay_cpu0 = process_cpu(RELAY_PID[0]) if RELAY_PID else 0.0
        t0 = time.time()
        assert procs[-1].stdin is not None
        procs[-1].stdin.write("go\n")
        procs[-1].stdin.flush()
        answers = [_read_line(p, deadline + 60).split() for p in procs]
        done = [float(a[1]) for a in answers]
        CPU_SECONDS.append(sum(float(a[2]) for a in answers))
        if RELAY_PID:
            RELAY_CPU_SECONDS.append(process_cpu(RELAY_PID[0]) - relay_cpu0)
        if os.environ.get("BENCH_TRACE"):
            print(f"t0 {t0:.3f}")
            for p in procs:
                p.kill()
                print(p.communicate()[1])
        return max(done) - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


async def main_async(sizes: list[int], runs: int, mode: str) -> None:
    with start_relay("memory", RELAY_ARGS) as relay:
        print(f"relay {relay.url}; {runs} run(s) per size; {os.cpu_count()} CPU(s)")
        RELAY_PID[:] = [relay.proc.pid]
        for m in sizes:
            for kind in (["processes", "inprocess"] if mode == "both" else [mode]):
                times = []
                CPU_SECONDS.clear()
                RELAY_CPU_SECONDS.clear()
                for _ in range(runs):
                    with tempfile.TemporaryDirectory() as tmp:
                        if kind == "processes":
                            times.append(
                                await asyncio.to_thread(processes_run, relay.url, m, Path(tmp))
                            )
                        else:
                            times.append(await one_run(relay.url, m, Path(tmp)))
                print(
                    f"m = {m:>2} {kind:>9}: median {statistics.median(times) * 1000:7.1f} ms, "
                    f"min {min(times) * 1000:7.1f} ms, max {max(times) * 1000:7.1f} ms"
                    + (f"; CPU median: parties {statistics.median(CPU_SECONDS) * 1000:.0f} ms, "
                       f"relay {statistics.median(RELAY_CPU_SECONDS or [0]) * 1000:.0f} ms"
                       if CPU_SECONDS else "")
                    + ("   (target <= 1000 ms)" if m == 10 else "")
                    + f"   [load {os.getloadavg()[0]:.1f}]",
                    flush=True,
                )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        home, sid, url = sys.argv[2:5]
        asyncio.run(_worker(home, sid, url, hold="--hold" in sys.argv))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[3, 10, 25])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=["processes", "inprocess", "both"], default="both")
    args = parser.parse_args()
    asyncio.run(main_async(args.sizes, args.runs, args.mode))


if __name__ == "__main__":
    main()
