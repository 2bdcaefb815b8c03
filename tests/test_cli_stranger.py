"""What a stranger following README.md ran into (one test per defect found): each failure
is one ``didmesh:`` line that says what actually went wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import run_cli
from relay_helpers import relay_url  # noqa: F401  (fixture)

RELAY = "http://127.0.0.1:9"  # nothing listens there: the relay is down


@pytest.fixture
def home_with_session(tmp_path: Path) -> tuple[Path, str]:
    home = tmp_path / "home"
    prog = tmp_path / "prog.py"
    prog.write_text("print('hello')\n")
    assert run_cli(home, "id", "new", "--no-passphrase").rc == 0
    res = run_cli(home, "session", "new", "--program", str(prog), "--parties", "2",
                  "--relay", RELAY, "--no-direct", "--json")
    assert res.rc == 0, res.err
    return home, res.json()["sessionId"]


@pytest.mark.parametrize("command", [["session", "wait", "SID"], ["status", "SID", "--wait"]])
def test_a_wait_that_times_out_with_the_relay_down_names_the_relay(
    home_with_session: tuple[Path, str], command: list[str]
) -> None:
    """A wait whose relay never answered does not blame the other parties alone: its
    timeout line names the relay and why it was not reached."""
    home, sid = home_with_session
    args = [sid if a == "SID" else a for a in command]
    res = run_cli(home, *args, "--timeout", "3", timeout=60)
    assert res.rc == 3, res.err
    last = res.err.strip().splitlines()[-1]
    assert last.startswith("didmesh: timed out after 3 s"), res.err
    assert RELAY in last and "Traceback" not in res.err, res.err


@pytest.mark.parametrize("verb", ["decline", "withdraw"])
def test_the_organizers_wait_shows_a_decline_or_withdrawal(
    tmp_path: Path, relay_url: str, verb: str  # noqa: F811
) -> None:
    """The organizer waiting for a session learns that an invitee declined (or withdrew
    its acceptance) and that the seat is free, instead of waiting out the timeout with
    no word of it."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    prog = tmp_path / "p.py"
    prog.write_text("print(1)\n")
    run_cli(alice, "id", "new", "--no-passphrase")
    bob_did = run_cli(bob, "id", "new", "--no-passphrase", "--json").json()["did"]
    assert run_cli(alice, "contacts", "add", "bob", bob_did).rc == 0
    res = run_cli(alice, "session", "new", "--program", str(prog), "--parties", "3",
                  "--relay", relay_url, "--no-direct", "--json")
    assert res.rc == 0, res.err
    sid = res.json()["sessionId"]
    assert run_cli(alice, "invite", sid, "--to", "bob").rc == 0
    assert run_cli(bob, "invites", "--relay", relay_url).rc == 0
    if verb == "withdraw":
        assert run_cli(bob, "accept", sid, "--yes", "--no-direct").rc == 0
    res = run_cli(bob, verb, sid)
    assert res.rc == 0, res.err
    res = run_cli(alice, "session", "wait", sid, "--timeout", "4", timeout=60)
    assert res.rc == 3, res.err
    said = "withdrew its acceptance" if verb == "withdraw" else "declined"
    assert f"session {sid[:8]}: bob ({bob_did}) {said}; the seat is free" in res.err, res.err


def test_running_a_cancelled_session_says_it_was_cancelled(
    home_with_session: tuple[Path, str], tmp_path: Path
) -> None:
    """`run` of a session that ended (here: cancelled) says so; it does not advise
    waiting for a roster that can never come."""
    home, sid = home_with_session
    assert run_cli(home, "session", "cancel", sid).rc == 0
    res = run_cli(home, "run", sid, "--", str(tmp_path / "prog.py"))
    assert res.rc == 1, res.err
    assert res.err.count("\n") == 1 and res.err.startswith("didmesh: "), res.err
    assert f"session {sid[:8]} was cancelled" in res.err and "--wait" not in res.err, res.err


def test_the_organizer_withdraws_an_open_code(home_with_session: tuple[Path, str]) -> None:
    """A code read to the wrong person (or printed by an `invite --code` that was then
    stopped) can be withdrawn by the organizer, by the code or its number: the seat is
    free again, and nobody can claim it."""
    home, sid = home_with_session  # two parties: one seat
    res = run_cli(home, "invite", sid, "--code", "--no-wait", "--json")
    assert res.rc == 0, res.err
    code = res.json()["code"]
    full = run_cli(home, "invite", sid, "--code", "--no-wait")
    assert full.rc == 2 and "are taken" in full.err, full.err
    for given in (code, code.split("-")[0]):
        res = run_cli(home, "withdraw", sid, "--invite", given)
        if given == code:
            assert res.rc == 0, res.err
            assert f"withdrew the open code {code.split('-')[0]}-..." in res.err + res.out
        else:  # withdrawn already
            assert res.rc == 2 and "no open code" in res.err, res.err
    shown = run_cli(home, "status", sid, "--offline", "--json").json()
    assert not [s for s in shown["seats"] if s.get("status") == "code"], shown
    assert run_cli(home, "invite", sid, "--code", "--no-wait").rc == 0  # the seat is free


def test_claiming_a_used_code_does_not_blame_someone_else_only(
    tmp_path: Path, relay_url: str  # noqa: F811
) -> None:
    """A code is refused as used also when an earlier claim of the same person was
    interrupted, or when the organizer withdrew it: the one line says all three, not
    only "used by someone else"."""
    from cli_helpers import finish_all, spawn

    alice, carol = tmp_path / "alice", tmp_path / "carol"
    prog = tmp_path / "p.py"
    prog.write_text("print(1)\n")
    run_cli(alice, "id", "new", "--no-passphrase")
    run_cli(carol, "id", "new", "--no-passphrase")
    res = run_cli(alice, "session", "new", "--program", str(prog), "--parties", "2",
                  "--relay", relay_url, "--no-direct", "--json")
    sid = res.json()["sessionId"]
    code = run_cli(alice, "invite", sid, "--code", "--no-wait", "--json").json()["code"]
    assert run_cli(alice, "withdraw", sid, "--invite", code).rc == 0
    waiting = spawn(alice, "session", "wait", sid, "--timeout", "20")
    try:
        res = run_cli(carol, "claim", code, "--relay", relay_url, "--timeout", "15", timeout=60)
    finally:
        waiting.terminate()
        finish_all([waiting], timeout=20)
    assert res.rc == 1, res.err
    last = res.err.strip().splitlines()[-1]
    assert last.startswith("didmesh: code ") and "withdrawn by the organizer" in last, res.err
    assert "interrupted" in last, res.err


@pytest.mark.parametrize("args", [
    ["relay", "serve", "--port", "abc"], ["bogus"], ["run"], ["session", "new"],
    ["credential", "issue", "--suite", "nope"], ["status", "x", "--unknown-flag"],
], ids=lambda a: "-".join(a))
def test_a_command_line_mistake_is_one_line(tmp_path: Path, args: list[str]) -> None:
    """A wrong or missing argument is one `didmesh:` line naming the command and the
    mistake, pointing at --help, exit 2 (argparse printed the whole usage first: 30 lines
    for `relay serve`)."""
    res = run_cli(tmp_path / "home", *args)
    assert res.rc == 2 and res.out == "", res
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("didmesh: "), res.err
    assert "--help" in lines[0] and "usage:" not in res.err, res.err


def test_a_relay_command_line_mistake_is_one_line() -> None:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "didmesh.relay", "--port", "abc"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("didmesh relay: argument --port: invalid int value"), res.stderr


@pytest.mark.parametrize(("status", "error", "said"), [
    ("expired", "session 0123abcd expired at 2026-01-01T00:00:00Z before every party agreed",
     "didmesh: session 0123abcd expired at 2026-01-01T00:00:00Z before every party agreed; "
     "there is nothing to run"),
    ("revoked", None, "session 0123abcd had its invite withdrawn by the organizer; there is"),
    ("withdrawn", None, "you withdrew from session 0123abcd; there is nothing to run"),
    ("declined", None, "you declined session 0123abcd; there is nothing to run"),
])
def test_why_an_ended_session_has_nothing_to_run(
    status: str, error: str | None, said: str
) -> None:
    from didmesh.session.cli.run_cmd import _ended

    exc = _ended(status, "0123abcd", {"message": error} if error else None)
    assert said.removeprefix("didmesh: ") in exc.message
    assert exc.message.count("0123abcd") == 1


@pytest.mark.parametrize("bad", ["", " did:key:z6MkhJq9NMdGZ93AdmtJ7H4ZP4DBPgCPSMqdKAouFNLSV54A",
                                 "did:key:\x1b[2Jz6Mk", "\x1b]0;owned\x07"])
def test_a_bad_did_is_shown_quoted_and_escaped(tmp_path: Path, bad: str) -> None:
    """A DID that is not one is shown quoted (an empty one, a leading space are visible)
    and escaped (a terminal control sequence in it is not sent to the terminal)."""
    home = tmp_path / "home"
    res = run_cli(home, "contacts", "add", "x", bad)
    assert res.rc == 2 and "\x1b" not in res.err and res.err.count("\n") == 1, res.err
    assert repr(bad)[:60].rstrip("'") in res.err, res.err
    assert run_cli(home, "id", "new", "--no-passphrase").rc == 0
    res = run_cli(home, "session", "new", "--program", __file__, "--parties", "2",
                  "--relay", RELAY, "--no-direct", "--json")
    sid = res.json()["sessionId"]
    res = run_cli(home, "invite", sid, "--to", bad, "--no-wait")
    assert res.rc == 2 and "\x1b" not in res.err and res.err.count("\n") == 1, res.err


@pytest.mark.parametrize("where", ["dir", "missing-parent-of-a-file", "proc"])
def test_out_to_a_place_that_cannot_be_written_is_one_line(
    home_with_session: tuple[Path, str], tmp_path: Path, where: str
) -> None:
    """`--out` somewhere that cannot take a file (a folder, below a file, /proc) is one
    line naming the path, not an OSError traceback."""
    home, sid = home_with_session
    (tmp_path / "afile").write_text("x")
    target = {"dir": str(tmp_path), "missing-parent-of-a-file": str(tmp_path / "afile" / "x"),
              "proc": "/proc/didmesh-test.json"}[where]
    claims = tmp_path / "claims.json"
    claims.write_text('{"role": "member"}')
    me = run_cli(home, "id", "show", "--json").json()["did"]
    bob = "did:key:z6Mkw7oDPqYPbeLsGMVmbm3vJJBGwNxNuu5wfC8FzvaNDESH"
    for args in (["credential", "issue", "--subject", me, "--claims", str(claims)],
                 ["invite", sid, "--to", bob, "--no-wait"]):
        res = run_cli(home, *args, "--out", target)
        assert res.rc == 2, res
        last = res.err.strip().splitlines()[-1]
        assert "Traceback" not in res.err and last.startswith(f"didmesh: cannot write {target}")


@pytest.mark.parametrize("url", ["http://a b", "http://relay .example:8470", "http://a\tb",
                                 "http://x_y!:80", "http://127.0.0.1:1 /v1"])
def test_a_relay_url_with_a_bad_host_is_refused_and_not_remembered(
    tmp_path: Path, url: str
) -> None:
    """A relay URL whose host cannot be one (a space, a tab, a '!') is refused at once,
    and is not added to the relays remembered for the next `didmesh invites` (which then
    failed for ever, naming it)."""
    home = tmp_path / "home"
    assert run_cli(home, "id", "new", "--no-passphrase").rc == 0
    res = run_cli(home, "invites", "--relay", url)
    assert res.rc == 2 and res.err.startswith("didmesh: relay URL "), res.err
    assert not (home / "relays.json").exists() or url not in (home / "relays.json").read_text()


def test_a_relay_url_with_a_good_host_is_taken() -> None:
    from didmesh.session.manifest import validate_relay_url

    for url in ("http://127.0.0.1:8470", "https://relay.example.org/base", "http://[::1]:80",
                "http://xn--bcher-kva.example", "http://relay-1.internal"):
        assert validate_relay_url(url) == url


def test_a_command_the_session_state_refuses_says_which_session_and_state(
    home_with_session: tuple[Path, str]
) -> None:
    """Cancelling twice (declining twice, inviting into an expired session...) names the
    session and its state in words, not "cannot handle 'cancel' in state 'cancelled'"."""
    home, sid = home_with_session
    assert run_cli(home, "session", "cancel", sid).rc == 0
    res = run_cli(home, "session", "cancel", sid)
    assert res.rc == 2 and res.err.count("\n") == 1, res.err
    assert res.err.startswith(f"didmesh: session {sid[:8]} is 'cancelled' now: 'cancel' is "
                              "not possible"), res.err
    assert f"didmesh status {sid[:8]}" in res.err


def test_accepting_an_invite_cancelled_meanwhile_says_so(
    tmp_path: Path, relay_url: str  # noqa: F811
) -> None:
    """`invites`, then the organizer cancels, then `accept`: accept looks at the relay
    first and says the session was cancelled (it said "accepted session ...; the roster
    follows" and exit 0)."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    prog = tmp_path / "p.py"
    prog.write_text("print(1)\n")
    run_cli(alice, "id", "new", "--no-passphrase")
    bob_did = run_cli(bob, "id", "new", "--no-passphrase", "--json").json()["did"]
    res = run_cli(alice, "session", "new", "--program", str(prog), "--parties", "2",
                  "--relay", relay_url, "--no-direct", "--json")
    sid = res.json()["sessionId"]
    assert run_cli(alice, "invite", sid, "--to", bob_did).rc == 0
    assert run_cli(bob, "invites", "--relay", relay_url).rc == 0
    assert run_cli(alice, "session", "cancel", sid).rc == 0
    res = run_cli(bob, "accept", sid, "--yes", "--no-direct")
    assert res.rc == 1, res
    assert "accepted session" not in res.out + res.err, res
    assert res.err.strip().splitlines()[-1].startswith(f"didmesh: session {sid[:8]}"), res.err
    assert "cancelled" in res.err.strip().splitlines()[-1], res.err


def test_credential_issue_names_the_claims_file_and_says_the_option_once(
        tmp_path: Path) -> None:
    """A claims file that is a JSON list is named in the line; a bad --valid-until is not
    prefixed twice with the option ('--valid-until: command line: --valid-until ...')."""
    home = tmp_path / "home"
    assert run_cli(home, "id", "new", "--no-passphrase").rc == 0
    subject = "did:key:z6MkhSonev5UwixMyW8jgmHDmg5ieMPDbwLRnUdYpQejhpSZ"
    listed, good = tmp_path / "list.json", tmp_path / "claims.json"
    listed.write_text("[1, 2]")
    good.write_text('{"a": 1}')
    res = run_cli(home, "credential", "issue", "--subject", subject, "--claims", str(listed))
    assert res.rc != 0 and res.err.strip() == (
        f"didmesh: --claims {listed}: document is a JSON list, not a JSON object"), res.err
    res = run_cli(home, "credential", "issue", "--subject", subject, "--claims", str(good),
                  "--valid-until", "garbage")
    assert res.rc != 0 and res.err.strip().startswith(
        "didmesh: --valid-until 'garbage' is not a dateTime"), res.err


def test_a_confirmation_refusal_reads_as_one_sentence(tmp_path: Path) -> None:
    from didmesh.session.errors import ConfirmationRequired

    assert ConfirmationRequired().message.startswith("accepting needs a 'yes'")


def test_a_mistyped_relay_can_be_listed_and_forgotten(tmp_path: Path) -> None:
    """A --relay URL with a typo (a wrong port) is remembered as a default; `relay list`
    shows it and `relay forget` drops it, so later commands no longer try it."""
    home = tmp_path / "home"
    assert run_cli(home, "id", "new", "--no-passphrase").rc == 0
    bad = "http://127.0.0.1:9"
    assert run_cli(home, "invites", "--relay", bad, timeout=60).rc != 0  # remembered
    res = run_cli(home, "relay", "list", "--json")
    assert res.rc == 0 and res.json() == [bad], res.err
    res = run_cli(home, "relay", "forget", bad + "/")
    assert res.rc == 0 and "forgot relay" in res.out, res.err
    assert run_cli(home, "relay", "list", "--json").json() == []
    res = run_cli(home, "relay", "forget", bad)
    assert res.rc == 2 and res.err.count("didmesh:") == 1 and "not remembered" in res.err
    res = run_cli(home, "invites")
    assert res.rc != 0 and bad not in res.err and "--relay" in res.err, res.err
