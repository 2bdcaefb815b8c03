"""Probes for lab experiments: an echo server that tells each client its observed source
address (as seen from where the server sits), and clients that measure mappings, round
trips and throughput. Each prints one JSON line; every wait is bounded.

    python -m didmesh.session.lab.probe serve PORT   (echo: UDP, TCP on PORT; TCP sink: PORT+1)
    python -m didmesh.session.lab.probe map udp|tcp SRC_PORT HOST:PORT...
    python -m didmesh.session.lab.probe rtt udp|tcp HOST:PORT [--count N]
    python -m didmesh.session.lab.probe throughput HOST:PORT [--megabytes M]
    python -m didmesh.session.lab.probe dial HOST:PORT [--timeout S]
    python -m didmesh.session.lab.probe echoes HOST:PORT [--count N]   (UDP: how many return)

``serve`` answers a UDP datagram with ``IP:PORT`` of its sender, and a TCP client first
with ``IP:PORT\\n`` then an echo of whatever it sends; the sink (PORT+1) reads a TCP
stream to its end and answers with the byte count.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from typing import Any

CHUNK = 1 << 16


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


def _serve_udp(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))  # noqa: S104 - inside a lab namespace only
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(f"{peer[0]}:{peer[1]}".encode() + b" " + data, peer)


def _echo_client(conn: socket.socket, peer: tuple[str, int]) -> None:
    with conn:
        conn.settimeout(30)
        try:
            conn.sendall(f"{peer[0]}:{peer[1]}\n".encode())
            while data := conn.recv(CHUNK):
                conn.sendall(data)
        except OSError:
            return


def _sink_client(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(30)
        total = 0
        try:
            while data := conn.recv(CHUNK):
                total += len(data)
            conn.sendall(f"{total}\n".encode())
        except OSError:
            return


def _serve_tcp(port: int, sink: bool) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))  # noqa: S104 - inside a lab namespace only
    s.listen(64)
    while True:
        conn, peer = s.accept()
        target: Any = _sink_client if sink else _echo_client
        args = (conn,) if sink else (conn, peer)
        threading.Thread(target=target, args=args, daemon=True).start()


def serve(port: int) -> None:
    for fn, args in ((_serve_udp, (port,)), (_serve_tcp, (port, False)),
                     (_serve_tcp, (port + 1, True))):
        threading.Thread(target=fn, args=args, daemon=True).start()
    time.sleep(0.05)
    print("ready", flush=True)
    threading.Event().wait()  # until ended (the lab ends it by pid; by hand: Ctrl-C)


def mapping(proto: str, src_port: int, targets: list[str], timeout: float) -> dict[str, str]:
    """The ``IP:PORT`` each target saw, all sent from local port ``src_port``."""
    out: dict[str, str] = {}
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", src_port))  # noqa: S104
        s.settimeout(timeout)
        with s:
            for t in targets:
                try:
                    s.sendto(b"map", _split(t))
                    out[t] = s.recv(2048).split(b" ")[0].decode()
                except OSError as exc:
                    out[t] = "error: " + type(exc).__name__
        return out
    for t in targets:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("0.0.0.0", src_port))  # noqa: S104
        c.settimeout(timeout)
        with c:
            try:
                c.connect(_split(t))
                out[t] = c.makefile("rb").readline().decode().strip()
            except OSError as exc:
                out[t] = "error: " + type(exc).__name__
    return out


def rtt(proto: str, target: str, count: int, timeout: float) -> dict[str, Any]:
    """Round trips of a 32-byte message, in ms: every sample, the median and the minimum."""
    samples = []
    payload = b"x" * 32
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        with s:
            s.connect(_split(target))
            for _ in range(count):
                t0 = time.perf_counter()
                s.send(payload)
                s.recv(2048)
                samples.append((time.perf_counter() - t0) * 1000)
    else:
        with socket.create_connection(_split(target), timeout=timeout) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.settimeout(timeout)
            f = c.makefile("rb")
            f.readline()
            for _ in range(count):
                t0 = time.perf_counter()
                c.sendall(payload)
                got = 0
                while got < len(payload):
                    got += len(c.recv(len(payload) - got))
                samples.append((time.perf_counter() - t0) * 1000)
    return {"samples_ms": samples, "median_ms": statistics.median(samples),
            "min_ms": min(samples)}


def echoes(target: str, count: int, timeout: float) -> dict[str, Any]:
    """Send ``count`` UDP datagrams one at a time; how many came back (loss both ways)."""
    answered = 0
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    with s:
        s.connect(_split(target))
        for i in range(count):
            tag = f"{i}".encode()
            s.send(tag)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:  # skip late answers to earlier ones
                try:
                    if s.recv(2048).endswith(b" " + tag):
                        answered += 1
                        break
                except TimeoutError:
                    break
    return {"sent": count, "answered": answered}


def throughput(target: str, megabytes: float, timeout: float) -> dict[str, Any]:
    """Send ``megabytes`` to a sink; Mbit/s from the first byte sent to the sink's answer."""
    total = int(megabytes * 1e6)
    block = b"\0" * CHUNK
    with socket.create_connection(_split(target), timeout=timeout) as c:
        c.settimeout(timeout)
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            sent += c.send(block[: min(CHUNK, total - sent)])
        c.shutdown(socket.SHUT_WR)
        got = int(c.makefile("rb").readline() or b"0")
        seconds = time.perf_counter() - t0
    return {"bytes": got, "seconds": seconds, "mbit_s": got * 8 / seconds / 1e6}


def dial(target: str, timeout: float) -> dict[str, Any]:
    try:
        with socket.create_connection(_split(target), timeout=timeout) as c:
            c.settimeout(timeout)
            return {"ok": True, "seen_as": c.makefile("rb").readline().decode().strip()}
    except OSError as exc:
        return {"ok": False, "error": type(exc).__name__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m didmesh.session.lab.probe")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    m = sub.add_parser("map")
    m.add_argument("proto", choices=("udp", "tcp"))
    m.add_argument("src_port", type=int)
    m.add_argument("targets", nargs="+")
    r = sub.add_parser("rtt")
    r.add_argument("proto", choices=("udp", "tcp"))
    r.add_argument("target")
    r.add_argument("--count", type=int, default=20)
    t = sub.add_parser("throughput")
    t.add_argument("target")
    t.add_argument("--megabytes", type=float, default=20)
    d = sub.add_parser("dial")
    d.add_argument("target")
    e = sub.add_parser("echoes")
    e.add_argument("target")
    e.add_argument("--count", type=int, default=100)
    for q in (m, r, t, d, e):
        q.add_argument("--timeout", type=float, default=3)
    a = p.parse_args(argv)
    try:
        if a.cmd == "serve":
            serve(a.port)
            return 0  # not reached
        if a.cmd == "map":
            result: Any = mapping(a.proto, a.src_port, a.targets, a.timeout)
        elif a.cmd == "rtt":
            result = rtt(a.proto, a.target, a.count, a.timeout)
        elif a.cmd == "echoes":
            result = echoes(a.target, a.count, a.timeout)
        elif a.cmd == "throughput":
            result = throughput(a.target, a.megabytes, a.timeout)
        else:
            result = dial(a.target, a.timeout)
    except OSError as exc:
        print(f"didmesh: probe failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
