"""Done-when test of issue 4: three people, three homes, a real relay process.

Alice creates a session and invites Bob by DID (via a contact) and Carol by code; both
accept; all three see the same confirmed roster and the same short authentication string.
Every step is the real ``didmesh`` CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import concurrently, run_cli
from gate_helpers import gate_credential
from relay_helpers import relay_url  # noqa: F401  (fixture)


def spawn_cli(home: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    env["DIDMESH_HOME"] = str(home)
    return subprocess.Popen(
        [sys.executable, "-m", "didmesh.session.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> tuple[int, Any, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"CLI did not finish: {err[-2000:]}") from None
    return proc.returncode, (json.loads(out) if out.strip() else None), err


def ok(home: Path, *args: str, timeout: float = 60) -> Any:
    res = run_cli(home, *args, "--json", timeout=timeout)
    assert res.rc == 0, f"{args}: rc={res.rc} {res.err[-2000:]}"
    return res.json()


def new_identity(home: Path) -> str:
    return ok(home, "id", "new", "--no-passphrase")["did"]


def test_three_shells_one_by_did_one_by_code(tmp_path: Path, relay_url: str) -> None:  # noqa: F811
    alice, bob, carol = (tmp_path / n for n in ("alice", "bob", "carol"))
    a_did, b_did, c_did = new_identity(alice), new_identity(bob), new_identity(carol)
    program = tmp_path / "sum.py"
    program.write_text("from mpyc.runtime import mpc\nprint('sum')\n")

    made = ok(alice, "session", "new", "--program", str(program), "--parties", "3",
              "--relay", relay_url, "--name", "three shells")  # fmt: skip
    sid = made["sessionId"]
    assert made["organizer"] == a_did and made["parties"] == 3 and made["threshold"] == 1
    assert ok(alice, "sessions")[0]["sessionId"] == sid

    ok(alice, "contacts", "add", "bob", b_did)
    sent = ok(alice, "invite", sid[:8], "--to", "bob")
    assert sent["delivered"] is True and sent["invites"][0]["to"] == b_did
    code = ok(alice, "invite", sid, "--code", "--no-wait")["code"]
    assert code.count("-") == 2

    organizer = spawn_cli(alice, "session", "wait", sid, "--timeout", "60", "--json")
    try:
        ok(bob, "contacts", "add", "alice", a_did)
        pending = ok(bob, "invites", "--relay", relay_url)
        assert [p["sessionId"] for p in pending] == [sid]
        assert pending[0]["organizerName"] == "alice"
        assert pending[0]["program"]["sha256"] == made["program"]["sha256"]

        claimed = ok(carol, "claim", code, "--relay", relay_url, timeout=60)
        assert claimed["sessionId"] == sid and claimed["organizer"] == a_did

        # without --yes and without a terminal: a clear error, no hang
        res = run_cli(bob, "accept", sid[:8], timeout=30)
        assert res.rc == 2 and "--yes" in res.err

        ok(bob, "accept", sid[:8], "--yes", "--program", str(program),
           "--endpoint", "tcp://127.0.0.1:7001")  # fmt: skip
        ok(carol, "accept", sid, "--yes")
        waits = [spawn_cli(h, "status", sid, "--wait", "--timeout", "60", "--json")
                 for h in (bob, carol)]  # fmt: skip
        results = [finish(p) for p in waits]
        rc, a_view, a_err = finish(organizer)
    finally:
        if organizer.poll() is None:
            organizer.kill()
            organizer.communicate()
    assert rc == 0, a_err[-3000:]
    views = [a_view] + [r[1] for r in results]
    for code_rc, _view, err in results:
        assert code_rc == 0, err[-3000:]
    for view in views:
        assert view["status"] == "agreed"
    hashes = {v["roster"]["hash"] for v in views}
    sas = {v["sas"] for v in views}
    assert len(hashes) == 1 and len(sas) == 1 and len(next(iter(sas)).split()) == 5
    parties = [p["did"] for p in a_view["roster"]["parties"]]
    assert parties[0] == a_did and set(parties) == {a_did, b_did, c_did}
    assert all(p["confirmed"] for v in views for p in v["roster"]["parties"])
    assert next(p for p in a_view["roster"]["parties"] if p["did"] == b_did)["endpoints"] == [
        "tcp://127.0.0.1:7001"
    ]
    # status afterwards (a separate invocation) shows the same SAS, offline too
    again = ok(carol, "status", sid[:6], "--offline")
    assert again["sas"] == next(iter(sas))
    # the session key files are private
    key_file = bob / "sessions" / sid / "session-key.json"
    assert key_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_second_claim_of_one_code_fails_clearly(tmp_path: Path, relay_url: str) -> None:  # noqa: F811
    alice, carol, dave = (tmp_path / n for n in ("alice", "carol", "dave"))
    for h in (alice, carol, dave):
        new_identity(h)
    program = tmp_path / "p.py"
    program.write_text("print(1)\n")
    sid = ok(alice, "session", "new", "--program", str(program), "--parties", "3",
             "--relay", relay_url)["sessionId"]  # fmt: skip
    organizer = spawn_cli(alice, "invite", sid, "--code", "--timeout", "60", "--json")
    try:
        assert organizer.stderr is not None
        line = organizer.stderr.readline()
        assert line.startswith("invite code: "), line
        code = line.split()[2]
        first = ok(carol, "claim", code, "--relay", relay_url)
        assert first["sessionId"] == sid
        rc, data, err = finish(organizer)
        assert rc == 0 and data["status"] == "claimed", err
    finally:
        if organizer.poll() is None:
            organizer.kill()
            organizer.communicate()
    # the organizer's pump is running again (session wait) and must refuse the replayed code
    serve = spawn_cli(alice, "session", "wait", sid, "--timeout", "15", "--json")
    try:
        second = run_cli(dave, "claim", code, "--relay", relay_url, "--timeout", "10")
        assert second.rc == 1 and "already used by someone else" in second.err, second.err
    finally:
        serve.kill()
        serve.communicate()


@pytest.mark.slow
def test_wrong_code_is_refused_and_burns_the_code(tmp_path: Path, relay_url: str) -> None:  # noqa: F811
    alice, mallory = tmp_path / "alice", tmp_path / "mallory"
    new_identity(alice)
    new_identity(mallory)
    program = tmp_path / "p.py"
    program.write_text("print(1)\n")
    sid = ok(alice, "session", "new", "--program", str(program), "--parties", "2",
             "--relay", relay_url)["sessionId"]  # fmt: skip
    code = ok(alice, "invite", sid, "--code", "--no-wait")["code"]
    nameplate, w1, w2 = code.split("-")
    wrong = f"{nameplate}-{w2}-{w1}" if w1 != w2 else f"{nameplate}-{w1}-zebra"
    serve = spawn_cli(alice, "session", "wait", sid, "--timeout", "20", "--json")
    try:
        res = run_cli(mallory, "claim", wrong, "--relay", relay_url, "--timeout", "15")
        assert res.rc == 1 and "does not match" in res.err, res.err
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the organizer burns the code on "abandon"
            seats = ok(alice, "session", "show", sid)["seats"]
            if seats[0]["status"] != "code":
                break
            time.sleep(0.2)
    finally:
        serve.kill()
        serve.communicate()
    assert [s["status"] for s in seats] == ["lapsed"]


def test_malformed_code_is_a_local_error(tmp_path: Path) -> None:
    home = tmp_path / "h"
    new_identity(home)
    res = run_cli(home, "claim", "4-orbit-lanturn", "--relay", "http://127.0.0.1:9")
    assert res.rc == 2 and "did you mean 'lantern'" in res.err, res.err


def test_accept_checks_the_program_digest(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    new_identity(alice)
    b_did = new_identity(bob)
    program = tmp_path / "p.py"
    program.write_text("print(1)\n")
    sid = ok(alice, "session", "new", "--program", str(program), "--parties", "2",
             "--relay", "http://127.0.0.1:9")["sessionId"]  # fmt: skip
    invite_file = tmp_path / "invite.json"
    ok(alice, "invite", sid, "--to", b_did, "--out", str(invite_file), timeout=60)
    listed = ok(bob, "invites", "--file", str(invite_file), "--offline")
    assert [v["sessionId"] for v in listed] == [sid]
    other = tmp_path / "other.py"
    other.write_text("print(2)\n")
    res = run_cli(bob, "accept", sid, "--yes", "--program", str(other))
    assert res.rc == 2 and "SHA-256" in res.err and "nothing starts" in res.err, res.err
    assert ok(bob, "status", sid, "--offline")["status"] == "invited"  # nothing was sent


def _gate_credential_file(path: Path, issuer: Any, subject: str, random_bytes: int) -> str:
    path.write_text(json.dumps(gate_credential(issuer, subject, random_bytes)))
    return str(path)


def test_a_refused_acceptance_ends_the_invitees_wait_with_the_reason(
    tmp_path: Path, relay_url: str  # noqa: F811
) -> None:
    """Two gated seats; bob's 30 KB credential is accepted, carol's (as large) would make
    the roster too large: `accept --wait` ends at once with one `didmesh:` line naming the
    sizes, and carol accepts again with a smaller credential; everyone agrees."""
    from didmesh.identity.keys import IdentityKey

    alice, bob, carol = (tmp_path / n for n in ("alice", "bob", "carol"))
    b_did, c_did = new_identity(bob), new_identity(carol)
    new_identity(alice)
    consortium = IdentityKey.generate()
    program = tmp_path / "sum.py"
    program.write_text("from mpyc.runtime import mpc\n")
    sid = ok(alice, "session", "new", "--program", str(program), "--parties", "3",
             "--relay", relay_url)["sessionId"]  # fmt: skip
    ok(alice, "invite", sid, "--to", b_did, "--to", c_did, "--requires-issuer", consortium.did,
       "--requires-type", "ConsortiumMember")  # fmt: skip
    organizer = spawn_cli(alice, "session", "wait", sid, "--timeout", "90", "--json")
    bob_wait: subprocess.Popen[str] | None = None
    try:
        for home in (bob, carol):
            ok(home, "invites", "--relay", relay_url)
        big = [_gate_credential_file(tmp_path / f"{n}.json", consortium, d, 30_000)
               for n, d in (("b", b_did), ("c", c_did))]  # fmt: skip
        ok(bob, "accept", sid, "--yes", "--credential", big[0])
        deadline = time.monotonic() + 30
        while "accepted" not in [s["status"] for s in ok(alice, "status", sid, "--offline")[
                "seats"]]:  # fmt: skip
            assert time.monotonic() < deadline, "the organizer never took bob's acceptance"
            time.sleep(0.3)
        started = time.monotonic()
        res = run_cli(carol, "accept", sid, "--yes", "--credential", big[1], "--wait",
                      "--timeout", "60", timeout=90)  # fmt: skip
        waited = time.monotonic() - started
        assert res.rc == 1, (res.rc, res.err[-2000:])
        assert waited < 30, waited  # told, not timed out
        lines = [ln for ln in res.err.splitlines() if ln.startswith("didmesh:")]
        assert len(lines) == 1 and "Traceback" not in res.err, res.err[-2000:]
        assert "refused your acceptance" in lines[0] and "present smaller credentials" in lines[0]
        assert re.search(r"about \d+ bytes .*above the \d+", lines[0]), lines[0]
        view = ok(carol, "status", sid, "--offline")
        assert view["status"] == "refused" and view["error"]["code"] == "gate_credential_too_large"
        # a smaller credential: accepted again; the session agrees for everyone
        small = _gate_credential_file(tmp_path / "c-small.json", consortium, c_did, 16)
        bob_wait = spawn_cli(bob, "status", sid, "--wait", "--timeout", "60", "--json")
        again = ok(carol, "accept", sid, "--yes", "--credential", small, "--wait",
                   "--timeout", "60", timeout=90)  # fmt: skip
        assert again["status"] == "agreed"
        b_rc, b_view, b_err = finish(bob_wait)
        rc, a_view, a_err = finish(organizer)
    finally:
        for proc in (organizer, bob_wait):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert b_rc == 0 and b_view["status"] == "agreed", b_err[-2000:]
    assert rc == 0 and a_view["status"] == "agreed", a_err[-2000:]


def test_an_invite_withdrawn_then_sent_again_can_be_accepted(
    tmp_path: Path, relay_url: str  # noqa: F811
) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    b_did = new_identity(bob)
    new_identity(alice)
    program = tmp_path / "sum.py"
    program.write_text("from mpyc.runtime import mpc\n")
    sid = ok(alice, "session", "new", "--program", str(program), "--parties", "2",
             "--relay", relay_url)["sessionId"]  # fmt: skip
    first = ok(alice, "invite", sid, "--to", b_did)["invites"][0]["inviteId"]
    ok(bob, "invites", "--relay", relay_url)
    ok(alice, "withdraw", sid, "--invite", b_did)
    assert ok(bob, "status", sid)["status"] == "revoked"
    second = ok(alice, "invite", sid, "--to", b_did)["invites"][0]["inviteId"]
    assert second != first
    organizer = spawn_cli(alice, "session", "wait", sid, "--timeout", "60", "--json")
    try:
        view = ok(bob, "accept", sid, "--yes", "--wait", "--timeout", "60", timeout=90)
        rc, a_view, a_err = finish(organizer)
    finally:
        if organizer.poll() is None:
            organizer.kill()
            organizer.communicate()
    assert view["status"] == "agreed"
    assert rc == 0 and a_view["status"] == "agreed", a_err[-2000:]


def test_a_waiting_invitee_invited_again_is_told_to_accept_the_fresh_invite(
    tmp_path: Path, relay_url: str  # noqa: F811
) -> None:
    """bob accepted; the organizer withdraws that invite and invites bob again: bob's
    `status --wait` ends at once saying so (not a timeout), and the fresh invite can be
    accepted."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    b_did, c_did = new_identity(bob), new_identity(tmp_path / "carol")
    new_identity(alice)
    program = tmp_path / "sum.py"
    program.write_text("from mpyc.runtime import mpc\n")
    sid = ok(alice, "session", "new", "--program", str(program), "--parties", "3",
             "--relay", relay_url)["sessionId"]  # fmt: skip
    ok(alice, "invite", sid, "--to", b_did, "--to", c_did)
    ok(bob, "invites", "--relay", relay_url)
    ok(bob, "accept", sid, "--yes")
    ok(alice, "withdraw", sid, "--invite", b_did)
    ok(alice, "invite", sid, "--to", b_did)
    res = run_cli(bob, "status", sid, "--wait", "--timeout", "60", timeout=90)
    lines = [ln for ln in res.err.splitlines() if ln.startswith("didmesh:")]
    assert res.rc == 1 and len(lines) == 1, (res.rc, res.err[-2000:])
    assert "invited you again" in lines[0] and f"didmesh accept {sid[:8]}" in lines[0]
    assert ok(bob, "accept", sid, "--yes")["status"] == "accepted"


def test_invitees_waiting_one_after_another_are_told_who_must_confirm(
    tmp_path: Path, relay_url: str  # noqa: F811
) -> None:
    """Four parties, all accepted; the invitees run `status --wait` one after another, not
    at the same time. A party confirms the roster only while its didmesh runs, so the first
    waits can only time out: each says, once at the start and in its timeout line, which
    parties (by petname) have not confirmed and the command that does it. Confirmations are
    sent once: the last invitee agrees at once, and so do the earlier ones when they look
    again (they did not need to stay online)."""
    names = ("alice", "bob", "carol", "dave")
    homes = {n: tmp_path / n for n in names}
    # the four set up at their own machines at once (each home's commands in order)
    dids = dict(zip(names, concurrently(*(partial(new_identity, h) for h in homes.values())),
                    strict=True))
    program = tmp_path / "sum.py"
    program.write_text("from mpyc.runtime import mpc\n")

    def organize() -> str:
        sid = ok(homes["alice"], "session", "new", "--program", str(program), "--parties",
                 "4", "--relay", relay_url)["sessionId"]  # fmt: skip
        ok(homes["alice"], "invite", sid, *[a for n in names[1:] for a in ("--to", dids[n])])
        return sid

    def bob_knows_the_others_by_name() -> None:
        for n in ("carol", "dave"):
            ok(homes["bob"], "contacts", "add", n, dids[n])

    sid, _ = concurrently(organize, bob_knows_the_others_by_name)

    def take(n: str) -> None:
        ok(homes[n], "invites", "--relay", relay_url)
        ok(homes[n], "accept", sid, "--yes")

    concurrently(*(partial(take, n) for n in names[1:]))
    assert ok(homes["alice"], "status", sid)["status"] == "confirming"  # the roster is out
    s8 = sid[:8]

    def wait(name: str, timeout: str = "4") -> tuple[int, list[str], list[str], float]:
        started = time.monotonic()
        res = run_cli(homes[name], "status", sid, "--wait", "--timeout", timeout, timeout=60)
        lines = res.err.splitlines()
        failed = [ln for ln in lines if ln.startswith("didmesh:")]
        waiting = [ln for ln in lines if ln.startswith(("waiting up to", "now waiting"))]
        assert "Traceback" not in res.err, res.err[-2000:]
        return res.rc, failed, waiting, time.monotonic() - started

    rc, failed, waiting, _t = wait("bob")
    assert rc == 3 and len(failed) == 1, (rc, failed)
    assert len(waiting) == 1 and waiting[0].startswith("waiting up to 4 s for party 2 'carol'")
    for text in (failed[0], waiting[0]):
        assert "party 2 'carol'" in text and "party 3 'dave'" in text, text
        assert f"'didmesh status {s8}'" in text and "need not stay online" in text, text
    assert failed[0].startswith("didmesh: timed out after 4 s waiting for party 2 'carol'")

    rc, failed, waiting, _t = wait("carol")
    assert rc == 3 and len(failed) == 1 and len(waiting) == 1, (rc, failed, waiting)
    assert "party 3 " in failed[0] and "party 1 " not in failed[0], failed[0]
    assert "party 2 " not in failed[0] and dids["dave"][:20] in failed[0], failed[0]

    for name in ("dave", "bob", "carol"):  # all confirmations are on the relay now
        rc, failed, _w, took = wait(name, "30")
        assert rc == 0 and not failed, (name, failed)
        assert took < 20, (name, took)
    assert ok(homes["alice"], "status", sid)["status"] == "agreed"


def test_an_acceptance_without_the_required_credential_ends_the_wait_with_what_to_do(
    tmp_path: Path, relay_url: str  # noqa: F811
) -> None:
    """A gated seat; bob accepts without the credential: his `accept --wait` ends at once
    (not at its timeout) with one `didmesh:` line naming the requirement and the command;
    with the credential he is taken."""
    from didmesh.identity.keys import IdentityKey

    alice, bob = tmp_path / "alice", tmp_path / "bob"
    b_did = new_identity(bob)
    new_identity(alice)
    consortium = IdentityKey.generate()
    program = tmp_path / "sum.py"
    program.write_text("from mpyc.runtime import mpc\n")
    sid = ok(alice, "session", "new", "--program", str(program), "--parties", "2",
             "--relay", relay_url)["sessionId"]  # fmt: skip
    ok(alice, "invite", sid, "--to", b_did, "--requires-issuer", consortium.did)
    organizer = spawn_cli(alice, "session", "wait", sid, "--timeout", "60", "--json")
    try:
        ok(bob, "invites", "--relay", relay_url)
        started = time.monotonic()
        res = run_cli(bob, "accept", sid, "--yes", "--wait", "--timeout", "50", timeout=90)
        waited = time.monotonic() - started
        lines = [ln for ln in res.err.splitlines() if ln.startswith("didmesh:")]
        assert res.rc == 1 and len(lines) == 1, (res.rc, res.err[-2000:])
        assert "Traceback" not in res.err and waited < 40, waited
        assert "refused your acceptance: the seat requires a credential from" in lines[0]
        assert f"didmesh accept {sid[:8]} --credential FILE" in lines[0], lines[0]
        view = ok(bob, "status", sid, "--offline")
        assert view["status"] == "refused"
        assert view["error"]["code"] == "gate_credential_missing"
        cred = _gate_credential_file(tmp_path / "b.json", consortium, b_did, 16)
        again = ok(bob, "accept", sid, "--yes", "--credential", cred, "--wait",
                   "--timeout", "50", timeout=90)  # fmt: skip
        assert again["status"] == "agreed"
        rc, a_view, a_err = finish(organizer)
    finally:
        if organizer.poll() is None:
            organizer.kill()
            organizer.communicate()
    assert rc == 0 and a_view["status"] == "agreed", a_err[-2000:]
