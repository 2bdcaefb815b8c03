"""Bringing up the mesh: a path per pair (specs/mesh.md, "Paths").

For each pair the party with the lower id is the initiator. :class:`MeshConnector` races
the kinds of path that may serve the pair — each in a module of its own behind the small
interface of :mod:`.paths` — and hands the first whose handshake completes
(:mod:`.handshake`: hello, Noise KK, SELECT) to the run:

* direct (:mod:`.direct`): the initiator dials the endpoints the responder announced; the
  responder listens on its own;
* relayed (:mod:`.relayed`): a forwarding link on one of the session's relays;
* punched (:mod:`.puncher`, :mod:`.punch`): a relayed pair whose parties sit in
  different homes coordinates a TCP hole punch over the relayed channel before SELECT.

Path choice (automatic unless ``direct_only``/``relay_only``): direct attempts start at
once and are retried (a peer may not listen yet) until the deadline; a relayed attempt
starts after ``direct_grace`` seconds without success — at once with ``relay_only``, or
for a peer in another home (no address in common), where only the relayed link and the
punch can serve a NATed pair. Whichever completes its handshake first wins: the initiator
commits by sending SELECT as the channel's first message and drops the other attempt; the
responder takes the path on which SELECT arrives. A handshake that fails on a link this
party opened (or on a relayed link, whose ends the relay authenticated) ends attempts on
that kind of path; when no kind is left the pair fails at once. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from didmesh.identity.keys import IdentityKey

from .channel import SecureChannel
from .direct import DirectDialer, DirectListener, InboundStats
from .endpoints import punching
from .faults import PathUnavailable
from .handshake import (
    HELLO_LEN,
    HELLO_MAGIC,
    HELLO_VERSION,
    REJECT_MAGIC,
    PairHandshake,
    encode_hello,
    hello_tag,
    reason_of,
)
from .paths import Pair, Path
from .peer import PeerChannel
from .plan import MeshPlan
from .predial import PreDialed, local_addresses
from .puncher import EarlyPunch, Puncher
from .relayed import RelayedPath, RelayLinks, RelayOpener, default_relay_opener
from .resume import DEFAULT_MAX_UNACKED
from .transport import ByteLink


@dataclass(frozen=True)
class ConnectOptions:
    direct_only: bool = False
    relay_only: bool = False
    #: overall deadline for the whole mesh to come up, seconds
    connect_timeout: float = 120.0
    #: seconds of failed direct attempts before a relayed attempt starts (auto mode)
    direct_grace: float = 3.0
    #: one handshake attempt, seconds
    handshake_timeout: float = 10.0
    #: one TCP connect attempt, seconds
    tcp_timeout: float = 3.0
    #: inbound direct connections that may be in hello/handshake at once; a new one beyond
    #: this evicts the oldest (each also has ``handshake_timeout`` seconds in all)
    inbound_limit: int = 64
    #: WebSocket ping interval of the relay client on relayed links, seconds; None (the
    #: default) turns the client's pings off: the mesh's liveness watchdog (``--timeout``)
    #: decides when a peer is gone, and a ping whose pong is read late because a long
    #: local step blocked the event loop would cut a healthy link (specs/mesh.md, 7)
    link_heartbeat: float | None = None
    #: seconds a relayed link the relay lost may take to be resumed (on any process of that
    #: relay or another relay of the session) before the run fails naming the relay; 0: off
    resume_timeout: float = 15.0
    #: bound of each relayed link's resend buffer, bytes (specs/mesh.md, 6.2)
    resume_buffer: int = DEFAULT_MAX_UNACKED

    def __post_init__(self) -> None:
        if self.direct_only and self.relay_only:
            raise PathUnavailable("--direct-only and --relay-only exclude each other")
        if self.inbound_limit < 1:
            raise PathUnavailable(f"inbound_limit must be at least 1, not {self.inbound_limit}")
        if not self.resume_timeout >= 0 or self.resume_buffer < 1:
            raise PathUnavailable(
                f"resume_timeout must be >= 0 seconds and resume_buffer >= 1 byte, not "
                f"{self.resume_timeout!r} and {self.resume_buffer!r}")
        if self.link_heartbeat is not None and not self.link_heartbeat > 0:
            raise PathUnavailable(
                f"link_heartbeat must be positive seconds or None, not {self.link_heartbeat!r}"
            )


class MeshConnector:
    """Connects this party to all its peers; :meth:`connect_all` returns the channels."""

    def __init__(
        self,
        plan: MeshPlan,
        identity: IdentityKey | None,
        options: ConnectOptions,
        *,
        relay_opener: RelayOpener | None = None,
        predialed: PreDialed | None = None,
    ) -> None:
        """``predialed``: the early punch's sockets, dialing since before the run
        (:mod:`.predial`); the connector owns them from now on (they are closed when the
        mesh is up, or at once if this run does not punch)."""
        self.plan = plan
        self.identity = identity
        self.options = options
        self.relay_opener = relay_opener
        self.pairs: dict[int, Pair] = {}
        if options.relay_only and not plan.relays:
            raise PathUnavailable("--relay-only, but the session names no relay")
        if plan.relays and relay_opener is None and identity is not None:
            self.relay_opener = default_relay_opener(plan, identity, options)
        self.handshake = PairHandshake(plan, options.handshake_timeout)
        #: hole punching over relayed links (specs/mesh.md, "Punched paths")
        self.puncher: Puncher | None = None
        if punching(relays=bool(plan.relays), relay_only=options.relay_only,
                    direct_only=options.direct_only):
            self.puncher = Puncher(
                self.handshake, getattr(self.relay_opener, "observe", None), plan.relays,
                local_addresses, predialed)
        elif predialed is not None:
            predialed.close()
        self.listener = DirectListener(
            plan, self.handshake, self.pairs, handshake_timeout=options.handshake_timeout,
            inbound_limit=options.inbound_limit,
            claim=self.puncher.claim if self.puncher is not None else None)
        self.dialer = DirectDialer(plan, self.handshake, options.tcp_timeout)

    @property
    def inbound(self) -> InboundStats:
        """Inbound direct connections (observability, tests)."""
        return self.listener.stats

    def _kinds(self, peer_id: int) -> set[str]:
        kinds = set()
        o = self.options
        hi = max(peer_id, self.plan.my_party_id)
        # the responder (hi) must announce an endpoint for a direct path
        if not o.relay_only and self.plan.party(hi).endpoints:
            kinds.add("direct")
        if not o.direct_only and self.plan.relays and self.relay_opener is not None:
            kinds.add("relay")
        return kinds

    def _paths(self, pair: Pair) -> list[Path]:
        """The paths that race for ``pair``."""
        paths: list[Path] = []
        if "direct" in pair.kinds_left and pair.initiator:
            paths.append(self.dialer)
        if "relay" in pair.kinds_left and self.relay_opener is not None:
            grace = 0.0 if (self.options.relay_only or "direct" not in pair.kinds_left) \
                else self.options.direct_grace
            if grace and self.puncher is not None:  # another home: punch at once
                grace = self.puncher.relay_grace(pair.peer_id, grace)
            paths.append(RelayedPath(self.plan, self.handshake, self.relay_opener,
                                     self.puncher, grace, options=self.options))
            if self._punches_early(pair):
                assert self.puncher is not None
                paths.append(EarlyPunch(self.puncher))
        return paths

    def _punches_early(self, pair: Pair) -> bool:
        """Whether ``pair`` races an early punch (specs/mesh.md 6.1) beside its others."""
        return (self.puncher is not None and self.relay_opener is not None
                and "relay" in pair.kinds_left and not pair.done
                and self.puncher.early_punch_ok(pair.peer_id))

    # ------------------------------------------------------------------ main

    async def aclose(self) -> None:
        """Release what the relayed links need (HTTP sessions); call after the run."""
        self.close_listeners()
        if isinstance(self.relay_opener, RelayLinks):
            await self.relay_opener.aclose()

    async def connect_all(self) -> dict[int, PeerChannel]:
        plan = self.plan
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        deadline = start + self.options.connect_timeout
        for p in plan.peers():
            kinds = self._kinds(p.party_id)
            fut: asyncio.Future[tuple[ByteLink, SecureChannel]] = loop.create_future()
            pair = Pair(plan, p.party_id, fut, set(kinds))
            self.pairs[p.party_id] = pair
            if not kinds:
                fut.set_exception(pair.error())
        for pid, pair in self.pairs.items():  # before the listener opens (expect_early)
            if self.puncher is not None and self._punches_early(pair):
                self.puncher.expect_early(pid)
        lower = [p.party_id for p in plan.peers() if p.party_id < plan.my_party_id]
        if lower and not self.options.relay_only and plan.me.endpoints:
            await self.listener.listen()
        if self.puncher is not None:
            self.puncher.started = start
            if any(self.puncher.other_home(pid) for pid, pair in self.pairs.items()
                   if "relay" in pair.kinds_left):
                # ask the relay where the session port is seen from (and get its token)
                # now, while the links come up: the punch needs the answer soonest
                self.puncher.start_observing()
        tasks = [loop.create_task(self._race(pair, deadline))
                 for pair in self.pairs.values() if not pair.done]
        try:
            results: dict[int, PeerChannel] = {}
            for pid, pair in self.pairs.items():
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    link, ch = await asyncio.wait_for(asyncio.shield(pair.future), remaining)
                except TimeoutError:
                    note = self.listener.last_failure(pair)
                    if note is not None:
                        pair.errors.append(
                            f"direct: no valid handshake before the deadline; last attempt {note}"
                        )
                    pair.errors.append(
                        f"no path completed within {self.options.connect_timeout:g} s")
                    raise pair.error() from None
                results[pid] = PeerChannel(pid, plan.describe(pid), link, ch)
            return results
        except BaseException:
            for pair in self.pairs.values():
                f = pair.future
                if f.done() and not f.cancelled() and not f.exception():
                    f.result()[0].abort()
            raise
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.close_listeners()
            if self.puncher is not None:
                self.puncher.close()
            for pair in self.pairs.values():
                if not pair.future.done():
                    pair.future.cancel()
                elif not pair.future.cancelled():
                    pair.future.exception()  # mark retrieved

    def close_listeners(self) -> None:
        """Stop listening and drop inbound connections still handshaking."""
        self.listener.close()

    async def _race(self, pair: Pair, deadline: float) -> None:
        """Run ``pair``'s paths until one wins, all fail or the deadline passes."""
        loop = asyncio.get_running_loop()
        attempts = [loop.create_task(path.run(pair, deadline)) for path in self._paths(pair)]
        try:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(pair.future), deadline - time.monotonic())
        finally:
            for a in attempts:
                a.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)


__all__ = [
    "HELLO_LEN", "HELLO_MAGIC", "HELLO_VERSION", "REJECT_MAGIC", "ConnectOptions",
    "InboundStats", "MeshConnector", "RelayLinks", "RelayOpener", "default_relay_opener",
    "encode_hello", "hello_tag", "reason_of",
]
