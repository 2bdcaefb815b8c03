"""Relay stores: where mailboxes live (specs/relay.md, "Stores").

:class:`Store` is the async interface; :class:`MemoryStore` (tests), :class:`SqliteStore`
(embedded, durable, the default) and :class:`RedisStore` (shared by several relay processes)
implement it. :func:`open_store` builds one from a store URL.
"""

from __future__ import annotations

from .base import PutResult, Store, StoredEnvelope
from .memory import MemoryStore
from .url import open_store, parse_store_url

__all__ = [
    "MemoryStore",
    "PutResult",
    "Store",
    "StoredEnvelope",
    "open_store",
    "parse_store_url",
]
