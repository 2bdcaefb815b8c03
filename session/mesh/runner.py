"""Run an unmodified MPyC program over the mesh (specs/mesh.md, "Running MPyC").

:func:`run_program` is what ``didmesh run`` calls, in the party's own process:

1. connect to every peer (:class:`~.connect.MeshConnector`), direct or relayed, while a
   worker thread imports MPyC and installs the MPyC bridge (:mod:`.mpyc_setup`,
   :mod:`.mpyc_bridge`); the worker is joined once connected;
2. the connectivity check: this party's row goes out (:meth:`~.mesh.Mesh.announce`);
   every peer's row (a table of all pairs with path and RTT, and a barrier) is awaited
   with MPyC's start barrier in ``mpc.start()`` (the bridge's gate), so the two barriers
   cost one wait;
3. run the program with :func:`runpy.run_path` as ``__main__``, on the mesh's event loop;
4. BYE to all peers, wait for theirs, close; return a :class:`RunResult`.

The first failure anywhere is fatal (:class:`~.mesh.Mesh`): the peers are told with a
signed abort, the program is stopped (its event loop is stopped, so ``mpc.run`` raises)
and :func:`run_program` raises an error of the tree naming the party at fault. Ctrl-C
(SIGINT) and SIGTERM end the run the same way (:class:`~.faults.RunInterrupted`). From the
failure on, what the program's pending MPyC work reports as it is torn down (thousands of
``CancelledError`` tracebacks in a many-round program) is dropped unless ``DIDMESH_DEBUG``
is set: the caller prints one line. With ``hard_exit`` (command-line use) the process
also exits by itself :data:`EXIT_GRACE` seconds after the failure if it has not ended by
then (a program in a long local step does not give control back), printing the one line
itself if the caller has not. While the program blocks before ``mpc.start()`` (an
``input()``) or between two ``mpc.run`` calls, :class:`~.prestart.PreStartPump` keeps the
loop reading, so an abort ends it too. A run that fails before its connectivity check
completed still reports the table (:func:`~.table.format_partial`). A program's
``sys.exit(n)`` is the run's exit status (:class:`~.faults.ProgramExited` before its
``mpc.shutdown()`` completed).

``python -m didmesh.session.mesh.party`` (what :func:`spawn_party` starts) reads one JSON
launch document on stdin (see :func:`launch_document`), pre-dials its early punch
(:mod:`.predial`) before importing this module, and runs one party
(:func:`run_document`): used to run several parties on one machine (tests, benchmarks,
the demo). ``python -m didmesh.session.mesh.runner`` does the same, pre-dialing only once
this module is imported.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey
from didmesh.session import gc_pause

from .connect import ConnectOptions, MeshConnector, RelayOpener
from .faults import ProgramExited, ProgramFailed, RunInterrupted
from .mesh import Mesh, PairStatus
from .mpyc_bridge import MpycBridge
from .mpyc_setup import BackgroundSetup
from .plan import MeshPlan
from .predial import PreDialed
from .predial import from_launch as predial_from_launch
from .prestart import AbortArrived, PreStartPump
from .table import LocalPair, format_partial, format_table


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    table: list[PairStatus]
    program_digest: str
    started: float
    ended: float
    setup_seconds: float
    bytes_per_peer: dict[int, dict[str, int]] = field(default_factory=dict)
    receipt: dict[str, Any] | None = None
    #: how MPyC's bytes travelled: "noise" (the mesh) or "wireguard" (the tunnel)
    transport: str = "noise"


def program_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of the program file's bytes (what the manifest pins)."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _local_pairs(mesh: Mesh | None, connector: MeshConnector | None
                 ) -> dict[int, LocalPair] | None:
    """This party's own pairs as they stand when a run failed before its check completed;
    None if not one pair came up (the failure's line says all there is)."""
    def rtt(link: object) -> float | None:
        known = getattr(link, "handshake_rtt", None)
        return None if known is None else round(float(known) * 1000, 3)

    if mesh is not None:
        return {pid: LocalPair(pid, p.path, p.link.description, rtt(p.link))
                for pid, p in mesh.peers.items()}
    if connector is None:
        return None
    out: dict[int, LocalPair] = {}
    for pid, pair in connector.pairs.items():
        fut = pair.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            link = fut.result()[0]
            out[pid] = LocalPair(pid, link.kind, link.description, rtt(link))
        else:
            why = "; ".join(pair.errors[-3:])
            if not fut.done() or fut.cancelled():
                why = "still trying when the run failed" + (f" ({why})" if why else "")
            out[pid] = LocalPair(pid, why=why)
    return out if any(lp.path is not None for lp in out.values()) else None


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


#: seconds from a fatal failure until a ``hard_exit`` run's process ends by itself
EXIT_GRACE = 1.5
#: the failure of a ``hard_exit`` run was raised to the caller, who prints its line
_REPORTED = threading.Event()
#: called (best effort, in order) just before a hard exit ends the process, which skips
#: every ``finally``: e.g. the WireGuard run's tunnel teardown (session/wireguard/run.py)
EXIT_HOOKS: list[Callable[[], None]] = []


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt (a subclass,
    so that asyncio lets it out of tasks and callbacks as it does Ctrl-C)."""


class _SignalGate:
    """Ctrl-C and SIGTERM as an exception raised between the event loop's callbacks, not
    inside whichever task happens to run: a KeyboardInterrupt raised in a link's writer
    task ends that task with the abort notices still queued, so a peer would hear only
    "peer closed the link". While the loop runs, the signal is handed to the loop; if the
    loop does not take it within :data:`SIGNAL_GRACE` s (a long synchronous step of the
    program), it is raised where the program is, as a plain Ctrl-C would be."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: type[KeyboardInterrupt] | None = None
        self.delivered = False

    def __call__(self, signum: int, frame: object) -> None:
        exc = _Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        if self.pending is None and not self.delivered and self.loop.is_running():
            self.pending = exc
            self.loop.call_soon_threadsafe(self._deliver)
            timer = threading.Timer(SIGNAL_GRACE, self._force)
            timer.daemon = True
            timer.start()
            return
        raise (self.pending or exc)

    def _deliver(self) -> None:
        if self.delivered or self.pending is None:
            return
        self.delivered = True
        raise self.pending

    def _force(self) -> None:
        if not self.delivered:
            self.delivered = True
            _thread.interrupt_main(signal.SIGINT)  # runs __call__ in the main thread


SIGNAL_GRACE = 1.0
#: seconds a failed run (not ending the process) waits for MPyC's import to end
SETUP_JOIN = 10.0


def _quiet_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """After a fatal failure: the program's torn-down work is no news to the user."""


def _interrupted(exc: BaseException, plan: MeshPlan, *, told: bool | None = True
                 ) -> RunInterrupted:
    """Ctrl-C or SIGTERM here, as the local line (``told``: whether the peers were told)
    or, with ``told=None``, as the reason of the abort notice."""
    what, code = ("terminated (SIGTERM)", 143) if isinstance(exc, _Terminated) \
        else ("interrupted (Ctrl-C)", 130)
    if told is not None:
        what = f"{plan.describe(plan.my_party_id)}: {what}" + (
            "; the other parties were told" if told else "")
    return RunInterrupted(what, party=plan.my_party_id, exit_code=code)


def _quiet(loop: asyncio.AbstractEventLoop) -> None:
    """From a fatal failure on: the program's torn-down work (cancelled MPyC coroutines,
    coroutines never awaited) is no news to the user, who gets one line."""
    loop.set_exception_handler(_quiet_handler)
    warnings.simplefilter("ignore")


def _app_bytes(bridge: MpycBridge, mesh: Mesh) -> int:
    """MPyC's bytes moved so far, both ways, all peers (the stall watchdog's counter)."""
    counts = bridge.bytes_per_peer()
    if counts:
        return sum(c.get("sent", 0) + c.get("received", 0) for c in counts.values())
    return sum(p.app_bytes_sent + p.app_bytes_received for p in mesh.peers.values())


def run_program(
    plan: MeshPlan,
    program_path: str,
    args: Sequence[str] = (),
    *,
    direct_only: bool = False,
    relay_only: bool = False,
    timeout: float = 30.0,
    identity: IdentityKey | None,
    connect_timeout: float = 120.0,
    relay_opener: RelayOpener | None = None,
    report: Callable[[str], None] = _stderr,
    hard_exit: bool = False,
    direct_grace: float = 3.0,
    receipt: bool = True,
    workdir: str | None = None,
    digest: str | None = None,
    refuse: DidmeshError | None = None,
    bridge_factory: Callable[..., MpycBridge] = MpycBridge,
    transport: str = "noise",
    predialed: PreDialed | None = None,
    resume_timeout: float = 15.0,
) -> RunResult:
    """Run ``program_path`` as party ``plan.my_party_id`` over the mesh (blocking).

    Must be called with no event loop running in this thread. Returns the program's
    exit status in :attr:`RunResult.exit_code`: 0 unless it called ``sys.exit(n)`` after
    its ``mpc.shutdown()`` (the joint run completed); a program that exits non-zero
    before that fails the run (:class:`~.faults.ProgramExited`, carrying its status).
    The program runs in ``workdir`` (default: the current directory), with that folder
    and its own on ``sys.path``; ``digest`` is the agreed program digest for the receipt
    (default: ``sha256:`` of the file). With ``refuse`` nothing runs: the party connects
    only to send every peer a signed abort with that error, then raises it.
    ``bridge_factory`` makes the MPyC bridge (another one carries MPyC's bytes another
    way, e.g. :class:`~didmesh.session.wireguard.bridge.WgBridge`; the mesh then carries
    only the check, the start barrier, aborts and BYE); ``transport`` names it in the
    receipt. ``predialed``: the early punch's sockets, dialing since before this call
    (:mod:`.predial`): the run adopts them, and closes those it did not adopt once the
    mesh is up (at the latest when it ends). ``resume_timeout``: seconds a relayed link
    the relay lost may take to be resumed (:class:`~.connect.ConnectOptions`; 0: off).
    """
    if refuse is None and not Path(program_path).is_file():
        from .faults import PlanError

        raise PlanError(f"program {program_path!r} does not exist")
    digest = digest or (program_digest(program_path) if refuse is None else "")
    options = ConnectOptions(
        direct_only=direct_only, relay_only=relay_only, connect_timeout=connect_timeout,
        direct_grace=direct_grace, resume_timeout=resume_timeout,
    )
    debug = bool(os.environ.get("DIDMESH_DEBUG"))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    saved_argv, saved_path, saved_cwd = sys.argv[:], sys.path[:], _cwd()
    saved_warnings = list(warnings.filters)  # _quiet() silences them after a failure
    mesh: Mesh | None = None
    connector: MeshConnector | None = None
    in_program = False
    killer: threading.Timer | None = None
    failed = False
    final: list[DidmeshError] = []  # what this party reports, once known (for the killer)
    shown: list[bool] = []  # the connectivity table was reported
    pump: PreStartPump | None = None
    old_sigterm: Any = None
    old_sigint: Any = None
    if threading.current_thread() is threading.main_thread():
        gate = _SignalGate(loop)
        old_sigterm = signal.signal(signal.SIGTERM, gate)
        old_sigint = signal.signal(signal.SIGINT, gate)

    def restop() -> None:
        if in_program:
            loop.stop()
            loop.call_later(0.1, restop)

    def on_fatal(exc: DidmeshError) -> None:
        nonlocal killer, failed
        failed = True
        if not debug:
            _quiet(loop)
        if in_program:
            loop.call_soon(restop)
        if hard_exit and killer is None:
            killer = threading.Timer(EXIT_GRACE, _hard_exit, (exc, final))
            killer.daemon = True
            killer.start()

    setup: BackgroundSetup | None = None
    try:
        bridge = bridge_factory(
            {}, party_id=plan.my_party_id, m=plan.m,
            on_error=lambda e: _bridge_error(mesh, e),
        )
        t0 = time.perf_counter()
        connector = MeshConnector(plan, identity, options, relay_opener=relay_opener,
                                  predialed=predialed)
        if refuse is None:
            # MPyC is imported (and set up for this party) in a worker thread while the
            # mesh comes up (connecting mostly waits for the peers), and joined before
            # the connectivity check: the check stays the start line, no party is still
            # importing once it completes.
            setup = BackgroundSetup(
                bridge, program_path, args, loop,
                prefetch=(f"{__package__}.receipt",) if receipt and identity else ())
            setup.start()
            peers = loop.run_until_complete(setup.alongside(connector.connect_all()))
        else:
            peers = loop.run_until_complete(connector.connect_all())
        bridge.ports = dict(peers)
        mesh = Mesh(plan, peers, identity=identity, timeout=timeout, on_fatal=on_fatal)
        if refuse is not None:  # this party's program differs: tell the peers, start nothing
            loop.run_until_complete(_tell_and_wait(mesh, refuse))
            raise refuse

        check_timeout = max(10.0, timeout)

        async def _announce() -> None:
            assert mesh is not None and setup is not None
            mesh.start()  # liveness from now on: the peers hear heartbeats while we wait
            if not await setup.wait(unless=mesh.failed):  # e.g. a peer's abort came
                raise mesh.fatal or ProgramFailed("the run failed during MPyC's set-up",
                                                  party=plan.my_party_id)
            await mesh.announce(timeout=check_timeout)

        setup_seconds = 0.0

        async def _rows() -> list[PairStatus]:
            nonlocal setup_seconds
            assert mesh is not None
            try:
                rows = await mesh.wait_ready(check_timeout)
            except DidmeshError as exc:
                if mesh.fatal is None:
                    mesh.fail(exc, culprit=None)
                raise mesh.fatal or exc from None
            setup_seconds = time.perf_counter() - t0
            while pump is not None and pump.active:  # not amid the program's prompt
                await asyncio.sleep(0.05)
            shown.append(True)
            report(format_table(plan, rows))
            return rows

        # The connectivity check: this party's READY goes out now, the peers' rows are
        # awaited with MPyC's start barrier (in start(), the bridge's gate), or after the
        # program if it never starts MPyC: the two barriers cost one wait, not two.
        loop.run_until_complete(_announce())
        check = loop.create_task(_rows())
        bridge.gate = check
        bridge.on_start = mesh.expect_start  # a peer that ended without start() is named

        entry_dir = Path(program_path).resolve().parent
        run_dir = Path(workdir).resolve() if workdir else entry_dir
        sys.path[0:0] = [str(d) for d in dict.fromkeys((entry_dir, run_dir))]
        if workdir:
            os.chdir(run_dir)
        if hard_exit:  # this process is this run: keep the set-up's objects out of GC
            _freeze_setup()
        started = time.time()
        exit_code = 0
        in_program = True
        mesh.watch_progress(lambda: _app_bytes(bridge, mesh))
        # the program may block before mpc.start() (input()), or between two mpc.run
        # calls, without running the loop: the pump reads the peers meanwhile, so that an
        # abort ends this party too (until the joint run is over: mpc.shutdown())
        pump = PreStartPump(loop, started=lambda: bridge.started,
                            until=lambda: bridge.shut_down,
                            failed=lambda: mesh is not None and mesh.fatal is not None,
                            before=mesh.hold_progress, base=sys._getframe())
        mesh.watch_blocked(pump.blocked)
        pump.start()
        try:
            runpy.run_path(program_path, run_name="__main__")
        except SystemExit as exc:
            exit_code = _exit_status(exc.code)
        except BaseException as exc:
            in_program = False
            if isinstance(exc, AbortArrived):  # out of a blocking call, e.g. at a prompt
                with contextlib.suppress(Exception):
                    if sys.stderr.isatty():  # the prompt's line is not the report's
                        _stderr("")
            if mesh.fatal is not None:
                raise mesh.fatal from None
            if isinstance(exc, KeyboardInterrupt | DidmeshError):
                raise
            _print_program_traceback(exc, program_path)
            raise ProgramFailed(
                f"the program of {plan.describe(plan.my_party_id)} failed: "
                f"{type(exc).__name__}: {exc}",
                party=plan.my_party_id,
            ) from exc
        finally:
            in_program = False
            pump.stop()
            mesh.watch_progress(None)
            mesh.watch_blocked(None)
        if mesh.fatal is not None:
            raise mesh.fatal
        if exit_code and not bridge.shut_down:
            # the joint run is not over (the peers may wait for this party's messages):
            # it fails for everyone, and this process exits with the program's status
            raise ProgramExited(
                f"the program of {plan.describe(plan.my_party_id)} exited with status "
                f"{exit_code}" + ("" if bridge.started else " before mpc.start()"),
                party=plan.my_party_id, exit_code=exit_code)
        table = loop.run_until_complete(check)
        loop.run_until_complete(mesh.finish(max(10.0, timeout)))
        ended = time.time()
        result = RunResult(
            exit_code=exit_code, table=table, program_digest=digest, started=started,
            ended=ended, setup_seconds=setup_seconds,
            bytes_per_peer=bridge.bytes_per_peer() or mesh.bytes_per_peer(),
            transport=transport,
        )
        if receipt and identity is not None:
            result = _with_receipt(plan, identity, result)
        return result
    except BaseException as exc:
        failed = True
        if not debug:
            _quiet(loop)
        signalled = isinstance(exc, KeyboardInterrupt)
        stop = _interrupted(exc, plan, told=mesh is not None) if signalled else None
        if stop is not None:
            final.append(stop)
        elif isinstance(exc, DidmeshError):
            final.append(exc)
        if mesh is not None:
            if mesh.fatal is None:
                err = _interrupted(exc, plan, told=None) if signalled else (
                    exc if isinstance(exc, DidmeshError) else ProgramFailed(
                        f"{type(exc).__name__}: {exc}", party=plan.my_party_id))
                mesh.fail(err, culprit=None if signalled else getattr(err, "party", None))
            with contextlib.suppress(BaseException):  # a second Ctrl-C: go on
                _drop_program_work(loop, mesh)
                _flush(loop, mesh, 0.3)  # let the abort records go out
        if not shown and refuse is None:  # the table is what a failed start needs most
            with contextlib.suppress(BaseException):
                if mesh is not None and mesh.ready:
                    shown.append(True)
                    report(format_table(plan, mesh.table()))
                elif (local := _local_pairs(mesh, connector)) is not None:
                    shown.append(True)
                    report(format_partial(plan, mesh.rows if mesh is not None else {}, local))
        if hard_exit:
            _REPORTED.set()
        if stop is not None:
            raise stop from None
        raise
    finally:
        with contextlib.suppress(BaseException):  # a second Ctrl-C must not stop the cleanup
            if setup is not None:
                # after a failure the worker may still import: let it end before sys.argv
                # is restored (not when the process ends next); it may have set MPyC's
                # exception handler on the loop meanwhile
                setup.join(0.0 if (failed and hard_exit) else SETUP_JOIN)
                if failed and not debug:
                    _quiet(loop)
        with contextlib.suppress(BaseException):  # a second Ctrl-C must not stop the cleanup
            if mesh is not None:
                mesh.close()
            if connector is not None:
                loop.run_until_complete(
                    asyncio.wait_for(connector.aclose(), 0.5 if failed else 5.0))
        _close_loop(loop, 0.5 if failed else 2.0, cancel=not (failed and hard_exit))
        if predialed is not None:  # those no early punch adopted (if the mesh never came up)
            predialed.close()
        if old_sigterm is not None:
            signal.signal(signal.SIGTERM, old_sigterm)
        if old_sigint is not None:
            signal.signal(signal.SIGINT, old_sigint)
        if killer is not None and not hard_exit:
            killer.cancel()
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
        warnings.filters[:] = saved_warnings  # type: ignore[index]  # a list at run time
        if saved_cwd is not None and workdir:
            with contextlib.suppress(OSError):
                os.chdir(saved_cwd)


def _exit_status(code: object) -> int:
    """The exit status of ``sys.exit(code)``, as ``python PROGRAM`` would end with it: an
    int as the operating system keeps it (0-255; one that the system would turn into 0
    stays a failure: 1), ``None`` 0, anything else 1 (after printing it on stderr, as
    Python does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return (code & 0xFF or 1) if code else 0
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr, flush=True)
    return 1


def _print_program_traceback(exc: BaseException, program_path: str) -> None:
    """The program's traceback as plain Python prints it: from the program's first frame
    on, without the runner's and runpy's frames above it (a SyntaxError, which has no
    frame of the program, names its file and line itself)."""
    program = os.path.realpath(program_path)
    tb = exc.__traceback__
    while tb is not None and os.path.realpath(tb.tb_frame.f_code.co_filename) != program:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def _freeze_setup() -> None:
    """Move every object alive now (imports, identity, roster, mesh) to the permanent
    generation, so that the program's full collections do not walk them again and again:
    ``didmesh run`` holds ~100k more objects than plain MPyC (the credential stack), which
    made a many-round program's collections cost ~0.2 s more CPU per party at m = 5.
    Reference counting still frees them; only cycles among them are never collected (no
    collection first: a full one costs more than the little cyclic garbage it would free).
    A collector paused for the start-up (:mod:`didmesh.session.gc_pause`) is on again
    from here: the program runs with it, as under plain MPyC."""
    gc.freeze()
    gc_pause.resume(freeze=False)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the directory was removed
        return None


async def _tell_and_wait(mesh: Mesh, refuse: DidmeshError) -> None:
    mesh.start()
    mesh.fail(refuse)  # a signed abort to every peer
    await asyncio.sleep(0.3)  # let it go out before the links close


def _bridge_error(mesh: Mesh | None, exc: BaseException) -> None:
    if mesh is None:
        return
    if isinstance(exc, DidmeshError):
        mesh.fail(exc, culprit=getattr(exc, "party", None))
    else:
        mesh.fail(ProgramFailed(f"sending failed: {exc}"))


def _drop_program_work(loop: asyncio.AbstractEventLoop, mesh: Mesh) -> None:
    """After a fatal failure: cancel every task but the links' own (the program's pending
    MPyC work is void; running it on would only delay the end)."""
    keep = {t for p in mesh.peers.values() for t in p.link.tasks()}
    for t in asyncio.all_tasks(loop):
        if t not in keep and not t.done():
            t.cancel()


def _flush(loop: asyncio.AbstractEventLoop, mesh: Mesh, limit: float) -> None:
    """Run the loop until every link has handed its data on, at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while any(p.link.unsent() for p in mesh.peers.values()) and time.monotonic() < deadline:
        with contextlib.suppress(RuntimeError):  # MPyC stops the loop as its work fails
            loop.run_until_complete(asyncio.sleep(0.01))


def ending_process() -> None:
    """The run is over and the process ends next: spare it the interpreter's garbage
    collections at exit. Every object alive now is moved to the collector's permanent
    generation (:func:`gc.freeze`), which it never scans again; at exit the interpreter
    still runs ``atexit`` handlers, clears the modules and frees (and so flushes and
    closes) what their references hold, but skips the full collections over the objects
    of MPyC, numpy and the mesh (about 40-60 ms of CPU per party; specs/mesh.md, 11).
    Objects left in reference cycles are not finalized at exit, which Python never
    guaranteed either (reference/datamodel, ``__del__``)."""
    gc.freeze()


def _exit_now(code: int) -> NoReturn:
    """End a failed run's process at once: its line is printed, and the interpreter's
    teardown of the program's objects would take seconds for nothing."""
    if os.environ.get("DIDMESH_DEBUG"):
        sys.exit(code)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _hard_exit(exc: DidmeshError, final: list[DidmeshError]) -> None:
    """The process did not end within :data:`EXIT_GRACE` s of the failure: end it now,
    with the one ``didmesh:`` line unless the caller has it already."""
    if _REPORTED.is_set():
        time.sleep(0.5)  # the caller is printing its line (or the interpreter is exiting)
    else:
        exc = final[0] if final else exc
        _stderr(f"didmesh: {exc.message}")
    for hook in list(EXIT_HOOKS):
        with contextlib.suppress(BaseException):
            hook()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(exc.exit_code)


def _close_loop(loop: asyncio.AbstractEventLoop, wait: float = 2.0, *, cancel: bool = True
                ) -> None:
    """Cancel what is pending (at most ``wait`` s) and close; ``cancel=False``: close at once
    (a failed command-line run: the process ends next, the tasks' unwinding is void)."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()] if cancel else []
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(
                asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), wait)
            )
        loop.run_until_complete(asyncio.sleep(0))
    except BaseException:  # noqa: S110 - best effort at shutdown
        pass
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def _with_receipt(plan: MeshPlan, identity: IdentityKey, result: RunResult) -> RunResult:
    try:
        from .receipt import sign_receipt
    except ImportError:
        return result
    doc = sign_receipt(plan, identity, result)
    return RunResult(**{**result.__dict__, "receipt": doc})


# --------------------------------------------------------------------------- child launch


def launch_document(
    plan: MeshPlan,
    identity: IdentityKey,
    program: str,
    args: Sequence[str] = (),
    **options: Any,
) -> dict[str, Any]:
    """The JSON document ``python -m didmesh.session.mesh.runner`` reads on stdin.

    It holds the party's session private key and identity seed: pass it only through a
    pipe to a child process, never to a file or a log.
    """
    return {
        "plan": plan.to_launch_dict(),
        "identity_seed": identity.seed_bytes().hex(),
        "program": program,
        "args": list(args),
        "options": options,
    }


def spawn_party(
    document: dict[str, Any], *, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """Start one party as a child interpreter; the launch document goes through stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "didmesh.session.mesh.party"],
        stdin=subprocess.PIPE, env=env, **popen,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(document).encode())
    proc.stdin.close()
    proc.stdin = None  # communicate() must not touch it again
    return proc


_OPTION_NAMES = {
    "direct_only", "relay_only", "timeout", "connect_timeout", "direct_grace", "receipt",
    "workdir", "digest",
}


def main() -> int:
    """``python -m didmesh.session.mesh.runner``: :func:`run_document` of the launch
    document on stdin (:mod:`.party` is the lighter entry: it pre-dials sooner)."""
    gc_pause.pause()  # this process is one run: no collections while it starts
    doc = json.loads(sys.stdin.buffer.read(1 << 20))
    return run_document(doc, predialed=predial_from_launch(doc))


def run_document(doc: dict[str, Any], *, predialed: PreDialed | None = None) -> int:
    """Run the party a launch document describes, in this process (which it ends on a
    failure, with one ``didmesh:`` line); returns the program's exit status."""
    try:
        plan = MeshPlan.from_launch_dict(doc["plan"])
        identity = IdentityKey.from_seed(bytes.fromhex(doc["identity_seed"]))
        opts = {k: v for k, v in doc.get("options", {}).items() if k in _OPTION_NAMES}
        result_path = doc.get("options", {}).get("result_path")
        result = run_program(plan, doc["program"], doc.get("args", []), identity=identity,
                             hard_exit=True, predialed=predialed, **opts)
    except DidmeshError as exc:
        _stderr(f"didmesh: {exc.message}")
        _exit_now(exc.exit_code)
    except KeyboardInterrupt:  # before the run started or after it ended
        _stderr("didmesh: interrupted")
        _exit_now(130)
    finally:
        if predialed is not None:  # what the run did not adopt (closed already if it ran)
            predialed.close()
    if result_path:
        Path(result_path).write_text(json.dumps({
            "setup_seconds": result.setup_seconds,
            "table": [r.__dict__ for r in result.table],
            "bytes_per_peer": result.bytes_per_peer,
            "program_digest": result.program_digest,
            "receipt": result.receipt,
        }))
    if result.exit_code:
        _stderr(f"didmesh: {exited_line(plan, result.exit_code)}")
    ending_process()
    return result.exit_code


def exited_line(plan: MeshPlan, status: int) -> str:
    """The one line of a run that completed although the program then exited non-zero."""
    return (f"the program of {plan.describe(plan.my_party_id)} exited with status {status} "
            "after the joint run completed (mpc.shutdown())")


if __name__ == "__main__":
    sys.exit(main())
