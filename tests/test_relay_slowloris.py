"""Slowloris and descriptor exhaustion (issue 13.2; threat model "relay descriptor exhaustion").

Real relay processes on loopback under ``prlimit --nofile=1024:1024``. The attacker opens
connections from 127.0.0.1 and never finishes its headers; another client on 127.0.0.2 must
get ``/healthz`` within 1 s throughout, and the relay's log must stay small.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import shutil
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from didmesh.relay.conns import ConnectionGuard, LogThrottle, connection_budget
from relay_helpers import RelayProcess, start_relay

PRLIMIT = shutil.which("prlimit")
RELAY_CMD = [sys.executable, "-m", "didmesh.relay"]


# -- the sans-IO parts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nofile", "configured", "want"),
    [(1024, 0, 704), (1024, 5000, 704), (1024, 100, 100), (300, 0, 71), (100, 0, 1),
     (65536, 0, 57152)],
)
def test_connection_budget_keeps_a_reserve(nofile: int, configured: int, want: int) -> None:
    assert connection_budget(nofile, configured) == want


def test_guard_caps_per_address_and_total() -> None:
    g = ConnectionGuard(per_address=2, total=3, exempt=lambda a: a == "10.0.0.9")
    assert g.admit("a") is None and g.admit("a") is None
    assert "too many connections from your address" in (g.admit("a") or "")
    assert g.admit("b") is None
    assert "maximum of 3 connections" in (g.admit("c") or "")
    g.release("a")
    assert g.admit("10.0.0.9") is None  # a free slot in total
    g.release("b")
    assert g.admit("10.0.0.9") is None  # exempt from the per-address cap
    assert g.open == 3 and g.count("10.0.0.9") == 2
    assert (g.refused_address, g.refused_total) == (1, 1)


def test_log_throttle_bounds_lines_and_counts_the_rest() -> None:
    t = LogThrottle(period=10.0, burst=2)
    got = [t.allow("k", 0.0 + i * 0.1) for i in range(50)]
    assert [ok for ok, _ in got].count(True) == 2
    assert t.allow("k", 10.5) == (True, 48)  # next window: says how many it swallowed
    assert t.allow("other", 10.5) == (True, 0)


# -- real processes ----------------------------------------------------------------------------


def _raise_own_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"this test needs {need} descriptors (hard limit {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _limited_relay(args: list[str]) -> RelayProcess:
    if PRLIMIT is None:
        pytest.fail("prlimit (util-linux) is missing")
    return start_relay(  # type: ignore[return-value]
        "memory", ["--rate-ip-per-s", "0", "--conns-per-address", "64", *args],
        command=[PRLIMIT, "--nofile=1024:1024", *RELAY_CMD],
    )


def _healthz(port: int, source: str = "127.0.0.2", timeout: float = 5.0) -> tuple[float, bytes]:
    """GET /healthz from ``source``: (seconds, status line)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout, (source, 0)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return time.monotonic() - t0, data.split(b"\r\n", 1)[0]


class Slowloris:
    """Keeps ``n`` half-sent requests open from 127.0.0.1, reopening those the relay closes."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.open = 0
        self.max_open = 0
        self.opened = 0
        self.refused_503 = 0
        self.stop = asyncio.Event()

    async def one(self) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 5
                )
            except (OSError, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            self.opened += 1
            self.open += 1
            self.max_open = max(self.max_open, self.open)
            try:
                writer.write(b"POST /v1/envelopes HTTP/1.1\r\nHost: relay\r\n")
                while not self.stop.is_set():  # one header byte now and then, never done
                    try:
                        data = await asyncio.wait_for(reader.read(4096), 1.0)
                    except TimeoutError:
                        writer.write(b"X")
                        continue
                    if b" 503 " in data[:20]:
                        self.refused_503 += 1
                    break  # the relay answered or closed: open another
            except OSError:
                pass
            finally:
                self.open -= 1
                writer.close()
            await asyncio.sleep(0.5)  # a steady siege, not a connection flood

    async def siege(self, seconds: float) -> dict[str, int]:
        tasks = [asyncio.create_task(self.one()) for _ in range(self.n)]
        await asyncio.sleep(seconds)
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        return {"max_open": self.max_open, "opened": self.opened, "refused": self.refused_503}


def _siege(port: int, n: int, seconds: float, out: Any) -> None:
    out.put(asyncio.run(Slowloris(port, n).siege(seconds)))


def attack(port: int, n: int, seconds: float, probe: Callable[[], tuple[float, bytes]]
           ) -> tuple[dict[str, int], list[tuple[float, bytes]]]:
    """Run the siege in a process of its own (its event loop must not delay the probes);
    probe /healthz every 0.25 s meanwhile."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_siege, args=(port, n, seconds + 1.5, out), daemon=True)
    proc.start()
    probes: list[tuple[float, bytes]] = []
    try:
        time.sleep(1.5)  # let the attack fill the relay
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                probes.append(probe())
            except OSError as exc:
                probes.append((99.0, repr(exc).encode()))
            time.sleep(0.25)
        stats = out.get(timeout=45)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return stats, probes


def test_slowloris_from_one_address_does_not_starve_another() -> None:
    """1,100 slow requests from 127.0.0.1 at ``ulimit -n 1024``: /healthz from 127.0.0.2
    answers 200 within 1 s all along; the log stays under 100 KB."""
    _raise_own_nofile(4096)
    with _limited_relay(["--header-timeout-s", "3"]) as relay:
        stats, probes = attack(relay.port, 1100, 8.0, lambda: _healthz(relay.port))
        assert relay.alive()
        log_size = relay.log_path.stat().st_size
        lines = relay.log_lines()
    slow = [p for p in probes if p[0] >= 1.0 or b" 200 " not in p[1]]
    assert len(probes) >= 10 and not slow, slow[:5]
    assert stats["max_open"] >= 64  # the attack did hold its share of the relay
    assert stats["refused"] > 0  # and was refused beyond it
    assert stats["opened"] > 1100  # the header timeout closed the slow ones: they came back
    assert log_size < 100_000, log_size
    refused = [ln for ln in lines if ln.get("msg") == "connection refused"]
    assert refused and all(ln["remote"] == "127.0.0.1" for ln in refused)
    assert not any("Too many open files" in str(ln) for ln in lines)


def test_without_a_per_address_cap_the_descriptor_budget_still_holds() -> None:
    """No per-address cap: 1,100 connections at ``ulimit -n 1024`` hit the total budget,
    which refuses them at once (503) instead of ``accept()`` failing with EMFILE; the relay
    keeps answering and recovers when the attack ends."""
    _raise_own_nofile(4096)
    with _limited_relay(["--conns-per-address", "0", "--header-timeout-s", "30"]) as relay:
        stats, probes = attack(relay.port, 1100, 4.0, lambda: _healthz(relay.port))
        assert stats["refused"] > 0
        assert all(p[0] < 1.0 for p in probes), probes[:5]
        assert any(b" 503 " in p[1] for p in probes)  # refused, at once
        deadline = time.monotonic() + 10
        while True:  # the attacker's sockets are closed: the relay serves again
            took, status = _healthz(relay.port)
            if b" 200 " in status or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert b" 200 " in status
        assert relay.log_path.stat().st_size < 100_000
        assert not any("Too many open files" in str(ln) for ln in relay.log_lines())


def _raw(port: int, data: bytes, wait: float) -> tuple[float, bytes]:
    """Send ``data``; return (seconds until the first answer byte or the close, all read)."""
    t0 = time.monotonic()
    first = None
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                first = first or time.monotonic()
                out += chunk
        except TimeoutError:
            pass
    return (first or time.monotonic()) - t0, out


def test_huge_content_length_is_refused_at_once_and_slow_bodies_time_out() -> None:
    with start_relay("memory", ["--rate-ip-per-s", "0", "--body-timeout-s", "1",
                                "--header-timeout-s", "2"]) as relay:
        took, out = _raw(relay.port, b"POST /v1/envelopes HTTP/1.1\r\nHost: r\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: 99999999999\r\n\r\n", 5)
        assert out.startswith(b"HTTP/1.1 413 ") and b'"too_large"' in out and took < 1.0
        took, out = _raw(relay.port, b"POST /v1/auth/challenge HTTP/1.1\r\nHost: r\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"did\": ", 5)
        assert out.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in out
        assert 0.9 < took < 3.0
        took, out = _raw(relay.port, b"GET /healthz HTTP/1.1\r\nHost: r\r\n", 6)
        assert out == b"" and 1.5 < took < 4.5  # headers never completed: closed
