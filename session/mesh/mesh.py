"""The connected mesh at run time: check, liveness, abort, goodbye (specs/mesh.md).

* :meth:`Mesh.check` — :meth:`Mesh.announce` (take each pair's RTT as its handshake
  measured it, pings only for a link without one, and send this party's row — peer,
  path, RTT — as READY) then :meth:`Mesh.wait_ready` (every peer's row: the
  connectivity table of all pairs). The runner announces before the program and waits
  for the rows alongside MPyC's start barrier, so the two barriers cost one wait
  (nobody's ``mpc.start()`` returns before every pair is up).
* liveness — a watchdog sends HEARTBEAT on idle channels and declares a peer
  unresponsive after ``timeout`` seconds without a record from it. If this process
  itself did not run its event loop for a while (a long local computation), the silence
  is not held against the peers. While the program runs (:meth:`Mesh.watch_progress`),
  the watchdog also fails the run (:class:`~.faults.ProgramStalled`) when no MPyC byte
  moved on any channel for ``timeout`` seconds although every peer is alive: the
  programs wait for each other (a deadlock, e.g. parties that branched on a local
  clock), which heartbeats alone would let last forever.
* abort — the first failure (a lost or unresponsive peer, a bad record, a local error)
  is *fatal*: a signed abort notice goes to every peer, received notices are verified
  and forwarded once, and ``on_fatal`` is called (the runner stops the program).
* :meth:`Mesh.finish` — BYE to all, wait (bounded) for everyone's BYE, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey
from didmesh.identity.strict_json import loads_strict

from .abort import AbortNotice, decode_abort, encode_abort, make_abort
from .errors import FrameError
from .faults import (
    InvalidAbort,
    PeerAborted,
    PeerLost,
    PeerMisbehaved,
    PeerUnresponsive,
    ProgramStalled,
    RelayLost,
)
from .peer import ABORT, BYE, HEARTBEAT, READY, PeerChannel
from .plan import MeshPlan
from .resume import ResumeFailed
from .table import PairStatus

MAX_READY_BYTES = 64 * 1024
#: seconds a lost link waits for a signed abort notice before it is the verdict: when a
#: party aborts (a tampered record, Ctrl-C) its links close at once, and its notice may
#: reach a third party (directly or forwarded) just after that party saw a link close;
#: the notice names the real cause, "disconnected" would not
LOST_GRACE = 0.3


class Mesh:
    """All of this party's peer channels, once connected."""

    def __init__(
        self,
        plan: MeshPlan,
        peers: dict[int, PeerChannel],
        *,
        identity: IdentityKey | None,
        timeout: float = 30.0,
        on_fatal: Callable[[DidmeshError], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.peers = peers
        self.identity = identity
        self.timeout = timeout
        self.on_fatal = on_fatal
        self._clock = clock
        self._wall = wall
        self.fatal: DidmeshError | None = None
        self._fatal_event = asyncio.Event()
        self._rows: dict[int, list[dict[str, Any]]] = {}
        self._ready_event = asyncio.Event()
        self._bye_event = asyncio.Event()
        self._seen_aborts: set[tuple[int, str, float]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._finishing = False
        self._resume_start: dict[int, float] = {}
        self._progress: Callable[[], int] | None = None
        self._progress_value = 0
        self._progress_at = 0.0
        self._awaiting_start = False
        self._blocked: Callable[[], bool] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for p in self.peers.values():
            p.last_rx = self._clock()
            p.start(self)
        if self.timeout > 0 and self.peers:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    def watch_progress(self, counter: Callable[[], int] | None) -> None:
        """While the program runs: ``counter()`` is the number of MPyC bytes moved so far
        (sent and received, all peers); the watchdog fails the run with
        :class:`~.faults.ProgramStalled` when it stays the same for ``timeout`` seconds.
        ``None`` stops watching (the program ended)."""
        self._progress = counter
        if counter is not None:
            self._progress_value = counter()
            self._progress_at = self._clock()

    def watch_blocked(self, blocked: Callable[[], bool] | None) -> None:
        """``blocked()``: whether this party's program, after ``mpc.start()``, is outside
        MPyC and does not run the event loop (the runner's pump sees it blocked: a prompt,
        a sleep, a lock, a long local step). A stall while it is names this party, and is
        declared ``2 * interval`` s before the stall timeout, so that the peers (whose
        own stall would be unnamed) hear this party's named abort first."""
        self._blocked = blocked

    def hold_progress(self) -> None:
        """This party's program has not reached ``mpc.start()`` and blocks (the runner's
        pre-start pump): its own silence is no deadlock; the time counts from now."""
        self._progress_at = self._clock()

    def _check_progress(self, now: float) -> None:
        counter = self._progress
        if counter is None or self.fatal is not None or not self._ready_event.is_set():
            return  # before every READY is in, the check's own timeout applies
        value = counter()
        if value != self._progress_value or any(
                self._resuming(p, now) for p in self.peers.values()):
            self._progress_value, self._progress_at = value, now
            return
        blocked = self._blocked is not None and self._blocked()
        limit = self.timeout - 2 * self.interval if blocked else self.timeout
        if now - self._progress_at > limit:
            me = self.plan.my_party_id
            if blocked:
                self.fail(ProgramStalled(
                    f"the program of {self.plan.describe(me)} has not given control back "
                    f"to MPyC for {now - self._progress_at:.0f} s after mpc.start() (does it "
                    "wait for input, a sleep or a lock between two mpc.run calls?) while the "
                    "other parties wait for its messages; raise --timeout if it may",
                    party=me), culprit=me)
                return
            late = [p for p in self.peers.values() if not p.peer_started.is_set()]
            if self._awaiting_start and late:  # this party waits in mpc.start() for them
                self.fail(ProgramStalled(
                    f"the program of {', '.join(p.name for p in late)} did not reach "
                    f"mpc.start() within {self.timeout:g} s of this party's (does it wait "
                    "for input, or for a long local step? raise --timeout if it may)",
                    party=late[0].peer_id), culprit=late[0].peer_id)
                return
            self.fail(ProgramStalled(
                f"the program made no progress: no MPyC message was sent or received for "
                f"{self.timeout:g} s although every peer is connected and alive, so the "
                "parties' programs wait for each other (a deadlock: do they take different "
                "branches, e.g. on a local clock?); raise --timeout if a step of the program "
                "waits that long without communicating"))

    def _resuming(self, p: PeerChannel, now: float) -> bool:
        """Whether ``p``'s link is being resumed, for no longer than the link's own bound
        (a resumption stuck past it no longer holds the watchdog off)."""
        if not p.link.resuming:
            self._resume_start.pop(p.peer_id, None)
            return False
        start = self._resume_start.setdefault(p.peer_id, now)
        return now - start <= p.link.resume_grace + self.interval

    @property
    def interval(self) -> float:
        return max(0.05, min(2.0, self.timeout / 6))

    async def _watch(self) -> None:
        interval = self.interval
        last = self._clock()
        while self.fatal is None:
            await asyncio.sleep(interval)
            now = self._clock()
            if now - last > 2 * interval + 0.5:  # we were stalled: grant the peers grace
                for p in self.peers.values():
                    p.last_rx = max(p.last_rx, now)
                self._progress_at = max(self._progress_at, now)
            last = now
            for p in list(self.peers.values()):
                if p.failed or p.closed:
                    continue
                if self._resuming(p, now):  # bounded by its own resume timeout
                    p.last_rx = now
                if now - p.last_tx >= interval:
                    try:
                        p.send_control(HEARTBEAT)
                    except DidmeshError as exc:
                        self.peer_failed(p, exc)
                        continue
                if not p.bye and now - p.last_rx > self.timeout:
                    # fatal, and the silent party is told too: its link stays open until
                    # the run's teardown flushes it, so a party whose event loop was only
                    # blocked (a long input() or local step) reads why the run ended
                    self.fail(PeerUnresponsive(
                        f"{p.name} stopped responding (nothing received for "
                        f"{self.timeout:g} s)", party=p.peer_id), culprit=p.peer_id)
                    break
            self._check_progress(now)

    @property
    def failed(self) -> asyncio.Event:
        """Set at the first fatal failure (:attr:`fatal`)."""
        return self._fatal_event

    async def _wait(self, event: asyncio.Event, timeout: float) -> None:
        """Wait for ``event`` or a fatal error (raised), at most ``timeout`` seconds."""
        if self.fatal is not None:
            raise self.fatal
        ev_task = asyncio.ensure_future(event.wait())
        fatal_task = asyncio.ensure_future(self._fatal_event.wait())
        try:
            await asyncio.wait(
                [ev_task, fatal_task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ev_task.cancel()
            fatal_task.cancel()
        if self.fatal is not None:
            raise self.fatal
        if not event.is_set():
            raise TimeoutError

    # ------------------------------------------------------------------ check

    async def check(self, *, pings: int = 3, timeout: float = 30.0,
                    measured: bool = True) -> list[PairStatus]:
        """Take each pair's RTT, exchange rows, return the table of all pairs (a barrier):
        :meth:`announce`, then :meth:`wait_ready`."""
        await self.announce(pings=pings, timeout=timeout, measured=measured)
        return await self.wait_ready(timeout)

    async def announce(self, *, pings: int = 3, timeout: float = 30.0,
                       measured: bool = True) -> None:
        """Take each pair's RTT and send this party's row to every peer (READY).

        The RTT is the one the pair handshake measured on the link (``measured``), which
        costs no round trip; else (or if the link has none) the best of ``pings``
        PING/PONGs. The READY exchange proves every path in both directions either way."""
        me = self.plan.my_party_id

        async def rtt(p: PeerChannel) -> float:
            known = getattr(p.link, "handshake_rtt", None)
            if measured and known is not None:
                return float(known)
            best = float("inf")
            for _ in range(pings):
                best = min(best, await p.ping(timeout))
            return best

        peers = list(self.peers.values())
        gathering = asyncio.gather(*(rtt(p) for p in peers))
        done = asyncio.Event()
        gathering.add_done_callback(lambda _: done.set())
        try:
            await self._wait(done, timeout)
            rtts = gathering.result()
        except TimeoutError:
            slow = [p.name for p in peers]
            raise PeerUnresponsive(
                f"the connectivity check timed out after {timeout:g} s (peers: "
                f"{', '.join(slow)})"
            ) from None
        finally:
            if not gathering.done():
                gathering.cancel()
            with contextlib.suppress(BaseException):
                await gathering
        row = [
            {"peer": p.peer_id, "path": p.path, "via": p.link.description,
             "rtt_ms": round(r * 1000, 3)}
            for p, r in zip(peers, rtts, strict=True)
        ]
        self._rows[me] = row
        payload = json.dumps({"party": me, "row": row}).encode()
        for p in peers:
            p.send_control(READY, payload)
        self._check_ready()

    @property
    def ready(self) -> bool:
        """Whether every party's row is in (after :meth:`announce`)."""
        return self._ready_event.is_set()

    async def wait_ready(self, timeout: float = 30.0) -> list[PairStatus]:
        """Wait (at most ``timeout`` s) for every peer's READY; the table of all pairs."""
        try:
            await self._wait(self._ready_event, timeout)
        except TimeoutError:
            missing = [self.plan.describe(i) for i in self.peers if i not in self._rows]
            raise PeerUnresponsive(
                f"not every party finished its connectivity check within {timeout:g} s "
                f"(waiting for: {', '.join(missing)})"
            ) from None
        return self.table()

    @property
    def rows(self) -> dict[int, list[dict[str, Any]]]:
        """The READY rows known so far (this party's once announced), by party id."""
        return dict(self._rows)

    def table(self) -> list[PairStatus]:
        out: dict[tuple[int, int], PairStatus] = {}
        for party, row in sorted(self._rows.items()):
            for r in row:
                a, b = sorted((party, int(r["peer"])))
                if (a, b) in out and party != a:
                    continue
                out[(a, b)] = PairStatus(a, b, str(r["path"]), str(r["via"]),
                                         float(r["rtt_ms"]))
        return [out[k] for k in sorted(out)]

    def ready_received(self, peer: PeerChannel, payload: bytes) -> None:
        try:
            doc = loads_strict(payload, max_bytes=MAX_READY_BYTES, error=FrameError,
                               what="READY")
            if doc["party"] != peer.peer_id or not isinstance(doc["row"], list):
                raise ValueError("wrong party or row")
            row = [_ready_entry(r) for r in doc["row"]]
            row = [r for r in row if 0 <= r["peer"] < self.plan.m]
        except (DidmeshError, ValueError, TypeError, KeyError, ArithmeticError,
                RecursionError) as exc:
            peer._fail(PeerMisbehaved(f"{peer.name} sent a malformed READY ({exc})",
                                      party=peer.peer_id))
            return
        self._rows[peer.peer_id] = row
        self._check_ready()

    def _check_ready(self) -> None:
        if not self._ready_event.is_set() and all(i in self._rows for i in range(self.plan.m)):
            self._ready_event.set()
            self._progress_at = self._clock()  # the stall watchdog counts from here

    # ------------------------------------------------------------------ failures

    def peer_failed(self, peer: PeerChannel, exc: DidmeshError) -> None:
        if self._finishing and peer.bye:
            return
        if isinstance(exc, PeerAborted | InvalidAbort):
            self._fatal(exc, None)
            return
        if isinstance(exc, RelayLost | ResumeFailed):  # names the relay; no party to blame
            self.fail(exc)
            return
        if type(exc) is PeerLost and self.fatal is None and not self._finishing:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:  # an abort notice arriving meanwhile is the verdict instead
                loop.call_later(LOST_GRACE, self._peer_fault, peer, exc)
                return
        self._peer_fault(peer, exc)

    def _peer_fault(self, peer: PeerChannel, exc: DidmeshError) -> None:
        if self.fatal is not None:
            return
        if peer.name not in exc.message:  # name the peer, keep the specific class
            try:
                exc = type(exc)(f"{peer.name}: {exc.message}")
            except TypeError:
                exc = PeerMisbehaved(f"{peer.name}: {exc.message}")
        if getattr(exc, "party", None) is None:
            exc.party = peer.peer_id
        self.fail(exc, culprit=peer.peer_id)

    def fail(self, exc: DidmeshError, *, culprit: int | None = None) -> None:
        """A fatal failure found here: tell every peer (signed), then stop."""
        if self.fatal is not None:
            return
        if self.identity is not None:
            try:
                notice = make_abort(self.plan, self.identity, culprit=culprit, code=exc.code,
                                    reason=exc.message, now=self._wall())
                self._broadcast(encode_abort(notice, self.identity), exclude=None)
            except (ValueError, DidmeshError):
                pass
        self._fatal(exc, None)

    def _broadcast(self, payload: bytes, exclude: int | None) -> None:
        for p in self.peers.values():
            if p.peer_id == exclude or p.failed or p.closed:
                continue
            with contextlib.suppress(DidmeshError):
                p.send_control(ABORT, payload)

    def _fatal(self, exc: DidmeshError, _: object) -> None:
        if self.fatal is not None:
            return
        self.fatal = exc
        self._fatal_event.set()
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def abort_received(self, peer: PeerChannel, payload: bytes) -> None:
        try:
            notice = decode_abort(payload, self.plan)
        except InvalidAbort as exc:
            self.fail(InvalidAbort(f"{peer.name} sent an invalid abort notice: {exc.message}",
                                   party=peer.peer_id), culprit=peer.peer_id)
            return
        if notice.key in self._seen_aborts:
            return
        self._seen_aborts.add(notice.key)
        if self.fatal is None:
            self._broadcast(payload, exclude=peer.peer_id)  # forward, once
        self._fatal(self._aborted(notice), None)

    def _aborted(self, n: AbortNotice) -> PeerAborted:
        origin = self.plan.describe(n.origin)
        return PeerAborted(
            f"the run was aborted by {origin}: {n.reason} [{n.code}]",
            party=n.culprit if n.culprit is not None else n.origin,
        )

    # ------------------------------------------------------------------ goodbye

    def expect_start(self) -> None:
        """This party's program reached ``mpc.start()`` (the start barrier): from now on a
        peer whose program ended without reaching it — its BYE came, its START did not
        (both travel on the one channel, in order) — fails the run at once, naming it.
        Its START cannot come any more; the barrier would wait for the stall watchdog."""
        self._awaiting_start = True
        for p in self.peers.values():
            self._started_or_left(p)

    def _started_or_left(self, peer: PeerChannel) -> None:
        if (not self._awaiting_start or self.fatal is not None or not peer.bye
                or peer.peer_started.is_set()):
            return
        self.fail(ProgramStalled(
            f"the program of {peer.name} ended without calling mpc.start(), which the "
            "program here waits in (the parties' programs took different branches)",
            party=peer.peer_id), culprit=peer.peer_id)

    def bye_received(self, peer: PeerChannel) -> None:
        self._started_or_left(peer)
        if all(p.bye for p in self.peers.values()):
            self._bye_event.set()

    async def finish(self, timeout: float) -> None:
        """BYE to all, wait for all BYEs (bounded), then close every channel."""
        self._finishing = True
        for p in self.peers.values():
            with contextlib.suppress(DidmeshError):
                p.send_control(BYE)
        if not self.peers:
            self._bye_event.set()
        try:
            await self._wait(self._bye_event, timeout)
        except TimeoutError:
            missing = [p.name for p in self.peers.values() if not p.bye]
            raise PeerUnresponsive(
                f"the run finished here, but {', '.join(missing)} did not confirm within "
                f"{timeout:g} s"
            ) from None
        finally:
            self.close()

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for p in self.peers.values():
            if self.fatal is None and p.bye:
                p.close()
            else:
                p.abort()

    def bytes_per_peer(self) -> dict[int, dict[str, int]]:
        return {
            i: {
                "sent": p.link.bytes_sent,
                "received": p.link.bytes_received,
                "app_sent": p.app_bytes_sent,
                "app_received": p.app_bytes_received,
            }
            for i, p in self.peers.items()
        }


def _ready_entry(r: Any) -> dict[str, Any]:
    """One row entry of a peer's READY: its types and ranges checked (a number that is
    not finite, a bool for an id or a non-text path is malformed)."""
    peer, path, via, rtt = r["peer"], r["path"], r["via"], r["rtt_ms"]
    if type(peer) is not int or not isinstance(path, str) or not isinstance(via, str):
        raise ValueError("READY entry has the wrong types")
    if type(rtt) not in (int, float) or not math.isfinite(rtt) or rtt < 0:
        raise ValueError("READY entry has an impossible round-trip time")
    return {"peer": peer, "path": path[:16], "via": via[:200], "rtt_ms": float(rtt)}
