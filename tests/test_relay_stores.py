"""The posting rules, identically for every store (relay/store/): memory, SQLite and a real
redis-server. Time is injected: no sleeping."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.envelope import seal
from didmesh.relay.errors import IdConflict, InboxFull, Replay
from didmesh.relay.store import MemoryStore, Store, StoredEnvelope
from didmesh.relay.store.base import PutPolicy
from didmesh.relay.store.redis import RedisStore
from didmesh.relay.store.sqlite import SqliteStore
from relay_helpers import RedisServer, redis_server  # noqa: F401

NOW = 1_700_000_000_000
ALICE = IdentityKey.from_seed(bytes(range(32)))
BOB = IdentityKey.from_seed(bytes(range(1, 33)))
CAROL = IdentityKey.from_seed(bytes(range(3, 35)))
POLICY = PutPolicy(seen_until_ms=NOW + 900_000, inbox_max_count=5, inbox_max_bytes=100_000)


def item(to: IdentityKey = BOB, body: bytes = b"x", ttl: int = 60, ts: int = NOW) -> StoredEnvelope:
    env = seal(ALICE, to.did, "s", body, now_ms=ts, ttl=ttl)
    return StoredEnvelope.of(env, received_ms=ts, expires_ms=env.expires_ms)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "relay.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        s = RedisStore(server.url(), prefix=f"t{uuid.uuid4().hex[:8]}:")
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def test_put_fetch_ack(store: Store) -> None:
    a, b = item(body=b"1"), item(body=b"2")
    r = await store.put(a, POLICY)
    assert (r.id, r.duplicate) == (a.id, False)
    await store.put(b, POLICY)
    got = await store.fetch(BOB.did, limit=10, now_ms=NOW)
    assert [g.id for g in got] == [a.id, b.id]  # arrival order
    assert got[0].data == a.data and got[0].digest == a.digest
    assert await store.fetch(CAROL.did, limit=10, now_ms=NOW) == []
    assert [g.id for g in await store.fetch(BOB.did, limit=1, now_ms=NOW)] == [a.id]
    assert await store.ack(CAROL.did, [a.id]) == 0  # not Carol's to delete
    assert await store.ack(BOB.did, [a.id, "unknown"]) == 1
    assert [g.id for g in await store.fetch(BOB.did, limit=10, now_ms=NOW)] == [b.id]


async def test_idempotent_conflict_and_replay(store: Store) -> None:
    a = item()
    first = await store.put(a, POLICY)
    again = await store.put(a, POLICY)
    assert again.duplicate and (again.received_ms, again.expires_ms) == (
        first.received_ms, first.expires_ms)
    assert len(await store.fetch(BOB.did, limit=10, now_ms=NOW)) == 1
    other = StoredEnvelope(a.id, a.to, "0" * 64, b"{}", NOW, NOW + 1)
    with pytest.raises(IdConflict):
        await store.put(other, POLICY)
    await store.ack(BOB.did, [a.id])
    with pytest.raises(Replay):  # acked, but the id is remembered for the window
        await store.put(a, POLICY)
    with pytest.raises(IdConflict):
        await store.put(other, POLICY)


async def test_inbox_limits(store: Store) -> None:
    for _ in range(5):
        await store.put(item(), POLICY)
    with pytest.raises(InboxFull):
        await store.put(item(), POLICY)
    await store.put(item(to=CAROL), POLICY)  # other inboxes unaffected
    small = PutPolicy(NOW + 1000, 100, 2 * len(item().data))
    big = item(to=CAROL, body=b"y" * 10)
    with pytest.raises(InboxFull, match="bytes"):
        await store.put(big, small)


async def test_prune_with_injected_time(store: Store) -> None:
    short, long = item(ttl=10), item(ttl=100)
    await store.put(short, POLICY)
    await store.put(long, POLICY)
    assert await store.prune(NOW + 5_000) == 0
    assert len(await store.fetch(BOB.did, limit=10, now_ms=NOW + 20_000)) == 1  # filtered
    assert await store.prune(NOW + 20_000) == 1
    assert await store.prune(NOW + 20_000) == 0
    assert [g.id for g in await store.fetch(BOB.did, limit=10, now_ms=NOW)] == [long.id]
    # the expired envelope still counts as seen: re-posting it is a replay
    with pytest.raises(Replay):
        await store.put(short, POLICY)
    # inbox accounting was released by pruning: 4 more fit next to `long`
    for _ in range(4):
        await store.put(item(), POLICY)


async def test_seen_ids_forgotten_after_window(store: Store) -> None:
    if isinstance(store, RedisStore):
        pytest.skip("Redis expires seen ids on its own wall clock (PX), not on prune(now)")
    a = item()
    await store.put(a, PutPolicy(NOW + 1000, 5, 100_000))
    await store.ack(BOB.did, [a.id])
    await store.prune(NOW + 2000)
    assert not (await store.put(a, POLICY)).duplicate


async def test_nonces_single_use(store: Store) -> None:
    assert await store.claim_nonce("n1", NOW + 1000, NOW)
    assert not await store.claim_nonce("n1", NOW + 1000, NOW + 10)
    assert await store.claim_nonce("n2", NOW + 1000, NOW)


async def test_secret_is_stable(store: Store) -> None:
    s = await store.secret()
    assert len(s) == 32 and s == await store.secret()


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "r.db")
    await s.start()
    a = item()
    await s.put(a, POLICY)
    secret = await s.secret()
    await s.close()
    s2 = SqliteStore(tmp_path / "r.db")
    await s2.start()
    try:
        assert [g.id for g in await s2.fetch(BOB.did, limit=5, now_ms=NOW)] == [a.id]
        assert await s2.secret() == secret
        assert (await s2.put(a, POLICY)).duplicate
    finally:
        await s2.close()


async def test_concurrent_puts_group_commit(tmp_path: Path) -> None:
    import asyncio

    s = SqliteStore(tmp_path / "r.db")
    await s.start()
    try:
        items = [item(to=CAROL if i % 2 else BOB) for i in range(200)]
        big = PutPolicy(NOW + 1000, 1000, 10**8)
        res = await asyncio.gather(*(s.put(i, big) for i in items), s.put(items[0], big))
        assert sum(r.duplicate for r in res) == 1
        assert len(await s.fetch(BOB.did, limit=500, now_ms=NOW)) == 100
    finally:
        await s.close()
