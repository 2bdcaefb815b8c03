"""The mesh's event loop while the program blocks outside MPyC (specs/mesh.md, 9).

The program runs in the main thread, on the mesh's event loop, which runs only while
the program runs it (``mpc.run``). Before ``mpc.start()`` a program may block for long
in a call that never runs the loop: ``input('salary? ')``, ``time.sleep``, a lock, a
socket. The mesh would then read nothing, an abort from a peer included, until the call
returns. :class:`PreStartPump` keeps the loop turning meanwhile:

* a sentry thread sees the loop not running and, every :data:`INTERVAL` seconds, sends
  the main thread a signal (:func:`signal.pthread_kill`, a real-time signal no program
  uses), which interrupts a blocking system call (Python retries it after the handler,
  PEP 475: ``input()`` goes on waiting);
* the handler, in the main thread, runs the loop for a few non-blocking turns: what
  arrived is read, heartbeats go out, the check's rows come in; if the mesh failed
  meanwhile (an abort notice, a lost peer), it raises :class:`AbortArrived` where the
  program is, which the runner turns into the mesh's failure (one line, exit code, the
  cleanup of every failed run).

After ``mpc.start()`` the program runs the loop itself (``mpc.run``), but between two
``mpc.run`` calls it may block again (a second prompt): the pump goes on until the joint
run is over (``until``: ``mpc.shutdown()`` completed), now without holding the stall
watchdog: :attr:`PreStartPump.blocked` tells the mesh that this party's program is the
one not moving, and the stall that follows names it (:meth:`~.mesh.Mesh.watch_blocked`).
Running the loop there is what the program's next ``mpc.run`` would do first: MPyC's
pending tasks run, each with its own program counter (MPyC saves and restores it
around every step), and nothing of MPyC is mid-call.

It never runs the loop re-entrantly: not while the loop runs, not when the signal
interrupted asyncio's, MPyC's, didmesh's or the import system's own code, nor a program
frame that such code called (every frame down to the runner's, ``base``, must be the
program's or the standard library's, e.g. not a key function MPyC calls).
A long step in C code that does not return to Python (e.g. one huge arithmetic
operation) still delays it until the step ends; the run's hard exit (1.5 s after a
failure it has seen) does not help there, as the failure is not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

#: seconds between two pumps while the loop does not run
INTERVAL = 0.2
#: non-blocking loop turns per pump
TURNS = 4


class AbortArrived(BaseException):  # noqa: N818 - it ends the program like a signal
    """Raised in the program (out of its blocking call) when the mesh failed while the
    program blocked before ``mpc.start()``: a BaseException, so that a program's
    ``except Exception`` around ``input()`` does not swallow it."""


def _signal_number() -> int | None:
    if not hasattr(signal, "pthread_kill"):
        return None
    rt = getattr(signal, "SIGRTMIN", None)
    return int(rt) + 3 if rt is not None else int(signal.SIGUSR2)


def _machinery_dirs() -> tuple[str, ...]:
    import didmesh.identity
    import didmesh.relay
    import didmesh.session

    dirs = [os.path.dirname(os.path.abspath(asyncio.__file__))] + [
        os.path.dirname(os.path.abspath(m.__file__ or ""))
        for m in (didmesh.identity, didmesh.relay, didmesh.session)]
    with contextlib.suppress(ImportError):
        import mpyc

        dirs.append(os.path.dirname(os.path.abspath(mpyc.__file__)))
    return tuple(d + os.sep for d in dirs)


class PreStartPump:
    """Keeps ``loop`` turning while the program blocks outside MPyC.

    ``started()``: whether the program reached ``mpc.start()``; ``until()``: whether the
    pump stops for good (default ``started``: before ``mpc.start()`` only; the runner
    passes "``mpc.shutdown()`` completed"); ``failed()``: whether the mesh failed (then
    :class:`AbortArrived` is raised in the program); ``before``: called before each pump
    until ``started()`` (the runner holds the stall watchdog: this party's silence before
    ``mpc.start()`` is not a deadlock); ``base``: the frame that runs the program (the
    runner's), down to which every frame must be the program's (None: the interrupted
    frame only). Start and stop it in the main thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, started: Callable[[], bool],
                 failed: Callable[[], bool], before: Callable[[], None] | None = None,
                 until: Callable[[], bool] | None = None, base: FrameType | None = None,
                 interval: float = INTERVAL) -> None:
        self.loop = loop
        self.started = started
        self.until = until or started
        self.failed = failed
        self.before = before
        self.base = base
        self.interval = interval
        self.active = False
        self.pumps = 0
        #: monotonic time of the first pump since the loop last ran (the program blocks)
        self.blocked_since: float | None = None
        self._signum = _signal_number()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._old: Any = None
        self._main = threading.main_thread().ident
        self._skip = _machinery_dirs()

    def start(self) -> None:
        if (self._signum is None or self._main is None
                or threading.current_thread() is not threading.main_thread()):
            return
        self._old = signal.signal(self._signum, self._handle)
        self._thread = threading.Thread(target=self._sentry, name="didmesh-prestart",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the sentry (no signal is sent after this returns)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self._old is not None and self._signum is not None:
            with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread
                signal.signal(self._signum, self._old)
            self._old = None

    # -- the sentry thread --------------------------------------------------------------

    def _sentry(self) -> None:
        idle = 0
        while not self._stop.wait(self.interval):
            if self.loop.is_closed() or self.until():
                return
            if self.loop.is_running() and not self.active:
                idle = 0
                self.blocked_since = None
                continue
            idle += 1
            if idle >= 2:  # not running over a whole interval: the program is elsewhere
                assert self._signum is not None and self._main is not None
                try:
                    signal.pthread_kill(self._main, self._signum)
                except (OSError, ValueError):
                    return

    # -- the main thread ----------------------------------------------------------------

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        loop = self.loop
        if (self.active or self._stop.is_set() or loop.is_closed() or loop.is_running()
                or self.until() or not self._program_frame(frame)):
            return
        if not self.failed():
            self.active = True
            self.pumps += 1
            try:
                if not self.started():
                    if self.before is not None:
                        self.before()
                elif self.blocked_since is None:
                    self.blocked_since = time.monotonic()
                for _ in range(TURNS):
                    loop.run_until_complete(asyncio.sleep(0))
                    if self.failed():
                        break
            except RuntimeError:  # the loop was stopped: the mesh failed (the runner's stop)
                pass
            finally:
                self.active = False
        if self.failed():
            self._stop.set()
            raise AbortArrived

    def blocked(self) -> bool:
        """Whether the program, after ``mpc.start()``, blocks outside MPyC (pumped since
        the loop last ran)."""
        return self.blocked_since is not None and self.started() and not self.until()

    def _program_frame(self, frame: FrameType | None) -> bool:
        """Whether the signal interrupted the program's own code (or the standard
        library's), not asyncio's, MPyC's, didmesh's or an import, and (with ``base``)
        no such code is below it: every frame down to ``base`` is the program's, the
        standard library's or the import system's (a program module importing another)."""
        if frame is None or frame.f_code.co_filename.startswith("<frozen"):
            return False
        f: FrameType | None = frame
        while f is not None and f is not self.base:
            name = f.f_code.co_filename
            if not name.startswith("<") and os.path.abspath(name).startswith(self._skip):
                return False
            if self.base is None:  # the interrupted frame only
                return True
            f = f.f_back
        return f is self.base


__all__ = ["INTERVAL", "AbortArrived", "PreStartPump"]
