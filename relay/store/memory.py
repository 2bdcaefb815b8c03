"""In-memory store: for tests and throw-away relays (nothing survives a restart)."""

from __future__ import annotations

import heapq
import os
from pathlib import Path

from .base import PutPolicy, PutResult, Store, StoredEnvelope, check_inbox, seen_decision


class MemoryStore(Store):
    def __init__(self, *, secret_file: Path | None = None) -> None:
        super().__init__()
        self._secret_file = secret_file
        self._secret = os.urandom(32)
        self._envs: dict[str, StoredEnvelope] = {}
        self._inbox: dict[str, dict[str, None]] = {}  # did -> ids in arrival order
        self._bytes: dict[str, int] = {}
        self._seen: dict[str, tuple[str, int]] = {}  # id -> (digest, until)
        self._seen_heap: list[tuple[int, str]] = []
        self._exp_heap: list[tuple[int, str]] = []
        self._nonces: dict[str, int] = {}

    async def start(self) -> None:
        await super().start()
        if self._secret_file is not None:
            from ..secret import load_or_create

            self._secret = load_or_create(self._secret_file)

    async def secret(self) -> bytes:
        return self._secret

    async def put(self, item: StoredEnvelope, policy: PutPolicy) -> PutResult:
        seen = self._seen.get(item.id)
        cur = self._envs.get(item.id)
        dup = seen_decision(
            item,
            seen[0] if seen else None,
            (cur.received_ms, cur.expires_ms) if cur else None,
        )
        if dup is not None:
            return dup
        box = self._inbox.setdefault(item.to, {})
        check_inbox(item, len(box), self._bytes.get(item.to, 0), policy)
        box[item.id] = None
        self._bytes[item.to] = self._bytes.get(item.to, 0) + item.size
        self._envs[item.id] = item
        self._seen[item.id] = (item.digest, policy.seen_until_ms)
        heapq.heappush(self._seen_heap, (policy.seen_until_ms, item.id))
        heapq.heappush(self._exp_heap, (item.expires_ms, item.id))
        self.notifier.notify(item.to)
        return PutResult(item.id, item.received_ms, item.expires_ms)

    async def fetch(self, did: str, *, limit: int, now_ms: int) -> list[StoredEnvelope]:
        out: list[StoredEnvelope] = []
        for id_ in self._inbox.get(did, ()):
            env = self._envs[id_]
            if env.expires_ms >= now_ms:
                out.append(env)
                if len(out) >= limit:
                    break
        return out

    def _delete(self, id_: str) -> bool:
        env = self._envs.pop(id_, None)
        if env is None:
            return False
        box = self._inbox.get(env.to, {})
        box.pop(id_, None)
        self._bytes[env.to] = self._bytes.get(env.to, 0) - env.size
        if not box:
            self._inbox.pop(env.to, None)
            self._bytes.pop(env.to, None)
        return True

    async def ack(self, did: str, ids: list[str]) -> int:
        n = 0
        for id_ in ids:
            env = self._envs.get(id_)
            if env is not None and env.to == did:
                n += self._delete(id_)
        return n

    async def prune(self, now_ms: int) -> int:
        n = 0
        while self._exp_heap and self._exp_heap[0][0] < now_ms:
            _, id_ = heapq.heappop(self._exp_heap)
            n += self._delete(id_)
        while self._seen_heap and self._seen_heap[0][0] < now_ms:
            _, id_ = heapq.heappop(self._seen_heap)
            seen = self._seen.get(id_)
            if seen is not None and seen[1] < now_ms:
                del self._seen[id_]
        for nonce in [k for k, until in self._nonces.items() if until < now_ms]:
            del self._nonces[nonce]
        return n

    async def claim_nonce(self, nonce: str, until_ms: int, now_ms: int) -> bool:
        old = self._nonces.get(nonce)
        if old is not None and old >= now_ms:
            return False
        self._nonces[nonce] = until_ms
        return True
