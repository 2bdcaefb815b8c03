"""A real relay process on loopback, driven by the real client and by raw HTTP/WebSocket
requests: exchange, links, and every kind of bad input gets its status and error code."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.auth import challenge_signing_input
from didmesh.relay.client import RelayClient
from didmesh.relay.envelope import b64url, seal
from didmesh.relay.errors import (
    ForgedSender,
    InboxFull,
    LinkClosed,
    LinkLimit,
    Replay,
)
from didmesh.relay.protocol import CloseCode, LinkRequest
from relay_helpers import RelayProcess, shared_relay, start_relay  # noqa: F401


def now_ms() -> int:
    return int(time.time() * 1000)


async def raw(
    method: str, url: str, *, body: Any = None, data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    h = {"Content-Type": "application/json", **(headers or {})}
    payload = data
    if payload is None and body is not None:
        payload = json.dumps(body).encode()
    async with aiohttp.ClientSession() as s, s.request(
        method, url, data=payload, headers=h, timeout=aiohttp.ClientTimeout(total=10)
    ) as r:
        text = await r.read()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


def code_of(body: Any) -> str:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["code"])


@pytest.fixture
def url(shared_relay: RelayProcess) -> str:  # noqa: F811
    return shared_relay.url


@pytest.fixture
async def pair(url: str) -> AsyncIterator[tuple[RelayClient, RelayClient]]:
    a, b = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(url, a) as ca, RelayClient(url, b) as cb:
        yield ca, cb


# -- happy paths ------------------------------------------------------------------------------


async def test_two_clients_exchange_encrypted_envelopes(
    pair: tuple[RelayClient, RelayClient],
) -> None:
    ca, cb = pair
    got: list[bytes] = []

    async def receive(n: int) -> None:
        async for item in cb.inbox():
            got.append(item.open(cb.identity))
            await cb.ack([item.id])
            if len(got) == n:
                return

    task = asyncio.create_task(receive(3))
    await ca.send(cb.identity.did, "sess", b"one")
    await asyncio.sleep(0.1)  # some arrive while the push socket is open, some before
    await ca.send(cb.identity.did, "sess", b"two")
    await ca.send(cb.identity.did, "sess", b"three")
    await asyncio.wait_for(task, 10)
    assert got == [b"one", b"two", b"three"]
    assert await cb.fetch() == []  # acknowledged = deleted
    # and the other way round, by long-poll
    poll = asyncio.create_task(ca.fetch(wait=5))
    await asyncio.sleep(0.2)
    await cb.send(ca.identity.did, "sess", b"reply")
    items = await asyncio.wait_for(poll, 10)
    assert [i.open(ca.identity) for i in items] == [b"reply"]


async def test_inbox_auto_ack_over_the_push_socket(
    pair: tuple[RelayClient, RelayClient],
) -> None:
    ca, cb = pair
    for i in range(5):
        await ca.send(cb.identity.did, "s", b"%d" % i)
    got = []
    async with asyncio.timeout(10):
        async for item in cb.inbox(auto_ack=True):
            got.append(item.open(cb.identity))
            if len(got) == 5:
                assert await cb.ack([item.id]) == 1  # the one we break on: ours to ack
                break
        while await cb.fetch():  # the acks travel asynchronously over the socket
            await asyncio.sleep(0.05)
    assert got == [b"0", b"1", b"2", b"3", b"4"]


async def test_link_forwards_frames_in_order_both_ways(
    pair: tuple[RelayClient, RelayClient],
) -> None:
    ca, cb = pair
    la, lb = await asyncio.gather(
        ca.open_link("sess-link", cb.identity.did), cb.open_link("sess-link", ca.identity.did)
    )
    assert la.peer == cb.identity.did and lb.peer == ca.identity.did
    sizes = [1, 64, 65536, 100_000, 0, 7] * 20

    async def send(link: Any, tag: bytes) -> None:
        for i, n in enumerate(sizes):
            await link.send(tag + struct.pack(">I", i) + os.urandom(n))

    async def recv(link: Any, tag: bytes) -> None:
        for i, n in enumerate(sizes):
            frame = await link.recv(timeout=10)
            assert frame[:1] == tag and struct.unpack(">I", frame[1:5])[0] == i
            assert len(frame) == n + 5

    await asyncio.gather(send(la, b"a"), send(lb, b"b"), recv(lb, b"a"), recv(la, b"b"))
    await la.close()
    with pytest.raises(LinkClosed) as exc:
        await lb.recv(timeout=5)
    assert exc.value.close_code == CloseCode.PEER_CLOSED


async def test_several_links_between_one_pair_use_link_ids(
    pair: tuple[RelayClient, RelayClient],
) -> None:
    ca, cb = pair
    links = await asyncio.gather(
        ca.open_link("s", cb.identity.did, link_id="x"),
        ca.open_link("s", cb.identity.did, link_id="y"),
        cb.open_link("s", ca.identity.did, link_id="y"),
        cb.open_link("s", ca.identity.did, link_id="x"),
    )
    ax, ay, by, bx = links
    await ax.send(b"to-x")
    await ay.send(b"to-y")
    assert await bx.recv(timeout=5) == b"to-x"
    assert await by.recv(timeout=5) == b"to-y"
    for link in links:
        await link.close()


# -- bad input ------------------------------------------------------------------------------------


async def test_forged_sender_and_bad_signature(url: str) -> None:
    alice, bob, mallory = (IdentityKey.generate() for _ in range(3))
    d = seal(alice, bob.did, "s", b"x", now_ms=now_ms()).to_dict()
    forged = {**d, "from": mallory.did}
    status, body = await raw("POST", url + "/v1/envelopes", body=forged)
    assert (status, code_of(body)) == (403, "forged_sender")
    sig = bytearray(b64url_decode(d["sig"]))
    sig[0] ^= 1
    status, body = await raw("POST", url + "/v1/envelopes", body={**d, "sig": b64url(bytes(sig))})
    assert (status, code_of(body)) == (403, "forged_sender")
    async with RelayClient(url, mallory) as cm:
        from didmesh.relay.envelope import Envelope

        with pytest.raises(ForgedSender):
            await cm.post(Envelope.from_dict(forged))


def b64url_decode(s: str) -> bytes:
    from didmesh.relay.envelope import b64url_decode as dec

    return dec(s)


async def test_did_not_controlled(url: str) -> None:
    alice, mallory = IdentityKey.generate(), IdentityKey.generate()
    _, ch = await raw("POST", url + "/v1/auth/challenge", body={"did": alice.did})
    sig = b64url(mallory.sign(challenge_signing_input(ch["relay_id"], alice.did, ch["challenge"])))
    status, body = await raw(
        "POST", url + "/v1/auth/token",
        body={"did": alice.did, "challenge": ch["challenge"], "signature": sig},
    )
    assert (status, code_of(body)) == (403, "did_not_controlled")


async def test_challenge_is_single_use(url: str) -> None:
    alice = IdentityKey.generate()
    _, ch = await raw("POST", url + "/v1/auth/challenge", body={"did": alice.did})
    sig = b64url(alice.sign(challenge_signing_input(ch["relay_id"], alice.did, ch["challenge"])))
    req = {"did": alice.did, "challenge": ch["challenge"], "signature": sig}
    status, tok = await raw("POST", url + "/v1/auth/token", body=req)
    assert status == 200 and tok["did"] == alice.did
    status, body = await raw("POST", url + "/v1/auth/token", body=req)
    assert (status, code_of(body)) == (401, "auth_invalid")


async def test_replay_duplicate_and_conflict(pair: tuple[RelayClient, RelayClient]) -> None:
    ca, cb = pair
    url = ca.base_url
    env = seal(ca.identity, cb.identity.did, "s", b"once", now_ms=now_ms())
    s1, b1 = await raw("POST", url + "/v1/envelopes", data=env.to_json())
    s2, b2 = await raw("POST", url + "/v1/envelopes", data=env.to_json())
    assert (s1, b1["duplicate"], s2, b2["duplicate"]) == (201, False, 200, True)
    assert b1["received_ms"] == b2["received_ms"]
    assert len(await cb.fetch()) == 1  # stored once
    same_id = seal(ca.identity, cb.identity.did, "s", b"different", now_ms=env.ts,
                   rng=_rng_with_id(env.id))
    assert same_id.id == env.id
    status, body = await raw("POST", url + "/v1/envelopes", data=same_id.to_json())
    assert (status, code_of(body)) == (409, "id_conflict")
    await cb.ack([env.id])
    status, body = await raw("POST", url + "/v1/envelopes", data=env.to_json())
    assert (status, code_of(body)) == (409, "replay")
    with pytest.raises(Replay):
        await ca.post(env)
    assert await cb.fetch() == []


def _rng_with_id(id_: str) -> Any:
    raw_id = b64url_decode(id_)
    calls = iter([raw_id])
    return lambda n: next(calls, None) or os.urandom(n)


async def test_stale_and_future_envelopes(pair: tuple[RelayClient, RelayClient]) -> None:
    ca, cb = pair
    for ts in (now_ms() - 901_000, now_ms() + 120_000):
        env = seal(ca.identity, cb.identity.did, "s", b"x", now_ms=ts, ttl=3600)
        status, body = await raw("POST", ca.base_url + "/v1/envelopes", data=env.to_json())
        assert (status, code_of(body)) == (409, "stale")


@pytest.mark.parametrize(
    ("path", "payload", "status", "code"),
    [
        ("/v1/envelopes", b"{not json", 400, "invalid_envelope"),
        ("/v1/envelopes", b'{"v": 1}', 400, "invalid_envelope"),
        ("/v1/envelopes", b"[]", 400, "invalid_envelope"),
        ("/v1/auth/challenge", b"{nope", 400, "malformed"),
        ("/v1/auth/challenge", b'{"did": "did:web:x"}', 400, "malformed"),
        ("/v1/auth/challenge", b'{"did": 1, "x": 2}', 400, "malformed"),
        ("/v1/auth/token", b'{"did": "x"}', 400, "malformed"),
        ("/v1/auth/token", b"\xff\xfe", 400, "malformed"),
    ],
)
async def test_malformed_requests(
    url: str, path: str, payload: bytes, status: int, code: str
) -> None:
    got_status, body = await raw("POST", url + path, data=payload)
    assert (got_status, code_of(body)) == (status, code)


async def test_wrong_method_content_type_and_path(url: str) -> None:
    status, body = await raw("GET", url + "/v1/envelopes")
    assert (status, code_of(body)) == (405, "method_not_allowed")
    status, body = await raw("POST", url + "/v1/envelopes", data=b"x",
                             headers={"Content-Type": "text/plain"})
    assert (status, code_of(body)) == (415, "unsupported_media_type")
    status, body = await raw("GET", url + "/nothing-here")
    assert (status, code_of(body)) == (404, "not_found")


async def test_oversized(pair: tuple[RelayClient, RelayClient]) -> None:
    ca, cb = pair
    env = seal(ca.identity, cb.identity.did, "s", b"x" * 70_000, now_ms=now_ms())
    status, body = await raw("POST", ca.base_url + "/v1/envelopes", data=env.to_json())
    assert (status, code_of(body)) == (413, "too_large")
    status, body = await raw("POST", ca.base_url + "/v1/envelopes", data=b" " * 300_000)
    assert (status, code_of(body)) == (413, "too_large")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "auth_required"),
        ("Basic abc", "auth_invalid"),
        ("Bearer t1.AAAA.AAAA", "auth_invalid"),
        ("Bearer " + "x" * 2000, "auth_invalid"),
    ],
)
async def test_auth_missing_or_invalid(url: str, header: str | None, code: str) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in (("GET", "/v1/inbox"), ("POST", "/v1/inbox/ack")):
        status, body = await raw(method, url + path, body={"ids": []}, headers=headers)
        assert (status, code_of(body)) == (401, code)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await s.ws_connect(url + "/v1/link", headers=headers)
        assert exc.value.status == 401
        assert exc.value.headers is not None
        assert exc.value.headers["X-Didmesh-Error"] == code


async def test_link_frames_before_linked_are_refused(url: str) -> None:
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(url, alice) as ca, aiohttp.ClientSession() as s:
        headers = {"Authorization": "Bearer " + await ca.token()}
        # 1. a binary frame as the first message: the link was never authorized
        async with s.ws_connect(url + "/v1/link", headers=headers) as ws:
            await ws.send_bytes(b"sneaky")
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == CloseCode.NOT_LINKED
        # 2. a frame while still waiting for the peer
        async with s.ws_connect(url + "/v1/link", headers=headers) as ws:
            await ws.send_str(LinkRequest("s", bob.did).to_json())
            await asyncio.sleep(0.1)
            await ws.send_bytes(b"too early")
            msg = await ws.receive(timeout=5)
            assert ws.close_code == CloseCode.NOT_LINKED
        # 3. a malformed request
        async with s.ws_connect(url + "/v1/link", headers=headers) as ws:
            await ws.send_str('{"type": "link", "session": "s", "peer": "' + alice.did + '"}')
            await ws.receive(timeout=5)
            assert ws.close_code == CloseCode.MALFORMED
        # the waiting end of (2) was withdrawn: bob can pair with a fresh alice end
        async with RelayClient(url, bob) as cb:
            la, lb = await asyncio.gather(
                ca.open_link("s", bob.did), cb.open_link("s", alice.did)
            )
            await la.send(b"ok")
            assert await lb.recv(timeout=5) == b"ok"


async def test_duplicate_link_request(pair: tuple[RelayClient, RelayClient]) -> None:
    ca, cb = pair
    first = asyncio.create_task(ca.open_link("dup", cb.identity.did))
    await asyncio.sleep(0.3)
    with pytest.raises(LinkClosed) as exc:
        await ca.open_link("dup", cb.identity.did)
    assert exc.value.close_code == CloseCode.DUPLICATE
    lb = await cb.open_link("dup", ca.identity.did)
    la = await asyncio.wait_for(first, 5)
    await lb.send(b"fine")
    assert await la.recv(timeout=5) == b"fine"


async def test_metrics_and_info(url: str, pair: tuple[RelayClient, RelayClient]) -> None:
    ca, _ = pair
    info = await ca.info()
    assert info["software"] == "didmesh-relay" and info["protocol"] == 1
    assert info["relay_id"].startswith("relay-") and info["store"] == "memory"
    assert info["limits"]["rate_ip_per_s"] == 0 and info["limits"]["rate_did_per_s"] == 1000
    await raw("POST", url + "/v1/envelopes", data=b"{not json")
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    for name in ("envelopes_stored_total", "envelopes_delivered_total",
                 "envelopes_expired_total", "links_active", "link_bytes_forwarded_total"):
        assert f"\ndidmesh_relay_{name} " in text
    line = next(x for x in text.splitlines() if 'code="invalid_envelope"' in x)
    assert int(line.split()[-1]) >= 1
    status, body = await raw("GET", url + "/healthz")
    assert (status, body) == (200, {"status": "ok"})


# -- limits: relays with small limits ------------------------------------------------------


@pytest.fixture(scope="module")
def tight_relay(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with start_relay(
        "memory",
        [
            "--inbox-max-envelopes", "3", "--links-per-did", "2", "--link-max-bytes", "200000",
            "--link-max-duration-s", "1.5", "--link-pair-timeout-s", "0.5",
            "--rate-ip-per-s", "0", "--token-ttl-s", "1",
        ],
        home=tmp_path_factory.mktemp("tight"),
    ) as relay:
        yield relay


async def test_inbox_full(tight_relay: RelayProcess) -> None:
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(tight_relay.url, alice, retries=0) as ca, \
            RelayClient(tight_relay.url, bob) as cb:
        for _ in range(3):
            await ca.send(bob.did, "s", b"x")
        with pytest.raises(InboxFull):
            await ca.send(bob.did, "s", b"x")
        env = seal(alice, bob.did, "s", b"x", now_ms=now_ms())
        status, body = await raw("POST", tight_relay.url + "/v1/envelopes", data=env.to_json())
        assert (status, code_of(body)) == (507, "inbox_full")
        items = await cb.fetch()
        await cb.ack([items[0].id])
        await ca.post(env)  # room again


async def test_auth_expired_and_client_reauthenticates(tight_relay: RelayProcess) -> None:
    alice = IdentityKey.generate()
    async with RelayClient(tight_relay.url, alice) as ca:
        token = await ca.token()
        await asyncio.sleep(1.1)
        status, body = await raw("GET", tight_relay.url + "/v1/inbox",
                                 headers={"Authorization": "Bearer " + token})
        assert (status, code_of(body)) == (401, "auth_expired")
        assert await ca.fetch() == []  # the client notices and authenticates again


async def test_link_byte_budget(tight_relay: RelayProcess) -> None:
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(tight_relay.url, alice) as ca, RelayClient(tight_relay.url, bob) as cb:
        la, lb = await asyncio.gather(ca.open_link("s", bob.did), cb.open_link("s", alice.did))
        assert la.linked.max_bytes == 200_000
        got = 0
        with pytest.raises(LinkClosed) as exc:
            for _ in range(10):
                await la.send(b"z" * 30_000)
                got += len(await lb.recv(timeout=5))
        assert exc.value.close_code == CloseCode.BYTES_EXCEEDED
        assert got <= 200_000
        with pytest.raises(LinkClosed) as exc2:
            await la.recv(timeout=5)
        assert exc2.value.close_code == CloseCode.BYTES_EXCEEDED


async def test_link_duration_and_pair_timeout(tight_relay: RelayProcess) -> None:
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(tight_relay.url, alice) as ca, RelayClient(tight_relay.url, bob) as cb:
        t0 = time.monotonic()
        with pytest.raises(LinkClosed) as exc:
            await ca.open_link("lonely", bob.did)
        assert exc.value.close_code == CloseCode.PAIR_TIMEOUT
        assert 0.4 < time.monotonic() - t0 < 5
        la, lb = await asyncio.gather(ca.open_link("s", bob.did), cb.open_link("s", alice.did))
        t0 = time.monotonic()
        with pytest.raises(LinkClosed) as exc:
            while True:
                await la.send(b"tick")
                await lb.recv(timeout=5)
                await asyncio.sleep(0.05)
        assert exc.value.close_code == CloseCode.DURATION_EXCEEDED
        assert time.monotonic() - t0 < 4


async def test_concurrent_links_per_did(tight_relay: RelayProcess) -> None:
    alice = IdentityKey.generate()
    peers = [IdentityKey.generate() for _ in range(3)]
    async with RelayClient(tight_relay.url, alice) as ca:
        waiting = [asyncio.create_task(ca.open_link("s", p.did)) for p in peers[:2]]
        await asyncio.sleep(0.2)
        with pytest.raises(LinkLimit):
            await ca.open_link("s", peers[2].did)
        for t in waiting:
            with pytest.raises(LinkClosed):
                await t
        # slots are released when the waiting ends time out
        with pytest.raises(LinkClosed) as exc:
            await ca.open_link("s", peers[2].did)
        assert exc.value.close_code == CloseCode.PAIR_TIMEOUT


async def test_rate_limit_flood_from_one_client_while_another_is_served(tmp_path: Path) -> None:
    args = ["--rate-did-per-s", "20", "--rate-did-burst", "20",
            "--rate-ip-per-s", "100", "--rate-ip-burst", "100"]
    with start_relay("memory", args, home=tmp_path) as relay:
        flooder, calm = IdentityKey.generate(), IdentityKey.generate()
        async with RelayClient(relay.url, flooder, retries=0) as cf, \
                RelayClient(relay.url, calm, retries=0, local_addr="127.0.0.2") as cc:
            token = await cf.token()
            statuses: list[int] = []
            codes: set[str] = set()

            async def flood() -> None:
                async with aiohttp.ClientSession() as s:
                    for _ in range(10):
                        rs = await asyncio.gather(*(
                            s.get(relay.url + "/v1/inbox",
                                  headers={"Authorization": "Bearer " + token})
                            for _ in range(30)
                        ))
                        for r in rs:
                            statuses.append(r.status)
                            if r.status == 429:
                                assert r.headers["Retry-After"].isdigit()
                                codes.add(code_of(await r.json()))
                            r.release()

            calm_latency: list[float] = []

            async def calm_work() -> None:
                for _ in range(10):
                    t0 = time.perf_counter()
                    await cc.send(calm.did, "s", b"still here")
                    calm_latency.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.02)

            await asyncio.gather(flood(), calm_work())
            assert statuses.count(429) > 100  # the flooder is throttled (per DID and per IP)
            assert len(calm_latency) == 10 and max(calm_latency) < 2.0
            assert len(await cc.fetch()) == 10
            assert codes == {"rate_limited"}


async def test_slow_and_half_open_connections_do_not_block_others(
    url: str, shared_relay: RelayProcess,  # noqa: F811
) -> None:
    host, port = url.removeprefix("http://").split(":")
    # slowloris: 50 connections that send half a request line and stall; 20 that send nothing
    stalled = []
    for i in range(70):
        r, w = await asyncio.open_connection(host, int(port))
        if i < 50:
            w.write(b"POST /v1/envelopes HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        stalled.append(w)
    # a link whose receiver never reads: the sender must be held back, not buffered forever
    a, b, c, d = (IdentityKey.generate() for _ in range(4))
    async with RelayClient(url, a) as ca, RelayClient(url, b) as cb, \
            RelayClient(url, c) as cc, RelayClient(url, d) as cd:
        la, _lb = await asyncio.gather(ca.open_link("s", b.did), cb.open_link("s", a.did))
        lc, ld = await asyncio.gather(cc.open_link("s", d.did), cd.open_link("s", c.did))
        rss0 = _rss_kb(shared_relay.proc.pid)
        sent = 0

        async def hog() -> None:
            nonlocal sent
            chunk = b"h" * 65536
            while True:
                await la.send(chunk)
                sent += len(chunk)

        hog_task = asyncio.create_task(hog())
        rtts = []
        for _ in range(200):
            t0 = time.perf_counter()
            await lc.send(b"ping")
            assert await ld.recv(timeout=5) == b"ping"
            rtts.append(time.perf_counter() - t0)
        await asyncio.sleep(0.5)
        await ca.send(d.did, "s", b"mail still works")
        assert [i.open(d) for i in await cd.fetch()] == [b"mail still works"]
        hog_task.cancel()
        rss1 = _rss_kb(shared_relay.proc.pid)
        rtts.sort()
        assert rtts[len(rtts) // 2] < 0.05
        assert sent < 64 * 1024 * 1024  # backpressure: bounded by socket buffers, not by RAM
        assert rss1 - rss0 < 64 * 1024
    for w in stalled:
        w.close()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_oversized_frame_and_idle_timeout(tmp_path: Path) -> None:
    args = ["--link-max-frame", "1000", "--ws-idle-timeout-s", "0.6", "--rate-ip-per-s", "0"]
    with start_relay("memory", args, home=tmp_path) as relay:
        alice, bob = IdentityKey.generate(), IdentityKey.generate()
        async with RelayClient(relay.url, alice) as ca, RelayClient(relay.url, bob) as cb:
            la, lb = await asyncio.gather(ca.open_link("s", bob.did), cb.open_link("s", alice.did))
            assert la.linked.max_frame == 1000
            await la.send(b"x" * 1000)
            assert len(await lb.recv(timeout=5)) == 1000
            with pytest.raises(LinkClosed, match="exceeds the relay's link_max_frame"):
                await la.send(b"x" * 1001)  # the client refuses it itself
            await la._ws.send_bytes(b"x" * 1001)  # and the relay, if a client does not
            with pytest.raises(LinkClosed) as exc:
                await lb.recv(timeout=5)
            assert exc.value.close_code == CloseCode.MESSAGE_TOO_BIG
            with pytest.raises(LinkClosed) as exc:
                await la.recv(timeout=5)
            # the offender's connection is dropped right after the close frame (aiohttp stops
            # reading it), so its kernel may report a reset before the 1009 frame is read
            assert exc.value.close_code in (CloseCode.MESSAGE_TOO_BIG, 1006)
            la, lb = await asyncio.gather(ca.open_link("t", bob.did), cb.open_link("t", alice.did))
            t0 = time.monotonic()
            for _ in range(4):  # traffic keeps it alive past the idle timeout
                await la.send(b"beat")
                await lb.recv(timeout=5)
                await asyncio.sleep(0.25)
            with pytest.raises(LinkClosed) as exc:
                await lb.recv(timeout=5)
            assert exc.value.close_code == CloseCode.IDLE_TIMEOUT
            assert time.monotonic() - t0 > 1.0
