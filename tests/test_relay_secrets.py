"""The token-signing secret at rest (issue 12.3, 12.4): its own 0600 file in a 0700
directory, created atomically, checked at start, rotated; processes on one Redis agree on it,
also across a Redis restart without persistence. Real relay processes, real redis-server."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.relay.errors import AuthInvalid
from didmesh.relay.secret import fingerprint, load_or_create, read_secret
from didmesh.relay.store.sqlite import SqliteStore
from didmesh.session.lab.procs import stop
from relay_helpers import redis_available, start_redis, start_relay

ALICE = IdentityKey.from_seed(b"a" * 32)
BOB = IdentityKey.from_seed(b"b" * 32)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_sqlite_relay_keeps_its_secret_in_a_private_file(tmp_path: Path) -> None:
    data = tmp_path / "var" / "relay"
    with start_relay(f"sqlite:{data / 'relay.sqlite3'}") as relay:
        assert relay.alive()
    secret = data / "relay.secret"
    assert _mode(secret) == 0o600 and _mode(data) == 0o700
    assert _mode(data / "relay.sqlite3") == 0o600
    assert len(read_secret(secret)) == 32
    db = sqlite3.connect(data / "relay.sqlite3")
    assert db.execute("SELECT count(*) FROM meta WHERE key='secret'").fetchone() == (0,)
    db.close()


def _one_line_exit_2(args: list[str], *needles: str) -> str:
    r = subprocess.run([sys.executable, "-m", "didmesh.relay", "--port", "0", *args],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("didmesh relay: "), r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr
    return r.stderr


def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "relay.secret"
    f.write_text(os.urandom(32).hex())
    f.chmod(0o644)
    _one_line_exit_2(["--store", "memory", "--secret-file", str(f)],
                     "readable by other users", f"chmod 600 {f}")
    f.chmod(0o600)
    f.write_text("not hex")
    _one_line_exit_2(["--store", "memory", "--secret-file", str(f)], "64 hexadecimal digits")
    f.write_text("ab" * 8)
    _one_line_exit_2(["--store", "memory", "--secret-file", str(f)], "at least 32")


def _race(path: str, out: multiprocessing.Queue[str]) -> None:  # type: ignore[type-arg]
    out.put(load_or_create(Path(path)).hex())


def test_concurrent_creation_gives_every_process_one_secret(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    path = tmp_path / "d" / "relay.secret"
    procs = [ctx.Process(target=_race, args=(str(path), out)) for _ in range(8)]
    for p in procs:
        p.start()
    got = {out.get(timeout=30) for _ in procs}
    for p in procs:
        p.join(10)
    assert len(got) == 1 and read_secret(path).hex() in got
    assert [x.name for x in path.parent.iterdir()] == ["relay.secret"]  # no temp files left


async def test_a_secret_kept_in_the_database_moves_to_the_file(tmp_path: Path) -> None:
    """Relays before the secret file kept it in SQLite: it moves out, tokens stay valid."""
    db = tmp_path / "relay.sqlite3"
    store = SqliteStore(db)
    await store.start()
    await store.close()
    (tmp_path / "relay.secret").unlink()
    legacy = os.urandom(32)
    con = sqlite3.connect(db)
    con.execute("INSERT INTO meta(key, value) VALUES('secret', ?)", (legacy,))
    con.commit()
    con.close()
    store = SqliteStore(db)
    await store.start()
    try:
        assert await store.secret() == legacy == read_secret(tmp_path / "relay.secret")
    finally:
        await store.close()
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM meta WHERE key='secret'").fetchone() == (0,)
    con.close()


def test_rotation_old_tokens_refused_clients_sign_in_again(tmp_path: Path) -> None:
    """The documented rotation: replace the file, restart. Tokens of the old secret are
    refused (401 auth_invalid) and clients get a new one by themselves."""
    f = tmp_path / "relay.secret"
    args = ["--rate-ip-per-s", "0", "--secret-file", str(f)]
    with start_relay("memory", args) as relay:
        url = relay.url

        async def first() -> str:
            async with RelayClient(url, ALICE) as c:
                await c.send(BOB.did, "s", b"one")
                return await c.token()

        old_token = asyncio.run(first())
        old = read_secret(f)
        relay.terminate()
    new = tmp_path / "relay.secret.new"
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32).hex().encode())
    os.close(fd)
    os.replace(new, f)
    with start_relay("memory", args) as relay:

        async def second() -> None:
            async with RelayClient(relay.url, BOB) as c:
                with pytest.raises(AuthInvalid, match="not issued by this relay"):
                    await _get_with(relay.url, old_token)
                c._token, c._token_expires = old_token, 2**62  # a token from before
                assert await c.fetch() == []  # re-authenticates on its own
                assert c._token != old_token

        asyncio.run(second())
    assert read_secret(f) != old


async def _get_with(url: str, token: str) -> None:
    import aiohttp
    from didmesh.relay.errors import error_from_wire

    async with aiohttp.ClientSession() as s, s.get(
        url + "/v1/inbox", headers={"Authorization": "Bearer " + token}
    ) as r:
        raise error_from_wire(r.status, await r.json(), url)


# -- processes on one Redis ---------------------------------------------------------------------

needs_redis = pytest.mark.skipif(not redis_available(), reason="redis-server not installed")


@needs_redis
def test_processes_with_different_secrets_on_one_redis_refuse_to_start(tmp_path: Path
                                                                        ) -> None:
    a, b = tmp_path / "a.secret", tmp_path / "b.secret"
    load_or_create(a)
    load_or_create(b)
    with start_redis() as redis:
        url = redis.url(3)
        with start_relay(url, ["--secret-file", str(a)]) as first:
            assert first.alive()
            err = _one_line_exit_2(["--store", url, "--secret-file", str(b)], "disagrees")
            assert fingerprint(read_secret(a)) in err and fingerprint(read_secret(b)) in err
            assert read_secret(a).hex() not in err and read_secret(b).hex() not in err
            with start_relay(url, ["--secret-file", str(a)]) as second:  # the same file: fine
                assert second.alive()
            _one_line_exit_2(["--store", url, "--secret-file", str(a), "--relay-id", "other"],
                             "relay id other differs")


def _restart_redis_on(port: int, directory: str, old: subprocess.Popen[bytes]
                      ) -> subprocess.Popen[bytes]:
    old.terminate()
    old.wait(10)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not come back")


@needs_redis
def test_a_redis_restart_without_persistence_does_not_split_the_relay() -> None:
    """The running process puts its secret back into the emptied Redis (within its 5 s
    check), so a process started afterwards uses the same secret and relay id: a token
    from one is accepted by the other. The relay warns at start that Redis does not persist."""
    with start_redis() as redis:
        url = redis.url(4)
        with start_relay(url, ["--rate-ip-per-s", "0"]) as a:
            again = _restart_redis_on(redis.port, redis.dir, redis.proc)
            try:
                time.sleep(6.5)  # one agreement check of process a
                with start_relay(url, ["--rate-ip-per-s", "0"]) as b:

                    async def go() -> None:
                        async with RelayClient(b.url, ALICE) as cb, \
                                RelayClient(a.url, ALICE) as ca:
                            ca._token, ca._token_expires = await cb.token(), 2**62
                            await ca.send(BOB.did, "s", b"x")
                            assert await ca.fetch() == []
                            assert ca._token == await cb.token()  # not renewed: accepted by a

                    asyncio.run(go())
            finally:  # start_redis only stops the server it started
                stop(again, 10)
            warned = [ln for ln in a.log_lines() if "does not persist" in str(ln.get("msg"))]
            assert warned


def test_an_unusable_store_is_one_line_and_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for cmd in ([sys.executable, "-m", "didmesh.relay"],
                [sys.executable, "-m", "didmesh.session.cli.main", "relay", "serve"]):
        r = subprocess.run([*cmd, "--port", "0", "--store", f"sqlite:{blocker}/relay.db"],
                           capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "cannot open relay database" in r.stderr
