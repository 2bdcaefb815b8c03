"""Unmodified MPyC programs over the mesh vs plain MPyC; faults in real subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from didmesh.session.lab.procs import stop
from didmesh.session.mesh.loopback import free_ports, loopback_plans
from didmesh.session.mesh.plan import parse_endpoint
from didmesh.session.mesh.runner import launch_document, spawn_party
from mpyc_helpers import plain_mpyc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_plain(program: Path, args: list[str], m: int, timeout: float = 90) -> list[str]:
    return plain_mpyc(program, args, m, timeout=timeout, env=ENV)


def start_mesh(program: Path, args: list[str], m: int, **options: Any
               ) -> tuple[list[subprocess.Popen[bytes]], list[Any]]:
    plans, ids = loopback_plans(m, relays=options.pop("relays", ()))
    options = {"timeout": 10, "connect_timeout": 20, **options}
    procs = [
        spawn_party(launch_document(plans[i], ids[i], str(program), args, **options),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        for i in range(m)
    ]
    return procs, plans


def finish(procs: list[subprocess.Popen[bytes]], timeout: float = 90
           ) -> list[tuple[int, str, str]]:
    res = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            res.append((p.returncode, out.decode(), err.decode()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    return res


CASES = {
    "secure_sum": ("secure_sum.py", ["--no-log"]),
    "secret_santa": ("secret_santa.py", ["-n", "6", "--seed", "7", "--no-log"]),
    "matrix_product": ("matrix_product.py", ["-n", "24", "--seed", "3", "--no-log"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_example_over_mesh_equals_plain_mpyc(case: str) -> None:
    name, args = CASES[case]
    plain = run_plain(EXAMPLES / name, args, 3)
    procs, _ = start_mesh(EXAMPLES / name, args, 3)
    res = finish(procs)
    for code, _out, err in res:
        assert code == 0, err[-2000:]
        assert "connectivity check (all pairs)" in err
    assert [out for _, out, _ in res] == plain
    assert plain[0].strip()


@pytest.fixture
def relay_url() -> Any:
    [port] = free_ports(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "didmesh.relay", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"relay did not start: {proc.stderr.read().decode()[-800:]}"
                            if proc.stderr else "relay did not start")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", proc
    stop(proc, 10)


def test_relayed_run_through_a_real_relay(relay_url: Any) -> None:
    url, _ = relay_url
    name, args = CASES["secret_santa"]
    plain = run_plain(EXAMPLES / name, args, 3)
    procs, _ = start_mesh(EXAMPLES / name, args, 3, relays=[url], relay_only=True)
    res = finish(procs)
    for code, _, err in res:
        assert code == 0, err[-2000:]
        assert " relay " in err
    assert [out for _, out, _ in res] == plain


def test_multi_megabyte_messages_through_a_relay_on_default_settings(relay_url: Any) -> None:
    """examples/cnn_layer.py with 12 images sends one input message of about 3.5 MB to each
    party (a 10800 x 27 matrix of SecInt(64) shares, 12 bytes each); the relay (default
    settings: link_max_frame 1 MiB) carries it split into frames of at most its announced
    limit, and the output equals plain MPyC's (didmesh issue 15, item 1)."""
    url, _ = relay_url
    args = ["--images", "12", "--seed", "5", "--no-log"]
    plain = run_plain(EXAMPLES / "cnn_layer.py", args, 3)
    procs, _ = start_mesh(EXAMPLES / "cnn_layer.py", args, 3, relays=[url], relay_only=True,
                          result_path=None)
    res = finish(procs, 120)
    for code, _, err in res:
        assert code == 0, err[-2000:]
        assert " relay " in err
    assert [out for _, out, _ in res] == plain
    assert "patch matrix: 10800 x 27" in plain[0]


LONG_PROGRAM = textwrap.dedent("""
    import sys
    from mpyc.runtime import mpc
    secint = mpc.SecInt(32)
    mpc.run(mpc.start())
    print("started", flush=True)
    x = secint(1)
    for i in range(100000):
        x = mpc.run(mpc.gather(x * secint(1)))
        x = secint(int(x))
    mpc.run(mpc.shutdown())
""")


def _long(tmp_path: Path, **options: Any) -> tuple[list[subprocess.Popen[bytes]], list[Any]]:
    prog = tmp_path / "long.py"
    prog.write_text(LONG_PROGRAM)
    procs, plans = start_mesh(prog, ["--no-log"], 3, **options)
    assert procs[2].stdout is not None
    line = procs[2].stdout.readline()  # bounded: the connect timeout ends the run otherwise
    assert line.strip() == b"started", finish(procs, 20)
    time.sleep(0.3)
    return procs, plans


def _ports_free(plans: list[Any]) -> None:
    for plan in plans:
        host, port = parse_endpoint(plan.me.endpoints[0])
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        try:
            s.bind((host, port))  # fails if anything still listens there
            s.listen()
        finally:
            s.close()


def test_party_killed_mid_run(tmp_path: Path) -> None:
    procs, plans = _long(tmp_path)
    t0 = time.monotonic()
    procs[2].kill()
    res = finish(procs[:2], 30)
    assert time.monotonic() - t0 < 15
    for code, _, err in res:
        assert code != 0
        assert "party 2 'carol'" in err.splitlines()[-1], err[-1500:]
    finish(procs[2:], 5)
    _ports_free(plans)


def test_party_stops_responding(tmp_path: Path) -> None:
    procs, plans = _long(tmp_path, timeout=2)
    t0 = time.monotonic()
    os.kill(procs[1].pid, signal.SIGSTOP)
    try:
        res = finish([procs[0], procs[2]], 30)
        elapsed = time.monotonic() - t0
    finally:
        os.kill(procs[1].pid, signal.SIGKILL)
        finish(procs[1:2], 5)
    assert elapsed < 12
    for code, _, err in res:
        assert code != 0
        last = err.splitlines()[-1]
        assert "party 1 'bob'" in last, err[-1500:]
    assert any("stopped responding" in err for _, _, err in res)
    _ports_free(plans)


def test_ctrl_c_aborts_everyone_and_leaves_nothing(tmp_path: Path) -> None:
    procs, plans = _long(tmp_path)
    procs[0].send_signal(signal.SIGINT)
    res = finish(procs, 30)
    assert res[0][0] == 130, res[0][2][-1500:]
    for code, _, err in res[1:]:
        assert code != 0
        assert "aborted by party 0 'alice'" in err and "interrupted" in err, err[-1500:]
    assert all(p.poll() is not None for p in procs)
    _ports_free(plans)


def test_program_failure_aborts_peers(tmp_path: Path) -> None:
    prog = tmp_path / "fails.py"
    prog.write_text(textwrap.dedent("""
        from mpyc.runtime import mpc
        mpc.run(mpc.start())
        if mpc.pid == 1:
            raise ValueError("bad input at party 1")
        mpc.run(mpc.output(mpc.input(mpc.SecInt()(1))[1]))
    """))
    procs, _ = start_mesh(prog, ["--no-log"], 3)
    res = finish(procs, 30)
    assert res[1][0] != 0 and "ValueError: bad input at party 1" in res[1][2]
    # the program's traceback as plain Python shows it: from the program's own frames on
    assert f'File "{prog}", line 5' in res[1][2]
    assert "runner.py" not in res[1][2] and "runpy" not in res[1][2], res[1][2]
    for code, _, err in (res[0], res[2]):
        assert code != 0 and "aborted by party 1 'bob'" in err, err[-1500:]
    # every party's one line says whose program failed ("the program failed here", read
    # at party 0 after "aborted by party 1:", seemed to blame party 0's own program)
    for _, _, err in res:
        [line] = [ln for ln in err.splitlines() if ln.startswith("didmesh:")]
        assert "the program of party 1 'bob'" in line and " here" not in line, line


def test_completed_run_gives_verifiable_receipts(tmp_path: Path) -> None:
    import json
    from datetime import UTC, datetime

    from didmesh.session.mesh.receipt import verify_receipts

    name, args = CASES["secure_sum"]
    paths = [tmp_path / f"r{i}.json" for i in range(3)]
    plans, ids = loopback_plans(3)
    procs = [
        spawn_party(launch_document(plans[i], ids[i], str(EXAMPLES / name), args, timeout=10,
                                    result_path=str(paths[i])),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        for i in range(3)
    ]
    for code, _, err in finish(procs):
        assert code == 0, err[-1500:]
    results = [json.loads(p.read_text()) for p in paths]
    got = verify_receipts([r["receipt"] for r in results], now=datetime.now(UTC))
    assert got.issuers == tuple(sorted(i.did for i in ids))
    assert got.program_digest == results[0]["program_digest"]
    assert all(r["setup_seconds"] < 10 for r in results)


BARRIER_PROGRAM = """
import sys, time
from mpyc.runtime import mpc
if mpc.pid == 2:
    time.sleep(1.5)  # party 2 is late to start its program
before = time.time()
mpc.run(mpc.start())
print(f"START {mpc.pid} {before:.3f} {time.time():.3f}", flush=True)
mpc.run(mpc.shutdown())
"""


def test_start_is_a_barrier_as_in_plain_mpyc(tmp_path: Path) -> None:
    """mpc.start() over the mesh returns only once every party's program called it (plain
    MPyC's start() connects to every party, so it is a barrier there too)."""
    program = tmp_path / "late.py"
    program.write_text(BARRIER_PROGRAM)
    for outs in (run_plain(program, ["--no-log"], 3),
                 [o for _, o, _ in finish(start_mesh(program, ["--no-log"], 3)[0])]):
        rows = {}
        for out in outs:
            [line] = [ln for ln in out.splitlines() if ln.startswith("START ")]
            pid, before, after = line.split()[1:]
            rows[int(pid)] = (float(before), float(after))
        late_before = rows[2][0]
        assert all(after >= late_before for _, after in rows.values()), rows
        assert rows[0][0] < late_before - 1.0  # party 0 really did start earlier


EXIT_PROGRAM = """
import atexit, os, sys
from mpyc.runtime import mpc
here = os.environ["EXIT_TEST_DIR"]
log = open(os.path.join(here, f"buffered-{mpc.pid}.txt"), "w")  # never closed
log.write("x" * 5000)
class Cycle:  # a reference cycle whose file the program never closes either
    pass
c = Cycle(); c.me = c; c.f = open(os.path.join(here, f"cycle-{mpc.pid}.txt"), "w")
c.f.write("y" * 100); c.f.flush()
atexit.register(lambda: open(os.path.join(here, f"atexit-{mpc.pid}.txt"), "w").write("z"))
mpc.run(mpc.start())
mpc.run(mpc.shutdown())
"""


def test_a_finished_party_ends_as_a_plain_program_would(tmp_path: Path) -> None:
    """A finished party skips the interpreter's final garbage collections (runner's
    ``ending_process``, gc.freeze) and loses nothing for it: the program's unclosed
    files are flushed and its atexit handlers run, as in plain MPyC."""
    program = tmp_path / "exit.py"
    program.write_text(EXIT_PROGRAM)
    env = {**ENV, "EXIT_TEST_DIR": str(tmp_path)}
    plans, ids = loopback_plans(2)
    procs = [spawn_party(launch_document(plans[i], ids[i], str(program), ["--no-log"],
                                         timeout=10, connect_timeout=20),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for i in range(2)]
    for code, _, err in finish(procs):
        assert code == 0, err[-1500:]
    for i in range(2):
        assert (tmp_path / f"buffered-{i}.txt").read_text() == "x" * 5000
        assert (tmp_path / f"cycle-{i}.txt").read_text() == "y" * 100
        assert (tmp_path / f"atexit-{i}.txt").read_text() == "z"


GC_PROGRAM = """
import gc, weakref
from mpyc.runtime import mpc
class Cycle:
    pass
c = Cycle(); c.me = c; dead = weakref.ref(c); del c
gc.collect()
mpc.run(mpc.start())
print("collector", gc.isenabled(), "frozen", gc.get_freeze_count() > 0, "cycle freed",
      dead() is None)
mpc.run(mpc.shutdown())
"""


def test_the_program_runs_with_the_collector_on(tmp_path: Path) -> None:
    """A party process pauses the cyclic collector while it starts (session/gc_pause.py)
    and the program gets it back: on, the start-up's objects frozen, its own cycles freed."""
    program = tmp_path / "gc_state.py"
    program.write_text(GC_PROGRAM)
    procs, _ = start_mesh(program, ["--no-log"], 2)
    for code, out, err in finish(procs):
        assert code == 0, err[-1500:]
        assert out.strip() == "collector True frozen True cycle freed True"


def test_a_program_that_never_starts_mpyc_still_gets_the_checked_table(tmp_path: Path) -> None:
    """The connectivity check's READY rows are awaited in ``mpc.start()``; a program that
    never calls it (plain Python, or one that exits first) waits for them after it ends,
    so its run still reports every pair and ends cleanly."""
    program = tmp_path / "plain.py"
    program.write_text("print('no MPyC here')\n")
    for code, out, err in finish(start_mesh(program, [], 3)[0]):
        assert code == 0, err[-1500:]
        assert out == "no MPyC here\n"
        assert err.count("connectivity check (all pairs)") == 1
        assert len([ln for ln in err.splitlines() if "<->" in ln]) == 3


def test_a_party_whose_program_ends_without_starting_mpyc_is_named_at_once(
        tmp_path: Path) -> None:
    """Party 1's program ends without ``mpc.start()`` (a branch the others did not take),
    while parties 0 and 2 wait in it for party 1's START, which cannot come any more once
    party 1 said BYE. They fail at once, naming party 1 and why; before, they waited for
    the stall watchdog (``timeout``) and blamed a deadlock of the programs in general
    ("do they take different branches, e.g. on a local clock?"), and party 1 got that
    as a truncated abort."""
    program = tmp_path / "skips.py"
    program.write_text(textwrap.dedent("""
        import sys
        from mpyc.runtime import mpc
        if mpc.pid == 1:
            sys.exit(0)
        mpc.run(mpc.start())
        mpc.run(mpc.shutdown())
    """))
    t0 = time.monotonic()
    res = finish(start_mesh(program, ["--no-log"], 3, timeout=20)[0], 60)
    assert time.monotonic() - t0 < 15  # well within the 20 s stall timeout
    for i, (code, _, err) in enumerate(res):
        lines = [ln for ln in err.splitlines() if ln.startswith("didmesh:")]
        assert len(lines) == 1 and code == 1, err[-1500:]
        assert "party 1 'bob'" in lines[0] and "without calling mpc.start()" in lines[0], lines
        assert "made no progress" not in lines[0]
        if i != 1:
            assert "aborted" not in lines[0] or "aborted by party" in lines[0]


def test_a_party_blocked_before_start_is_named_and_hears_why_at_once(tmp_path: Path) -> None:
    """Party 1 blocks before ``mpc.start()`` (a long ``input()`` or a synchronous step)
    for longer than ``timeout``: party 0, waiting in ``mpc.start()``, ends the run naming
    it. Party 1's pre-start pump keeps its links read meanwhile (specs/mesh.md 9), so it
    is not "unresponsive", and it reads party 0's signed abort at once, not when its step
    ends (before the pump, the notice reached it only when it woke; earlier still, its
    link was cut at once and it said only "party 0 disconnected")."""
    program = tmp_path / "blocks.py"
    program.write_text(textwrap.dedent("""
        import time
        from mpyc.runtime import mpc
        if mpc.pid == 1:
            time.sleep(30)  # the program does not run the event loop meanwhile
        mpc.run(mpc.start())
        mpc.run(mpc.shutdown())
    """))
    t0 = time.monotonic()
    res = finish(start_mesh(program, ["--no-log"], 2, timeout=1.5)[0], 60)
    assert time.monotonic() - t0 < 25, res  # party 1 did not sleep its 30 s out
    lines = [[ln for ln in err.splitlines() if ln.startswith("didmesh:")] for _, _, err in res]
    assert [len(x) for x in lines] == [1, 1] and [c for c, _, _ in res] == [1, 1], res
    assert "party 1 'bob'" in lines[0][0] and "did not reach mpc.start()" in lines[0][0]
    assert "aborted by party 0 'alice'" in lines[1][0], lines[1]
    assert "did not reach mpc.start()" in lines[1][0] and "disconnected" not in lines[1][0]
