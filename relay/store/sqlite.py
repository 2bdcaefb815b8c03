"""SQLite store: embedded and durable, the default (specs/relay.md, "Stores").

Durability: WAL journal with ``synchronous=FULL``, so every commit is fsynced before the
relay answers "stored": an acknowledged envelope survives SIGKILL and power loss alike.
To keep fsyncs off the per-request path, posts (and acks) are *group-committed*:
concurrent writes queue up and one writer runs them in a single transaction and a single
fsync, then answers all of them. One connection on one dedicated thread serialises every
statement, so the posting rules (store/base.py) are applied atomically without explicit locks.
(``sqlite3`` is used directly rather than aiosqlite because group commit needs several
statements per thread hop.)
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import RelayConfigError, RelayError
from ..secret import FILE_NAME, load_or_create
from .base import PutPolicy, PutResult, Store, StoredEnvelope, check_inbox, seen_decision

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS envelopes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    recipient TEXT NOT NULL,
    digest TEXT NOT NULL,
    received INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS envelopes_recipient ON envelopes(recipient, seq);
CREATE INDEX IF NOT EXISTS envelopes_expires ON envelopes(expires);
CREATE TABLE IF NOT EXISTS seen (
    id TEXT PRIMARY KEY, digest TEXT NOT NULL, until INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_until ON seen(until);
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, until INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""

MAX_BATCH = 256


class SqliteStore(Store):
    def __init__(self, path: str | Path, *, secret_file: Path | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        #: the token secret's file (specs/relay.md, "Secrets"); next to the database
        self.secret_file = secret_file or self.path.parent / FILE_NAME
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite")
        self._db: sqlite3.Connection | None = None
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._secret: bytes | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- lifecycle ----------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            new = not self.path.exists()
            if new:  # private from the start (WAL and shm files inherit the mode)
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA user_version").fetchone()  # a read-only file fails here
        except (OSError, sqlite3.Error) as exc:
            raise RelayConfigError(f"cannot open relay database {self.path}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            # a read-only file system (or an immutable file) may still open and read, e.g.
            # with WAL files left by a killed relay: fail at start, not at the first write
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('write_probe', x'00')")
            finally:
                db.execute("ROLLBACK")
            # relays before the secret file kept it in the database: move it out (tokens
            # issued before stay valid)
            row = db.execute("SELECT value FROM meta WHERE key='secret'").fetchone()
            self._secret = load_or_create(self.secret_file, bytes(row[0]) if row else None)
            if row is not None:
                db.execute("DELETE FROM meta WHERE key='secret'")
        except sqlite3.Error as exc:
            db.close()
            raise RelayConfigError(
                f"cannot use relay database {self.path} (is it writable?): {exc}"
            ) from exc
        except BaseException:
            db.close()
            raise
        self._db = db

    async def start(self) -> None:
        await self._run(self._open)
        self._writer = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        if self._queue:  # answer what is left so no caller hangs
            await self._flush()
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RelayError("the SQLite store is not open")
        return self._db

    async def secret(self) -> bytes:
        assert self._secret is not None, "start() the store first"
        return self._secret

    async def ping(self) -> None:
        await self._run(lambda: self.db.execute("SELECT 1").fetchone())

    # -- writes (group commit) -------------------------------------------------------------
    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Queue ``op`` for the next group transaction; resolves once it is committed."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        self._wake.set()
        return await fut

    async def put(self, item: StoredEnvelope, policy: PutPolicy) -> PutResult:
        res = await self._write(lambda db: self._put_one(db, item, policy))
        if not res.duplicate:
            self.notifier.notify(item.to)
        return res

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._flush()

    async def _flush(self) -> None:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        try:
            results = await self._run(self._run_batch, [op for op, _ in batch])
        except Exception as exc:  # the whole transaction failed: nothing was written
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), res in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(res, RelayError):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    def _run_batch(self, ops: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        db = self.db
        out: list[Any] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                try:
                    out.append(op(db))
                except RelayError as exc:  # a refusal (replay, inbox full): others go on
                    out.append(exc)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return out

    @staticmethod
    def _put_one(db: sqlite3.Connection, item: StoredEnvelope, policy: PutPolicy) -> PutResult:
        row = db.execute("SELECT digest FROM seen WHERE id=?", (item.id,)).fetchone()
        cur = db.execute(
            "SELECT received, expires FROM envelopes WHERE id=?", (item.id,)
        ).fetchone()
        dup = seen_decision(item, row[0] if row else None, (cur[0], cur[1]) if cur else None)
        if dup is not None:
            return dup
        count, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM envelopes WHERE recipient=?",
            (item.to,),
        ).fetchone()
        check_inbox(item, count, size, policy)
        db.execute(
            "INSERT INTO envelopes(id, recipient, digest, received, expires, size, data)"
            " VALUES(?,?,?,?,?,?,?)",
            (item.id, item.to, item.digest, item.received_ms, item.expires_ms, item.size,
             item.data),
        )
        db.execute(
            "INSERT OR REPLACE INTO seen(id, digest, until) VALUES(?,?,?)",
            (item.id, item.digest, policy.seen_until_ms),
        )
        return PutResult(item.id, item.received_ms, item.expires_ms)

    # -- the rest -----------------------------------------------------------------------------
    async def fetch(self, did: str, *, limit: int, now_ms: int) -> list[StoredEnvelope]:
        def q() -> list[StoredEnvelope]:
            rows = self.db.execute(
                "SELECT id, recipient, digest, data, received, expires FROM envelopes"
                " WHERE recipient=? AND expires>=? ORDER BY seq LIMIT ?",
                (did, now_ms, limit),
            ).fetchall()
            return [StoredEnvelope(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

        return await self._run(q)

    async def ack(self, did: str, ids: list[str]) -> int:
        def op(db: sqlite3.Connection) -> int:
            return int(db.executemany(
                "DELETE FROM envelopes WHERE id=? AND recipient=?", [(i, did) for i in ids]
            ).rowcount)

        return await self._write(op)

    async def prune(self, now_ms: int) -> int:
        def q() -> int:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                n = db.execute("DELETE FROM envelopes WHERE expires<?", (now_ms,)).rowcount
                db.execute("DELETE FROM seen WHERE until<?", (now_ms,))
                db.execute("DELETE FROM nonces WHERE until<?", (now_ms,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(n)

        return await self._run(q)

    async def claim_nonce(self, nonce: str, until_ms: int, now_ms: int) -> bool:
        def q() -> bool:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT until FROM nonces WHERE nonce=?", (nonce,)).fetchone()
                if row is not None and row[0] >= now_ms:
                    db.execute("COMMIT")
                    return False
                db.execute(
                    "INSERT OR REPLACE INTO nonces(nonce, until) VALUES(?,?)", (nonce, until_ms)
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return True

        return await self._run(q)
