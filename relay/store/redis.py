"""Redis store: several relay processes behind one address share one Redis
(specs/relay.md, "Scaling out").

Every posting rule runs inside one Lua script, so it is atomic across processes. Keys (all
under a prefix, default ``didmesh:``): ``env:ID`` (hash), ``inbox:DID`` (sorted set by
arrival sequence), ``ibytes:DID``, ``exp`` (sorted set by expiry, for pruning), ``seen:ID``
(digest, expires by itself), ``nonce:N``, ``secret``, ``seq``; rate buckets, link slots and
process liveness: :mod:`.redis_limits`.

Push: a successful post publishes the recipient DID on ``notify``; every process wakes its
local listeners. Links: see :class:`RedisBus`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import RelayConfigError, RelayInternalError
from ..limits import Limits, LimitSettings
from ..secret import load_or_create
from .base import Bus, PutPolicy, PutResult, Store, StoredEnvelope, seen_decision
from .redis_limits import ProcessRegistry, redis_limits

log = logging.getLogger("didmesh.relay.store")

#: seconds one Redis connect or command may take before the store fails (RelayInternalError)
#: instead of waiting: a frozen or unreachable Redis must not hang requests, heartbeats or
#: the slot lock. Set here, not left to redis-py (whose default was no timeout before 8.0);
#: a ``socket_timeout``/``socket_connect_timeout`` in the Redis URL takes precedence.
REDIS_TIMEOUT_S = 5.0


def redact_url(url: str) -> str:
    """The Redis URL without a password (for logs)."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url

_PUT = """
local p = ARGV[1]
local id, to, digest, data = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local size, received, expires = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local seen_ttl, max_count, max_bytes = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local seen = redis.call('GET', p..'seen:'..id)
if seen then
  local r = redis.call('HMGET', p..'env:'..id, 'received', 'expires')
  if r[1] then return {seen, r[1], r[2]} end
  return {seen}
end
local ik = p..'inbox:'..to
local count = redis.call('ZCARD', ik)
local bytes = tonumber(redis.call('GET', p..'ibytes:'..to) or '0')
if count + 1 > max_count or bytes + size > max_bytes then
  return {'', tostring(count), tostring(bytes)}
end
local seq = redis.call('INCR', p..'seq')
redis.call('HSET', p..'env:'..id, 'data', data, 'to', to, 'digest', digest,
           'received', received, 'expires', expires, 'size', size)
redis.call('ZADD', ik, seq, id)
redis.call('INCRBY', p..'ibytes:'..to, size)
redis.call('ZADD', p..'exp', expires, id)
redis.call('SET', p..'seen:'..id, digest, 'PX', math.max(seen_ttl, 1))
redis.call('PUBLISH', p..'notify', to)
return {'ok'}
"""

_DELETE = """
local p = ARGV[1]
local function del(id, to)
  if redis.call('ZREM', p..'inbox:'..to, id) == 1 then
    local size = tonumber(redis.call('HGET', p..'env:'..id, 'size') or '0')
    if redis.call('DECRBY', p..'ibytes:'..to, size) <= 0 then
      redis.call('DEL', p..'ibytes:'..to)
    end
  end
  redis.call('DEL', p..'env:'..id)
  redis.call('ZREM', p..'exp', id)
end
local n = 0
if ARGV[2] == 'ack' then
  local to = ARGV[3]
  for i = 4, #ARGV do
    local id = ARGV[i]
    if redis.call('HGET', p..'env:'..id, 'to') == to then del(ARGV[i], to); n = n + 1 end
  end
else
  local ids = redis.call('ZRANGEBYSCORE', p..'exp', '-inf', '(' .. ARGV[3], 'LIMIT', 0, 1000)
  for _, id in ipairs(ids) do
    local to = redis.call('HGET', p..'env:'..id, 'to')
    if to then del(id, to); n = n + 1 else redis.call('ZREM', p..'exp', id) end
  end
end
return n
"""

_PAIR = """
local other = redis.call('GET', KEYS[2])
if other then redis.call('DEL', KEYS[2]); return other end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return '' end
return false
"""

_UNPAIR = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore(Store):
    def __init__(
        self, url: str, *, prefix: str = "didmesh:", secret_file: Path | None = None,
        timeout_s: float = REDIS_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self.url = url
        self.secret_file = secret_file
        self.persistent: bool | None = None  # does the Redis server persist? (None: unknown)
        self.prefix = prefix
        self.timeout_s = timeout_s
        try:
            self.r: aioredis.Redis = aioredis.Redis.from_url(
                url, decode_responses=False, socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
            )
        except ValueError as exc:
            raise RelayConfigError(f"invalid Redis URL {url!r}: {exc}") from exc
        self._put = self.r.register_script(_PUT)
        self._delete = self.r.register_script(_DELETE)
        self._bus = RedisBus(self)
        self.registry = ProcessRegistry(self, self._bus.proc_id)
        self.registry.listeners.append(self._bus.on_live)
        self._secret: bytes | None = None

    @property
    def bus(self) -> Bus:
        return self._bus

    def limits(self, settings: LimitSettings, clock: Callable[[], float]) -> Limits:
        """Shared by every process on this Redis (server time; ``clock`` is not used)."""
        return redis_limits(self, self.registry, settings)

    async def start(self) -> None:
        try:
            await self.r.ping()
            if self.secret_file is not None:
                secret: Any = load_or_create(self.secret_file)
            else:
                await self.r.set(self.prefix + "secret", os.urandom(32), nx=True)
                secret = await self.r.get(self.prefix + "secret")
            self.persistent = await self._persists()
        except (RedisError, OSError) as exc:
            raise RelayConfigError(f"cannot reach Redis at {redact_url(self.url)}: {exc}"
                                   ) from exc
        assert secret is not None
        self._secret = secret if isinstance(secret, bytes) else secret.encode()
        if self.persistent is False and self.secret_file is None:
            log.warning(
                "Redis does not persist (save \"\" and appendonly no): a Redis restart loses "
                "the relay secret, and processes started after it would use another one. "
                "Enable persistence or give every process the same secret_file",
                extra={"fields": {"store": redact_url(self.url)}},
            )
        try:
            await self._bus.start()
            await self.registry.start()
        except RelayInternalError as exc:  # Redis went away right after the ping
            await self._bus.close()
            raise RelayConfigError(f"cannot use Redis at {redact_url(self.url)}: "
                                   f"{exc.message}") from exc

    async def close(self) -> None:
        await self.registry.close()
        await self._bus.close()
        await self.r.aclose()

    async def ping(self) -> None:
        await self.r.ping()

    async def _persists(self) -> bool | None:
        try:
            save = await self.r.config_get("save")
            aof = await self.r.config_get("appendonly")
        except RedisError:  # CONFIG disabled (managed Redis): cannot tell
            return None

        def val(d: Any, k: str) -> str:
            v = d.get(k) if isinstance(d, dict) else None
            v = v if v is not None else (d.get(k.encode()) if isinstance(d, dict) else None)
            return v.decode() if isinstance(v, bytes) else str(v or "")

        return bool(val(save, "save").strip()) or val(aof, "appendonly") == "yes"

    async def agree(self, secret_fp: str, relay_id: str) -> str | None:
        """Every process on this Redis must use one secret and one relay id. A process
        also puts its secret back if Redis lost it (restarted without persistence), so
        processes started later join it instead of making another one."""
        p = self.prefix
        try:
            pipe = self.r.pipeline(transaction=False)
            if self.secret_file is None:
                pipe.set(p + "secret", self._secret or b"", nx=True)
            pipe.set(p + "secret_fp", secret_fp, nx=True)
            pipe.set(p + "relay_id", relay_id, nx=True)
            pipe.mget(p + "secret_fp", p + "relay_id")
            res = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("cannot check the relay secret with Redis: %s", type(exc).__name__)
            return None
        fp, rid = (x.decode() if isinstance(x, bytes) else x for x in res[-1])
        problems = []
        if fp != secret_fp:
            problems.append(
                f"its token secret (fingerprint {secret_fp}) differs from the one other relay "
                f"processes on this Redis use ({fp}): tokens of one are refused by the other"
            )
        if rid != relay_id:
            problems.append(f"its relay id {relay_id} differs from the others' ({rid})")
        if not problems:
            return None
        return (
            "this relay process disagrees with its peers: " + "; ".join(problems) + ". Give "
            "every process the same secret_file (and relay_id), or use a Redis that persists"
        )

    async def add_totals(self, deltas: dict[str, int]) -> dict[str, int] | None:
        try:
            pipe = self.r.pipeline(transaction=False)
            for k, v in deltas.items():
                if v:
                    pipe.hincrby(self.prefix + "totals", k, v)
            pipe.hgetall(self.prefix + "totals")
            res = await pipe.execute()
        except (RedisError, OSError):
            return None
        raw = res[-1] or {}
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()
        }

    def describe(self) -> dict[str, str]:
        out = {"redis": redact_url(self.url)}
        if self.persistent is not None:
            out["redis_persists"] = str(self.persistent).lower()
        return out

    async def secret(self) -> bytes:
        assert self._secret is not None, "start() the store first"
        return self._secret

    async def put(self, item: StoredEnvelope, policy: PutPolicy) -> PutResult:
        args: list[Any] = [
            self.prefix, item.id, item.to, item.digest, item.data, item.size,
            item.received_ms, item.expires_ms,
            max(1, policy.seen_until_ms - item.received_ms),
            policy.inbox_max_count, policy.inbox_max_bytes,
        ]
        res = await self._call(self._put, args)
        if res[0] == b"ok":
            return PutResult(item.id, item.received_ms, item.expires_ms)
        if res[0] == b"":  # inbox full
            from .base import check_inbox

            check_inbox(item, int(res[1]), int(res[2]), policy)
            raise AssertionError("unreachable: the script said the inbox is full")
        stored = (int(res[1]), int(res[2])) if len(res) == 3 else None
        dup = seen_decision(item, res[0].decode(), stored)
        assert dup is not None
        return dup

    async def _call(self, script: Any, args: list[Any], keys: list[str] | None = None) -> Any:
        try:
            return await script(keys=keys or [], args=args)
        except (RedisError, OSError) as exc:
            raise RelayInternalError(f"the relay's Redis store failed: {exc}") from exc

    async def fetch(self, did: str, *, limit: int, now_ms: int) -> list[StoredEnvelope]:
        try:
            ids: list[Any] = await self.r.zrange(
                self.prefix + "inbox:" + did, 0, limit - 1
            )
            if not ids:
                return []
            pipe = self.r.pipeline(transaction=False)
            for id_ in ids:
                pipe.hmget(self.prefix + "env:" + id_.decode(), "data", "digest", "received",
                           "expires")
            rows = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RelayInternalError(f"the relay's Redis store failed: {exc}") from exc
        out = []
        for id_, (data, digest, rec, exp) in zip(ids, rows, strict=True):
            if data is None or int(exp) < now_ms:
                continue
            out.append(
                StoredEnvelope(id_.decode(), did, digest.decode(), bytes(data), int(rec), int(exp))
            )
        return out

    async def ack(self, did: str, ids: list[str]) -> int:
        if not ids:
            return 0
        return int(await self._call(self._delete, [self.prefix, "ack", did, *ids]))

    async def prune(self, now_ms: int) -> int:
        total = 0
        while True:
            n = int(await self._call(self._delete, [self.prefix, "prune", now_ms]))
            total += n
            if n < 1000:
                return total

    async def claim_nonce(self, nonce: str, until_ms: int, now_ms: int) -> bool:
        try:
            ok = await self.r.set(
                self.prefix + "nonce:" + nonce, b"1", nx=True, px=max(1, until_ms - now_ms)
            )
        except (RedisError, OSError) as exc:
            raise RelayInternalError(f"the relay's Redis store failed: {exc}") from exc
        return bool(ok)


class RedisBus(Bus):
    """Pub/sub for push notifications and cross-process links.

    One subscriber connection per process carries ``notify`` (inbox wake-ups),
    ``proc:<id>`` (link pairing notices for this process) and one channel per link end
    (frames). A subscription is reported active only after Redis confirmed it, so a peer
    never publishes into a channel nobody listens to yet.
    """

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.proc_id = uuid.uuid4().hex[:16]
        self._pair = store.r.register_script(_PAIR)
        self._unpair = store.r.register_script(_UNPAIR)
        self._handlers: dict[bytes, Callable[[bytes], None]] = {}
        self._watched: dict[str, tuple[str, Callable[[], None]]] = {}  # channel -> proc
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._advertised = False

    def _ch(self, name: str) -> bytes:
        return (self.store.prefix + name).encode()

    async def start(self) -> None:
        self._pubsub = self.store.r.pubsub(ignore_subscribe_messages=False)
        notify = self._ch("notify")
        self._handlers[notify] = lambda did: self.store.notifier.notify(did.decode())
        self._confirm[notify] = asyncio.get_running_loop().create_future()
        await self._send_subscribe(notify)  # first: the reader needs the connection
        self._reader = asyncio.create_task(self._read(), name="redis-bus")
        await self._confirmed(notify)

    async def _send_subscribe(self, ch: bytes) -> None:
        try:
            await self._pubsub.subscribe(ch)
        except (RedisError, OSError) as exc:
            self._confirm.pop(ch, None)
            raise RelayInternalError(f"the relay's Redis bus failed: {exc}") from exc
        except BaseException:
            self._confirm.pop(ch, None)
            raise

    async def _confirmed(self, ch: bytes) -> None:
        """Wait until Redis confirmed the subscription (read by :meth:`_read`), at most
        twice the store's timeout: then a RelayInternalError, not a bare TimeoutError
        (which a link's pairing would take for its peer not coming)."""
        fut = self._confirm.setdefault(ch, asyncio.get_running_loop().create_future())
        wait = 2 * self.store.timeout_s
        try:
            await asyncio.wait_for(fut, wait)
        except TimeoutError:
            raise RelayInternalError(
                f"the relay's Redis bus failed: Redis did not confirm a subscription within "
                f"{wait:g} s"
            ) from None
        finally:
            self._confirm.pop(ch, None)

    async def advertise(self, address: str, ttl_ms: int) -> None:
        self._advertised = True
        try:
            await self.store.r.set(
                self.store.prefix + "splice:" + self.proc_id, address.encode(), px=ttl_ms
            )
        except (RedisError, OSError) as exc:
            raise RelayInternalError(f"the relay's Redis bus failed: {exc}") from exc

    async def splice_address(self, proc_id: str) -> str | None:
        try:
            raw = await self.store.r.get(self.store.prefix + "splice:" + proc_id)
        except (RedisError, OSError):
            return None
        if isinstance(raw, bytes):
            return raw.decode("utf-8", "replace") or None
        return str(raw) if raw else None

    async def close(self) -> None:
        if self._advertised:
            with contextlib.suppress(Exception):
                await self.store.r.delete(self.store.prefix + "splice:" + self.proc_id)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    async def _read(self) -> None:
        while True:
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: wake everyone, keep trying
                log.warning("redis pub/sub error: %s", exc)
                self.store.notifier.wake_all()
                self._links_lost()
                await asyncio.sleep(0.5)
                continue
            if msg is None:
                continue
            kind, ch = msg["type"], msg["channel"]
            if kind == b"subscribe" or kind == "subscribe":
                fut = self._confirm.get(ch)
                if fut is None:
                    fut = asyncio.get_running_loop().create_future()
                    self._confirm[ch] = fut
                if not fut.done():
                    fut.set_result(None)
            elif kind == b"message" or kind == "message":
                handler = self._handlers.get(ch)
                if handler is not None:
                    try:
                        handler(msg["data"])
                    except Exception:
                        log.exception("bus handler failed")

    async def pair(self, my_key: str, mirror_key: str, token: str, ttl_ms: int) -> str | None:
        keys = [self.store.prefix + "wait:" + my_key, self.store.prefix + "wait:" + mirror_key]
        res = await self.store._call(self._pair, [token, ttl_ms], keys)
        if res is None:
            raise KeyError(my_key)
        return res.decode() or None

    async def unpair(self, my_key: str, token: str) -> None:
        await self.store._call(self._unpair, [token], [self.store.prefix + "wait:" + my_key])

    async def publish(self, channel: str, data: bytes) -> None:
        """Callers keep one link's frames in order by awaiting each publish in turn."""
        try:
            await self.store.r.publish(self._ch(channel), data)
        except (RedisError, OSError) as exc:
            raise RelayInternalError(f"the relay's Redis bus failed: {exc}") from exc

    async def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        ch = self._ch(channel)
        self._handlers[ch] = handler
        self._confirm.setdefault(ch, asyncio.get_running_loop().create_future())
        try:
            await self._send_subscribe(ch)
            await self._confirmed(ch)
        except BaseException:
            self._handlers.pop(ch, None)
            raise

    def _links_lost(self) -> None:
        """The subscriber connection failed: frames published to it meanwhile are lost
        (pub/sub keeps nothing), so every link through the bus ends as if the other end's
        process had died (4411: the relay lost the link, and the mesh resumes it) rather
        than go on with a gap, or wait for ever for credit that was lost."""
        watched, self._watched = self._watched, {}
        for _proc, on_dead in watched.values():
            try:
                on_dead()
            except Exception:
                log.exception("process watcher failed")

    def watch_process(self, proc_id: str, channel: str, on_dead: Callable[[], None]) -> None:
        self._watched[channel] = (proc_id, on_dead)

    def on_live(self, live: set[str]) -> None:
        """After each heartbeat: tell the watchers of processes that are no longer alive."""
        for channel, (proc, on_dead) in list(self._watched.items()):
            if proc not in live:
                del self._watched[channel]
                try:
                    on_dead()
                except Exception:
                    log.exception("process watcher failed")

    async def unsubscribe(self, channel: str) -> None:
        self._watched.pop(channel, None)
        ch = self._ch(channel)
        self._handlers.pop(ch, None)
        with contextlib.suppress(Exception):
            await self._pubsub.unsubscribe(ch)
