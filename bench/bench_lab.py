"""Benchmark of the Internet lab's link emulation (needs root; about 30 s).

Run: ``python bench/bench_lab.py [--count 40] [--megabytes 40]``. One lab: a relay host
with a zero-delay link and public hosts whose links give the relay a round trip of 0, 1,
2, 5, 20, 50 and 150 ms. For each: the median and 10th/90th percentile UDP and TCP round
trips (32-byte messages, one at a time), and the TCP throughput of one stream to the relay
through two emulated links; beside them the same stream over the relay host's loopback (the
kernel without the emulator). The probe's own round trip over that loopback (its Python
client and echo server, no emulator) is measured first: ``error`` is the measured median
against the configured round trip, ``net`` the same less the probe's own loopback
median, i.e. what the emulator (two links, four passes through a forwarder) adds. The
figures are noisy on a shared machine: the load average is printed with them.
specs/lab.md keeps the latest figures.
"""

from __future__ import annotations

import argparse
import os
import statistics

from didmesh.session.lab import Lab, available

RTTS = (0, 1, 2, 5, 20, 50, 150)
PORT = 7000


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=40, help="round trips per row")
    p.add_argument("--megabytes", type=float, default=40, help="per throughput row")
    args = p.parse_args()
    why = available()
    if why is not None:
        raise SystemExit(f"didmesh: cannot build a lab here: {why}")
    sites = ["relay"] + [f"public:r{rtt}@{rtt / 2:g}" for rtt in RTTS]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with Lab(sites) as lab:
        lab.serve_probe("relay", PORT)
        relay = lab.public_address("relay")
        own = {}
        for proto in ("udp", "tcp"):
            got = lab.probe("relay", "rtt", proto, f"127.0.0.1:{PORT}", "--count",
                            str(args.count), timeout=args.count * 1.5 + 30)
            own[proto] = statistics.median(got["samples_ms"])
            print(f"the probe's own {proto} round trip over loopback (no emulator): "
                  f"median {own[proto]:.3f} ms")
        print(f"{'RTT set':>8} {'proto':>5} {'median':>8} {'p10':>8} {'p90':>8} {'error':>7}"
              f" {'net':>7} {'TCP Mbit/s':>11}")
        for rtt in RTTS:
            node = f"r{rtt}"
            for proto in ("udp", "tcp"):
                got = lab.probe(node, "rtt", proto, f"{relay}:{PORT}", "--count",
                                str(args.count), timeout=args.count * 1.5 + 30)
                s = got["samples_ms"]
                med = statistics.median(s)
                err = f"{(med - rtt) / rtt * 100:+.1f}%" if rtt else f"+{med:.3f}"
                net = med - own[proto]
                nerr = f"{(net - rtt) / rtt * 100:+.1f}%" if rtt else f"{net:+.3f}"
                thr = ""
                if proto == "tcp" and rtt in (0, 20, 150):
                    t = lab.probe(node, "throughput", f"{relay}:{PORT + 1}", "--megabytes",
                                  str(args.megabytes), "--timeout", "60", timeout=120)
                    thr = f"{t['mbit_s']:.0f}"
                print(f"{rtt:>6} ms {proto:>5} {med:>8.3f} {_pct(s, 0.1):>8.3f} "
                      f"{_pct(s, 0.9):>8.3f} {err:>7} {nerr:>7} {thr:>11}", flush=True)
        t = lab.probe("relay", "throughput", f"127.0.0.1:{PORT + 1}", "--megabytes",
                      str(args.megabytes), "--timeout", "60", timeout=120)
        print(f"kernel loopback in the relay's namespace (no emulator): "
              f"{t['mbit_s']:.0f} Mbit/s")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
