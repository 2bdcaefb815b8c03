"""Relay processes as operators run them: SQLite durability across SIGKILL, graceful SIGTERM,
the CLI entry point and config files."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.relay.errors import LinkClosed, RelayUnreachable
from didmesh.relay.protocol import CloseCode
from relay_helpers import spawn_relay, start_relay


async def test_sqlite_store_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "relay.sqlite3"
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    sent: list[bytes] = []
    with start_relay(f"sqlite:{db}", home=tmp_path) as relay:
        async with RelayClient(relay.url, alice) as ca, RelayClient(relay.url, bob) as cb:
            token = await cb.token()
            for i in range(20):
                msg = f"durable {i}".encode()
                await ca.send(bob.did, "s", msg)  # returned 201: acknowledged as stored
                sent.append(msg)
            relay.kill()  # SIGKILL right after the last acknowledgement, no cleanup
            assert relay.proc.returncode == -9
            with pytest.raises(RelayUnreachable, match=relay.url):
                await RelayClient(relay.url, alice, retries=0).info()
    with start_relay(f"sqlite:{db}", home=tmp_path) as relay2:
        async with RelayClient(relay2.url, bob) as cb:
            # the relay secret is durable too: a token from before the crash still works
            async with aiohttp.ClientSession() as s, s.get(
                relay2.url + "/v1/inbox", headers={"Authorization": "Bearer " + token}
            ) as r:
                assert r.status == 200
            items = await cb.fetch()
            assert [i.open(bob) for i in items] == sent
            # and ids are remembered: a replayed envelope is still refused after the restart
            await cb.ack([i.id for i in items])
            async with RelayClient(relay2.url, alice) as ca:
                from didmesh.relay.errors import Replay

                with pytest.raises(Replay):
                    await ca.post(items[0].envelope)


async def test_sigterm_is_graceful(tmp_path: Path) -> None:
    relay = spawn_relay("memory", ["--rate-ip-per-s", "0"], home=tmp_path)
    try:
        alice, bob = IdentityKey.generate(), IdentityKey.generate()
        async with RelayClient(relay.url, alice) as ca, RelayClient(relay.url, bob) as cb:
            la, lb = await asyncio.gather(ca.open_link("s", bob.did), cb.open_link("s", alice.did))
            poll = asyncio.create_task(cb.fetch(wait=20))  # in flight during the shutdown
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            relay.proc.send_signal(15)
            items = await asyncio.wait_for(poll, 10)  # answered, not cut off
            assert items == []
            for link in (la, lb):
                with pytest.raises(LinkClosed) as exc:
                    await link.recv(timeout=10)
                assert exc.value.close_code == CloseCode.GOING_AWAY
            assert relay.proc.wait(15) == 0
            assert time.monotonic() - t0 < 10
        logs = relay.log_lines()
        assert any(line.get("msg") == "stopped" for line in logs)
        access = [line for line in logs if line.get("msg") == "access"]
        assert access and all(set(line) >= {"method", "path", "status", "ms"} for line in access)
        text = relay.log_path.read_text()
        assert "Bearer" not in text and "t1." not in text and "c1." not in text
    finally:
        if relay.alive():
            relay.proc.kill()
            relay.proc.wait(5)


async def test_cli_serve_with_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text('inbox_max_envelopes = 7\nrelay_id = "community-1"\n')
    cmd = [sys.executable, "-c", "from didmesh.session.cli.main import main; main()",
           "relay", "serve"]
    relay = spawn_relay(
        "memory", ["--config", str(cfg), "--links-total", "9"],
        env={"DIDMESH_RELAY_LINK_MAX_FRAME": "4096"}, home=tmp_path, command=cmd,
    )
    try:
        async with RelayClient(relay.url, IdentityKey.generate()) as c:
            info = await c.info()
        assert info["relay_id"] == "community-1"
        limits = info["limits"]
        assert (limits["inbox_max_envelopes"], limits["links_total"],
                limits["link_max_frame"]) == (7, 9, 4096)
        assert relay.terminate() == 0
    finally:
        if relay.alive():
            relay.proc.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "postgres://x"], "unknown store"),
        (["--links-total", "many"], "must be int"),
        (["--relay-id", "has space"], "relay_id"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "didmesh.relay", "--port", "0", *args],
        capture_output=True, text=True, timeout=30, env={"DIDMESH_HOME": str(tmp_path),
                                                         "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_default_store_is_sqlite_under_didmesh_home(tmp_path: Path) -> None:
    relay = spawn_relay("", [], home=tmp_path)
    try:
        assert (tmp_path / "relay" / "relay.sqlite3").exists()
    finally:
        relay.terminate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_while_it_finishes_stopping_still_exit_0(sig: signal.Signals) -> None:
    """A process manager that repeats its signal (systemd, docker stop, an impatient
    operator) while the relay ends: a finished shutdown is not turned into a death by
    signal (-15) or a KeyboardInterrupt, it stays exit 0 and one "stopped" line."""
    with start_relay("memory") as relay:
        relay.proc.send_signal(sig)
        deadline = time.monotonic() + 20
        while relay.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                relay.proc.send_signal(sig)
            time.sleep(0.0005)
        code = relay.proc.wait(5)
        assert code == 0, (code, relay.log_path.read_text()[-1500:])
        assert [x.get("msg") for x in relay.log_lines()].count("stopped") == 1
