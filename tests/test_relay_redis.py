"""Scaling out: two relay processes sharing one real redis-server."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.relay.errors import LinkClosed, Replay
from didmesh.relay.protocol import CloseCode, LinkRequest
from didmesh.relay.store.redis_limits import RECLAIM_BOUND_S
from relay_helpers import RedisServer, RelayProcess, redis_server, start_relay  # noqa: F401

ARGS = ["--rate-ip-per-s", "0", "--link-pair-timeout-s", "3"]


@pytest.fixture(scope="module")
def two_relays(
    redis_server: RedisServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RelayProcess, RelayProcess]]:
    home = tmp_path_factory.mktemp("redis-relays")
    url = redis_server.url(1)
    with start_relay(url, ARGS, home=home) as r1, start_relay(url, ARGS, home=home) as r2:
        yield r1, r2


async def test_envelope_posted_to_one_is_delivered_by_the_other(
    two_relays: tuple[RelayProcess, RelayProcess],
) -> None:
    r1, r2 = two_relays
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(r1.url, alice) as ca, RelayClient(r2.url, bob) as cb:
        info1, info2 = await ca.info(), await cb.info()
        assert info1["relay_id"] == info2["relay_id"]  # one relay, two processes
        # push: bob listens on r2 before alice posts on r1
        got: list[bytes] = []

        async def listen() -> None:
            async for item in cb.inbox():
                got.append(item.open(bob))
                await cb.ack([item.id])
                if len(got) == 2:
                    return

        task = asyncio.create_task(listen())
        await asyncio.sleep(0.3)
        env = await ca.send(bob.did, "s", b"via redis")
        await ca.send(bob.did, "s", b"second")
        await asyncio.wait_for(task, 10)
        assert got == [b"via redis", b"second"]
        # replay protection is shared as well
        async with RelayClient(r2.url, alice) as ca2:
            items = await cb.fetch()
            assert items == []
            from didmesh.relay.envelope import seal

            e = seal(alice, bob.did, "s", b"once", now_ms=ca.now_ms())
            await ca.post(e)
            assert (await ca2.post(e)).duplicate
            (item,) = await cb.fetch()
            await cb.ack([item.id])
            with pytest.raises(Replay):
                await ca2.post(e)
        assert env.id


async def test_token_from_one_process_works_on_the_other(
    two_relays: tuple[RelayProcess, RelayProcess],
) -> None:
    r1, r2 = two_relays
    bob = IdentityKey.generate()
    async with RelayClient(r1.url, bob) as c1:
        token = await c1.token()
    async with RelayClient(r2.url, bob) as c2:
        c2._token, c2._token_expires = token, c2.now_ms() + 60_000  # reuse r1's token on r2
        assert await c2.fetch() == []
        assert c2._token == token


async def test_link_with_ends_on_different_processes(
    two_relays: tuple[RelayProcess, RelayProcess],
) -> None:
    r1, r2 = two_relays
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(r1.url, alice) as ca, RelayClient(r2.url, bob) as cb:
        la, lb = await asyncio.gather(ca.open_link("x", bob.did), cb.open_link("x", alice.did))
        sizes = [1, 64, 65536, 300_000, 0] * 10  # > the 1 MiB credit window in total

        async def send(link: object, tag: bytes) -> None:
            for i, n in enumerate(sizes):
                await link.send(tag + struct.pack(">I", i) + os.urandom(n))  # type: ignore[attr-defined]

        async def recv(link: object, tag: bytes) -> None:
            for i, n in enumerate(sizes):
                frame = await link.recv(timeout=10)  # type: ignore[attr-defined]
                assert frame[:1] == tag and struct.unpack(">I", frame[1:5])[0] == i
                assert len(frame) == n + 5

        await asyncio.wait_for(
            asyncio.gather(send(la, b"a"), send(lb, b"b"), recv(lb, b"a"), recv(la, b"b")), 30
        )
        await lb.close()
        with pytest.raises(LinkClosed) as exc:
            await la.recv(timeout=10)
        assert exc.value.close_code == CloseCode.PEER_CLOSED


async def test_same_process_pairing_through_redis_and_timeouts(
    two_relays: tuple[RelayProcess, RelayProcess],
) -> None:
    r1, _ = two_relays
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(r1.url, alice) as ca, RelayClient(r1.url, bob) as cb:
        la, lb = await asyncio.gather(ca.open_link("y", bob.did), cb.open_link("y", alice.did))
        await la.send(b"local")
        assert await lb.recv(timeout=5) == b"local"
        await la.close()
        with pytest.raises(LinkClosed) as exc:
            await ca.open_link("nobody", bob.did)
        assert exc.value.close_code == CloseCode.PAIR_TIMEOUT


async def test_a_relay_process_dies_and_the_other_keeps_serving(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = redis_server.url(2)
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    with start_relay(url, ARGS, home=tmp_path) as r1, start_relay(url, ARGS, home=tmp_path) as r2:
        async with RelayClient(r1.url, alice) as ca:
            await ca.send(bob.did, "s", b"kept in redis")
        r1.kill()
        async with RelayClient(r2.url, bob) as cb:
            assert [i.open(bob) for i in await cb.fetch()] == [b"kept in redis"]


async def test_link_end_on_a_killed_process_is_closed_within_the_liveness_bound(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The surviving end learns its peer's relay process died within the liveness bound
    (not at the idle timeout, 300 s by default)."""
    url = redis_server.url(4)
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    with start_relay(url, ARGS, home=tmp_path) as r1, start_relay(url, ARGS, home=tmp_path) as r2:
        async with RelayClient(r1.url, alice) as ca, RelayClient(r2.url, bob) as cb:
            # alice's end first (on r1, the process killed): bob's process then holds the
            # splice to r1 and sees it drop without a close frame (4411). The other order
            # is the ambiguous one (tests/test_relay_splice.py, specs/mesh.md 6.2)
            first = asyncio.create_task(ca.open_link("k", bob.did, timeout=15))
            await asyncio.sleep(0.5)
            lb = await cb.open_link("k", alice.did, timeout=15)
            la = await first
            await la.send(b"before")
            assert await lb.recv(timeout=5) == b"before"
            r1.kill()
            t0 = asyncio.get_running_loop().time()
            with pytest.raises(LinkClosed) as exc:
                await lb.recv(timeout=RECLAIM_BOUND_S + 5)
            # 4411, not 4410: the relay lost the link, not the peer (the mesh resumes it)
            assert exc.value.close_code == CloseCode.PEER_RELAY_GONE
            assert asyncio.get_running_loop().time() - t0 < RECLAIM_BOUND_S + 2


async def test_cross_process_link_pings_and_cuts_a_silent_end(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Across processes the relay pings link ends too (link_heartbeat_s): an end that
    answers stays, one that never answers is cut and its peer hears 4410."""
    url = redis_server.url(8)  # a db of its own: the session shares one redis-server
    args = [*ARGS, "--link-heartbeat-s", "0.5"]
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    with start_relay(url, args, home=tmp_path) as r1, start_relay(url, args, home=tmp_path) as r2:
        async with RelayClient(r1.url, alice) as ca, RelayClient(r2.url, bob) as cb, \
                aiohttp.ClientSession() as s:
            # alice: a raw aiohttp socket that reads pings and never answers them
            ws = await s.ws_connect(
                r1.url + "/v1/link", headers={"Authorization": "Bearer " + await ca.token()},
                autoping=False,
            )
            await ws.ping(b"during pairing")  # answered while waiting for the peer
            await ws.send_str(LinkRequest("hb", bob.did).to_json())
            pong = await ws.receive(timeout=5)
            assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"during pairing")
            lb = await cb.open_link("hb", alice.did)
            assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT  # linked
            await ws.send_bytes(b"hello")
            assert await lb.recv(timeout=5) == b"hello"
            bob_reads = asyncio.create_task(lb.recv(timeout=10))  # bob answers pings
            t0 = asyncio.get_running_loop().time()
            pings = 0
            while True:
                msg = await ws.receive(timeout=5)
                if msg.type is not aiohttp.WSMsgType.PING:
                    break
                assert msg.data == b"didmesh"
                pings += 1
            assert pings >= 1
            with pytest.raises(LinkClosed) as exc:
                await bob_reads
            assert exc.value.close_code == CloseCode.PEER_GONE
            assert asyncio.get_running_loop().time() - t0 < 3.0
            await ws.close()


async def test_cross_process_link_duration_budget(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A link spanning two processes ends at link_max_duration_s like a local one: both
    ends hear 4452."""
    url = redis_server.url(9)  # a db of its own
    args = [*ARGS, "--link-max-duration-s", "1"]
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    with start_relay(url, args, home=tmp_path) as r1, start_relay(url, args, home=tmp_path) as r2:
        async with RelayClient(r1.url, alice) as ca, RelayClient(r2.url, bob) as cb:
            la, lb = await asyncio.gather(
                ca.open_link("d", bob.did), cb.open_link("d", alice.did)
            )
            codes = []
            for link in (la, lb):
                with pytest.raises(LinkClosed) as exc:
                    while True:
                        await link.recv(timeout=5)
                codes.append(exc.value.close_code)
            assert codes == [CloseCode.DURATION_EXCEEDED] * 2
