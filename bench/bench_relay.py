"""Relay benchmarks (bounded in count and time); prints a table.

    python bench/bench_relay.py            # everything, about a minute
    python bench/bench_relay.py --quick    # smaller counts

1. Mailbox: envelopes/s with 50 concurrent sender/receiver pairs (1 KB plaintext), and
   post-to-delivery latency (post starts -> push arrives at the recipient), memory and SQLite.
2. Forwarding: RTT and throughput of 64 B and 64 KB frames through a link versus direct
   loopback TCP between the same two processes (this one and a peer subprocess).
3. 1,000 idle authenticated links held by one relay process: its RSS (``--idle-links N``
   and ``--idle-procs P``: N links over P processes on one Redis, the RSS of them all;
   the links are opened by client subprocesses of at most 2,500 links each, e.g.
   ``--only links --idle-links 10000 --idle-procs 2``, about 2 minutes here).
4. ``--only crossproc``: relay CPU per MB forwarded (64 KB frames) on a link whose ends
   reach two processes on one Redis (spliced), against a link whose ends reach one of
   them, and with splicing off (frames through Redis pub/sub).

Relays are real ``python -m didmesh.relay`` processes on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from didmesh.identity.keys import IdentityKey  # noqa: E402
from didmesh.relay.client import RelayClient  # noqa: E402
from didmesh.relay.envelope import seal  # noqa: E402
from proc_stats import process_cpu  # noqa: E402
from relay_helpers import start_redis, start_relay  # noqa: E402

NO_LIMITS = [
    "--rate-ip-per-s", "0", "--rate-did-per-s", "0", "--inbox-max-envelopes", "100000",
    "--links-per-did", "5000", "--links-total", "10000", "--no-access-log",
]


PAIRS = 5  # alternating direct/relayed throughput runs per frame size


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- 1. mailbox ------------------------------------------------------------------------------


async def mailbox(url: str, pairs: int, per_pair: int) -> dict[str, float]:
    senders = [IdentityKey.generate() for _ in range(pairs)]
    receivers = [IdentityKey.generate() for _ in range(pairs)]
    now = int(time.time() * 1000)
    plain = os.urandom(1024)
    envs = [
        [seal(s, r.did, "bench", plain, now_ms=now) for _ in range(per_pair)]
        for s, r in zip(senders, receivers, strict=True)
    ]
    posted: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    total = pairs * per_pair
    clients = [RelayClient(url, k, timeout=30) for k in senders + receivers]

    async def receive(c: RelayClient) -> None:
        got = 0
        async for item in c.inbox(auto_ack=True):
            latencies.append(time.perf_counter() - posted[item.id])
            got += 1
            if len(latencies) == total:
                done.set()
            if got == per_pair:
                return

    async def send(c: RelayClient, batch: list[Any]) -> None:
        for env in batch:
            posted[env.id] = time.perf_counter()
            await c.post(env)

    try:
        for c in clients[pairs:]:
            await c.token()
        listeners = [asyncio.create_task(receive(c)) for c in clients[pairs:]]
        await asyncio.sleep(0.5)  # push sockets open
        t0 = time.perf_counter()
        async with asyncio.timeout(120):
            await asyncio.gather(*(send(c, b) for c, b in zip(clients, envs, strict=False)))
            await done.wait()
        elapsed = time.perf_counter() - t0
        await asyncio.gather(*listeners)
    finally:
        for c in clients:
            await c.close()
    return {
        "envelopes": total,
        "per_s": total / elapsed,
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
    }


# -- 2. forwarding ----------------------------------------------------------------------------
# The peer subprocess: echoes on a direct TCP port and on a relay link.


async def peer_main(url: str, seed_hex: str, other_did: str) -> None:
    me = IdentityKey.from_seed(bytes.fromhex(seed_hex))

    async def on_tcp(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                hdr = await r.readexactly(5)
                kind, n = hdr[0], struct.unpack(">I", hdr[1:])[0]
                data = await r.readexactly(n)
                if kind == 0:  # echo
                    w.write(hdr + data)
                elif kind == 2:  # end of a throughput run: ack
                    w.write(b"\x02\x00\x00\x00\x00")
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    server = await asyncio.start_server(on_tcp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with RelayClient(url, me) as c:
        link = await c.open_link("bench", other_did)
        while True:
            try:
                frame = await link.recv()
            except Exception:
                return
            kind = frame[0]
            if kind == 0:
                await link.send(frame)
            elif kind == 2:
                await link.send(b"\x02")


async def forwarding(url: str, rtt_n: int, small_n: int, big_n: int) -> dict[str, float]:
    me, peer = IdentityKey.generate(), IdentityKey.generate()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--peer", url, peer.seed_bytes().hex(), me.did,
        stdout=asyncio.subprocess.PIPE,
    )
    out: dict[str, float] = {}
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        port = int(line.split()[1])
        r, w = await asyncio.open_connection("127.0.0.1", port)
        async with RelayClient(url, me) as c:
            link = await asyncio.wait_for(c.open_link("bench", peer.did), 30)
            async with asyncio.timeout(180):
                # RTT, 64-byte frames
                ping = b"\x00" + struct.pack(">I", 64) + os.urandom(64)
                direct, relayed = [], []
                for _ in range(10):  # interleaved blocks: both see the same host load
                    for _ in range(rtt_n // 10):
                        t0 = time.perf_counter()
                        w.write(ping)
                        await w.drain()
                        await r.readexactly(len(ping))
                        direct.append(time.perf_counter() - t0)
                    for _ in range(rtt_n // 10):
                        t0 = time.perf_counter()
                        await link.send(ping)
                        await link.recv()
                        relayed.append(time.perf_counter() - t0)
                out["rtt_direct_us"] = statistics.median(direct) * 1e6
                out["rtt_relay_us"] = statistics.median(relayed) * 1e6
                out["rtt_added_us"] = out["rtt_relay_us"] - out["rtt_direct_us"]
                # throughput: one-way stream of frames, then an end marker the peer acks;
                # direct and relayed runs alternate, best of PAIRS each (the host may be
                # shared), and the median of the pairs' ratios (robust to a stalled run)
                for size, n, name in ((64, small_n, "64B"), (65536, big_n, "64KB")):
                    frame = b"\x01" + struct.pack(">I", size) + os.urandom(size)
                    t_direct = t_relay = float("inf")
                    ratios = []
                    for _ in range(PAIRS):
                        t0 = time.perf_counter()
                        for _ in range(n):
                            w.write(frame)
                            await w.drain()
                        w.write(b"\x02\x00\x00\x00\x00")
                        await w.drain()
                        await r.readexactly(5)
                        t_d = time.perf_counter() - t0
                        t_direct = min(t_direct, t_d)
                        t0 = time.perf_counter()
                        for _ in range(n):
                            await link.send(frame)
                        await link.send(b"\x02")
                        await link.recv()
                        ratios.append(t_d / (time.perf_counter() - t0))
                        t_relay = min(t_relay, time.perf_counter() - t0)
                    out[f"{name}_direct_MBps"] = n * size / t_direct / 1e6
                    out[f"{name}_relay_MBps"] = n * size / t_relay / 1e6
                    out[f"{name}_direct_fps"] = n / t_direct
                    out[f"{name}_relay_fps"] = n / t_relay
                    out[f"{name}_ratio_median"] = statistics.median(ratios)
            await link.close()
        w.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return out


# -- 3. idle links ----------------------------------------------------------------------------


#: links per client subprocess (two sockets each): the clients' descriptors stay under a
#: hard limit of 20,000 per process, which a non-privileged container cannot raise
LINKS_PER_CHILD = 2500


async def idle_child(url: str, n: int) -> None:
    """Client subprocess: open ``n`` idle links to ``url`` (both ends, 500 links per pair of
    identities), check the first and last carry a frame, say ``ready N``, then hold them
    until stdin closes (or 900 s) and exit at once (the kernel closes the sockets)."""
    raise_nofile(2 * n + 512)
    links: list[Any] = []
    clients: list[RelayClient] = []
    try:
        async with asyncio.timeout(900):
            for start in range(0, n, 500):
                a, b = IdentityKey.generate(), IdentityKey.generate()
                ca = RelayClient(url, a, timeout=60, heartbeat=None)
                cb = RelayClient(url, b, timeout=60, heartbeat=None)
                clients += [ca, cb]
                for s0 in range(start, min(n, start + 500), 100):
                    links.extend(await asyncio.gather(*(
                        asyncio.gather(ca.open_link("idle", b.did, link_id=f"l{i}"),
                                       cb.open_link("idle", a.did, link_id=f"l{i}"))
                        for i in range(s0, min(n, start + 500, s0 + 100))
                    )))
            for la, lb in (links[0], links[-1]):
                await la.send(b"alive")
                assert await lb.recv(timeout=10) == b"alive"
            print(f"ready {len(links)}", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    except BaseException as exc:  # noqa: BLE001 - said on stderr, then the exit code
        print(f"idle-link client: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    # the kernel closes every socket at once; the relays see thousands of ends go
    sys.stdout.flush()
    os._exit(0)


async def idle_links(urls: list[str], pids: list[int], n: int) -> dict[str, float]:
    """``n`` idle links spread over ``urls`` (both ends of a link on one process, as the
    proxy's route key would place them), opened by client subprocesses of at most
    :data:`LINKS_PER_CHILD` links each; the relays' total RSS once all are up."""
    rss0 = sum(rss_mb(p) for p in pids)
    counts = [LINKS_PER_CHILD] * (n // LINKS_PER_CHILD)
    if n % LINKS_PER_CHILD:
        counts.append(n % LINKS_PER_CHILD)
    children: list[asyncio.subprocess.Process] = []
    opened = 0
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(900):
            for i, m in enumerate(counts):  # one at a time: the machine has 2 cores
                child = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--idle-child", urls[i % len(urls)], str(m),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                )
                children.append(child)
                assert child.stdout is not None
                line = (await child.stdout.readline()).decode()
                if not line.startswith("ready "):
                    raise RuntimeError(f"an idle-link client failed (exit {await child.wait()})")
                opened += int(line.split()[1])
            open_s = time.monotonic() - t0
            await asyncio.sleep(2)
            rss1 = sum(rss_mb(p) for p in pids)
    finally:
        for child in children:
            if child.stdin is not None:
                child.stdin.close()
        for child in children:
            try:
                await asyncio.wait_for(child.wait(), 30)
            except TimeoutError:
                child.kill()
                await child.wait()
    return {"links": opened, "rss_before_mb": rss0, "rss_mb": rss1, "open_s": open_s,
            "per_link_kb": (rss1 - rss0) * 1024 / max(1, opened)}


# -- 4. CPU per MB, one process or two ----------------------------------------------------------


async def link_cpu_ms_per_mb(urls: tuple[str, str], pids: list[int], mb: int) -> float:
    """Relay CPU (all ``pids``) per MB of 64 KB frames sent one way over one link whose
    ends reach ``urls[0]`` and ``urls[1]``."""
    a, b = IdentityKey.generate(), IdentityKey.generate()
    frame, n = os.urandom(65536), mb * 16
    async with RelayClient(urls[0], a, timeout=60, heartbeat=None) as ca, \
            RelayClient(urls[1], b, timeout=60, heartbeat=None) as cb:
        la, lb = await asyncio.gather(ca.open_link("cpu", b.did), cb.open_link("cpu", a.did))

        async def receive() -> None:
            for _ in range(n):
                await lb.recv(timeout=60)

        cpu0 = sum(process_cpu(p) for p in pids)
        rx = asyncio.create_task(receive())
        for _ in range(n):
            await la.send(frame)
        await asyncio.wait_for(rx, 120)
        cpu1 = sum(process_cpu(p) for p in pids)
        await la.close()
        await lb.close()
    return (cpu1 - cpu0) * 1000 / (n * 65536 / 1e6)


def raise_nofile(want: int) -> int:
    """Raise this process's descriptor limits (children inherit them); the soft limit after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new_hard in (max(hard, want), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, new_hard), new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- main ---------------------------------------------------------------------------------------


async def _with_relay_errors(relays: list[Any], coro: Any) -> Any:
    """Run ``coro``; if it fails, show the relays' warnings and errors first (their log
    files go with them)."""
    try:
        return await coro
    except Exception:
        for r in relays:
            for ln in r.log_lines():
                if ln.get("level") in ("warning", "error") and "persist" not in ln.get("msg", ""):
                    print("relay log:", ln, file=sys.stderr)
        raise


def row(name: str, value: str, target: str = "") -> str:
    return f"| {name:<46} | {value:>16} | {target:<22} |"


async def main(quick: bool, only: str = "", runs: int = 1, idle_n: int = 0,
               idle_procs: int = 1) -> None:
    rule = "|" + "-" * 48 + "|" + "-" * 18 + "|" + "-" * 24 + "|"
    lines = [row("measure", "value", "target"), rule]
    with tempfile.TemporaryDirectory() as tmp:
        for store in ("memory", f"sqlite:{tmp}/bench.sqlite3") if only in ("", "mailbox") else ():
            with start_relay(store, NO_LIMITS, home=tmp) as relay:
                res = await mailbox(relay.url, 50, 10 if quick else 40)
            kind = store.split(":")[0]
            lines.append(row(f"mailbox {kind}: envelopes/s (1 KB, 50 clients)",
                             f"{res['per_s']:.0f}"))
            lines.append(row(f"mailbox {kind}: post->delivery p50 / p99 ms",
                             f"{res['p50_ms']:.1f} / {res['p99_ms']:.1f}"))
        if only in ("", "forwarding"):
            results = []
            for _ in range(runs):  # each run: a fresh relay and peer process
                with start_relay("memory", NO_LIMITS, home=tmp) as relay:
                    results.append(await forwarding(
                        relay.url, 1000 if quick else 5000, 5000 if quick else 20000,
                        300 if quick else 1000,
                    ))
            lines.extend(forwarding_rows(results[-1]))
            if runs > 1:
                for key, label, target in (
                    ("rtt_added_us", "RTT added by the relay (us)", "<= 300"),
                    ("64B_ratio_median", "64B relayed / direct (ratio)", ">= 0.5"),
                    ("64KB_ratio_median", "64KB relayed / direct (ratio)", ">= 0.5"),
                ):
                    xs = [r[key] for r in results]
                    lines.append(row(f"{label}, median of {runs} runs",
                                     f"{statistics.median(xs):.2f}", target))
                    lines.append(row("  runs", " ".join(f"{x:.2f}" for x in xs)))
        if only in ("", "links"):
            n = idle_n or (300 if quick else 1000)
            raise_nofile(4 * n + 1024)
            # relay pings off: this one process opening thousands of links cannot answer
            # pings on the first ones in time (the relay would rightly cut them)
            more = [*NO_LIMITS, "--links-total", str(2 * n + 100),
                    "--links-per-did", str(n + 100), "--link-heartbeat-s", "0"]
            if idle_procs > 1:
                with start_redis() as redis, contextlib.ExitStack() as stack:
                    relays = [stack.enter_context(start_relay(redis.url(1), more, home=tmp))
                              for _ in range(idle_procs)]
                    idle = await _with_relay_errors(relays, idle_links(
                        [r.url for r in relays], [r.proc.pid for r in relays], n))
            else:
                with start_relay("memory", more, home=tmp) as relay:
                    idle = await _with_relay_errors(
                        [relay], idle_links([relay.url], [relay.proc.pid], n))
            target = "<= 150" if n <= 1000 else "<= 500 at 10,000 links"
            lines.append(row(f"{idle['links']} idle links, {idle_procs} process(es): RSS (MB)",
                             f"{idle['rss_mb']:.0f} (idle {idle['rss_before_mb']:.0f})",
                             target))
            lines.append(row("  per link (both ends), KB", f"{idle['per_link_kb']:.1f}"))
            lines.append(row("  time to open them all, s", f"{idle['open_s']:.0f}"))
        if only == "crossproc":
            mb = 16 if quick else 64
            off = [*NO_LIMITS, "--link-splice-listen", ""]
            with start_redis() as redis, start_relay(redis.url(2), NO_LIMITS, home=tmp) as p1, \
                    start_relay(redis.url(2), NO_LIMITS, home=tmp) as p2, \
                    start_relay(redis.url(3), off, home=tmp) as q1, \
                    start_relay(redis.url(3), off, home=tmp) as q2:
                pids = [p1.proc.pid, p2.proc.pid]
                qids = [q1.proc.pid, q2.proc.pid]
                local, cross, pubsub = [], [], []
                for _ in range(max(1, runs)):  # interleaved
                    local.append(await link_cpu_ms_per_mb((p1.url, p1.url), pids, mb))
                    cross.append(await link_cpu_ms_per_mb((p1.url, p2.url), pids, mb))
                    pubsub.append(await link_cpu_ms_per_mb((q1.url, q2.url), qids, mb))
            lo, cr, ps = (statistics.median(x) for x in (local, cross, pubsub))
            lines.append(row("relay CPU ms/MB, both ends on one process", f"{lo:.2f}"))
            lines.append(row("relay CPU ms/MB, ends on two processes", f"{cr:.2f}"))
            lines.append(row("cross-process / local CPU per MB", f"{cr / lo:.1f}", "<= 2"))
            lines.append(row("  runs: local", " ".join(f"{x:.2f}" for x in local)))
            lines.append(row("  runs: two processes", " ".join(f"{x:.2f}" for x in cross)))
            lines.append(row("relay CPU ms/MB, two processes, splicing off", f"{ps:.2f}"))
    print("\n".join(lines))


def forwarding_rows(f: dict[str, float]) -> list[str]:
    lines = []
    lines.append(row("RTT 64 B median, direct TCP (us)", f"{f['rtt_direct_us']:.0f}"))
    lines.append(row("RTT 64 B median, via relay link (us)", f"{f['rtt_relay_us']:.0f}"))
    lines.append(row("RTT added by the relay (us)", f"{f['rtt_added_us']:.0f}", "<= 300"))
    for name in ("64B", "64KB"):
        d, r = f[f"{name}_direct_MBps"], f[f"{name}_relay_MBps"]
        lines.append(row(f"{name} frames direct: MB/s (frames/s)",
                         f"{d:.1f} ({f[f'{name}_direct_fps']:.0f})"))
        lines.append(row(f"{name} frames relayed: MB/s (frames/s)",
                         f"{r:.1f} ({f[f'{name}_relay_fps']:.0f})"))
        lines.append(row(f"{name} relayed / direct throughput (best of {PAIRS})",
                         f"{100 * r / d:.0f} %", ">= 50 %"))
        lines.append(row(f"{name} relayed / direct, median of {PAIRS} pairs",
                         f"{100 * f[f'{name}_ratio_median']:.0f} %", ">= 50 %"))
    return lines


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--idle-child":
        asyncio.run(idle_child(sys.argv[2], int(sys.argv[3])))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        asyncio.run(peer_main(sys.argv[2], sys.argv[3], sys.argv[4]))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts")
    ap.add_argument("--only", choices=["mailbox", "forwarding", "links", "crossproc"],
                    default="")
    ap.add_argument("--idle-links", type=int, default=0, help="links for the idle test")
    ap.add_argument("--idle-procs", type=int, default=1,
                    help="relay processes (on one Redis) holding the idle links")
    ap.add_argument("--runs", type=int, default=1,
                    help="forwarding runs (fresh relay each); medians are reported")
    a = ap.parse_args()
    asyncio.run(main(a.quick, a.only, a.runs, a.idle_links, a.idle_procs))
