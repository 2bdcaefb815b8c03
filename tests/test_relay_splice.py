"""Cross-process links spliced over one TCP connection between relay processes
(relay/splice.py, issue 12): the sans-IO parts (preamble, frame boundaries) and two real
relay processes on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
from pathlib import Path

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.relay.errors import LinkClosed
from didmesh.relay.protocol import CloseCode
from didmesh.relay.splice import (
    MAX_PENDING,
    MAX_SKEW_MS,
    PreambleError,
    ServerFrameTracker,
    check_preamble,
    make_preamble,
    splice_key,
)
from didmesh.relay.wsframes import OP_PING, close_frame, server_frame
from relay_helpers import RedisServer, RelayProcess, redis_server, start_relay  # noqa: F401

ARGS = ["--rate-ip-per-s", "0", "--link-pair-timeout-s", "5"]
KEY = splice_key(b"s" * 32)
NOW = 1_800_000_000_000


# -- preamble (sans-IO) -------------------------------------------------------------------------

def _forged(**change: object) -> bytes:
    msg = json.loads(make_preamble(KEY, "procA", "procB", "w1", NOW))
    msg.update(change)
    return json.dumps(msg).encode()


PREAMBLES = [
    ("valid", make_preamble(KEY, "procA", "procB", "w1", NOW), None),
    ("other key", make_preamble(splice_key(b"x" * 32), "procA", "procB", "w1", NOW), "bad mac"),
    ("for another process", make_preamble(KEY, "procC", "procB", "w1", NOW), "not this process"),
    ("stale", make_preamble(KEY, "procA", "procB", "w1", NOW - MAX_SKEW_MS - 1), "stale"),
    ("waiter changed", _forged(waiter="w2"), "bad mac"),
    ("not json", b"\xff{", "malformed"),
    ("no mac", b'{"v":1,"to":"procA","from":"b","waiter":"w","ts":1}', "malformed"),
    ("ts a float", _forged(ts=1.5), "malformed"),
    ("ts a bool", _forged(ts=True), "malformed"),
    ("version 2", _forged(v=2), "malformed"),
    ("a list", b"[1,2]", "malformed"),
]


@pytest.mark.parametrize(("line", "why"), [p[1:] for p in PREAMBLES],
                         ids=[p[0] for p in PREAMBLES])
def test_preamble(line: bytes, why: str | None) -> None:
    if why is None:
        assert check_preamble(line.strip(), KEY, "procA", NOW + 5) == "w1"
    else:
        with pytest.raises(PreambleError, match=why):
            check_preamble(line.strip(), KEY, "procA", NOW)


# -- frame boundaries of the stream from A (sans-IO) ---------------------------------------------

STREAMS = [
    ("small", [server_frame(0x2, b"x" * n) for n in (0, 1, 125)], None),
    ("16-bit length", [server_frame(0x2, b"y" * 126), server_frame(0x2, b"z" * 65535)], None),
    ("64-bit length", [server_frame(0x2, b"w" * 70000)], None),
    ("ping then close", [server_frame(OP_PING, b"p"), close_frame(4410, "peer gone")], 4410),
    ("data then close", [server_frame(0x1, b"{}"), close_frame(1000, "")], 1000),
    ("close without code", [server_frame(0x8, b"")], 1005),
]


@pytest.mark.parametrize(("frames", "code"), [s[1:] for s in STREAMS],
                         ids=[s[0] for s in STREAMS])
@pytest.mark.parametrize("chunk", [1, 3, 7, 1000, 1 << 20])
def test_frame_tracker_finds_boundaries_in_any_split(
    frames: list[bytes], code: int | None, chunk: int
) -> None:
    t = ServerFrameTracker()
    data = b"".join(frames)
    ends = set()
    pos = 0
    for f in frames:
        pos += len(f)
        ends.add(pos)
    for i in range(0, len(data), chunk):
        t.feed(memoryview(data)[i : i + chunk])
        assert t.at_boundary() == (min(i + chunk, len(data)) in ends)
    assert t.close_code == code


# -- real processes ------------------------------------------------------------------------------


def _paths(relay: RelayProcess) -> list[str]:
    return [ln["path"] for ln in relay.log_lines() if ln.get("msg") == "link end paired"]


async def _first_on_second_on(
    r1: RelayProcess, r2: RelayProcess, a: IdentityKey, b: IdentityKey, ca: RelayClient,
    cb: RelayClient, session: str,
) -> tuple[object, object]:
    """Open a link whose first (waiting) end is ``a`` on ``r1``, second ``b`` on ``r2``."""
    first = asyncio.create_task(ca.open_link(session, b.did, timeout=15))
    await asyncio.sleep(0.5)
    lb = await cb.open_link(session, a.did, timeout=15)
    return await first, lb


def _metrics(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:  # noqa: S310
        return r.read().decode()


def _splice_port(relay: RelayProcess) -> int:
    started = next(ln for ln in relay.log_lines() if ln.get("msg") == "started")
    return int(started["link_splice"].rsplit(":", 1)[1])


async def test_cross_process_link_is_spliced_carries_frames_and_codes(
    redis_server: RedisServer, tmp_path: Path,  # noqa: F811
) -> None:
    url = redis_server.url(11)
    a, b = IdentityKey.generate(), IdentityKey.generate()
    with start_relay(url, ARGS, home=tmp_path) as r1, start_relay(url, ARGS, home=tmp_path) as r2:
        async with RelayClient(r1.url, a) as ca, RelayClient(r2.url, b) as cb:
            la, lb = await _first_on_second_on(r1, r2, a, b, ca, cb, "sp")
            sizes = [1, 64, 65536, 300_000, 0, 1_000_000] * 4

            async def send(link: object, tag: bytes) -> None:
                for i, n in enumerate(sizes):
                    await link.send(tag + struct.pack(">I", i) + os.urandom(n))  # type: ignore[attr-defined]

            async def recv(link: object, tag: bytes) -> None:
                for i, n in enumerate(sizes):
                    frame = await link.recv(timeout=15)  # type: ignore[attr-defined]
                    assert frame[:1] == tag and struct.unpack(">I", frame[1:5])[0] == i
                    assert len(frame) == n + 5

            await asyncio.wait_for(
                asyncio.gather(send(la, b"a"), send(lb, b"b"), recv(lb, b"a"), recv(la, b"b")),
                60,
            )
            await lb.close()
            with pytest.raises(LinkClosed) as exc:
                await la.recv(timeout=10)
            assert exc.value.close_code == CloseCode.PEER_CLOSED
            await asyncio.sleep(0.5)
        assert _paths(r1) == ["spliced"] and _paths(r2) == ["spliced"]
        metrics = await asyncio.to_thread(_metrics, r2.url)
        assert "didmesh_relay_links_spliced_total 1" in metrics
        assert "didmesh_relay_links_splice_failed_total 0" in metrics
        closed = [ln for ln in r2.log_lines() if ln.get("msg") == "link end closed"]
        assert closed and closed[0]["code"] == CloseCode.NORMAL


@pytest.mark.parametrize("kill", ["first", "second"])
async def test_killing_either_process_closes_the_other_end_at_once(
    redis_server: RedisServer, tmp_path: Path, kill: str,  # noqa: F811
) -> None:
    url = redis_server.url(12 if kill == "first" else 13)
    a, b = IdentityKey.generate(), IdentityKey.generate()
    with start_relay(url, ARGS, home=tmp_path) as r1, start_relay(url, ARGS, home=tmp_path) as r2:
        async with RelayClient(r1.url, a) as ca, RelayClient(r2.url, b) as cb:
            la, lb = await _first_on_second_on(r1, r2, a, b, ca, cb, "k" + kill)
            await la.send(b"before")  # type: ignore[attr-defined]
            assert await lb.recv(timeout=5) == b"before"  # type: ignore[attr-defined]
            victim, survivor = (r1, lb) if kill == "first" else (r2, la)
            victim.kill()
            t0 = time.monotonic()
            with pytest.raises(LinkClosed) as exc:
                await survivor.recv(timeout=10)  # type: ignore[attr-defined]
            # the second end's process sees the splice to the first's drop without a close
            # frame: 4411, the relay lost the link; the first end's process cannot tell its
            # second end's process dying from that end's client going: 4410 (the mesh gives
            # a 4410 link a short grace to come back, specs/mesh.md 6.2)
            assert exc.value.close_code == (
                CloseCode.PEER_RELAY_GONE if kill == "first" else CloseCode.PEER_GONE)
            assert time.monotonic() - t0 < 2.0  # at once, not at a liveness bound


async def test_a_forged_splice_is_refused_and_harms_no_waiting_end(
    redis_server: RedisServer, tmp_path: Path,  # noqa: F811
) -> None:
    url = redis_server.url(14)
    a, b = IdentityKey.generate(), IdentityKey.generate()
    with start_relay(url, ARGS, home=tmp_path) as r1, start_relay(url, ARGS, home=tmp_path) as r2:
        port = _splice_port(r1)
        async with RelayClient(r1.url, a) as ca, RelayClient(r2.url, b) as cb:
            first = asyncio.create_task(ca.open_link("f", b.did, timeout=15))
            await asyncio.sleep(0.5)
            for line in (make_preamble(splice_key(b"guess" * 7), "x", "y", "z",
                                       int(time.time() * 1000)), b"x" * 2000, b"junk\n"):
                def probe(data: bytes = line) -> bytes:
                    with socket.create_connection(("127.0.0.1", port), 5) as s:
                        s.settimeout(8)
                        s.sendall(data)
                        return s.recv(200)

                answer = await asyncio.to_thread(probe)
                assert answer.startswith(b"no "), answer

            def flood() -> bytes:  # silent connections fill the preamble slots; one more is cut
                held = [socket.create_connection(("127.0.0.1", port), 5)
                        for _ in range(MAX_PENDING)]
                try:
                    time.sleep(0.3)
                    with socket.create_connection(("127.0.0.1", port), 5) as s:
                        s.settimeout(3)
                        try:
                            return s.recv(10)
                        except ConnectionResetError:
                            return b""
                finally:
                    for h in held:
                        h.close()

            assert await asyncio.to_thread(flood) == b""
            await asyncio.sleep(0.5)
            lb = await cb.open_link("f", a.did, timeout=15)  # the real second end still pairs
            la = await first
            await lb.send(b"ok")
            assert await la.recv(timeout=5) == b"ok"
        assert _paths(r2) == ["spliced"]


async def test_with_splicing_off_links_cross_through_redis(
    redis_server: RedisServer, tmp_path: Path,  # noqa: F811
) -> None:
    url = redis_server.url(15)
    args = [*ARGS, "--link-splice-listen", ""]
    a, b = IdentityKey.generate(), IdentityKey.generate()
    with start_relay(url, args, home=tmp_path) as r1, start_relay(url, args, home=tmp_path) as r2:
        async with RelayClient(r1.url, a) as ca, RelayClient(r2.url, b) as cb:
            la, lb = await _first_on_second_on(r1, r2, a, b, ca, cb, "off")
            await la.send(b"via redis")  # type: ignore[attr-defined]
            assert await lb.recv(timeout=5) == b"via redis"  # type: ignore[attr-defined]
        assert _paths(r2) == ["cross-process"]
        started = next(ln for ln in r1.log_lines() if ln.get("msg") == "started")
        assert started["link_splice"] == "off"


@pytest.mark.parametrize("bad", ["nope", "127.0.0.1", ":80", "127.0.0.1:99999", "h:-1"])
def test_a_bad_splice_address_is_named(bad: str) -> None:
    from didmesh.relay.config import RelayConfig
    from didmesh.relay.errors import RelayConfigError

    with pytest.raises(RelayConfigError, match="link_splice_listen must be HOST:PORT"):
        RelayConfig(link_splice_listen=bad)
    assert RelayConfig(link_splice_listen="").link_splice_listen == ""
    for wildcard in ("0.0.0.0:0", "[::]:7000"):
        with pytest.raises(RelayConfigError, match="give an address they reach"):
            RelayConfig(link_splice_listen=wildcard)


async def test_a_spliced_link_between_two_tls_serving_processes(
    redis_server: RedisServer, tmp_path: Path,  # noqa: F811
) -> None:
    """With ``--tls-cert`` the second end's process copies the decrypted bytes of its
    client's TLS connection to the first end's process and back."""
    from tls_helpers import make_pki

    pki = make_pki(tmp_path / "pki")
    url = redis_server.url(10)
    args = [*ARGS, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    a, b = IdentityKey.generate(), IdentityKey.generate()
    with start_relay(url, args, home=tmp_path) as r1, start_relay(url, args, home=tmp_path) as r2:
        assert r1.url.startswith("https://")
        async with RelayClient(r1.url, a, ca_file=str(pki.ca)) as ca, \
                RelayClient(r2.url, b, ca_file=str(pki.ca)) as cb:
            la, lb = await _first_on_second_on(r1, r2, a, b, ca, cb, "tls")
            big = os.urandom(500_000)
            for _ in range(3):
                await la.send(big)  # type: ignore[attr-defined]
                await lb.send(b"small")  # type: ignore[attr-defined]
                assert await lb.recv(timeout=10) == big  # type: ignore[attr-defined]
                assert await la.recv(timeout=10) == b"small"  # type: ignore[attr-defined]
            await la.close()  # type: ignore[attr-defined]
            with pytest.raises(LinkClosed) as exc:
                await lb.recv(timeout=10)  # type: ignore[attr-defined]
            assert exc.value.close_code == CloseCode.PEER_CLOSED
        assert _paths(r1) == ["spliced"] and _paths(r2) == ["spliced"]


async def test_an_unreachable_splice_address_falls_back_to_redis(
    redis_server: RedisServer, tmp_path: Path,  # noqa: F811
) -> None:
    """A process whose advertised address does not answer (another host's loopback, a
    firewall) is reached through Redis pub/sub instead: the link works, the metric says so."""
    import redis

    url = redis_server.url(7)
    a, b = IdentityKey.generate(), IdentityKey.generate()
    with start_relay(url, ARGS, home=tmp_path) as r1, start_relay(url, ARGS, home=tmp_path) as r2:
        r = redis.Redis.from_url(url)
        try:
            keys = [k for k in r.keys("*") if b"splice:" in k]
            assert len(keys) == 2
            for k in keys:  # a port nothing listens on (refused at once)
                r.set(k, b"127.0.0.1:1", px=60_000)
        finally:
            r.close()
        async with RelayClient(r1.url, a) as ca, RelayClient(r2.url, b) as cb:
            la, lb = await _first_on_second_on(r1, r2, a, b, ca, cb, "fb")
            await la.send(b"through redis")  # type: ignore[attr-defined]
            assert await lb.recv(timeout=5) == b"through redis"  # type: ignore[attr-defined]
        assert _paths(r2) == ["cross-process"]
        metrics = await asyncio.to_thread(_metrics, r2.url)
        assert "didmesh_relay_links_splice_failed_total 1" in metrics
        warned = [ln for ln in r2.log_lines() if "splice refused or failed" in ln.get("msg", "")]
        assert warned and "ConnectionRefusedError" in warned[0]["answer"]
