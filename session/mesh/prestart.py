"""The mesh's event loop while the program blocks before ``mpc.start()`` (specs/mesh.md, 9).

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

It never runs the loop re-entrantly: not while the loop runs, not when the signal
interrupted asyncio's, MPyC's, didmesh's or the import system's own code (only a program
frame or the standard library's blocking calls), and never once the program reached
``mpc.start()`` (from there MPyC's state is live, and the program runs the loop itself).
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
    """Keeps ``loop`` turning while the program blocks before ``mpc.start()``.

    ``started()``: whether the program reached ``mpc.start()`` (the pump stops);
    ``failed()``: whether the mesh failed (then :class:`AbortArrived` is raised in the
    program); ``before``: called before each pump (the runner holds the stall watchdog:
    this party's silence before ``mpc.start()`` is not a deadlock). Start and stop it in
    the main thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, started: Callable[[], bool],
                 failed: Callable[[], bool], before: Callable[[], None] | None = None,
                 interval: float = INTERVAL) -> None:
        self.loop = loop
        self.started = started
        self.failed = failed
        self.before = before
        self.interval = interval
        self.active = False
        self.pumps = 0
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
            if self.loop.is_closed() or self.started():
                return
            if self.loop.is_running():
                idle = 0
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
                or self.started() or not self._program_frame(frame)):
            return
        if not self.failed():
            self.active = True
            self.pumps += 1
            try:
                if self.before is not None:
                    self.before()
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

    def _program_frame(self, frame: FrameType | None) -> bool:
        """Whether the signal interrupted the program's own code (or the standard
        library's), not asyncio's, MPyC's, didmesh's or an import."""
        if frame is None:
            return False
        name = frame.f_code.co_filename
        if name.startswith("<frozen"):
            return False
        path = os.path.abspath(name)
        return not path.startswith(self._skip)


__all__ = ["INTERVAL", "AbortArrived", "PreStartPump"]
