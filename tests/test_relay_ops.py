"""Operating a relay (issue 12.5, 12.6): drain on SIGTERM, the startup line, link events,
metrics (own address, process figures, totals across processes on Redis), internal details
kept from clients, one-line start failures, benchmarks without pytest. Real processes."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.relay.errors import LinkClosed, RelayInternalError, ShuttingDown
from didmesh.relay.secret import load_or_create
from relay_helpers import RelayProcess, free_port, redis_available, start_redis, start_relay

A, B, C = (IdentityKey.from_seed(bytes([i]) * 32) for i in (7, 8, 9))
ROOT = Path(__file__).resolve().parent.parent


def _get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_exit(relay: RelayProcess, timeout: float) -> tuple[int, float]:
    t0 = time.monotonic()
    rc = relay.proc.wait(timeout)
    return rc, time.monotonic() - t0


# -- drain --------------------------------------------------------------------------------------


def test_sigterm_drains_running_links_then_exits() -> None:
    """SIGTERM: /healthz says draining, new links are refused, a running link keeps
    forwarding; once it closes the relay exits 0 without waiting for the bound."""
    with start_relay("memory", ["--rate-ip-per-s", "0", "--drain-timeout-s", "30"]) as relay:

        async def go() -> float:
            async with RelayClient(relay.url, A) as ca, RelayClient(relay.url, B) as cb, \
                    RelayClient(relay.url, C) as cc:
                la, lb = await asyncio.gather(ca.open_link("s", B.did), cb.open_link("s", A.did))
                relay.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                status, body = await asyncio.to_thread(_get, relay.url + "/healthz")
                assert (status, '"draining"' in body) == (503, True)
                with pytest.raises(ShuttingDown):
                    await cc.open_link("s", A.did, timeout=5)
                for i in range(10):  # the running link still carries a computation
                    await la.send(b"step %d" % i)
                    assert await lb.recv(timeout=5) == b"step %d" % i
                    await asyncio.sleep(0.1)
                assert relay.alive()
                await la.close()
                with pytest.raises(LinkClosed):
                    await lb.recv(timeout=5)
                await lb.close()
                return time.monotonic()

        closed_at = asyncio.run(go())
        rc, _ = _wait_exit(relay, 15)
        assert rc == 0 and time.monotonic() - closed_at < 5
        msgs = [ln.get("msg") for ln in relay.log_lines()]
        assert "draining" in msgs and msgs.index("draining") < msgs.index("stopped")
        closed = [ln for ln in relay.log_lines() if ln.get("msg") == "link end closed"]
        assert closed and all(isinstance(ln["code"], int) and ln["link"] for ln in closed)
        paired = [ln for ln in relay.log_lines() if ln.get("msg") == "link end paired"]
        assert {ln["path"] for ln in paired} == {"local"} and len(paired) == 2
        assert A.did not in relay.log_path.read_text()  # events name links, not DIDs


def test_drain_is_bounded() -> None:
    """A link that does not end is cut (1001) after drain_timeout_s."""
    with start_relay("memory", ["--rate-ip-per-s", "0", "--drain-timeout-s", "1.5"]) as relay:

        async def go() -> int | None:
            async with RelayClient(relay.url, A) as ca, RelayClient(relay.url, B) as cb:
                la, lb = await asyncio.gather(ca.open_link("s", B.did), cb.open_link("s", A.did))
                t0 = time.monotonic()
                relay.proc.send_signal(signal.SIGTERM)
                with pytest.raises(LinkClosed) as info:
                    await la.recv(timeout=10)
                assert 1.3 < time.monotonic() - t0 < 6
                await lb.close()
                return info.value.close_code

        assert asyncio.run(go()) == 1001
        assert _wait_exit(relay, 15)[0] == 0


# -- start-up ----------------------------------------------------------------------------------


def test_startup_line_names_version_store_and_limits_but_no_secret(tmp_path: Path) -> None:
    secret = tmp_path / "relay.secret"
    with start_relay("memory", ["--secret-file", str(secret), "--links-total", "77"]) as relay:
        started = [ln for ln in relay.log_lines() if ln.get("msg") == "started"]
        text = relay.log_path.read_text()
    assert len(started) == 1
    s = started[0]
    assert s["version"] and s["store"] == "memory" and s["url"] == relay.url
    assert s["limits"]["links_total"] == 77 and s["max_connections"] > 0 and s["nofile"] > 0
    assert load_or_create(secret).hex() not in text


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "didmesh.relay"],
    [sys.executable, "-m", "didmesh.session.cli.main", "relay", "serve"],
])
def test_a_taken_port_is_one_line_and_exit_2(command: list[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([*command, "--port", str(port), "--store", "memory"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "cannot listen" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_bench_relay_help_without_pytest() -> None:
    code = ("import sys, runpy; sys.modules['pytest'] = None; "
            "sys.argv = ['bench_relay.py', '--help']; "
            f"runpy.run_path({str(ROOT / 'bench' / 'bench_relay.py')!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage: bench_relay.py" in r.stdout, r.stderr


# -- metrics ------------------------------------------------------------------------------------


def _value(text: str, name: str) -> float:
    m = re.search(rf"^didmesh_relay_{name} (\S+)$", text, re.M)
    assert m, f"{name} missing"
    return float(m.group(1))


def test_metrics_on_their_own_address_with_process_figures() -> None:
    mport = free_port()
    with start_relay("memory", ["--metrics-listen", f"127.0.0.1:{mport}"]) as relay:
        status, _ = _get(relay.url + "/metrics")
        assert status == 404  # not on the public port
        status, text = _get(f"http://127.0.0.1:{mport}/metrics")
    assert status == 200
    assert _value(text, "process_resident_memory_bytes") > 10_000_000
    assert _value(text, "process_open_fds") > 3
    assert _value(text, "store_up") == 1
    assert _value(text, "connections_open") >= 0


@pytest.mark.skipif(not redis_available(), reason="redis-server not installed")
def test_totals_across_processes_and_redis_down() -> None:
    """Two processes on one Redis: each one's /metrics has the totals of both. With Redis
    gone, /metrics says store_up 0, /healthz 503, and clients get no Redis details."""
    with start_redis() as redis:
        url = redis.url(7)
        with start_relay(url, ["--rate-ip-per-s", "0"]) as p1, \
                start_relay(url, ["--rate-ip-per-s", "0"]) as p2:

            async def post() -> None:
                async with RelayClient(p1.url, A) as c1, RelayClient(p2.url, A) as c2:
                    await c1.send(B.did, "s", b"one")
                    await c2.send(B.did, "s", b"two")

            asyncio.run(post())
            _get(p2.url + "/metrics")  # p2 adds its figures to the totals
            text = _get(p1.url + "/metrics")[1]
            assert _value(text, "cluster_envelopes_stored_total") == 2
            assert _value(text, "envelopes_stored_total") == 1
            assert _value(text, "store_up") == 1
            redis.proc.kill()
            redis.proc.wait(10)
            text = _get(p1.url + "/metrics")[1]
            assert _value(text, "store_up") == 0
            assert _get(p1.url + "/healthz")[0] == 503

            async def needs_redis() -> str:
                async with RelayClient(p1.url, A, retries=0) as c:
                    with pytest.raises(RelayInternalError) as err:
                        await c.send(B.did, "s", b"three")
                    return err.value.message

            body = asyncio.run(needs_redis())
            assert str(redis.port) not in body and "Redis" not in body, body
