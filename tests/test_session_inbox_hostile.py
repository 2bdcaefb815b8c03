"""Issue 13, items 3 and 4: a hostile inbox and hostile relays, through the real CLI.

* Poisoned inbox: any did:key holder could post one envelope (a signed session message
  holding a 4,301-digit integer) that crashed the addressee's ``didmesh invites`` on every
  fetch, never acknowledged. Now it is reported once, naming its sender, acknowledged,
  and the invites around it are listed.
* A relay that is down, answers HTTP errors or pushes a bad frame is an error of
  ``didmesh invites`` (one ``didmesh:`` line naming the relay and the cause, non-zero
  exit), never an empty inbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from adversary.relay_proxy import MaliciousRelay
from aiohttp import web
from cli_helpers import Result, run_cli
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.session.mailbox import frame
from relay_helpers import RelayProcess, free_port, start_relay
from test_pathological_json import message_inner, signed_message

MALLORY = IdentityKey.from_seed(b"\x66" * 32)


def ok(home: Path, *args: str) -> Any:
    res = run_cli(home, *args, "--json", timeout=60)
    assert res.rc == 0, f"{args}: rc={res.rc} {res.err[-2000:]}"
    return res.json()


def new_identity(home: Path) -> str:
    return str(ok(home, "id", "new", "--no-passphrase")["did"])


async def run_cli_async(home: Path, *args: str, timeout: float = 60) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    env["DIDMESH_HOME"] = str(home)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "didmesh.session.cli.main", *args, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Result(proc.returncode or 0, out.decode(), err.decode())


def assert_relay_error(res: Result, url: str, cause: str) -> None:
    """Non-zero exit; exactly one ``didmesh:`` line, naming the relay and the cause; no
    traceback; and no empty inbox on stdout."""
    assert res.rc != 0, (res.out, res.err)
    lines = [ln for ln in res.err.splitlines() if ln.startswith("didmesh:")]
    assert len(lines) == 1, res.err
    assert url in lines[0] and cause in lines[0], lines[0]
    assert "Traceback" not in res.err
    assert "no pending invites" not in res.out
    if res.out.strip().startswith(("[", "{")):
        assert json.loads(res.out) != []


# --------------------------------------------------------------------------- poisoned inbox


async def _post_as_mallory(relay_url: str, to: str, plaintext: bytes) -> None:
    client = RelayClient(relay_url, MALLORY)
    try:
        await client.send(to, "a" * 32, frame(plaintext))
    finally:
        await client.close()


def test_poisoned_envelope_is_reported_once_and_blocks_nothing(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    new_identity(alice)
    b_did = new_identity(bob)
    with start_relay("memory", ["--rate-ip-per-s", "0"], home=tmp_path) as relay:
        inner = json.dumps(message_inner(to=b_did)).replace('"ts": 1', '"ts": ' + "9" * 4301)
        asyncio.run(_post_as_mallory(relay.url, b_did, signed_message(MALLORY, inner)))
        program = tmp_path / "p.py"
        program.write_text("print(1)\n")
        sid = ok(alice, "session", "new", "--program", str(program), "--parties", "2",
                 "--relay", relay.url, "--name", "after the poison")["sessionId"]  # fmt: skip
        assert ok(alice, "invite", sid, "--to", b_did)["delivered"] is True

        first = run_cli(bob, "invites", "--relay", relay.url, "--json", timeout=60)
        assert first.rc == 0, first.err
        assert [v["sessionId"] for v in first.json()] == [sid]
        assert first.err.count(MALLORY.did) == 1, first.err  # reported once, with its sender
        assert "number of 4301 characters" in first.err and "Traceback" not in first.err

        again = run_cli(bob, "invites", "--relay", relay.url, "--json", timeout=60)
        assert again.rc == 0 and [v["sessionId"] for v in again.json()] == [sid]
        assert MALLORY.did not in again.err, again.err  # acknowledged: not reported again


def test_a_message_no_check_foresaw_is_set_aside(tmp_path: Path) -> None:
    """Defence in depth: an exception other than the project's (a bug) in one message is
    reported with its sender, the message kept in quarantine/, and the rest delivered."""
    from adversary.sessions import BOB, ORG, build_session, counter_rng
    from didmesh.session import engine as engine_mod
    from didmesh.session.engine import Engine
    from didmesh.session.messages import seal_message
    from didmesh.session.store import SessionStore

    docs = build_session()
    invite = seal_message(ORG, "invite", docs.manifest.session_id, BOB.did,
                          {"invite": docs.invites[BOB.did]}, now_ms=1,
                          rng=counter_rng(b"i"))  # fmt: skip
    real_open = engine_mod.open_message

    def buggy_open(payload: bytes, *, me: str) -> Any:
        if payload == b"poison":
            raise RuntimeError("a bug")
        return real_open(payload, me=me)

    from adversary.sessions import NOW

    engine = Engine(SessionStore(tmp_path), BOB, clock=lambda: NOW)
    engine_mod.open_message = buggy_open
    try:
        notes = engine.deliver([(MALLORY.did, b"poison"), (ORG.did, invite)])
    finally:
        engine_mod.open_message = real_open
    texts = [n.text for n in notes]
    assert any(MALLORY.did in t and "RuntimeError" in t and "quarantine" in t for t in texts)
    assert any("new invite" in t for t in texts), texts
    assert len(list((tmp_path / "quarantine").iterdir())) == 1


def test_quarantine_is_pruned_by_age_and_count(tmp_path: Path) -> None:
    """Anyone can post messages that end in quarantine/: it keeps at most
    QUARANTINE_MAX_FILES, the newest, none older than QUARANTINE_MAX_AGE_S; files that are
    not set-aside messages are left alone."""
    from didmesh.session.store import (
        QUARANTINE_MAX_AGE_S,
        QUARANTINE_MAX_BYTES,
        QUARANTINE_MAX_FILES,
        SessionStore,
    )

    store = SessionStore(tmp_path)
    t0 = 1_800_000_000.0
    old = store.set_aside(b"old", now=t0)
    (tmp_path / "quarantine" / "NOTES.txt").write_text("mine")
    later = t0 + QUARANTINE_MAX_AGE_S - 10
    paths = [store.set_aside(f"m{i}".encode(), now=later + i)
             for i in range(QUARANTINE_MAX_FILES + 5)]
    assert not old.exists()  # past the age bound
    kept = sorted(p.name for p in (tmp_path / "quarantine").glob("*.msg"))
    assert kept == sorted(p.name for p in paths[5:])  # the newest QUARANTINE_MAX_FILES
    assert (tmp_path / "quarantine" / "NOTES.txt").read_text() == "mine"
    big = store.set_aside(os.urandom(QUARANTINE_MAX_BYTES + 10), now=later + 100)
    assert big.stat().st_size == QUARANTINE_MAX_BYTES
    assert store.prune_quarantine(now=later + 100 + QUARANTINE_MAX_AGE_S + 1) == \
        QUARANTINE_MAX_FILES
    assert not list((tmp_path / "quarantine").glob("*.msg"))


# --------------------------------------------------------------------------- hostile relays


@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
def test_relay_down_is_an_error(tmp_path: Path, json_mode: bool) -> None:
    new_identity(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    res = run_cli(tmp_path, "invites", "--relay", url, *(["--json"] if json_mode else []),
                  timeout=60)  # fmt: skip
    assert_relay_error(res, url, "cannot reach the relay")


@pytest.mark.parametrize("status", [500, 503, 404, 403])
def test_relay_http_errors_are_errors(tmp_path: Path, status: int) -> None:
    new_identity(tmp_path)

    async def go() -> tuple[str, Result]:
        async def answer(_request: web.Request) -> web.Response:
            return web.Response(status=status, text="nope")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        try:
            return url, await run_cli_async(tmp_path, "invites", "--relay", url)
        finally:
            await runner.cleanup()

    url, res = asyncio.run(go())
    assert_relay_error(res, url, str(status))


def test_relay_pushing_a_bad_frame_is_an_error(tmp_path: Path) -> None:
    b_did = new_identity(tmp_path)
    with start_relay("memory", ["--rate-ip-per-s", "0"], home=tmp_path) as relay:
        asyncio.run(_post_as_mallory(relay.url, b_did, b"\x00anything"))

        async def go() -> tuple[str, Result]:
            async with MaliciousRelay(relay.url) as mal:
                mal.on_deliver = lambda _did, _items: [{"received_ms": 1, "envelope": "junk"}]
                return mal.url, await run_cli_async(tmp_path, "invites", "--relay", mal.url)

        url, res = asyncio.run(go())
    assert_relay_error(res, url, "malformed envelope from the relay")


def test_one_relay_down_of_two_lists_and_fails(tmp_path: Path, relay: RelayProcess) -> None:
    new_identity(tmp_path)
    down = f"http://127.0.0.1:{free_port()}"
    res = run_cli(tmp_path, "invites", "--relay", relay.url, "--relay", down, timeout=60)
    assert "no pending invites" in res.out  # the reachable relay's inbox, truly empty
    assert res.rc != 0 and down in res.err and "Traceback" not in res.err


@pytest.fixture
def relay(tmp_path: Path) -> Any:
    with start_relay("memory", ["--rate-ip-per-s", "0"], home=tmp_path / "r") as r:
        yield r
