"""MPyC's import and set-up in a worker thread while the mesh connects (specs/mesh.md, 8).

``import mpyc.runtime`` and the runtime's set-up (:meth:`~.mpyc_bridge.MpycBridge.install`)
cost a party about 150 ms of CPU; connecting to the peers mostly waits (for their
listeners, the relay's round trips, the handshakes). :class:`BackgroundSetup` runs the
install in a worker thread started just before the mesh connects, and the runner joins it
on the event loop (:meth:`BackgroundSetup.wait`, bounded, its error raised in the
runner's thread) before the connectivity check, which so remains the start line: no party
is still importing when its check completes.

What the worker touches, and why that is safe:

* ``sys.argv`` (the program's arguments, which MPyC parses on import): nothing else reads
  it until the worker is joined; the runner restores it only after joining.
* the event loop: ``asyncio.set_event_loop`` is per thread, so the worker sets the mesh's
  loop as its own thread's current loop, where MPyC's ``Runtime`` finds it
  (``asyncio.get_event_loop()``); the runtime then calls ``loop.set_exception_handler``,
  one attribute store. The runner quiets the loop again after joining when the run has
  failed meanwhile. The worker's end reaches the loop by ``call_soon_threadsafe``.
* signals: Python runs signal handlers in the main thread only, where the loop runs, so
  Ctrl-C and SIGTERM during the import end the run as they do during connecting; the
  worker is a daemon thread, joined (bounded) after a failure, or not at all when the
  process ends next.
* the GIL: while the worker runs Python code, the loop's thread takes over only when the
  worker drops the GIL, after ``sys.getswitchinterval()`` (5 ms by default) — a delay on
  every handshake message. While both run the interval is :data:`SWITCH_INTERVAL`.
* the cyclic garbage collector, when the process paused it for its start-up
  (:mod:`didmesh.session.gc_pause`): the worker's end turns it on again (process-wide,
  under a lock), the start-up's objects frozen.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import threading
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from didmesh.identity.errors import DidmeshError
from didmesh.session import gc_pause

from .faults import MpycIncompatible, ProgramFailed
from .mpyc_bridge import MpycBridge

T = TypeVar("T")

#: seconds between GIL hand-offs while the worker and the event loop both run
SWITCH_INTERVAL = 0.0005
#: seconds the runner waits, after connecting, for MPyC's import and set-up to end
SETUP_TIMEOUT = 60.0
#: seconds the mesh may still take to come up after the set-up failed, so that the peers
#: hear why this party stops (a signed abort) rather than wait for it until their timeout
TELL_WITHIN = 5.0


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class BackgroundSetup:
    """``bridge.install(program, args, loop)`` in a worker thread, then the imports of
    ``prefetch`` (modules the run needs later, e.g. the receipt's; their failure is
    ignored here). Create and start it in the thread that runs ``loop``."""

    def __init__(self, bridge: MpycBridge, program: str, args: Sequence[str],
                 loop: asyncio.AbstractEventLoop, *, prefetch: Sequence[str] = ()) -> None:
        self.bridge = bridge
        self.program = program
        self.args = list(args)
        self.loop = loop
        self.prefetch = tuple(prefetch)
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._ended: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, name="didmesh-mpyc-setup",
                                        daemon=True)
        self._switch: float | None = None

    # -- the worker ---------------------------------------------------------------------

    def start(self) -> None:
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, SWITCH_INTERVAL))
        self._thread.start()

    def _run(self) -> None:
        try:
            self.bridge.install(self.program, self.args, self.loop)
        except BaseException as exc:  # raised in the runner's thread by wait()
            self.error = exc
        finally:
            self._done.set()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self.loop.call_soon_threadsafe(_settle, self._ended)
        # the set-up is done (the runner goes on: its READY does not wait for these);
        # the later imports run meanwhile, mostly while the runner waits for its peers
        try:
            if self.error is None:
                for name in self.prefetch:
                    with contextlib.suppress(Exception):
                        importlib.import_module(name)
        finally:
            self._restore()
            # the start-up's imports are over: a collector paused for them (didmesh run,
            # the runner's child) is on again, so that a long wait for the peers is
            # collected as usual (the runner turns it on before the program in any case)
            gc_pause.resume()

    # -- the runner's thread ------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def alongside(self, work: Awaitable[T], *, tell_within: float = TELL_WITHIN) -> T:
        """``await work`` (the mesh connecting). If the set-up fails first, ``work`` has
        ``tell_within`` more seconds to end, so that the peers can be told why this party
        stops (:meth:`wait` then raises the error); else it is cancelled and the set-up's
        error raised here."""
        task: asyncio.Future[T] = asyncio.ensure_future(work)
        try:
            either: list[asyncio.Future[Any]] = [task, self._ended]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and self.error is not None:
                await asyncio.wait([task], timeout=tell_within)
                if not task.done() or task.exception() is not None:
                    self._raise()
            return await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def wait(self, timeout: float = SETUP_TIMEOUT, *,
                   unless: asyncio.Event | None = None) -> bool:
        """Until the set-up has ended (at most ``timeout`` s); its error is raised here.
        Returns False, the set-up still running, if ``unless`` is set first (the mesh
        failed meanwhile: the caller raises that)."""
        if not self.done:
            waits: list[asyncio.Future[Any]] = [self._ended]
            if unless is not None:
                waits.append(asyncio.ensure_future(unless.wait()))
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits[1:]:
                    w.cancel()
            if not self.done:
                if unless is not None and unless.is_set():
                    return False
                raise ProgramFailed(
                    f"MPyC's import and set-up did not finish within {timeout:g} s of the "
                    "mesh coming up (is this machine overloaded?)",
                    party=self.bridge.party_id)
        self._raise()
        return True

    def join(self, timeout: float) -> None:
        """After a failure: let the worker end (at most ``timeout`` s; 0: not at all)."""
        if timeout > 0 and self._thread.is_alive():
            self._thread.join(timeout)
        self._restore()

    def _restore(self) -> None:
        if self._switch is not None:
            sys.setswitchinterval(self._switch)
            self._switch = None

    def _raise(self) -> None:
        exc = self.error
        if exc is None:
            return
        if isinstance(exc, DidmeshError | SystemExit):
            raise exc
        what = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ImportError):
            raise MpycIncompatible(
                f"MPyC could not be imported ({what}); install a supported version: "
                "pip install 'mpyc>=0.10,<0.12'") from exc
        raise ProgramFailed(f"MPyC's set-up failed here ({what})",
                            party=self.bridge.party_id) from exc


__all__ = ["SETUP_TIMEOUT", "SWITCH_INTERVAL", "TELL_WITHIN", "BackgroundSetup"]
