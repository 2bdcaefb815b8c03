"""Rate limits and concurrency caps (specs/relay.md, "Limits").

The relay asks two small interfaces: :class:`RateGate` (``await check(key)`` raises
:class:`RateLimited`) and :class:`SlotGate` (``await acquire(did)`` raises :class:`LinkLimit`,
``await release(did)``). :meth:`Store.limits <didmesh.relay.store.base.Store.limits>` picks
the implementation:

* in the relay process (memory and SQLite stores): :class:`LocalRate` and :class:`LocalSlots`
  over the pure :class:`RateLimiter` and :class:`LinkSlots` below (time is a parameter);
* shared through Redis (Redis store): :mod:`didmesh.relay.store.redis_limits`, so several
  processes behind one address enforce one rate and one link count.

Both raise the same errors with the same messages (:func:`rate_limited`,
:func:`too_many_links_total`, :func:`too_many_links_per_did`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import LinkLimit, RateLimited


def rate_limited(what: str, rate: float, burst: float, wait: float) -> RateLimited:
    """The error for a request over its rate (``wait``: seconds until one would pass)."""
    exc = RateLimited(
        f"too many requests from this {what}: limit {rate:g}/s "
        f"(burst {burst:g}); retry in {wait:.2f} s"
    )
    exc.retry_after = wait
    return exc


def too_many_links_total(total: int) -> LinkLimit:
    return LinkLimit(f"this relay holds its maximum of {total} links; retry later")


def too_many_links_per_did(per_did: int) -> LinkLimit:
    return LinkLimit(f"at most {per_did} concurrent links per DID")


@dataclass(frozen=True)
class LimitSettings:
    """The settings the limiters need (a slice of the relay configuration)."""

    rate_ip_per_s: float
    rate_ip_burst: int
    rate_did_per_s: float
    rate_did_burst: int
    links_per_did: int
    links_total: int

    @classmethod
    def of(cls, config: Any) -> LimitSettings:
        return cls(
            config.rate_ip_per_s, config.rate_ip_burst, config.rate_did_per_s,
            config.rate_did_burst, config.links_per_did, config.links_total,
        )


class RateGate(Protocol):
    async def check(self, key: str) -> None:
        """Charge one request to ``key``; raise :class:`RateLimited` (``retry_after``)."""


class SlotGate(Protocol):
    @property
    def active(self) -> int:
        """Links this process holds (for metrics)."""

    async def acquire(self, did: str) -> None:
        """Take one link slot for ``did``; raise :class:`LinkLimit` if none is free."""

    async def release(self, did: str) -> None:
        """Give back a slot taken by :meth:`acquire` (exactly once)."""


@dataclass(frozen=True)
class Limits:
    rate_ip: RateGate
    rate_did: RateGate
    slots: SlotGate


# -- in the relay process (pure, time is a parameter) ----------------------------------------


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    tokens: float = field(default=-1.0)
    stamp: float = 0.0

    def take(self, now: float, n: float = 1.0) -> float:
        """Take ``n`` tokens; returns 0.0 on success, else seconds until it would succeed."""
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per key (DID or IP), with idle buckets forgotten (bounded memory)."""

    def __init__(self, rate: float, burst: int, what: str, *, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.what, self.max_keys = rate, float(burst), what, max_keys
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, key: str, now: float) -> None:
        """Raise :class:`RateLimited` (with ``retry_after``) if ``key`` is over its rate."""
        if not self.enabled:
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self.sweep(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        wait = bucket.take(now)
        if wait > 0:
            raise rate_limited(self.what, self.rate, self.burst, wait)

    def sweep(self, now: float) -> None:
        """Forget buckets that are full again (they carry no state worth keeping)."""
        full = [
            k for k, b in self._buckets.items()
            if b.tokens + (now - b.stamp) * b.rate >= b.burst
        ]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:  # still full of active keys: drop oldest
            for k in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)


class LinkSlots:
    """Concurrent links per DID and in total (waiting ends count too)."""

    def __init__(self, per_did: int, total: int) -> None:
        self.per_did, self.total = per_did, total
        self._by_did: dict[str, int] = {}
        self.active = 0

    def acquire(self, did: str) -> None:
        if self.active >= self.total:
            raise too_many_links_total(self.total)
        n = self._by_did.get(did, 0)
        if n >= self.per_did:
            raise too_many_links_per_did(self.per_did)
        self._by_did[did] = n + 1
        self.active += 1

    def release(self, did: str) -> None:
        n = self._by_did.get(did, 0) - 1
        if n <= 0:
            self._by_did.pop(did, None)
        else:
            self._by_did[did] = n
        self.active -= 1


class LocalRate:
    """:class:`RateGate` over a :class:`RateLimiter` in this process."""

    def __init__(self, limiter: RateLimiter, clock: Callable[[], float]) -> None:
        self.limiter, self.clock = limiter, clock

    async def check(self, key: str) -> None:
        self.limiter.check(key, self.clock())


class LocalSlots:
    """:class:`SlotGate` over :class:`LinkSlots` in this process."""

    def __init__(self, slots: LinkSlots) -> None:
        self.slots = slots

    @property
    def active(self) -> int:
        return self.slots.active

    async def acquire(self, did: str) -> None:
        self.slots.acquire(did)

    async def release(self, did: str) -> None:
        self.slots.release(did)


def local_limits(settings: LimitSettings, clock: Callable[[], float]) -> Limits:
    """Buckets and link counts held in this process (one relay process per address)."""
    s = settings
    return Limits(
        LocalRate(RateLimiter(s.rate_ip_per_s, s.rate_ip_burst, "address"), clock),
        LocalRate(RateLimiter(s.rate_did_per_s, s.rate_did_burst, "DID"), clock),
        LocalSlots(LinkSlots(s.links_per_did, s.links_total)),
    )
