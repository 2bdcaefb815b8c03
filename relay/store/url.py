"""Store URLs: ``memory``, ``sqlite:PATH`` and ``redis://HOST:PORT/DB``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import RelayConfigError
from .base import Store

STORE_HELP = "memory | sqlite:PATH | redis://HOST:PORT/DB"


@dataclass(frozen=True)
class StoreSpec:
    kind: str  # "memory" | "sqlite" | "redis"
    target: str = ""


def default_sqlite_path() -> Path:
    """``$DIDMESH_HOME/relay/relay.sqlite3``, else the user data directory."""
    home = os.environ.get("DIDMESH_HOME")
    if home:
        return Path(home) / "relay" / "relay.sqlite3"
    import platformdirs

    return Path(platformdirs.user_data_dir("didmesh")) / "relay" / "relay.sqlite3"


def parse_store_url(url: str | None) -> StoreSpec:
    if not url:
        return StoreSpec("sqlite", str(default_sqlite_path()))
    if url == "memory":
        return StoreSpec("memory")
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise RelayConfigError("sqlite store needs a path: --store sqlite:PATH")
        return StoreSpec("sqlite", path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return StoreSpec("redis", url)
    raise RelayConfigError(f"unknown store {url!r}: expected {STORE_HELP}")


def open_store(url: str | None, secret_file: str = "") -> Store:
    """Build (not start) the store named by ``url``; ``secret_file``: where the token
    secret lives (default: next to a SQLite database, in Redis, or in memory)."""
    spec = parse_store_url(url)
    secret = Path(secret_file) if secret_file else None
    if spec.kind == "memory":
        from .memory import MemoryStore

        return MemoryStore(secret_file=secret)
    if spec.kind == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(spec.target, secret_file=secret)
    from .redis import RedisStore

    return RedisStore(spec.target, secret_file=secret)
