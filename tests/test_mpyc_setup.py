"""MPyC's import and set-up in a worker thread while the mesh connects (session/mesh/mpyc_setup.py;
specs/mesh.md, 8).

In-process: the worker adopts the mesh's event loop as its thread's own, its errors are
raised in the runner's thread as errors of the tree, a failure while connecting leaves the
mesh a bounded time to come up, and the GIL switch interval is restored. With real party
processes: an MPyC that cannot be imported, and Ctrl-C or SIGTERM while the (slow) import
is still running, each end every party with ONE ``didmesh:`` line and no traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from didmesh.identity.errors import DidmeshError
from didmesh.session.mesh.faults import MpycIncompatible, ProgramFailed, ReservedOption
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.mpyc_setup import BackgroundSetup
from didmesh.session.mesh.runner import launch_document, run_program, spawn_party

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
ENV.pop("DIDMESH_DEBUG", None)


class FakeBridge:
    """Stands in for MpycBridge: ``install`` runs ``action`` and notes where it ran."""

    party_id = 1

    def __init__(self, action: Callable[[], object] = lambda: None) -> None:
        self.action = action
        self.thread: threading.Thread | None = None
        self.current_loop: asyncio.AbstractEventLoop | None = None
        self.argv: list[str] = []

    def install(self, program: str, args: list[str], loop: asyncio.AbstractEventLoop) -> None:
        self.thread = threading.current_thread()
        asyncio.set_event_loop(loop)  # as MpycBridge.install does
        self.current_loop = asyncio.get_event_loop()  # what MPyC's Runtime adopts
        self.argv = [program, *args]
        self.action()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


def _setup(bridge: Any, loop: asyncio.AbstractEventLoop, **kw: Any) -> BackgroundSetup:
    s = BackgroundSetup(bridge, "prog.py", ["-n", "3"], loop, **kw)
    s.start()
    return s


def test_install_runs_in_a_worker_that_adopts_the_mesh_loop(
        loop: asyncio.AbstractEventLoop) -> None:
    before = sys.getswitchinterval()
    bridge = FakeBridge(lambda: time.sleep(0.05))
    setup = _setup(bridge, loop, prefetch=["json", "no_such_module_here"])
    assert sys.getswitchinterval() < before  # the loop gets the GIL back soon
    got = loop.run_until_complete(setup.alongside(asyncio.sleep(0.01, "connected")))
    assert got == "connected"
    loop.run_until_complete(setup.wait(5))
    assert setup.done and setup.error is None  # a prefetch that fails is no error
    assert bridge.thread is not None and bridge.thread is not threading.current_thread()
    assert bridge.current_loop is loop
    assert bridge.argv == ["prog.py", "-n", "3"]
    setup.join(5)  # the prefetch may still run after the set-up is done
    assert sys.getswitchinterval() == before


def test_the_prefetch_does_not_hold_up_the_runner(
        loop: asyncio.AbstractEventLoop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The set-up is done once MPyC is installed: the runner's READY does not wait for
    the modules it needs only later (the receipt's), which import meanwhile."""
    (tmp_path / "slow_receipt_mod.py").write_text("import time\ntime.sleep(0.5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    setup = _setup(FakeBridge(lambda: None), loop, prefetch=["slow_receipt_mod"])
    t0 = time.monotonic()
    loop.run_until_complete(setup.alongside(asyncio.sleep(0.01)))
    loop.run_until_complete(setup.wait(5))
    assert time.monotonic() - t0 < 0.4 and setup.error is None
    setup.join(5)
    assert "slow_receipt_mod" in sys.modules
    sys.modules.pop("slow_receipt_mod", None)


FAILURES = {
    "import-error": (ImportError("No module named 'mpyc'"), MpycIncompatible,
                     "MPyC could not be imported (ImportError: No module named 'mpyc')"),
    "setup-error": (AssertionError("threshold 5 too large for 3 parties"), ProgramFailed,
                    "MPyC's set-up failed here (AssertionError: threshold 5 too large"),
    "reserved-option": (ReservedOption("the program's arguments set MPyC option '-M'"),
                        ReservedOption, "the program's arguments set MPyC option '-M'"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_an_install_error_is_raised_in_the_runner_thread_as_one_of_the_tree(
        case: str, loop: asyncio.AbstractEventLoop) -> None:
    raised, kind, words = FAILURES[case]

    def fail() -> None:
        raise raised

    setup = _setup(FakeBridge(fail), loop)
    # the mesh came up (at once here): the error is raised by wait(), in this thread
    loop.run_until_complete(setup.alongside(asyncio.sleep(0.2)))
    with pytest.raises(kind) as info:
        loop.run_until_complete(setup.wait(5))
    assert isinstance(info.value, DidmeshError) and words in info.value.message
    if kind is ProgramFailed:
        assert getattr(info.value, "party", None) == FakeBridge.party_id


def test_a_failed_setup_leaves_the_mesh_a_bounded_time_to_come_up(
        loop: asyncio.AbstractEventLoop) -> None:
    def fail() -> None:
        raise ImportError("broken")

    # the mesh comes up 0.3 s after the failure: connecting goes on (the peers can be told)
    setup = _setup(FakeBridge(fail), loop)
    assert loop.run_until_complete(
        setup.alongside(asyncio.sleep(0.3, "up"), tell_within=5)) == "up"
    with pytest.raises(MpycIncompatible):
        loop.run_until_complete(setup.wait(5))

    # the mesh does not come up within tell_within: connecting is cancelled, error raised
    setup = _setup(FakeBridge(fail), loop)
    cancelled = []

    async def never() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    t0 = time.monotonic()
    with pytest.raises(MpycIncompatible, match="could not be imported"):
        loop.run_until_complete(setup.alongside(never(), tell_within=0.2))
    assert time.monotonic() - t0 < 3 and cancelled == [True]


def test_a_connect_failure_before_the_setup_ended_is_raised(
        loop: asyncio.AbstractEventLoop) -> None:
    gate = threading.Event()
    setup = _setup(FakeBridge(lambda: gate.wait(10)), loop)

    async def refused() -> None:
        raise ConnectionRefusedError("no peer")

    try:
        with pytest.raises(ConnectionRefusedError):
            loop.run_until_complete(setup.alongside(refused()))
    finally:
        gate.set()
        setup.join(5)
    assert setup.done


def test_waiting_for_the_setup_ends_when_the_mesh_fails(
        loop: asyncio.AbstractEventLoop) -> None:
    gate = threading.Event()
    setup = _setup(FakeBridge(lambda: gate.wait(10)), loop)

    async def fail_soon() -> bool:
        failed = asyncio.Event()
        loop.call_later(0.1, failed.set)
        return await setup.wait(30, unless=failed)

    try:
        t0 = time.monotonic()
        assert loop.run_until_complete(fail_soon()) is False
        assert time.monotonic() - t0 < 3 and not setup.done
    finally:
        gate.set()
        setup.join(5)


def test_a_setup_past_its_bound_is_a_clear_error_and_join_is_bounded(
        loop: asyncio.AbstractEventLoop) -> None:
    before = sys.getswitchinterval()
    gate = threading.Event()
    setup = _setup(FakeBridge(lambda: gate.wait(10)), loop)
    with pytest.raises(ProgramFailed, match="did not finish within 0.2 s"):
        loop.run_until_complete(setup.wait(0.2))
    t0 = time.monotonic()
    setup.join(0.0)  # a process that ends next does not wait for the worker
    setup.join(0.1)
    assert time.monotonic() - t0 < 2 and not setup.done
    assert sys.getswitchinterval() == before
    gate.set()
    setup.join(5)
    assert setup.done


def test_several_runs_in_one_process_each_set_up_in_its_worker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first run imports MPyC in its worker, the next ones set it up again (MPyC is
    imported already); each program sees its own arguments, and the process's own
    ``sys.argv`` and GIL switch interval come back after every run, failed ones too."""
    prog = tmp_path / "argv.py"
    prog.write_text(textwrap.dedent("""
        import sys
        from mpyc.runtime import mpc
        mpc.run(mpc.start())
        print("argv", sys.argv[1:], mpc.pid, len(mpc.parties))
        mpc.run(mpc.shutdown())
    """))
    plans, ids = loopback_plans(1)
    argv, switch = sys.argv[:], sys.getswitchinterval()
    out: list[str] = []
    for i in range(2):
        result = run_program(plans[0], str(prog), ["--no-log", f"x{i}"], identity=ids[0],
                             report=out.append, receipt=False)
        assert result.exit_code == 0
        assert capsys.readouterr().out.splitlines() == [f"argv ['x{i}'] 0 1"]
        assert sys.argv == argv and sys.getswitchinterval() == switch
    with pytest.raises(ReservedOption):  # raised in the worker, reported here
        run_program(plans[0], str(prog), ["-M", "3"], identity=ids[0], report=out.append)
    assert sys.argv == argv and sys.getswitchinterval() == switch


# --------------------------------------------------------------------------- real parties

HELLO = textwrap.dedent("""
    from mpyc.runtime import mpc
    mpc.run(mpc.start())
    print("started", flush=True)
    mpc.run(mpc.shutdown())
""")
#: an "mpyc" package found before the real one: it notes its import, then fails or stalls
FAKE_MPYC = textwrap.dedent("""
    import os, time
    open(os.environ["FAKE_MPYC_MARK"], "w").close()
    if os.environ["FAKE_MPYC_MODE"] == "broken":
        raise ImportError("this MPyC is broken")
    time.sleep(60)
""")
NAMES = {0: "party 0 'alice'", 1: "party 1 'bob'", 2: "party 2 'carol'"}


def _fake_env(tmp_path: Path, mode: str) -> tuple[dict[str, str], Path]:
    pkg = tmp_path / "fake" / "mpyc"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_MPYC)
    mark = tmp_path / f"imported-{mode}"
    path = os.pathsep.join([str(tmp_path / "fake"), ENV.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**ENV, "PYTHONPATH": path, "FAKE_MPYC_MODE": mode,
            "FAKE_MPYC_MARK": str(mark)}, mark


def _spawn(tmp_path: Path, parties: list[int], special: int, mode: str
           ) -> tuple[dict[int, subprocess.Popen[bytes]], Path]:
    prog = tmp_path / "hello.py"
    prog.write_text(HELLO)
    plans, ids = loopback_plans(3)
    env, mark = _fake_env(tmp_path, mode)
    opts = {"timeout": 10, "connect_timeout": 20, "receipt": False}
    procs = {i: spawn_party(launch_document(plans[i], ids[i], str(prog), ["--no-log"], **opts),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env if i == special else ENV)
             for i in parties}
    return procs, mark


def _wait_for(path: Path, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.02)


def _ends(procs: dict[int, subprocess.Popen[bytes]], limit: float
          ) -> dict[int, tuple[int, str, str, float]]:
    t0 = time.monotonic()
    res = {}
    try:
        for i, p in procs.items():
            out, err = p.communicate(timeout=max(0.1, t0 + limit - time.monotonic()))
            res[i] = (p.returncode, out.decode(), err.decode(), time.monotonic() - t0)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
    return res


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("didmesh:")]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err and "Unhandled exception" not in err, err[-3000:]
    assert "Warning" not in err, err[-3000:]
    return lines[0]


def test_an_mpyc_that_cannot_be_imported_ends_everyone_with_one_line_each(
        tmp_path: Path) -> None:
    procs, mark = _spawn(tmp_path, [0, 1, 2], special=1, mode="broken")
    res = _ends(procs, 30)
    assert mark.exists()
    code, out, err, _ = res[1]
    assert code != 0 and "started" not in out
    line = _one_line(err)
    assert "MPyC could not be imported (ImportError: this MPyC is broken)" in line, err
    for i in (0, 2):  # told by a signed abort (the mesh came up): not left to time out
        code, out, err, took = res[i]
        assert code != 0 and "started" not in out
        line = _one_line(err)
        assert f"aborted by {NAMES[1]}" in line and "MPyC could not be imported" in line, err
        assert took < 15, err


def test_a_peer_aborting_while_the_import_runs_here_ends_this_party_too(
        tmp_path: Path) -> None:
    procs, mark = _spawn(tmp_path, [0, 1, 2], special=0, mode="slow")
    _wait_for(mark)
    time.sleep(2.0)  # the peers' imports, the mesh coming up: they wait in the check
    procs[1].send_signal(signal.SIGINT)
    res = _ends(procs, 20)
    assert res[1][0] == 130
    assert "interrupted (Ctrl-C)" in _one_line(res[1][2])
    for i in (0, 2):
        rc, out, err, took = res[i]
        assert rc != 0 and "started" not in out
        line = _one_line(err)
        assert f"aborted by {NAMES[1]}" in line and "interrupted (Ctrl-C)" in line, err
        # party 0 stops waiting for its import at once (not EXIT_GRACE later, by the
        # hard exit that ends a process which does not end by itself)
        assert took < (1.4 if i == 0 else 3.0), err


@pytest.mark.parametrize("peers_up", [False, True], ids=["connecting", "connected"])
@pytest.mark.parametrize("sig, words, code", [
    (signal.SIGINT, "interrupted (Ctrl-C)", 130),
    (signal.SIGTERM, "terminated (SIGTERM)", 143),
], ids=["sigint", "sigterm"])
def test_a_signal_during_the_overlapped_import_ends_cleanly(
        tmp_path: Path, peers_up: bool, sig: signal.Signals, words: str, code: int) -> None:
    """Party 0's MPyC import stalls (in the worker thread). Without peers it is still
    connecting when the signal comes; with them, the mesh is up and the peers wait in the
    connectivity check for it, and are told."""
    parties = [0, 1, 2] if peers_up else [0]
    procs, mark = _spawn(tmp_path, parties, special=0, mode="slow")
    _wait_for(mark)
    time.sleep(2.0 if peers_up else 0.3)  # the peers' imports, the mesh coming up
    t0 = time.monotonic()
    procs[0].send_signal(sig)
    res = _ends(procs, 20)
    rc, out, err, took = res[0]
    assert rc == code, err[-3000:]
    line = _one_line(err)
    assert words in line and NAMES[0] in line, line
    assert ("the other parties were told" in line) == peers_up, line
    assert took < 3.0, f"party 0 took {took:.2f} s after the signal"
    for i in parties[1:]:
        rc, out, err, took = res[i]
        assert rc != 0 and "started" not in out
        line = _one_line(err)
        assert f"aborted by {NAMES[0]}" in line and words in line, err[-3000:]
        assert time.monotonic() - t0 < 5, err
