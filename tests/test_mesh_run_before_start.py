"""A run that ends before, or just around, ``mpc.start()`` (real party processes).

* A party whose program blocks before ``mpc.start()`` (``input()`` on a terminal that
  nobody types into, ``time.sleep``), or between two ``mpc.run`` calls after it, still
  ends promptly, with one ``didmesh:`` line, when a peer aborts (its pre-start pump:
  session/mesh/prestart.py, specs/mesh.md 9); left alone, the stall names it.
* A program's ``sys.exit(n)`` ends ``didmesh run``'s party with status ``n`` (as
  ``python PROGRAM`` would), in one line; before ``mpc.shutdown()`` the peers are told.
* A run that fails before its connectivity check completed still prints the table, every
  pair marked as known here (specs/mesh.md 8).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.peer import READY, SELECT, PeerChannel
from didmesh.session.mesh.runner import launch_document, spawn_party
from didmesh.session.mesh.table import LocalPair, format_partial
from didmesh.session.mesh.testing import channel_pair
from party_helpers import reap
from relay_helpers import start_relay

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
ENV.pop("DIDMESH_DEBUG", None)
#: the abort's own bound (specs/mesh.md 9: within 2 s of a notice) plus process reaping
#: on a machine shared with other work
BOUND = 2.0 + 1.5
NAMES = {0: "party 0 'alice'", 1: "party 1 'bob'", 2: "party 2 'carol'"}


def _plain(text: str) -> str:
    return re.sub(r" \(did:key:[^)]*\)", "", text)


class Party:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.out = b""
        self.err = b""
        self.ended: float | None = None
        self.seen: list[str] = []
        self._stdout_seen = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        err: list[bytes] = []
        t = threading.Thread(target=lambda: err.append(self.proc.stderr.read()),  # type: ignore[union-attr]
                             daemon=True)
        t.start()
        out = b""
        for line in iter(self.proc.stdout.readline, b""):
            out += line
            with self._stdout_seen:
                self.seen.append(line.decode(errors="replace").strip())
                self._stdout_seen.notify_all()
        t.join(30)
        self.proc.wait(30)
        self.out, self.err = out, b"".join(err)
        self.ended = time.monotonic()

    def wait_line(self, text: str, limit: float) -> None:
        with self._stdout_seen:
            if not self._stdout_seen.wait_for(lambda: text in self.seen, limit):
                raise AssertionError(f"no {text!r} on stdout within {limit} s: {self.seen}")

    @property
    def stderr(self) -> str:
        """stderr, with the parties' DIDs left out of their names (as in NAMES)."""
        return _plain(self.err.decode(errors="replace"))

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("didmesh:")]


def _start(tmp_path: Path, program: str, *, parties: int = 3, relays: list[str] | None = None,
           env: dict[str, str] | None = None, **options: Any) -> list[Party]:
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(program))
    plans, ids = loopback_plans(3, relays=relays or [])
    opts = {"timeout": 10, "connect_timeout": 30, "receipt": False, **options}
    if relays:
        opts["relay_only"] = True
    return [Party(spawn_party(launch_document(plans[i], ids[i], str(prog), ["--no-log"],
                                              **opts),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**ENV, **(env or {})}))
            for i in range(parties)]


def _one_clean_line(p: Party) -> str:
    err = p.stderr
    assert len(p.lines) == 1, err[-3000:]
    assert "Traceback" not in err and "Unhandled exception" not in err, err[-3000:]
    assert "Warning" not in err, err[-3000:]
    return p.lines[0]


@pytest.fixture
def relay() -> Iterator[str]:
    with start_relay() as r:
        yield r.url


# ------------------------------------------------------------------ 1. blocked before start

BLOCKED = """
    import os, sys, time
    from mpyc.runtime import mpc
    if mpc.pid == 1:
        if os.environ["BLOCK"] == "input":  # a terminal nobody types into
            fd = os.open(os.environ["FIFO"], os.O_RDWR)
            os.dup2(fd, 0)
            sys.stdin = open(0, closefd=False)
            print("blocked", flush=True)
            try:
                salary = int(input("salary? "))
            except Exception:  # a program's own handling must not swallow the abort
                salary = 0
        else:
            print("blocked", flush=True)
            time.sleep(600)
    print("at start", flush=True)
    mpc.run(mpc.start())
    print("started", flush=True)
    mpc.run(mpc.shutdown())
"""


@pytest.mark.parametrize("block, path", [("input", "direct"), ("sleep", "direct"),
                                         ("input", "relay")])
def test_a_party_blocked_before_start_ends_promptly_on_an_abort(
        tmp_path: Path, relay: str, block: str, path: str) -> None:
    fifo = tmp_path / "tty"
    os.mkfifo(fifo)
    parties = _start(tmp_path, BLOCKED, relays=[relay] if path == "relay" else None,
                     env={"BLOCK": block, "FIFO": str(fifo)}, timeout=30)
    _others_hear_party_2_end(parties, "at start", signal.SIGINT, "interrupted (Ctrl-C)")
    assert "started" not in parties[1].out.decode().split()


def _others_hear_party_2_end(parties: list[Party], ready: str, sig: signal.Signals,
                             cause: str) -> None:
    """Once party 1 blocks and party 2 printed ``ready``, party 2 gets ``sig``: parties 0
    and 1 end within BOUND, each with one line naming party 2 and ``cause``."""
    try:
        parties[1].wait_line("blocked", 40)
        parties[2].wait_line(ready, 40)
        time.sleep(1.0)  # party 1 is in input() well past the pump's first turns
        t0 = time.monotonic()
        parties[2].proc.send_signal(sig)
        reap(parties, 15)
    finally:
        reap(parties, 5)
    assert parties[2].proc.returncode == 128 + sig
    for i in (0, 1):
        p = parties[i]
        assert p.ended is not None and p.ended - t0 <= BOUND, \
            f"party {i} took {(p.ended or 0) - t0:.2f} s: {p.stderr[-1500:]}"
        line = _one_clean_line(p)
        assert p.proc.returncode == 1, p.stderr[-1500:]
        assert line.startswith(f"didmesh: the run was aborted by {NAMES[2]}"), line
        assert cause in line, line


def _left_at_the_prompt(tmp_path: Path, program: str, env: dict[str, str], timeout: float
                        ) -> tuple[list[Party], float]:
    """Party 1 blocks at a prompt (a FIFO nobody writes) and is left there: every party is
    reaped (at most ``timeout`` + 15 s); the parties and when party 1 was seen blocked."""
    fifo = tmp_path / "tty"
    os.mkfifo(fifo)
    parties = _start(tmp_path, program, env={**env, "FIFO": str(fifo)}, timeout=timeout)
    try:
        parties[1].wait_line("blocked", 40)
        t0 = time.monotonic()
        reap(parties, timeout + 15)
    finally:
        reap(parties, 5)
    return parties, t0


def test_a_slow_typist_is_named_not_blamed_for_a_deadlock(tmp_path: Path) -> None:
    """Parties waiting in mpc.start() for one still at its prompt end after the timeout
    naming it; the party at the prompt (kept alive by its pump) hears why at once."""
    timeout = 2.0
    parties, t0 = _left_at_the_prompt(tmp_path, BLOCKED, {"BLOCK": "input"}, timeout)
    for i, p in enumerate(parties):
        assert p.ended is not None and p.ended - t0 <= timeout + BOUND + 2, p.stderr[-1500:]
        line = _one_clean_line(p)
        assert f"the program of {NAMES[1]} did not reach mpc.start() within" in line, line
        assert "program_stalled" in line or i != 1, line


BETWEEN = """
    import os, sys
    from mpyc.runtime import mpc
    mpc.run(mpc.start())
    secint = mpc.SecInt(32)
    s = mpc.run(mpc.output(mpc.sum(mpc.input(secint(mpc.pid)))))
    print("first", s, flush=True)
    if mpc.pid == 1:  # a second prompt, between two mpc.run calls
        fd = os.open(os.environ["FIFO"], os.O_RDWR)
        os.dup2(fd, 0)
        sys.stdin = open(0, closefd=False)
        print("blocked", flush=True)
        try:
            salary = int(input("bonus? "))
        except Exception:
            salary = 0
    s = mpc.run(mpc.output(mpc.sum(mpc.input(secint(mpc.pid)))))
    print("second", s, flush=True)
    mpc.run(mpc.shutdown())
"""


def test_a_party_blocked_between_two_runs_ends_promptly_on_an_abort(tmp_path: Path) -> None:
    """After mpc.start() the pump goes on (until mpc.shutdown()): a party at a prompt
    between two mpc.run calls hears a peer's abort at once (it used to wait in input())."""
    fifo = tmp_path / "tty"
    os.mkfifo(fifo)
    parties = _start(tmp_path, BETWEEN, env={"FIFO": str(fifo)}, timeout=30)
    _others_hear_party_2_end(parties, "first 3", signal.SIGTERM, "terminated (SIGTERM)")
    assert not any(ln.startswith("second") for ln in parties[1].seen), parties[1].seen


def test_a_slow_typist_between_two_runs_is_named_by_everyone(tmp_path: Path) -> None:
    """No abort: the blocked party's own stall watchdog names it, before the peers'
    (which could only say that nothing moves), and every party ends after the timeout."""
    timeout = 3.0
    parties, t0 = _left_at_the_prompt(tmp_path, BETWEEN, {}, timeout)
    for i, p in enumerate(parties):
        assert p.ended is not None and p.ended - t0 <= timeout + BOUND, p.stderr[-1500:]
        line = _one_clean_line(p)
        assert f"the program of {NAMES[1]} has not given control back to MPyC" in line, line
        assert "after mpc.start()" in line, line
        if i != 1:
            assert line.startswith(f"didmesh: the run was aborted by {NAMES[1]}"), line
            assert line.endswith("[program_stalled]"), line


IN_COROUTINE = """
    import os, sys
    from mpyc.runtime import mpc
    async def main():
        await mpc.start()
        secint = mpc.SecInt(32)
        s = await mpc.output(mpc.sum(mpc.input(secint(mpc.pid))))
        print("first", s, flush=True)
        if mpc.pid == 1:  # a prompt inside the coroutine: the loop runs, stuck in it
            fd = os.open(os.environ["FIFO"], os.O_RDWR)
            os.dup2(fd, 0)
            sys.stdin = open(0, closefd=False)
            print("blocked", flush=True)
            input("bonus? ")
            print("typed", flush=True)
        s = await mpc.output(mpc.sum(mpc.input(secint(mpc.pid))))
        await mpc.shutdown()
    mpc.run(main())
"""


def test_a_party_blocked_inside_a_coroutine_hears_the_abort_when_its_call_returns(
        tmp_path: Path) -> None:
    """The limit of the pump (specs/mesh.md 9): a prompt inside ``async def main()`` run
    by ``mpc.run(main())`` blocks the running loop itself, which cannot be run again from
    within. The party reads the abort when the call returns (here: once a line is typed),
    then ends at once with the one line."""
    fifo = tmp_path / "tty"
    os.mkfifo(fifo)
    parties = _start(tmp_path, IN_COROUTINE, env={"FIFO": str(fifo)}, timeout=30)
    try:
        parties[1].wait_line("blocked", 40)
        parties[2].wait_line("first 3", 40)
        time.sleep(1.0)
        parties[2].proc.send_signal(signal.SIGINT)
        reap(parties[2:], 15)
        parties[0].proc.wait(BOUND)
        time.sleep(1.0)
        assert parties[1].proc.poll() is None  # still at its prompt
        t0 = time.monotonic()
        with open(fifo, "w") as tty:
            tty.write("5\n")
        reap(parties, 15)
    finally:
        reap(parties, 5)
    p = parties[1]
    assert p.ended is not None and p.ended - t0 <= BOUND, p.stderr[-1500:]
    line = _one_clean_line(p)
    assert p.proc.returncode == 1, p.stderr[-1500:]
    assert line.startswith(f"didmesh: the run was aborted by {NAMES[2]}"), line


# ------------------------------------------------------------------ 2. the program's status

EXITS = """
    import os, sys
    from mpyc.runtime import mpc
    if mpc.pid == 1 and os.environ["WHEN"] == "before":
        sys.exit(3)
    mpc.run(mpc.start())
    mpc.run(mpc.shutdown())
    print("done", flush=True)
    if mpc.pid == 1:
        sys.exit(int(os.environ["STATUS"]) if os.environ["STATUS"].isdigit() else
                 os.environ["STATUS"])
"""


def test_sys_exit_before_start_is_the_partys_status_and_the_peers_are_told(
        tmp_path: Path) -> None:
    parties = _start(tmp_path, EXITS, env={"WHEN": "before", "STATUS": "0"})
    try:
        reap(parties, 40)
    finally:
        reap(parties, 5)
    line = _one_clean_line(parties[1])
    assert parties[1].proc.returncode == 3, parties[1].stderr[-1500:]
    assert line == (f"didmesh: the program of {NAMES[1]} exited with status 3 before "
                    "mpc.start()"), line
    for i in (0, 2):
        line = _one_clean_line(parties[i])
        assert parties[i].proc.returncode == 1, parties[i].stderr[-1500:]
        assert line.startswith(f"didmesh: the run was aborted by {NAMES[1]}: the program "
                               f"of {NAMES[1]} exited with status 3"), line
        assert line.endswith("[program_exited]"), line


@pytest.mark.parametrize("status, code", [("3", 3), ("256", 1), ("bad input", 1)])
def test_sys_exit_after_shutdown_keeps_the_joint_run_and_the_status(
        tmp_path: Path, status: str, code: int) -> None:
    parties = _start(tmp_path, EXITS, env={"WHEN": "after", "STATUS": status})
    try:
        reap(parties, 40)
    finally:
        reap(parties, 5)
    for i in (0, 2):
        assert parties[i].proc.returncode == 0, parties[i].stderr[-1500:]
        assert parties[i].lines == [], parties[i].stderr[-1500:]
    line = _one_clean_line(parties[1])
    assert parties[1].proc.returncode == code, parties[1].stderr[-1500:]
    assert line == (f"didmesh: the program of {NAMES[1]} exited with status {code} after "
                    "the joint run completed (mpc.shutdown())"), line
    if not status.isdigit():  # sys.exit("text") prints the text, as Python does
        assert status in parties[1].stderr.splitlines(), parties[1].stderr[-1500:]


# ------------------------------------------------------------------ 3. the table on failure

RAISES = """
    from mpyc.runtime import mpc
    if mpc.pid == 1:
        raise ValueError("no salary given")
    mpc.run(mpc.start())
    mpc.run(mpc.shutdown())
"""


def test_a_program_failing_before_start_still_shows_the_table_everywhere(
        tmp_path: Path) -> None:
    parties = _start(tmp_path, RAISES)
    try:
        reap(parties, 40)
    finally:
        reap(parties, 5)
    for p in parties:
        err = p.stderr
        assert err.count("connectivity check") == 1, err[-3000:]
        table = err[err.index("connectivity check"):].splitlines()
        assert table[0].startswith("connectivity check ("), table
        pairs = table[1:4]
        assert [ln.split("  ")[1] for ln in pairs] == [
            f"{NAMES[0]} <-> {NAMES[1]}", f"{NAMES[0]} <-> {NAMES[2]}",
            f"{NAMES[1]} <-> {NAMES[2]}"], table
        assert p.lines and p.lines[-1] == err.rstrip().splitlines()[-1], err[-1500:]
        assert p.proc.returncode in (1, 2), err[-1500:]
    assert "ValueError: no salary given" in parties[1].stderr


def test_a_pair_that_never_connects_is_marked_in_the_table(tmp_path: Path) -> None:
    """Carol never comes: alice and bob connect to each other, not to her."""
    parties = _start(tmp_path, RAISES, parties=2, connect_timeout=3, direct_only=True)
    try:
        reap(parties, 40)
    finally:
        reap(parties, 5)
    for me, p in enumerate(parties):
        err = p.stderr
        line = _one_clean_line(p)
        assert "cannot connect" in line and NAMES[2] in line, line
        assert err.count("connectivity check (incomplete") == 1, err[-3000:]
        table = err[err.index("connectivity check"):].splitlines()[1:4]
        assert table[0].startswith(f"  {NAMES[0]} <-> {NAMES[1]}  direct"), table
        assert " ms  via tcp 127.0.0.1:" in table[0], table
        mine, other = (table[1], table[2]) if me == 0 else (table[2], table[1])
        assert mine.startswith(f"  {NAMES[me]} <-> {NAMES[2]}  never connected: "), table
        assert "no path completed within 3 s" in mine, table
        assert other.endswith("unknown here: neither party's check arrived"), table


def test_the_partial_table_marks_every_pair() -> None:
    plans, _ = loopback_plans(3)
    plan = plans[0]
    rows = {1: [{"peer": 0, "path": "relay", "via": "relay http://r", "rtt_ms": 4.5},
                {"peer": 2, "path": "direct", "via": "tcp 10.0.0.3:1", "rtt_ms": 0.25}]}
    text = _plain(format_partial(plan, rows, {1: LocalPair(1, "direct", "tcp 127.0.0.1:9", 0.1),
                                       2: LocalPair(2, why="direct: refused")}))
    lines = text.splitlines()
    assert lines[0] == ("connectivity check (the run failed before it ended; every pair "
                        "known, 1 of 3 never connected):")
    assert lines[1] == f"  {NAMES[0]} <-> {NAMES[1]}  relay      4.500 ms  via relay http://r"
    assert lines[2] == f"  {NAMES[0]} <-> {NAMES[2]}  never connected: direct: refused"
    assert lines[3] == f"  {NAMES[1]} <-> {NAMES[2]}  direct     0.250 ms  via tcp 10.0.0.3:1"
    text = _plain(format_partial(plans[2], {}, {0: LocalPair(0, "direct", "tcp x", None)}))
    assert text.splitlines()[0] == ("connectivity check (incomplete, the run failed before "
                                    "it ended; 2 of 3 pairs unknown here):")
    assert text.splitlines()[1] == f"  {NAMES[0]} <-> {NAMES[1]}  unknown here: neither " \
        "party's check arrived"
    assert text.splitlines()[2] == f"  {NAMES[0]} <-> {NAMES[2]}  direct         ? ms  via tcp x"


@pytest.mark.parametrize(("local", "title"), [
    ({1: LocalPair(1, "direct", "tcp 127.0.0.1:9", 0.1)},
     "connectivity check (the run failed before it ended; every pair's path is known):"),
    ({1: LocalPair(1, why="direct: refused")},
     "connectivity check (the run failed before it ended; every pair known, "
     "1 of 1 never connected):"),
], ids=["all-connected", "one-never-connected"])
def test_the_partial_table_says_incomplete_only_when_a_pair_is_unknown(
        local: dict[int, LocalPair], title: str) -> None:
    """Two parties: this party's own link is the only pair, so nothing is unknown here and
    the table must not claim to be incomplete, only that the check did not end."""
    plans, _ = loopback_plans(2)
    lines = _plain(format_partial(plans[0], {}, local)).splitlines()
    assert lines[0] == title
    assert "incomplete" not in lines[0]
    assert len(lines) == 2 and lines[1].startswith(f"  {NAMES[0]} <-> {NAMES[1]}  "), lines


def test_the_partial_table_of_three_with_every_row_known_is_not_incomplete() -> None:
    """Three parties, the run failed before READY completed here, yet every pair is known:
    this party's two links and the third pair from a peer's row."""
    plans, _ = loopback_plans(3)
    rows = {1: [{"peer": 2, "path": "relay", "via": "relay http://r", "rtt_ms": 3.0}]}
    local = {1: LocalPair(1, "direct", "tcp a", 0.5), 2: LocalPair(2, "direct", "tcp b", 0.75)}
    lines = _plain(format_partial(plans[0], rows, local)).splitlines()
    assert lines == [
        "connectivity check (the run failed before it ended; every pair's path is known):",
        f"  {NAMES[0]} <-> {NAMES[1]}  direct     0.500 ms  via tcp a",
        f"  {NAMES[0]} <-> {NAMES[2]}  direct     0.750 ms  via tcp b",
        f"  {NAMES[1]} <-> {NAMES[2]}  relay      3.000 ms  via relay http://r"]


class _Link:
    """A link fake: records writes; nothing is buffered in it."""

    kind = "direct"
    resuming = False
    resume_grace = 0.0

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes | bytearray) -> None:
        self.written += data

    def abort(self) -> None:
        pass

    def set_receiver(self, receiver: object) -> None:
        pass

    def ack_due(self) -> int | None:
        return None


class _Events:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    def peer_failed(self, peer: object, exc: Exception) -> None:
        self.got.append(("failed", str(exc).encode()))

    def abort_received(self, peer: object, payload: bytes) -> None:
        self.got.append(("abort", payload))

    def ready_received(self, peer: object, payload: bytes) -> None:
        self.got.append(("ready", payload))

    def bye_received(self, peer: object) -> None:
        self.got.append(("bye", b""))


def test_a_ready_decoded_behind_select_is_delivered_when_the_channel_starts() -> None:
    """The initiator's READY may arrive in the same segment as its SELECT: the responder's
    handshake reads SELECT, and the READY waits decoded in the channel. It is delivered
    as the mesh starts, not with the peer's next record (a heartbeat, seconds later: a
    failed start's table then lacked that peer's row)."""
    a, b = channel_pair(random.Random(7))
    b.receive_data(bytes(a.send_many([bytes((SELECT,)), bytes((READY,)) + b'{"row": 1}'])))
    assert b.next_message() == bytes((SELECT,))  # what the handshake consumes
    events = _Events()
    PeerChannel(0, "alice", _Link(), b).start(events)  # type: ignore[arg-type]
    assert events.got == [("ready", b'{"row": 1}')]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
