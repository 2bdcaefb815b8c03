"""The per-address connection cap holds *before* the TLS handshake when the relay serves TLS
itself (``relay serve --tls-cert/--tls-key``, issue 12): an address over its cap is cut
without a handshake, other addresses are served, and the count is released whether a
connection ends in its handshake or after it. Real relay process, real TLS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from relay_helpers import RelayProcess, start_relay
from tls_helpers import Pki, make_pki

CAP = 4
FLOOD = "127.0.0.3"  # the address that opens too many connections
OTHER = "127.0.0.2"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextlib.contextmanager
def _relay(pki: Pki) -> Iterator[RelayProcess]:
    with start_relay("memory", [
        "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--rate-ip-per-s", "0",
        "--conns-per-address", str(CAP), "--header-timeout-s", "20",
    ]) as relay:
        yield relay


def _connect(port: int, source: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), 5, source_address=(source, 0))
    s.settimeout(5)
    return s


def _cut_without_handshake(port: int, source: str) -> bool:
    """True if a new connection from ``source`` is closed by the relay at once, before
    any TLS byte: a ClientHello gets nothing back, where an admitted one gets a
    ServerHello."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    raw = _connect(port, source)
    t0 = time.monotonic()
    try:
        with ctx.wrap_socket(raw, server_hostname="localhost"):
            return False  # handshake done: admitted
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        assert not isinstance(exc, TimeoutError), "the relay neither served nor cut"
        assert time.monotonic() - t0 < 3
        return True
    finally:
        raw.close()


def _healthz(url: str, ca: Path, source: str) -> int:
    async def go() -> int:
        conn = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(ca)),
                                    local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=conn) as s, \
                s.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=10)) as r:
            return r.status

    return asyncio.run(go())


def _eventually(pred: object, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_connections_stuck_in_their_handshake_count_and_over_the_cap_get_none(pki: Pki) -> None:
    with _relay(pki) as relay:
        silent = [_connect(relay.port, FLOOD) for _ in range(CAP)]  # never send a ClientHello
        try:
            time.sleep(0.5)
            assert _cut_without_handshake(relay.port, FLOOD)
            assert _cut_without_handshake(relay.port, FLOOD)
            assert _healthz(relay.url, pki.ca, OTHER) == 200  # another address is served
        finally:
            for s in silent:
                s.close()
        # the relay notices the closed handshakes and releases their count
        assert _eventually(lambda: not _cut_without_handshake(relay.port, FLOOD))
        assert _healthz(relay.url, pki.ca, FLOOD) == 200
        refused = [ln for ln in relay.log_lines()
                   if ln.get("msg") == "connection refused before TLS"]
    assert refused and refused[0]["remote"] == FLOOD
    assert "too many connections from your address" in refused[0]["reason"]


def test_finished_tls_connections_count_until_they_close(pki: Pki) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    with _relay(pki) as relay:
        for _round in range(2):  # the second round shows every count was released
            held = [ctx.wrap_socket(_connect(relay.port, FLOOD), server_hostname="localhost")
                    for _ in range(CAP)]
            try:
                for t in held:  # each finished its handshake and serves HTTP
                    t.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert t.recv(64).startswith(b"HTTP/1.1 200")
                assert _cut_without_handshake(relay.port, FLOOD)
            finally:
                for t in held:
                    t.close()
            assert _eventually(lambda: not _cut_without_handshake(relay.port, FLOOD))
