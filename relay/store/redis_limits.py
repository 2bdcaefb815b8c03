"""Rate limits and link slots shared by every relay process on one Redis (specs/relay.md,
"Limits" and "Scaling out").

Keys, under the store's prefix (default ``didmesh:``):

``rl:ip:ADDR``, ``rl:did:DID``
    GCRA state of one bucket: the theoretical arrival time in microseconds of Redis server
    time (``TIME``), so the processes' clocks do not matter. Expires (``PX``) when the bucket
    would be full again: an idle key vanishes by itself.
``links:total``, ``links:did:DID``
    Link slots held on all processes (waiting ends included); deleted at zero.
``slots:PROC``
    Hash ``DID -> n``: the slots process ``PROC`` holds. The counters above are always the
    sum of these hashes (every script keeps that true).
``alive:PROC``
    The process's liveness key, refreshed every :data:`HEARTBEAT_S` and expiring after
    :data:`ALIVE_TTL_S`. ``procs`` is the set of processes that registered.

Every live process runs one script per heartbeat that refreshes its own key and *sweeps*:
any member of ``procs`` whose ``alive`` key is gone has its slots subtracted from the
counters and its hash deleted. So the slots of a process killed without cleanup (SIGKILL,
power loss) are free again within :data:`RECLAIM_BOUND_S` (``ALIVE_TTL_S + HEARTBEAT_S``)
as long as one other process runs, or when any process next starts.

A process that was presumed dead (its event loop or its link to Redis stalled longer than
``ALIVE_TTL_S``) notices at its next heartbeat and writes its holdings back; its own record of
what it holds is the authority (:attr:`ProcessRegistry.held`), so a lost reply or a failed
release is also repaired at the next heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import RelayError
from ..limits import (
    Limits,
    LimitSettings,
    rate_limited,
    too_many_links_per_did,
    too_many_links_total,
)

if TYPE_CHECKING:
    from .redis import RedisStore

log = logging.getLogger("didmesh.relay.store")

#: seconds between a process's heartbeats (each also sweeps dead processes)
HEARTBEAT_S = 1.0
#: seconds a process counts as alive after its last heartbeat
ALIVE_TTL_S = 5.0
#: the slots of a killed process are free again at most this long after it died
RECLAIM_BOUND_S = ALIVE_TTL_S + HEARTBEAT_S

_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + interval
local wait = new - tolerance - now
if wait > 0 then return wait end
local px = math.max(1, math.ceil((new - now) / 1000))
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', px)
return 0
"""

# KEYS: links:total, links:did:DID, slots:PROC, procs  ARGV: did, proc, per_did, total
_ACQUIRE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[4]) then return 1 end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then return 2 end
redis.call('INCR', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('SADD', KEYS[4], ARGV[2])
return 0
"""

_COMMON = """
local p = ARGV[1]
local function add(did, n)
  for _, k in ipairs({p..'links:total', p..'links:did:'..did}) do
    if redis.call('INCRBY', k, n) <= 0 then redis.call('DEL', k) end
  end
end
local function reclaim(q)
  local h = p..'slots:'..q
  local kv = redis.call('HGETALL', h)
  for i = 1, #kv, 2 do add(kv[i], -tonumber(kv[i + 1])) end
  redis.call('DEL', h)
end
"""

# ARGV: prefix, proc, did
_RELEASE = _COMMON + """
local h = p..'slots:'..ARGV[2]
local held = tonumber(redis.call('HGET', h, ARGV[3]) or '0')
if held <= 0 then return 0 end
if held == 1 then redis.call('HDEL', h, ARGV[3]) else redis.call('HINCRBY', h, ARGV[3], -1) end
add(ARGV[3], -1)
return 1
"""

# ARGV: prefix, proc, ttl_ms, sync ('0' | '1'), then DID, n pairs (with sync)
_HEARTBEAT = _COMMON + """
local me, alive = ARGV[2], p..'alive:'..ARGV[2]
local was = redis.call('SET', alive, '1', 'XX', 'PX', ARGV[3])
if not was then
  if ARGV[4] == '0' then return {-1} end
  redis.call('SET', alive, '1', 'PX', ARGV[3])
end
if ARGV[4] == '1' then
  reclaim(me)
  for i = 5, #ARGV, 2 do
    redis.call('HSET', p..'slots:'..me, ARGV[i], ARGV[i + 1])
    add(ARGV[i], tonumber(ARGV[i + 1]))
  end
end
redis.call('SADD', p..'procs', me)
for _, q in ipairs(redis.call('SMEMBERS', p..'procs')) do
  if redis.call('EXISTS', p..'alive:'..q) == 0 then
    reclaim(q)
    redis.call('SREM', p..'procs', q)
  end
end
local out = {was and 0 or 1}
for _, q in ipairs(redis.call('SMEMBERS', p..'procs')) do out[#out + 1] = q end
return out
"""

# ARGV: prefix, proc
_LEAVE = _COMMON + """
reclaim(ARGV[2])
redis.call('DEL', p..'alive:'..ARGV[2])
redis.call('SREM', p..'procs', ARGV[2])
return 0
"""


class ProcessRegistry:
    """This process's liveness key, its held link slots, and the sweep of dead processes."""

    def __init__(
        self,
        store: RedisStore,
        proc_id: str,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        alive_ttl_s: float = ALIVE_TTL_S,
    ) -> None:
        self.store, self.proc_id = store, proc_id
        self.heartbeat_s, self.alive_ttl_ms = heartbeat_s, int(alive_ttl_s * 1000)
        #: slots this process holds, by DID: the authority its heartbeat repairs Redis from
        self.held: Counter[str] = Counter()
        #: orders slot changes and heartbeats of this process, so ``held`` matches Redis
        self.lock = asyncio.Lock()
        self.dirty = True  # write ``held`` at the next heartbeat
        #: called after every heartbeat with the processes alive now
        self.listeners: list[Callable[[set[str]], None]] = []
        r = store.r
        self._acquire = r.register_script(_ACQUIRE)
        self._release = r.register_script(_RELEASE)
        self._heartbeat = r.register_script(_HEARTBEAT)
        self._leave = r.register_script(_LEAVE)
        self._task: asyncio.Task[None] | None = None

    def key(self, name: str) -> str:
        return self.store.prefix + name

    async def start(self) -> None:
        await self.heartbeat()
        self._task = asyncio.create_task(self._loop(), name="relay-liveness")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RelayError):
            await self.store._call(self._leave, [self.store.prefix, self.proc_id])

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.heartbeat()
            except RelayError as exc:
                log.warning("relay liveness heartbeat failed: %s", exc.message)

    async def heartbeat(self) -> set[str]:
        """Refresh our key, repair our slots if needed, reclaim dead processes' slots."""
        async with self.lock:
            res = await self._beat(self.dirty)
            if res[0] == -1:  # we were presumed dead (stall, or Redis lost its data)
                log.warning("this relay process was presumed dead; restoring its link slots")
                res = await self._beat(True)
            self.dirty = False
        live = {q.decode() for q in res[1:]}
        for listener in self.listeners:
            listener(live)
        return live

    async def _beat(self, sync: bool) -> list[Any]:
        args: list[Any] = [self.store.prefix, self.proc_id, self.alive_ttl_ms, int(sync)]
        if sync:
            for did, n in self.held.items():
                args += [did, n]
        return list(await self.store._call(self._heartbeat, args))

    async def acquire(self, did: str, per_did: int, total: int) -> None:
        keys = [self.key("links:total"), self.key("links:did:" + did),
                self.key("slots:" + self.proc_id), self.key("procs")]
        async with self.lock:
            try:
                res = int(await self.store._call(
                    self._acquire, [did, self.proc_id, per_did, total], keys
                ))
            except BaseException:  # failed, or cancelled (a client went away) while the
                self.dirty = True  # script may have run: the heartbeat rewrites ours
                raise
            if res == 1:
                raise too_many_links_total(total)
            if res == 2:
                raise too_many_links_per_did(per_did)
            self.held[did] += 1

    async def release(self, did: str) -> None:
        async with self.lock:
            self.held[did] -= 1
            if self.held[did] <= 0:
                del self.held[did]
            try:
                await self.store._call(self._release, [self.store.prefix, self.proc_id, did])
            except RelayError as exc:
                self.dirty = True
                log.warning("releasing a link slot failed (repaired at the next heartbeat): %s",
                            exc.message)
            except BaseException:  # cancelled: the script may or may not have run
                self.dirty = True
                raise


class RedisRate:
    """:class:`~didmesh.relay.limits.RateGate`: a GCRA bucket per key, in Redis."""

    def __init__(self, store: RedisStore, kind: str, what: str, rate: float, burst: int) -> None:
        self.store, self.kind, self.what = store, kind, what
        self.rate, self.burst = rate, float(burst)
        self.interval_us = round(1e6 / rate) if rate > 0 else 0
        self.tolerance_us = round(self.burst * 1e6 / rate) if rate > 0 else 0
        self._script = store.r.register_script(_RATE)

    async def check(self, key: str) -> None:
        if self.interval_us <= 0:
            return
        if len(key) > 128:  # keep Redis keys short whatever a header said
            key = "h:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        name = f"{self.store.prefix}rl:{self.kind}:{key}"
        wait_us = int(await self.store._call(
            self._script, [self.interval_us, self.tolerance_us], [name]
        ))
        if wait_us > 0:
            raise rate_limited(self.what, self.rate, self.burst, wait_us / 1e6)


class RedisSlots:
    """:class:`~didmesh.relay.limits.SlotGate`: link slot counts shared through Redis."""

    def __init__(self, registry: ProcessRegistry, per_did: int, total: int) -> None:
        self.registry, self.per_did, self.total = registry, per_did, total

    @property
    def active(self) -> int:
        return sum(self.registry.held.values())

    async def acquire(self, did: str) -> None:
        await self.registry.acquire(did, self.per_did, self.total)

    async def release(self, did: str) -> None:
        await self.registry.release(did)


def redis_limits(store: RedisStore, registry: ProcessRegistry, s: LimitSettings) -> Limits:
    return Limits(
        RedisRate(store, "ip", "address", s.rate_ip_per_s, s.rate_ip_burst),
        RedisRate(store, "did", "DID", s.rate_did_per_s, s.rate_did_burst),
        RedisSlots(registry, s.links_per_did, s.links_total),
    )
