"""Rate limits and concurrency caps (specs/relay.md, "Limits"). Pure: time is a parameter.

Buckets live in the relay process: with several processes behind one address each applies
its own buckets (a client spread over N processes gets at most N times the rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import LinkLimit, RateLimited


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
            exc = RateLimited(
                f"too many requests from this {self.what}: limit {self.rate:g}/s "
                f"(burst {self.burst:g}); retry in {wait:.2f} s"
            )
            exc.retry_after = wait
            raise exc

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
            raise LinkLimit(f"this relay holds its maximum of {self.total} links; retry later")
        n = self._by_did.get(did, 0)
        if n >= self.per_did:
            raise LinkLimit(f"at most {self.per_did} concurrent links per DID")
        self._by_did[did] = n + 1
        self.active += 1

    def release(self, did: str) -> None:
        n = self._by_did.get(did, 0) - 1
        if n <= 0:
            self._by_did.pop(did, None)
        else:
            self._by_did[did] = n
        self.active -= 1
