"""A relay deployed as an operator would (issue 12): behind the shipped nginx config over
https/wss with a private CA made here, with ``relay serve --tls-cert/--tls-key``, and with
forwarded addresses that a client cannot forge. Real relay processes, real nginx."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.relay.errors import RelayConfigError, RelayUntrusted
from didmesh.relay.forwarded import TrustedProxies
from relay_helpers import RelayProcess, redis_available, spawn_relay, start_redis, start_relay
from tls_helpers import Pki, make_pki, start_nginx

ALICE = IdentityKey.from_seed(b"A" * 32)
BOB = IdentityKey.from_seed(b"B" * 32)


# -- the client address (sans-IO) ------------------------------------------------------------

CASES = [
    # (trusted, peer, X-Forwarded-For headers, the address limits apply to)
    ("", "203.0.113.9", ["1.2.3.4"], "203.0.113.9"),  # nobody trusted: header ignored
    ("127.0.0.1", "127.0.0.2", ["1.2.3.4"], "127.0.0.2"),  # peer not a proxy: ignored
    ("127.0.0.1", "127.0.0.1", ["198.51.100.7"], "198.51.100.7"),
    # a forged entry left of what the proxy appended changes nothing
    ("127.0.0.1", "127.0.0.1", ["203.0.113.1, 198.51.100.7"], "198.51.100.7"),
    ("127.0.0.1", "127.0.0.1", ["203.0.113.1", "198.51.100.7"], "198.51.100.7"),
    # two proxies we trust: skip both
    ("127.0.0.1,10.0.0.0/8", "127.0.0.1", ["6.6.6.6, 198.51.100.7, 10.1.2.3"], "198.51.100.7"),
    ("127.0.0.1", "127.0.0.1", [], "127.0.0.1"),  # no header: the proxy itself
    ("127.0.0.1", "127.0.0.1", ["garbage"], "127.0.0.1"),  # a trusted proxy wrote junk
    ("127.0.0.1", "127.0.0.1", ["[2001:db8::1]:443"], "2001:db8::1"),
    ("127.0.0.1", "127.0.0.1", ["198.51.100.7:5555"], "198.51.100.7"),
    ("::1", "::ffff:127.0.0.1", ["1.2.3.4"], "::ffff:127.0.0.1"),
    ("127.0.0.1", "::ffff:127.0.0.1", ["1.2.3.4"], "1.2.3.4"),  # v4-mapped peer
    ("127.0.0.1", "127.0.0.1", ["127.0.0.1"], "127.0.0.1"),  # only trusted hops
]


@pytest.mark.parametrize(("trusted", "peer", "headers", "want"), CASES)
def test_client_address_is_the_rightmost_untrusted_entry(
    trusted: str, peer: str, headers: list[str], want: str
) -> None:
    assert TrustedProxies(trusted).client_address(peer, headers) == want


def test_bad_trusted_proxy_is_named() -> None:
    with pytest.raises(RelayConfigError, match="'nginx' is not an IP address"):
        TrustedProxies("127.0.0.1, nginx")


# -- forged headers against a real relay ------------------------------------------------------


def _get(port: int, source: str, forwarded: str | None) -> tuple[int, str]:
    """GET /v1/inbox (no token: 401 once the per-address bucket passed it, else 429)."""
    extra = f"X-Forwarded-For: {forwarded}\r\n" if forwarded else ""
    with socket.create_connection(("127.0.0.1", port), 5, (source, 0)) as s:
        s.sendall(f"GET /v1/inbox HTTP/1.1\r\nHost: r\r\n{extra}Connection: close\r\n\r\n"
                  .encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.decode(errors="replace")


LIMITED = ["--rate-ip-per-s", "0.01", "--rate-ip-burst", "3", "--trusted-proxies", "127.0.0.1"]


def _access(relay: RelayProcess, at_least: int) -> list[dict[str, object]]:
    """The relay's access-log lines once ``at_least`` are written (the relay logs a request
    after its response has left: the last line may lag the client by a moment); 5 s."""
    end = time.monotonic() + 5
    while True:
        lines = [ln for ln in relay.log_lines() if ln.get("msg") == "access"]
        if len(lines) >= at_least or time.monotonic() > end:
            return lines
        time.sleep(0.02)


def test_forged_forwarded_for_sent_directly_is_ignored() -> None:
    with start_relay("memory", LIMITED) as relay:
        got = [_get(relay.port, "127.0.0.2", f"203.0.113.{i}")[0] for i in range(1, 7)]
        assert got == [401, 401, 401, 429, 429, 429]
        # a trusted proxy's word is taken: its clients get buckets of their own
        assert _get(relay.port, "127.0.0.1", "198.51.100.7")[0] == 401
        log = _access(relay, 7)
    assert {ln["remote"] for ln in log[:6]} == {"127.0.0.2"}
    assert log[-1]["remote"] == "198.51.100.7"


def test_forged_forwarded_for_through_nginx_is_ignored(tmp_path: Path) -> None:
    """Through the shipped nginx config (which appends the address it saw), a client that
    used up its rate and writes another X-Forwarded-For each time stays limited; the access
    log shows its own address."""
    pki = make_pki(tmp_path / "pki")
    with start_relay("memory", LIMITED) as relay, \
            start_nginx(tmp_path / "nginx", pki, relay.port) as url:
        ctx = ssl.create_default_context(cafile=str(pki.ca))

        async def go() -> list[int]:
            conn = aiohttp.TCPConnector(ssl=ctx, local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=conn) as s:
                out = []
                for i in range(1, 7):
                    async with s.get(url + "/v1/inbox",
                                     headers={"X-Forwarded-For": f"203.0.113.{i}"}) as r:
                        out.append(r.status)
                return out

        assert asyncio.run(go()) == [401, 401, 401, 429, 429, 429]
        log = _access(relay, 6)
    assert [ln["remote"] for ln in log] == ["127.0.0.2"] * 6


# -- TLS: a session's relay traffic over https/wss ----------------------------------------------


async def _auth_mail_link(url: str, ca: str | None) -> None:
    async with RelayClient(url, ALICE, ca_file=ca, timeout=10) as a, \
            RelayClient(url, BOB, ca_file=ca, timeout=10) as b:
        await a.send(BOB.did, "s-tls", b"hello over tls")
        items = await b.fetch(wait=5)
        assert [i.open(BOB) for i in items] == [b"hello over tls"]
        assert await b.ack([i.id for i in items]) == 1
        la, lb = await asyncio.gather(a.open_link("s-tls", BOB.did, timeout=20),
                                      b.open_link("s-tls", ALICE.did, timeout=20))
        async with la, lb:
            big = os.urandom(200_000)
            await la.send(big)
            assert await lb.recv(timeout=10) == big
            await lb.send(b"pong")
            assert await la.recv(timeout=10) == b"pong"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_auth_mail_and_a_link_through_nginx_over_https(pki: Pki, tmp_path: Path) -> None:
    with start_relay("memory", ["--rate-ip-per-s", "0", "--trusted-proxies", "127.0.0.1"]
                     ) as relay, start_nginx(tmp_path, pki, relay.port) as url:
        asyncio.run(_auth_mail_link(url, str(pki.ca)))
        # the CA also comes from the environment (what --relay-ca sets for every command)
        os.environ["DIDMESH_RELAY_CA"] = str(pki.ca)
        try:
            asyncio.run(_auth_mail_link(url, None))
        finally:
            del os.environ["DIDMESH_RELAY_CA"]
        assert relay.alive()


def test_relay_serves_tls_itself(pki: Pki) -> None:
    with start_relay("memory", ["--rate-ip-per-s", "0", "--tls-cert", str(pki.cert),
                                "--tls-key", str(pki.key)]) as relay:
        assert relay.url.startswith("https://127.0.0.1:")
        asyncio.run(_auth_mail_link(relay.url, str(pki.ca)))


def test_untrusted_relay_is_an_error_at_once(pki: Pki) -> None:
    """A certificate from a CA the client does not trust: one clear error, no retries."""
    with start_relay("memory", ["--rate-ip-per-s", "0", "--tls-cert", str(pki.cert),
                                "--tls-key", str(pki.key)]) as relay:

        async def go(ca: str | None) -> None:
            async with RelayClient(relay.url, ALICE, ca_file=ca, timeout=5) as c:
                with pytest.raises(RelayUntrusted, match="--relay-ca FILE"):
                    await asyncio.wait_for(c.send(BOB.did, "s", b"x"), 3)
                with pytest.raises(RelayUntrusted):
                    await asyncio.wait_for(c.fetch(), 3)
                with pytest.raises(RelayUntrusted):
                    async for _ in c.inbox():
                        break

        asyncio.run(go(str(pki.other_ca)))
        asyncio.run(go(None))


def test_bad_relay_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RelayConfigError, match="cannot use .* as the relay CA"):
        RelayClient("https://127.0.0.1:1", ALICE, ca_file=str(tmp_path / "missing.pem"))


def test_bad_tls_key_is_one_line_and_exit_2(pki: Pki, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "didmesh.relay", "--port", "0", "--store", "memory",
           "--tls-cert", str(pki.cert), "--tls-key", str(tmp_path / "nope.key")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "cannot load the TLS certificate" in r.stderr
    with pytest.raises(RuntimeError, match="tls_cert and tls_key go together"):
        spawn_relay("memory", ["--tls-cert", str(pki.cert)], timeout=20)


def test_invites_from_an_untrusted_or_unreachable_relay_is_an_error(pki: Pki, tmp_path: Path
                                                                     ) -> None:
    """``didmesh invites`` never shows an empty inbox for a relay it could not read."""
    from cli_helpers import run_cli

    home = tmp_path / "home"
    assert run_cli(home, "id", "new", "--no-passphrase", "--name", "carol").rc == 0
    with start_relay("memory", ["--rate-ip-per-s", "0", "--tls-cert", str(pki.cert),
                                "--tls-key", str(pki.key)]) as relay:
        r = run_cli(home, "invites", "--relay", relay.url, timeout=60)
        assert r.rc != 0 and "no pending invites" not in r.out
        last = r.err.strip().splitlines()[-1]
        assert last.startswith("didmesh: ") and "--relay-ca FILE" in last, r.err
        r = run_cli(home, "--relay-ca", str(pki.other_ca), "invites", "--relay", relay.url)
        assert r.rc != 0 and "not trusted" in r.err
        r = run_cli(home, "invites", "--relay-ca", str(pki.ca), "--relay", relay.url)
        assert (r.rc, r.out.strip()) == (0, "no pending invites"), r.err
        r = run_cli(home, "invites", "--relay", relay.url,
                    env={"DIDMESH_RELAY_CA": str(pki.ca)})
        assert (r.rc, r.out.strip()) == (0, "no pending invites"), r.err
    r = run_cli(home, "invites", "--relay", relay.url)  # the relay is gone now
    assert r.rc != 0 and "cannot reach the relay" in r.err and "no pending" not in r.out


@pytest.mark.skipif(not redis_available(), reason="redis-server not installed")
def test_nginx_sends_both_ends_of_a_link_to_one_process(pki: Pki, tmp_path: Path) -> None:
    """Two relay processes on one Redis behind the shipped nginx config: the ?route= key
    (same at both ends) makes nginx send both ends of every link to the same process, so
    every link is forwarded in-process, never through Redis."""
    ids = [IdentityKey.from_seed(bytes([40 + i]) * 32) for i in range(8)]
    with start_redis() as redis:
        url = redis.url(9)
        args = ["--rate-ip-per-s", "0", "--trusted-proxies", "127.0.0.1"]
        with start_relay(url, args) as p1, start_relay(url, args) as p2, \
                start_nginx(tmp_path, pki, [p1.port, p2.port]) as https:

            async def go() -> None:
                clients = [RelayClient(https, k, ca_file=str(pki.ca)) for k in ids]
                try:
                    pairs = [(i, j) for i in range(0, 8, 2) for j in (i + 1,)] + [(0, 3), (2, 5),
                                                                                  (4, 7), (6, 1)]
                    for n, (i, j) in enumerate(pairs):
                        la, lb = await asyncio.gather(
                            clients[i].open_link("route", ids[j].did, link_id=f"l{n}"),
                            clients[j].open_link("route", ids[i].did, link_id=f"l{n}"))
                        await la.send(b"x" * 1000)
                        assert await lb.recv(timeout=10) == b"x" * 1000
                        await la.close()
                        await lb.close()
                finally:
                    for c in clients:
                        await c.close()

            asyncio.run(go())

            def paired_lines() -> list[dict[str, object]]:
                return [ln for p in (p1, p2) for ln in p.log_lines()
                        if ln.get("msg") == "link end paired"]

            # a relay logs "paired" when the end's handler resumes, which on a loaded
            # machine may come after the client already used and closed the link
            deadline = time.monotonic() + 10
            while len(paired := paired_lines()) < 16 and time.monotonic() < deadline:
                time.sleep(0.2)
    assert len(paired) == 16
    assert {ln["path"] for ln in paired} == {"local"}


@pytest.mark.slow
def test_a_session_runs_through_nginx_over_https(pki: Pki, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole CLI flow of tests/test_mesh_cli_e2e.py (invite, claim, accept, agree, then
    ``didmesh run --relay-only``) against the relay behind the shipped nginx config over
    https/wss, every command trusting the private CA through DIDMESH_RELAY_CA; the output
    is plain MPyC's."""
    import shutil

    import cli_helpers
    import test_mesh_cli_e2e as e2e

    ca = {"DIDMESH_RELAY_CA": str(pki.ca)}
    real_run_cli, real_env_for = cli_helpers.run_cli, cli_helpers.env_for
    monkeypatch.setattr(cli_helpers, "run_cli", lambda home, *a, env=None, **kw: real_run_cli(
        home, *a, env={**(env or {}), **ca}, **kw))
    monkeypatch.setattr(cli_helpers, "env_for", lambda home: {**real_env_for(home), **ca})
    program = tmp_path / "secure_sum.py"
    shutil.copy(e2e.EXAMPLES / "secure_sum.py", program)
    with start_relay("memory", ["--rate-ip-per-s", "0", "--trusted-proxies", "127.0.0.1"]
                     ) as relay, start_nginx(tmp_path / "nginx", pki, relay.port) as url:
        (sid, homes), expected = cli_helpers.concurrently(  # plain MPyC's output meanwhile
            lambda: e2e.agreed_session(tmp_path, url, program),
            lambda: e2e.plain_output(program))
        procs = [cli_helpers.spawn(h, "run", sid[:8], "--relay-only", "--timeout", "10",
                           "--connect-timeout", "30", "--", str(program), "--no-log")
                 for h in homes]
        for rc, out, err in cli_helpers.finish_all(procs):
            assert rc == 0, err[-2500:]
            assert out == expected
        access = [ln for ln in relay.log_lines() if ln.get("msg") == "access"]
        paired = [ln for ln in relay.log_lines() if ln.get("msg") == "link end paired"]
    assert access and {ln["remote"] for ln in access} == {"127.0.0.1"}
    assert len(paired) >= 6  # three pairs, both ends, through nginx


def test_a_tls_handshake_that_never_comes_is_cut_at_the_header_timeout(pki: Pki) -> None:
    """With --tls-cert a silent connection is closed after header_timeout_s (not asyncio's
    60 s): one stuck in its handshake holds a descriptor the caps do not count yet."""
    import time

    with start_relay("memory", ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                                "--header-timeout-s", "2"]) as relay:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", relay.port), 10) as s:
            s.settimeout(10)
            assert s.recv(100) == b""  # closed by the relay
        assert 1.5 < time.monotonic() - t0 < 5
        asyncio.run(_auth_mail_link(relay.url, str(pki.ca)))  # and TLS still works
