"""The store interface and the rules every store applies (specs/relay.md, "Stores").

Posting rules, identical in every store and atomic per envelope:

1. If the id was seen within the replay window: a different digest is :class:`IdConflict`;
   the same digest while the envelope is still stored is a *duplicate* (the original result,
   nothing stored twice); the same digest after it was acknowledged or expired is
   :class:`Replay`.
2. If the recipient's inbox would exceed its count or byte limit: :class:`InboxFull`.
3. Otherwise store it, remember ``id -> digest`` until ``seen_until_ms`` and notify.

Time is always a parameter (``now_ms``), so expiry and pruning are tested without clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..envelope import Envelope
from ..errors import IdConflict, InboxFull, Replay
from ..limits import Limits, LimitSettings, local_limits


@dataclass(frozen=True)
class StoredEnvelope:
    id: str
    to: str
    digest: str
    data: bytes  # the envelope's compact JSON
    received_ms: int
    expires_ms: int

    @property
    def size(self) -> int:
        return len(self.data)

    @classmethod
    def of(cls, env: Envelope, *, received_ms: int, expires_ms: int) -> StoredEnvelope:
        return cls(env.id, env.to, env.digest, env.to_json(), received_ms, expires_ms)


@dataclass(frozen=True)
class PutPolicy:
    seen_until_ms: int
    inbox_max_count: int
    inbox_max_bytes: int


@dataclass(frozen=True)
class PutResult:
    id: str
    received_ms: int
    expires_ms: int
    duplicate: bool = False


def seen_decision(
    item: StoredEnvelope, seen_digest: str | None, stored: tuple[int, int] | None
) -> PutResult | None:
    """Rule 1. Returns the duplicate result, raises, or None (not seen: go on)."""
    if seen_digest is None:
        return None
    if seen_digest != item.digest:
        raise IdConflict(f"envelope id {item.id} was already used for different content")
    if stored is not None:
        return PutResult(item.id, stored[0], stored[1], duplicate=True)
    raise Replay(f"envelope {item.id} was already delivered; it cannot be posted again")


def check_inbox(item: StoredEnvelope, count: int, size: int, policy: PutPolicy) -> None:
    """Rule 2."""
    if count + 1 > policy.inbox_max_count or size + item.size > policy.inbox_max_bytes:
        raise InboxFull(
            f"the recipient's inbox is full ({count} envelopes, {size} bytes; limits "
            f"{policy.inbox_max_count} and {policy.inbox_max_bytes}); retry later"
        )


class Notifier:
    """In-process wake-ups: ``with notifier.listen(did) as ev: await ev.wait()``."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def listen(self, did: str) -> Iterator[asyncio.Event]:
        ev = asyncio.Event()
        self._listeners.setdefault(did, set()).add(ev)
        try:
            yield ev
        finally:
            group = self._listeners.get(did)
            if group is not None:
                group.discard(ev)
                if not group:
                    del self._listeners[did]

    def notify(self, did: str) -> None:
        for ev in self._listeners.get(did, ()):
            ev.set()

    def wake_all(self) -> None:
        for group in self._listeners.values():
            for ev in group:
                ev.set()


class Bus(ABC):
    """Cross-process messaging for links whose ends reach different relay processes."""

    proc_id: str

    @abstractmethod
    async def pair(self, my_key: str, mirror_key: str, token: str, ttl_ms: int) -> str | None:
        """Atomically claim the mirror waiter (returns its token) or register ours (None).

        Raises :class:`KeyError` if an identical request (``my_key``) is already waiting.
        """

    @abstractmethod
    async def unpair(self, my_key: str, token: str) -> None:
        """Withdraw our waiting registration if it is still ours."""

    @abstractmethod
    async def publish(self, channel: str, data: bytes) -> None: ...

    @abstractmethod
    async def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Subscribe and return once the subscription is active."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel`` (and drop its :meth:`watch_process`)."""

    def watch_process(  # noqa: B027 (optional: only a shared store has other processes)
        self, proc_id: str, channel: str, on_dead: Callable[[], None]
    ) -> None:
        """Call ``on_dead()`` once if relay process ``proc_id`` is found dead while
        ``channel`` is subscribed (within the store's liveness bound). Default: never."""

    def proc_channel(self, proc_id: str) -> str:
        return f"proc:{proc_id}"

    async def advertise(self, address: str, ttl_ms: int) -> None:  # noqa: B027 (optional)
        """Tell the other processes where to splice links to this one (``HOST:PORT``), for
        ``ttl_ms`` (the caller refreshes it)."""

    async def splice_address(self, proc_id: str) -> str | None:
        """Where process ``proc_id`` takes spliced links, if it said (specs/relay.md, 4)."""
        return None


class Store(ABC):
    """Mailbox storage. One instance per relay process."""

    def __init__(self) -> None:
        self.notifier = Notifier()

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Open connections, create schema."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Flush and close."""

    @property
    def bus(self) -> Bus | None:
        """Cross-process bus (Redis) or None when every link end is in this process."""
        return None

    def limits(self, settings: LimitSettings, clock: Callable[[], float]) -> Limits:
        """Rate buckets and link slots: held in this process unless the store is shared
        by several processes (Redis), which then share them too."""
        return local_limits(settings, clock)

    @abstractmethod
    async def secret(self) -> bytes:
        """The relay secret (MAC key for challenges and tokens), created on first use.

        Shared by every process using the same store, and kept across restarts by durable
        stores, so tokens stay valid.
        """

    @abstractmethod
    async def put(self, item: StoredEnvelope, policy: PutPolicy) -> PutResult: ...

    @abstractmethod
    async def fetch(self, did: str, *, limit: int, now_ms: int) -> list[StoredEnvelope]:
        """Unexpired envelopes for ``did``, oldest first."""

    @abstractmethod
    async def ack(self, did: str, ids: list[str]) -> int:
        """Delete ``did``'s envelopes with these ids; returns how many were deleted."""

    @abstractmethod
    async def prune(self, now_ms: int) -> int:
        """Delete expired envelopes, seen ids and nonces; returns envelopes deleted."""

    @abstractmethod
    async def claim_nonce(self, nonce: str, until_ms: int, now_ms: int) -> bool:
        """True the first time ``nonce`` is claimed before ``until_ms``."""

    async def ping(self) -> None:  # noqa: B027 (optional hook)
        """Raise if the store is not usable (for /healthz)."""

    async def agree(self, secret_fp: str, relay_id: str) -> str | None:
        """For stores shared by processes: None if the others use this secret (by its
        fingerprint) and relay id, else what differs. Called at start and periodically."""
        return None

    async def add_totals(self, deltas: dict[str, int]) -> dict[str, int] | None:
        """Add this process's counter increments to totals shared by the processes on
        the store; returns the totals (None: the store is not shared)."""
        return None

    def describe(self) -> dict[str, str]:
        """What the startup log line says about the store (no secrets)."""
        return {}

