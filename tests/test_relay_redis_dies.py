"""A relay's Redis freezes or dies in the middle of its work (specs/relay.md, "Scaling out"):
every wait on Redis is bounded, so the relay answers each request with an error within a
bound instead of hanging, and serves again once Redis is back. Real redis-servers, each
of its own (they are frozen with SIGSTOP and killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.relay.envelope import seal
from didmesh.relay.errors import LinkClosed, RelayError, RelayInternalError
from didmesh.relay.limits import LimitSettings
from didmesh.relay.protocol import RESUMABLE_CLOSE_CODES, CloseCode
from didmesh.relay.store.base import PutPolicy, StoredEnvelope
from didmesh.relay.store.redis import REDIS_TIMEOUT_S, RedisStore
from relay_helpers import RedisServer, _popen_redis, _redis_up, start_redis, start_relay

#: the store's (or the relay's, through its Redis URL) timeout in these tests
TIMEOUT_S = 0.5
SETTINGS = LimitSettings(rate_ip_per_s=100, rate_ip_burst=100, rate_did_per_s=100,
                         rate_did_burst=100, links_per_did=5, links_total=10)  # fmt: skip


@contextlib.contextmanager
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for one test; never left frozen (SIGKILL ends a stopped one too)."""
    with start_redis() as server:
        try:
            yield server
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait(5)


def freeze(server: RedisServer) -> None:
    """The server keeps its sockets open but answers nothing (a hung or paused Redis)."""
    os.kill(server.proc.pid, signal.SIGSTOP)


def kill(server: RedisServer) -> None:
    server.proc.kill()
    server.proc.wait(5)


async def _outcome(call: Awaitable[Any]) -> tuple[float, BaseException | None]:
    """Seconds until ``call`` ended, and what it raised; bounded, so a hang fails here."""
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(30):
            await call
    except TimeoutError as exc:  # the bound above: the wait was not bounded inside
        return time.monotonic() - t0, AssertionError(f"still waiting after 30 s: {exc!r}")
    except Exception as exc:
        return time.monotonic() - t0, exc
    return time.monotonic() - t0, None


def _envelope(n: int) -> StoredEnvelope:
    now = int(time.time() * 1000)
    env = seal(IdentityKey.generate(), IdentityKey.generate().did, "s", b"x" * n, now_ms=now)
    return StoredEnvelope.of(env, received_ms=now, expires_ms=env.expires_ms)


def _store_calls(store: RedisStore) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One of each kind of wait the store and its bus have on Redis."""
    limits = store.limits(SETTINGS, time.time)
    policy = PutPolicy(seen_until_ms=2**50, inbox_max_count=10, inbox_max_bytes=10**6)
    bus = store.bus
    now = int(time.time() * 1000)
    return {
        "put": lambda: store.put(_envelope(10), policy),
        "fetch": lambda: store.fetch("did:key:zBob", limit=10, now_ms=now),
        "ack": lambda: store.ack("did:key:zBob", ["x"]),
        "prune": lambda: store.prune(now),
        "claim_nonce": lambda: store.claim_nonce(uuid.uuid4().hex, now + 60_000, now),
        "rate": lambda: limits.rate_did.check("did:key:zBob"),
        "slot": lambda: limits.slots.acquire("did:key:zBob"),
        "heartbeat": lambda: store.registry.heartbeat(),
        "publish": lambda: bus.publish("link:q:a", b"frame"),
        "subscribe": lambda: bus.subscribe("link:q:b", lambda _data: None),
        "pair": lambda: bus.pair("k1", "k2", "tok", 5_000),
        "advertise": lambda: bus.advertise("127.0.0.1:9", 5_000),
    }


async def limits_release(store: RedisStore) -> None:
    await store.limits(SETTINGS, time.time).slots.release("did:key:zBob")


def test_the_store_sets_its_own_redis_timeouts() -> None:
    """Not redis-py's default (no timeout at all before redis-py 8): ours, unless the
    Redis URL names one."""
    kwargs = RedisStore("redis://127.0.0.1:1/0").r.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == REDIS_TIMEOUT_S
    url = "redis://127.0.0.1:1/0?socket_timeout=1.5&socket_connect_timeout=2"
    kwargs = RedisStore(url).r.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.5, 2.0)


async def test_every_store_wait_on_a_frozen_or_killed_redis_ends_with_an_error() -> None:
    with own_redis() as server:
        store = RedisStore(server.url(), prefix=f"t{uuid.uuid4().hex[:8]}:", timeout_s=TIMEOUT_S)
        store.registry.heartbeat_s = 60.0  # the test's own heartbeat call, not the loop's
        await store.start()
        try:
            calls = _store_calls(store)
            for name, call in calls.items():  # all of them work while Redis does
                assert (await _outcome(call()))[1] is None, name
            await limits_release(store)
            # frozen: every call fails within its timeout (those queued on the slot lock:
            # one timeout each before them) instead of waiting for ever
            freeze(server)
            results = await asyncio.gather(*(_outcome(c()) for c in calls.values()))
            for name, (took, exc) in zip(calls, results, strict=True):
                assert isinstance(exc, RelayInternalError), (name, exc)
                assert exc.message.startswith("the relay's Redis "), (name, exc.message)
                assert took < 3 * 2 * TIMEOUT_S + 1.0, (name, took)
            # killed while calls wait on it: they end at once (the connection resets)
            pending = [asyncio.ensure_future(_outcome(c())) for c in calls.values()]
            await asyncio.sleep(TIMEOUT_S / 5)
            t0 = time.monotonic()
            kill(server)
            for name, (_, exc) in zip(calls, await asyncio.gather(*pending), strict=True):
                assert isinstance(exc, RelayInternalError), (name, exc)
            assert time.monotonic() - t0 < 3 * 2 * TIMEOUT_S + 1.0
            # dead: refused connections fail at once
            results = await asyncio.gather(*(_outcome(c()) for c in calls.values()))
            for name, (took, exc) in zip(calls, results, strict=True):
                assert isinstance(exc, RelayInternalError), (name, exc)
                assert took < 2 * TIMEOUT_S + 1.0, (name, took)
        finally:
            took, exc = await _outcome(store.close())
            assert took < 4 * TIMEOUT_S + 2.0 and not isinstance(exc, AssertionError), (took, exc)


async def test_a_store_whose_redis_is_frozen_cannot_start_and_says_so() -> None:
    with own_redis() as server:
        freeze(server)
        store = RedisStore(server.url(), timeout_s=TIMEOUT_S)
        took, exc = await _outcome(store.start())
        assert isinstance(exc, RelayError) and "cannot reach Redis at" in exc.message, exc
        assert took < 2 * TIMEOUT_S + 1.0, took
        await store.close()


async def test_a_relay_answers_with_an_error_when_its_redis_freezes_or_dies_mid_request(
    tmp_path: Path,
) -> None:
    """The relay's Redis freezes with requests in flight, then is killed, then restarts on
    its address: each request gets the relay's ``internal`` error within a bound, the
    relay process lives on (no traceback in its log), and serves again once Redis is back."""
    with own_redis() as server:
        url = (f"{server.url()}?socket_timeout={TIMEOUT_S}"
               f"&socket_connect_timeout={TIMEOUT_S}")  # fmt: skip
        alice, bob = IdentityKey.generate(), IdentityKey.generate()
        with start_relay(url, ["--rate-ip-per-s", "0"], home=tmp_path) as relay:
            async with RelayClient(relay.url, alice, retries=0, timeout=30) as ca, \
                    RelayClient(relay.url, bob, retries=0, timeout=30) as cb, \
                    aiohttp.ClientSession() as http:
                await ca.token()
                await cb.token()
                await ca.send(bob.did, "s", b"before")

                async def healthz() -> None:
                    async with http.get(relay.url + "/healthz") as resp:
                        if resp.status != 503:
                            raise AssertionError(f"/healthz said {resp.status}")
                        raise RelayInternalError("unavailable")  # as expected

                async def new_token() -> None:
                    async with RelayClient(relay.url, IdentityKey.generate(), retries=0) as c:
                        await c.token()

                def requests() -> list[Awaitable[Any]]:
                    return [ca.send(bob.did, "s", b"during"), cb.fetch(), healthz(),
                            ca.open_link("q", bob.did, timeout=20), new_token()]

                async def all_refused(reqs: list[Awaitable[Any]], bound: float) -> None:
                    for took, exc in await asyncio.gather(*(_outcome(r) for r in reqs)):
                        assert isinstance(exc, RelayInternalError), exc
                        assert took < bound, (took, exc)

                freeze(server)  # in flight: answered once the relay's wait times out
                await all_refused(requests(), 3 * 2 * TIMEOUT_S + 2.0)
                pending = asyncio.ensure_future(all_refused(requests(), 30))
                await asyncio.sleep(0.3)
                t0 = time.monotonic()
                kill(server)  # in flight while it dies: answered at once
                await pending
                assert time.monotonic() - t0 < 2 * TIMEOUT_S + 2.0
                await all_refused(requests(), 2 * TIMEOUT_S + 2.0)  # dead: refused at once
                assert relay.alive()
                # Redis back on its address (empty: it does not persist): the relay serves
                server.proc = _popen_redis(server.argv)
                assert _redis_up(server.proc, server.port, 15)
                async with asyncio.timeout(20):
                    while True:
                        try:
                            await ca.send(bob.did, "s", b"after")
                            break
                        except RelayInternalError:
                            await asyncio.sleep(0.2)
                    assert [i.open(bob) for i in await cb.fetch()] == [b"after"]
                    la, lb = await asyncio.gather(ca.open_link("r", bob.did, timeout=10),
                                                  cb.open_link("r", alice.did, timeout=10))
                    await la.send(b"linked again")
                    assert await lb.recv(timeout=5) == b"linked again"
                    await la.close()
                    await lb.close()
            assert relay.alive()
            text = relay.log_path.read_text(errors="replace")
            assert "Traceback" not in text and "unexpected failure" not in text, text[-3000:]


async def test_a_link_through_redis_pub_sub_ends_with_4411_when_redis_dies(
    tmp_path: Path,
) -> None:
    """Frames between two relay processes travel by pub/sub here (no splices): when the
    subscriber connection fails, frames sent meanwhile are lost, so both ends are closed
    with 4411 (the relay lost the link: the mesh resumes it) at once, not left open with a
    gap, or waiting for credit that will never come (4500 if it was the relay's own
    publish that failed first)."""
    with own_redis() as server:
        url = server.url()
        args = ["--rate-ip-per-s", "0", "--link-splice-listen", ""]
        alice, bob = IdentityKey.generate(), IdentityKey.generate()
        with start_relay(url, args, home=tmp_path) as r1, \
                start_relay(url, args, home=tmp_path) as r2:
            async with RelayClient(r1.url, alice) as ca, RelayClient(r2.url, bob) as cb:
                first = asyncio.create_task(ca.open_link("p", bob.did, timeout=15))
                await asyncio.sleep(0.5)
                lb = await cb.open_link("p", alice.did, timeout=15)
                la = await first
                await la.send(b"before")
                assert await lb.recv(timeout=5) == b"before"
                kill(server)
                t0 = time.monotonic()
                for link in (la, lb):
                    with pytest.raises(LinkClosed) as exc:
                        await link.recv(timeout=10)
                    # 4411 (the bus lost), or 4500 if a credit was being published as Redis
                    # died: both say the relay lost the link, and both are resumable
                    assert exc.value.close_code in (CloseCode.PEER_RELAY_GONE,
                                                    CloseCode.INTERNAL), exc.value
                    assert exc.value.close_code in RESUMABLE_CLOSE_CODES
                assert time.monotonic() - t0 < 3.0
            for relay in (r1, r2):
                assert relay.alive()
                text = relay.log_path.read_text(errors="replace")
                assert "Traceback" not in text, text[-3000:]


class _SilentBus:
    """A bus whose other side never answers (Redis frozen): publishes go nowhere, so no
    credit and no close ever come back."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, channel: str, data: bytes) -> None:
        self.published.append((channel, data))

    async def unsubscribe(self, channel: str) -> None:
        pass


class _ClientSocket:
    """The local client's end: it sent one frame, then nothing."""

    def __init__(self) -> None:
        self.closed, self.close_code = False, 0
        self._never = asyncio.Event()

    async def receive(self) -> Any:
        await self._never.wait()  # a client that sends nothing more

    async def close(self, *, code: int, message: bytes = b"") -> None:
        self.closed, self.close_code = True, code

    async def ping(self, data: bytes = b"") -> None:
        pass


async def test_a_send_waiting_for_credit_ends_when_the_link_is_closed_here() -> None:
    """A cross-process link whose credit never comes (the bus is silent) and whose other
    end's close cannot arrive either: its duration budget closes it here, and the send
    waiting for credit ends with it (before, that wait had no end: the handler and its
    link slot were held for ever)."""
    from aiohttp import WSMessage, WSMsgType
    from didmesh.relay.config import RelayConfig
    from didmesh.relay.links import LinkEnd, RemotePipe
    from didmesh.relay.metrics import Metrics
    from didmesh.relay.protocol import LinkRequest

    config = RelayConfig(link_max_duration_s=0.3, link_heartbeat_s=0)
    hub: Any = type("Hub", (), {"config": config})()
    ws = _ClientSocket()
    end = LinkEnd("did:key:zA", LinkRequest("s", "did:key:zB"), ws)
    bus = _SilentBus()
    pipe = RemotePipe(hub, bus, end, "l1", "a")
    pipe.credit = 10  # the window is used up: the next frame waits for credit
    frame = WSMessage(WSMsgType.BINARY, b"x" * 100, None)
    code = await asyncio.wait_for(pipe.run(Metrics(), first=frame), 5)
    assert code == CloseCode.DURATION_EXCEEDED
    assert ws.close_code == CloseCode.DURATION_EXCEEDED
    assert not any(data[:1] == b"\x00" for _, data in bus.published)  # the frame stayed
