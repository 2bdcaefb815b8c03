"""Hole punching's asyncio adapter (specs/mesh.md section 6.1; the protocol and its pure
parts are in :mod:`.punch`).

:class:`Puncher` serves one :class:`~.connect.MeshConnector` (its relayed paths,
:mod:`.relayed`): it asks a relay once per run where the session port is seen from, runs
the initiator's or responder's side of the coordination over a pair's relayed Noise
channel, and dials from the session port
(:func:`dial_from`, TCP simultaneous open). A listener hands it an inbound connection that
is the peer's half of a punch (:meth:`Puncher.claim`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from didmesh.identity.errors import DidmeshError

from .channel import SecureChannel
from .congestion import settle_punched, since_last_ack
from .endpoints import other_home, punch_port, punches_early
from .handshake import next_message
from .paths import Pair
from .peer import SELECT
from .plan import MeshPlan, format_endpoint, parse_endpoint
from .predial import PreDialed, bind_for_punch
from .punch import (
    DONE,
    EARLY_WINDOW,
    MAX_ATTEMPTS,
    NAT_UNKNOWN,
    PUNCH_GRACE,
    RESYN_INTERVAL,
    SYNC,
    Observe,
    Offer,
    PunchError,
    SyncGate,
    decode_done,
    encode_done,
    encode_sync,
    judge_nat,
    signed_targets,
    targets,
    why_not,
    window,
)
from .transport import ByteLink, TcpLink


class PunchedLink(TcpLink):
    """A TCP link opened by hole punching (a sibling of direct and relayed links)."""

    kind = "punched"


class Handshakes(Protocol):
    """What the puncher needs: the pair handshake of :class:`~.handshake.PairHandshake`."""

    plan: MeshPlan

    async def initiate(self, link: ByteLink, peer_id: int, deadline: float
                       ) -> SecureChannel: ...

    async def respond(self, link: ByteLink, deadline: float, expect: int | None
                      ) -> tuple[int, SecureChannel]: ...


async def dial_from(port: int, dial: Sequence[tuple[str, int]], span: float,
                    predialed: PreDialed | None = None) -> PunchedLink:
    """Connect from local ``port`` to the first of ``dial`` that answers within ``span`` s,
    re-sending a SYN (a new connect) at most every :data:`RESYN_INTERVAL` s when one is
    refused. Raises TimeoutError when none connects.

    A target that ``predialed`` (bound to ``port``) holds a socket for is not dialed anew
    at first: that socket's connect, begun before the run (:mod:`.predial`), is finished
    (:func:`finish_connect`) whether it is still under way or already done; if it failed,
    the target is dialed as usual, :data:`RESYN_INTERVAL` s after the pre-dial at the
    soonest."""
    loop = asyncio.get_running_loop()
    end = time.monotonic() + span
    if predialed is not None and predialed.port != port:
        predialed = None

    async def one(host: str, rport: int) -> PunchedLink:
        adopted = predialed.take((host, rport)) if predialed is not None else None
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                if adopted is not None:
                    adopted.close()
                raise TimeoutError
            if adopted is not None:
                assert predialed is not None
                started, sock, adopted = predialed.sent, adopted, None
                connecting = finish_connect(sock)
            else:
                started = time.monotonic()
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                     socket.SOCK_STREAM)
                connecting = None
            try:
                if connecting is None:
                    bind_for_punch(sock, port)
                    connecting = loop.sock_connect(sock, (host, rport))
                await asyncio.wait_for(connecting, remaining)
                settle_punched(sock, _connect_rtt(sock, started))
                link = PunchedLink(f"tcp {format_endpoint(host, rport)[6:]} (punched)")
                await loop.create_connection(lambda: link, sock=sock)  # noqa: B023
                return link
            except OSError:
                sock.close()
                await asyncio.sleep(max(0.0, RESYN_INTERVAL - (time.monotonic() - started)))
            except BaseException:
                sock.close()
                raise

    tasks = [loop.create_task(one(h, p)) for h, p in dial]
    winner: PunchedLink | None = None
    try:
        for fut in asyncio.as_completed(tasks):
            with contextlib.suppress(TimeoutError, OSError):
                winner = await fut
                return winner
        raise TimeoutError
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                got = await t
                if got is not winner:  # connected too, but another target won
                    got.abort()


def _connect_rtt(sock: socket.socket, started: float) -> float:
    """Seconds from ``started`` (the connect) to when ``sock`` was established: now, less
    the time since its last ACK (a pre-dialed connect may have completed long before it
    was adopted; an ACK the peer sent since only makes this shorter)."""
    now = time.monotonic()
    return max(0.0, now - (since_last_ack(sock) or 0.0) - started)


async def finish_connect(sock: socket.socket) -> None:
    """Finish a non-blocking connect begun elsewhere (a pre-dialed socket,
    :mod:`.predial`): wait until the socket is writable (connected, or failed), then raise
    OSError unless it is connected. It never calls ``connect()`` again: that gives EALREADY
    while the connect is under way and EISCONN once it is done (on BSD at least)."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    ready: asyncio.Future[None] = loop.create_future()

    def writable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, writable)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
    sock.getpeername()  # OSError (ENOTCONN) unless connected


@dataclass
class PunchStats:
    """Per connector (observability, tests): attempts made, pairs punched."""

    attempts: int = 0
    punched: int = 0
    #: of ``punched``, the pairs an early punch served (no coordination)
    early: int = 0
    seconds: dict[int, float] | None = None


class Puncher:
    """Runs the punch coordination of one party's pairs (one per
    :class:`~.connect.MeshConnector`), running the pair handshake on a punched link."""

    def __init__(self, handshake: Handshakes, observe: Observe | None,
                 relays: Sequence[str], local_addresses: Callable[[], Sequence[str]],
                 predialed: PreDialed | None = None) -> None:
        self.handshake = handshake
        self.plan = handshake.plan
        self._observe = observe
        self._relays = list(relays)
        self._local_addresses = local_addresses
        self._offer: asyncio.Task[Offer] | None = None
        self._claims: dict[tuple[str, int], asyncio.Future[TcpLink]] = {}
        #: responder: the CONNECT sent early (with handshake message 2) per peer, and the
        #: claims it opened (the initiator now dials first: its SYN may reach our listener)
        self._early: dict[int, tuple[Offer, dict[tuple[str, int], asyncio.Future[TcpLink]]]] = {}
        #: the early punch's claims per peer, registered before the listener opens
        self._early_claims: dict[int, dict[tuple[str, int], asyncio.Future[TcpLink]]] = {}
        self._port: int | None = None
        #: the early punch's sockets, dialing since before the run (:mod:`.predial`)
        self.predialed = predialed
        #: when this party's mesh set-up started (``time.monotonic()``): a punch's time is
        #: counted from it
        self.started = time.monotonic()
        self.stats = PunchStats(seconds={})

    @property
    def port(self) -> int | None:
        """The session port: the one our interfaces' candidates share (behind a symmetric
        NAT the observed candidate has another)."""
        if self._port is None:
            self._port = punch_port(self.plan.me.endpoints, self._locals()) or 0
        return self._port or None

    def start_observing(self) -> None:
        if self._offer is None:
            self._offer = asyncio.get_running_loop().create_task(self._make_offer())

    async def offer(self) -> Offer:
        self.start_observing()
        assert self._offer is not None
        return await asyncio.shield(self._offer)

    async def _make_offer(self) -> Offer:
        port = self.port
        if port is None or self._observe is None or not self._relays:
            return Offer((), NAT_UNKNOWN)
        seen = None
        for url in self._relays:
            try:
                seen = await asyncio.wait_for(self._observe(url, port), 5.0)
                break
            except Exception:  # noqa: BLE001, S112 - a relay that cannot tell: try the next
                continue
        nat, addrs = judge_nat(seen, self.plan.me.endpoints, self._locals())
        return Offer(addrs, nat)

    def _locals(self) -> list[str]:
        """Our interfaces' addresses; none if the machine will not tell (punching is an
        optimisation: its failures must never cost the relayed path)."""
        try:
            return list(self._local_addresses())
        except OSError:
            return []

    def close(self) -> None:
        if self._offer is not None and not self._offer.done():
            self._offer.cancel()
        for peer in list(self._early):
            self.drop_early(peer)
        for claims in self._early_claims.values():
            self._release(claims)
        self._early_claims.clear()
        if self.predialed is not None:  # the pre-dialed sockets no early punch adopted
            self.predialed.close()

    def early_offer(self, peer: int) -> bytes | None:
        """Responder, as its relayed handshake with ``peer`` completes: our CONNECT to send
        with handshake message 2, if our offer is ready and the pair may punch (else None:
        we answer the initiator's CONNECT, as before). The initiator then has our offer
        when the handshake completes and dials at once; we dial when its CONNECT (which
        proves it live) arrives, half a relay round trip later. From now on our listener
        hands over a connection from the peer's signed endpoints: its SYN comes first."""
        if self.plain_reason(peer) is not None or self._offer is None or \
                not self._offer.done() or self._offer.cancelled() or \
                self._offer.exception() is not None:
            return None
        mine = self._offer.result()
        self.drop_early(peer)
        claims = self._expect(peer) if self.port is not None and mine.addrs else {}
        self._early[peer] = (mine, claims)
        return mine.encode()

    def drop_early(self, peer: int) -> None:
        """Forget the early CONNECT to ``peer`` (the pair ended otherwise): its claims go."""
        early = self._early.pop(peer, None)
        if early is not None:
            self._release(early[1])

    def other_home(self, peer: int) -> bool:
        """Whether ``peer`` announced no address in common with us (another home: one
        shared address means one home behind one NAT, or one machine) while both of us
        announced some: the pairs a punch may serve. Both parties compute the same from
        the signed roster."""
        return other_home(self.plan.me.endpoints, self.plan.party(peer).endpoints)

    def relay_grace(self, peer: int, grace: float) -> float:
        """How long the pair's direct attempts run alone before the relayed link (and the
        punch) starts: ``grace`` in one home, else at most :data:`PUNCH_GRACE` (none): in
        different homes a direct connect only succeeds to a public peer, so the relayed
        link and the punch race the direct attempts from the start."""
        return min(grace, PUNCH_GRACE) if self.other_home(peer) else grace

    def early_punch_ok(self, peer: int) -> bool:
        """Whether the pair with ``peer`` punches early: at once, from the signed endpoints
        alone, before (and beside) the coordination over the relayed link. Both parties
        compute the same from the signed roster: parties in different homes, the
        responder (higher id) behind a NAT (a public responder is dialed directly), and
        this party with a session port to punch from (:func:`~.endpoints.punches_early`,
        which the pre-dial uses too)."""
        return punches_early(self.plan.my_party_id, peer,
                             [p.endpoints for p in self.plan.parties], self.port)

    def expect_early(self, peer: int) -> None:
        """Before our listener opens: from now on it hands a connection from the peer's
        signed endpoints to the early punch (the peer's SYN may come before our own dial,
        and a connection the listener took as an inbound direct one would wait for a hello
        that never comes: both ends would be responders)."""
        if peer not in self._early_claims:
            self._early_claims[peer] = self._expect(peer)

    async def early_punch(self, pair: Pair, deadline: float) -> None:
        """The early punch (specs/mesh.md 6.1, "Early punch"): both parties connect from
        their session port to the peer's signed endpoints as their mesh set-up starts,
        for at most :data:`EARLY_WINDOW` s. Behind endpoint-independent NATs the second
        party's SYN finds the first one's mapping open (its SYN_SENT socket waits for it):
        a simultaneous open with no message exchanged, on which the pair runs its Noise
        KK handshake like any punched path. A failure costs nothing: the coordinated punch
        and the relayed link run beside it, and whichever completes first wins."""
        peer, port = pair.peer_id, self.port
        claims = self._early_claims.pop(peer, None)
        if port is None:
            if claims is not None:
                self._release(claims)
            return
        if claims is None:
            claims = self._expect(peer)
        t0 = time.monotonic()
        dial = signed_targets(self.plan.party(peer).endpoints)
        span = min(EARLY_WINDOW, deadline - t0)
        got = await self._attempt(peer, port, dial, span, deadline, initiator=pair.initiator,
                                  claims=claims, predialed=self.predialed)
        if got is None:
            return
        if pair.done:
            got[0].abort()
            return
        self.stats.early += 1
        self._punched(peer, t0, got[0])
        pair.won(*got)

    def plain_reason(self, peer: int) -> str | None:
        """Why the pair with ``peer`` is relayed without any punch exchange (both sides
        know it from the signed roster): a party that announces no address."""
        for p in sorted((self.plan.my_party_id, peer)):
            if not self.plan.party(p).endpoints:
                return f"relayed: party {p} announces no address"
        return None

    def describe_plain(self, peer: int, link: ByteLink) -> None:
        """Responder: the initiator selected the relayed link without punching."""
        _describe(link, self.plain_reason(peer) or "relayed")

    # -------------------------------------------------------------- initiator

    async def as_initiator(self, peer: int, link: ByteLink, ch: SecureChannel,
                           deadline: float) -> tuple[ByteLink, SecureChannel]:
        """After the relayed handshake: punch, or fall back. Returns the link to SELECT."""
        t0 = time.monotonic()
        plain = self.plain_reason(peer)
        if plain is not None:  # nothing to punch: SELECT the relayed link at once
            _describe(link, plain)
            return link, ch
        mine = await self._bounded(self.offer(), deadline)
        port = self.port
        # the responder dials as soon as our CONNECT reaches it (attempt 1 needs no SYNC):
        # if nothing is in front of us, its SYN may reach our listener before its CONNECT
        # reaches us, so the listener hands such a connection over from now on
        expect = self._expect(peer) if port is not None and mine.addrs else {}
        try:
            sent = time.monotonic()
            link.write(ch.send(mine.encode()))
            theirs = Offer.decode(await next_message(link, ch, min(deadline, sent + 10.0)))
            # the relay round trip: the handshake's if the answer came early (with message
            # 2: no exchange to time), else the exchange's
            exchange = time.monotonic() - sent
            rtt = max(exchange, link.handshake_rtt or 0.0)
            early = exchange < rtt / 2  # the responder dials when our CONNECT arrives
            dial = targets(theirs, self.plan.party(peer).endpoints)
            reason = why_not(self.plan.my_party_id, mine, peer, theirs, dial)
            attempt = 0
            while reason is None and port is not None:
                attempt += 1
                self.stats.attempts += 1
                span = window(rtt)
                if attempt > 1:  # a retry: SYNC, and dial when it reaches the responder
                    link.write(ch.send(encode_sync(attempt)))
                    await asyncio.sleep(rtt / 2)
                elif early:  # our CONNECT is the responder's SYNC: dial as it arrives
                    await asyncio.sleep(rtt / 2 - exchange)
                got = await self._attempt(peer, port, dial, span, deadline, initiator=True,
                                          claims=expect if attempt == 1 else None)
                if got is not None:
                    link.abort()
                    self._punched(peer, t0, got[0])
                    return got
                if attempt >= MAX_ATTEMPTS or time.monotonic() >= deadline:
                    reason = f"relayed: hole punching failed {attempt} times"
        finally:
            self._release(expect)
        reason = reason or "relayed: no session port to punch from"
        link.write(ch.send(encode_done(reason)))
        _describe(link, reason)
        return link, ch

    # -------------------------------------------------------------- responder

    async def as_responder(self, peer: int, link: ByteLink, ch: SecureChannel, first: bytes,
                           deadline: float) -> tuple[ByteLink, SecureChannel]:
        """The initiator's first message was CONNECT: answer, dial on each SYNC, and end
        with the punched link (its SELECT arrived there) or the relayed one (SELECT)."""
        t0 = time.monotonic()
        theirs = Offer.decode(first)
        early = self._early.pop(peer, None)
        expect: dict[tuple[str, int], asyncio.Future[TcpLink]] = {}
        if early is not None:  # our CONNECT went with handshake message 2
            mine, expect = early
        else:
            mine = await self._bounded(self.offer(), deadline)
            link.write(ch.send(mine.encode()))
        try:
            return await self._respond(peer, link, ch, theirs, mine, expect, t0, deadline)
        finally:
            self._release(expect)

    async def _respond(self, peer: int, link: ByteLink, ch: SecureChannel, theirs: Offer,
                       mine: Offer, expect: dict[tuple[str, int], asyncio.Future[TcpLink]],
                       t0: float, deadline: float) -> tuple[ByteLink, SecureChannel]:
        dial = targets(theirs, self.plan.party(peer).endpoints)
        port = self.port
        decided = why_not(self.plan.my_party_id, mine, peer, theirs, dial)
        reason = decided or "relayed: hole punching failed"
        gate = SyncGate()
        loop = asyncio.get_running_loop()
        trying: asyncio.Task[tuple[ByteLink, SecureChannel] | None] | None = None
        if decided is None and port is not None and gate.admit(time.monotonic()):
            # attempt 1 at once. If our CONNECT went with handshake message 2, the
            # initiator dialed when it got it, half a relay round trip ago: its SYN opened
            # its NAT's mapping (ours drops it silently; with no NAT in front of us our
            # listener hands it over: ``expect``), and ours now completes the simultaneous
            # open. Else the initiator dials when our CONNECT reaches it, half a relay
            # round trip from now, and the roles swap. Retries wait for a SYNC.
            self.stats.attempts += 1
            trying = loop.create_task(self._attempt(
                peer, port, dial, window(0.0) + 1.0, deadline, initiator=False,
                claims=expect or None))
        reader = loop.create_task(next_message(link, ch, deadline))
        try:
            while True:
                waiting: set[asyncio.Future[object]] = {reader}  # type: ignore[arg-type]
                if trying is not None:
                    waiting.add(trying)  # type: ignore[arg-type]
                done, _ = await asyncio.wait(waiting, timeout=max(0.0, deadline - time.monotonic()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    raise TimeoutError
                if trying is not None and trying in done:
                    got = trying.result()
                    trying = None
                    if got is not None:
                        link.abort()
                        self._punched(peer, t0, got[0])
                        return got
                if reader in done:
                    failed = reader.exception()
                    if failed is not None:
                        if trying is None or not isinstance(failed, ConnectionError):
                            raise failed
                        # the initiator closes the relayed link once its punched handshake
                        # is done, and that may arrive before its SELECT on the punched one
                        got = await trying  # bounded: the attempt's own timeouts
                        trying = None
                        if got is None:
                            raise failed
                        link.abort()
                        self._punched(peer, t0, got[0])
                        return got
                    msg = reader.result()
                    if msg == bytes((SELECT,)):
                        _describe(link, reason)
                        return link, ch
                    if msg[:1] == bytes((DONE,)):
                        reason = decode_done(msg)
                    elif msg[:1] == bytes((SYNC,)) and len(msg) == 2:
                        # bounded: at most MAX_ATTEMPTS dials, not faster than the minimum
                        if dial and port is not None and gate.admit(time.monotonic()):
                            self.stats.attempts += 1
                            if trying is not None:
                                trying.cancel()
                            trying = loop.create_task(self._attempt(
                                peer, port, dial, window(0.0) + 1.0, deadline, initiator=False))
                    else:
                        raise PunchError(f"an unexpected message (kind {msg[:1].hex()}) "
                                         "during hole punching")
                    reader = loop.create_task(next_message(link, ch, deadline))
        finally:
            reader.cancel()
            if trying is not None:
                trying.cancel()
                with contextlib.suppress(BaseException):
                    late = await trying
                    if late is not None:  # punched, but we leave on another path
                        late[0].abort()

    # -------------------------------------------------------------- common

    async def _attempt(self, peer: int, port: int, dial: Sequence[tuple[str, int]],
                       span: float, deadline: float, *, initiator: bool,
                       claims: dict[tuple[str, int], asyncio.Future[TcpLink]] | None = None,
                       predialed: PreDialed | None = None
                       ) -> tuple[ByteLink, SecureChannel] | None:
        """One simultaneous open and handshake; None if it failed. ``predialed``: the
        early punch's sockets (:func:`dial_from`)."""
        span = max(0.05, min(span, deadline - time.monotonic()))
        try:
            plink = await self._dial_or_claim(port, dial, span, claims, predialed) \
                if initiator or claims is not None else await dial_from(port, dial, span)
        except (OSError, TimeoutError):
            return None
        try:
            if initiator:
                pch = await self.handshake.initiate(plink, peer, deadline)
            else:
                _, pch = await self.handshake.respond(plink, deadline, peer)
        except BaseException as exc:
            plink.abort()
            if isinstance(exc, Exception):
                return None
            raise
        return plink, pch

    def _expect(self, peer: int) -> dict[tuple[str, int], asyncio.Future[TcpLink]]:
        """Let the listener hand over an inbound connection from any endpoint ``peer``
        signed (loopback left out) until :meth:`_release`: the peer's half of a punch."""
        loop = asyncio.get_running_loop()
        out: dict[tuple[str, int], asyncio.Future[TcpLink]] = {}
        for e in self.plan.party(peer).endpoints:
            with contextlib.suppress(DidmeshError):
                host, rport = parse_endpoint(e)
                held = self._claims.get((host, rport))
                if held is not None and not held.done():
                    continue  # an early punch expects it already (the same handshake role)
                if not host.startswith("127.") and host != "::1":
                    out[(host, rport)] = loop.create_future()
        self._claims.update(out)
        return out

    def _release(self, claims: dict[tuple[str, int], asyncio.Future[TcpLink]],
                 keep: TcpLink | None = None) -> None:
        """Stop expecting ``claims``; a connection handed over but not used is dropped."""
        for t, fut in claims.items():
            if self._claims.get(t) is fut:
                del self._claims[t]
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled() and fut.result() is not keep:
                fut.result().abort()
        claims.clear()  # released once: a later release of the same claims does nothing

    async def _dial_or_claim(self, port: int, dial: Sequence[tuple[str, int]], span: float,
                             claims: dict[tuple[str, int], asyncio.Future[TcpLink]] | None = None,
                             predialed: PreDialed | None = None) -> TcpLink:
        """Dial; but if the peer's SYN reached our listener on ``port`` before our own
        connect (no NAT in front of us), the listener hands that connection over here
        (``claims``: registered earlier by :meth:`_expect`, else now for ``dial``)."""
        loop = asyncio.get_running_loop()
        if claims is None:
            claims = {t: loop.create_future() for t in dial}
            self._claims.update(claims)
        dialing = loop.create_task(dial_from(port, dial, span, predialed))
        result: TcpLink | None = None
        try:
            waits: set[asyncio.Future[Any]] = {dialing, *claims.values()}
            done, _ = await asyncio.wait(waits, timeout=span + 0.5,
                                         return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                if fut is not dialing and not fut.cancelled():
                    result = fut.result()
                    return result
            if dialing in done:
                result = dialing.result()
                return result
            raise TimeoutError
        finally:
            self._release(claims, keep=result)
            dialing.cancel()
            try:
                other: TcpLink | None = await dialing
            except BaseException:  # noqa: BLE001 - it failed or was cancelled: nothing to drop
                other = None
            if other is not None and other is not result:
                other.abort()

    def claim(self, link: TcpLink) -> bool:
        """From the listener: take an inbound connection from an address we are punching
        towards right now (it carries the peer's half of the simultaneous open)."""
        t = link.transport
        peer = t.get_extra_info("peername") if t is not None else None
        if not peer:
            return False
        fut = self._claims.get((str(peer[0]), int(peer[1])))
        if fut is None or fut.done():
            return False
        link.description = f"{link.description} (punched)"
        link.kind = PunchedLink.kind
        fut.set_result(link)
        return True

    def _punched(self, peer: int, t0: float, link: ByteLink) -> None:
        """Count a punched pair; its description says how long it took to get it (from the
        start of this party's mesh set-up); ``stats.seconds`` holds the punch alone (from
        the relayed handshake to the punched one)."""
        now = time.monotonic()
        self.stats.punched += 1
        assert self.stats.seconds is not None
        self.stats.seconds[peer] = now - t0
        link.description = link.description.replace(
            "(punched)", f"(punched in {now - self.started:.2f} s)")

    @staticmethod
    async def _bounded(aw: Awaitable[Offer], deadline: float) -> Offer:
        try:
            return await asyncio.wait_for(aw, max(0.01, min(6.0, deadline - time.monotonic())))
        except TimeoutError:
            return Offer((), NAT_UNKNOWN)


def _describe(link: ByteLink, reason: str) -> None:
    if "(" not in link.description:
        link.description = f"{link.description} ({reason})"


class EarlyPunch:
    """The early punch as one of a pair's paths (:meth:`Puncher.early_punch`)."""

    kind = "punched"

    def __init__(self, puncher: Puncher) -> None:
        self.puncher = puncher

    async def run(self, pair: Pair, deadline: float) -> None:
        await self.puncher.early_punch(pair, deadline)


__all__ = ["EarlyPunch", "PunchStats", "PunchedLink", "Puncher", "dial_from", "finish_connect",
           "next_message"]
