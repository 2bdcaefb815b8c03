"""Direct paths: dialling a peer's announced endpoint, and listening on ours
(specs/mesh.md, "Paths").

The initiator of a pair (lower id) dials the endpoints the responder announced in its
signed acceptance, retrying (a peer may not listen yet) until the deadline
(:class:`DirectDialer`). A handshake that fails on a link this party opened ends direct
attempts for the pair. The responder's :class:`DirectListener` serves every lower peer on
this party's endpoints. An *inbound* connection proves nothing until its handshake
completes — anybody can connect and claim an id — so one that fails is only dropped and
its reason remembered: the listener keeps waiting for the real peer until the deadline,
and the pair's final error quotes the last reason. At most ``inbound_limit`` inbound
connections may be handshaking at once (a new one evicts the oldest) and each has
``handshake_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from didmesh.identity.errors import DidmeshError

from .errors import HandshakeFailed
from .faults import PathUnavailable
from .handshake import Attempt, PairHandshake, Rejected, reason_of
from .paths import Pair
from .plan import MeshPlan, parse_endpoint
from .transport import TcpLink, open_tcp, serve_tcp


@dataclass
class InboundStats:
    """Inbound direct connections of one listener (observability, tests)."""

    pending: int = 0  # in hello/handshake now
    peak: int = 0  # most ever pending at once (at most ``inbound_limit``)
    accepted: int = 0  # completed the handshake (and SELECT)
    failed: int = 0  # dropped: bad hello or handshake, timeout, closed, evicted
    evicted: int = 0  # of those, dropped to make room for a newer connection


class DirectDialer:
    """The initiator's direct path: dial the peer's announced endpoints."""

    kind = "direct"

    def __init__(self, plan: MeshPlan, handshake: PairHandshake, tcp_timeout: float) -> None:
        self.plan = plan
        self.handshake = handshake
        self.tcp_timeout = tcp_timeout

    async def run(self, pair: Pair, deadline: float) -> None:
        endpoints = [parse_endpoint(e) for e in self.plan.party(pair.peer_id).endpoints]
        delay = 0.02
        last = "no endpoint"
        while not pair.done and time.monotonic() < deadline:
            for host, port in endpoints:
                try:
                    link = await open_tcp(host, port, min(self.tcp_timeout,
                                                          max(0.01, deadline - time.monotonic())))
                except (OSError, TimeoutError) as exc:
                    last = f"{host}:{port}: {reason_of(exc)}"
                    continue
                try:
                    ch = await self.handshake.initiate(link, pair.peer_id, deadline)
                except HandshakeFailed as exc:
                    link.abort()
                    pair.failed(self.kind, f"{link.description}: {exc.message}")
                    return
                except (OSError, ConnectionError, TimeoutError, DidmeshError) as exc:
                    link.abort()
                    last = f"{link.description}: {reason_of(exc)}"
                    continue
                pair.won(link, ch)
                return
            pair.note(f"direct: {last}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)  # as MPyC retries: a late peer costs <= 0.1 s


class DirectListener:
    """The responder's direct path: listens on this party's endpoints for lower peers.

    ``claim`` (the puncher's) may take an inbound connection first: the peer's half of a
    hole punch."""

    kind = "direct"

    def __init__(self, plan: MeshPlan, handshake: PairHandshake, pairs: Mapping[int, Pair], *,
                 handshake_timeout: float, inbound_limit: int,
                 claim: Callable[[TcpLink], bool] | None = None) -> None:
        self.plan = plan
        self.handshake = handshake
        self.pairs = pairs
        self.handshake_timeout = handshake_timeout
        self.inbound_limit = inbound_limit
        self.claim = claim
        self.stats = InboundStats()
        self._servers: list[asyncio.Server] = []
        #: inbound links still in hello/handshake, oldest first
        self._inbound: dict[TcpLink, None] = {}
        self._evicted: set[TcpLink] = set()
        #: the last failure of an inbound connection that claimed no pair of ours
        self._anonymous_failure: str | None = None

    async def listen(self) -> None:
        by_port: dict[int, list[str]] = {}
        for e in self.plan.me.endpoints:
            host, port = parse_endpoint(e)
            by_port.setdefault(port, []).append(e)
        for port, same in by_port.items():
            e = same[0]
            # gathered candidates share one port: listen on it on every interface, once
            host = parse_endpoint(e)[0] if len(same) == 1 else ""
            try:
                self._servers.append(await serve_tcp(host, port, self.on_connection))
            except OSError:
                try:  # an announced (e.g. NATed) address may not be local: listen on all
                    self._servers.append(await serve_tcp("", port, self.on_connection))
                except OSError as exc:
                    raise PathUnavailable(
                        f"cannot listen on {e} ({exc}); free the port or announce another"
                    ) from exc

    def close(self) -> None:
        """Stop listening and drop inbound connections still handshaking."""
        for s in self._servers:
            s.close()
        self._servers.clear()
        for link in list(self._inbound):
            link.abort()

    async def on_connection(self, link: TcpLink) -> None:
        """One inbound direct connection. It is unauthenticated until its handshake
        completes, so a failure only drops it (the pair keeps waiting for its peer)."""
        if self.claim is not None and self.claim(link):
            return  # the peer's half of a hole punch, taken over by the puncher
        self._admit(link)
        deadline = time.monotonic() + self.handshake_timeout
        attempt = Attempt()
        try:
            ini, ch = await self.handshake.respond(link, deadline, None, attempt)
        except Rejected as rej:
            link.close()
            self._failed(link, attempt.claimed, rej.error.message)
            return
        except (OSError, ConnectionError, TimeoutError, DidmeshError) as exc:
            link.abort()
            if link in self._evicted:
                why = (f"dropped: more than {self.inbound_limit} connections were "
                       "in their handshake at once")
            elif isinstance(exc, TimeoutError):
                why = (f"no complete handshake within {self.handshake_timeout:g} s "
                       "(or the deadline)")
            else:
                why = reason_of(exc)
            self._failed(link, attempt.claimed, why)
            return
        finally:
            self._inbound.pop(link, None)
            self._evicted.discard(link)
            self.stats.pending = len(self._inbound)
        self.stats.accepted += 1
        pair = self.pairs.get(ini)
        if pair is None:
            link.abort()
            return
        pair.won(link, ch)

    def _admit(self, link: TcpLink) -> None:
        """Track ``link`` as handshaking; evict the oldest beyond ``inbound_limit``."""
        while len(self._inbound) >= self.inbound_limit:
            oldest = next(iter(self._inbound))
            del self._inbound[oldest]
            self._evicted.add(oldest)
            self.stats.evicted += 1
            oldest.abort()  # its handler sees the connection end and records why
        self._inbound[link] = None
        self.stats.pending = len(self._inbound)
        self.stats.peak = max(self.stats.peak, self.stats.pending)

    def _failed(self, link: TcpLink, claimed: int | None, why: str) -> None:
        """Remember why an inbound connection failed, for the pair it claimed if any."""
        self.stats.failed += 1
        pair = self.pairs.get(claimed) if claimed is not None else None
        note = f"from {link.description} (unauthenticated) failed: {why}"
        if pair is not None and pair.peer_id < self.plan.my_party_id:
            pair.inbound_failure = note
        else:
            self._anonymous_failure = note

    def last_failure(self, pair: Pair) -> str | None:
        """For a pair whose peer would connect to us directly: the last inbound failure."""
        if pair.peer_id > self.plan.my_party_id or not self._listening_for(pair):
            return None
        return pair.inbound_failure or self._anonymous_failure

    def _listening_for(self, pair: Pair) -> bool:
        return self.kind in pair.kinds_left and bool(self.plan.me.endpoints)


__all__ = ["DirectDialer", "DirectListener", "InboundStats"]
