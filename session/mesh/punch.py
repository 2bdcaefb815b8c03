"""Relay-coordinated TCP hole punching (specs/mesh.md, "Punched paths").

When a pair has no direct path, its relayed link comes up first (Noise KK through the
relay). Before the initiator (lower id) commits with SELECT, the two parties use that
*authenticated* channel to coordinate a punch, in the spirit of libp2p DCUtR:

1. each party asks a relay once per run where its session port is seen from *now*
   (``GET /v1/observed`` from that port) and compares the answer with the observed
   candidate it signed at accept time: the same port means an endpoint-independent
   mapping (or no NAT); another port means a symmetric NAT, whose mapping towards the
   peer cannot be predicted;
2. initiator -> responder CONNECT ``{"addrs": [...], "nat": ...}``; the responder answers
   with its own CONNECT; the initiator takes the exchange's time as the relay RTT;
3. the initiator sends SYNC and dials ``RTT/2`` later, the responder dials when SYNC
   arrives: both connect *from their session port* (``SO_REUSEADDR``/``SO_REUSEPORT``)
   to the other's observed address, so both NATs see an outgoing SYN and let the other's
   in (TCP simultaneous open);
4. on the punched connection the lower id runs the same hello and Noise KK handshake as
   on any direct path; the initiator sends SELECT there and drops the relayed link. After
   :data:`MAX_ATTEMPTS` failed attempts (or when punching cannot work: a symmetric NAT,
   no observed address) it sends DONE with the reason, then SELECT on the relayed link.

A party only ever dials addresses that are both in the peer's CONNECT and among the
endpoints the peer signed in its acceptance (at most :data:`MAX_TARGETS`), at most
:data:`MAX_ATTEMPTS` times per pair and run, re-sending a SYN at most every
:data:`RESYN_INTERVAL` seconds within an attempt: a relay cannot inject addresses (the
channel is authenticated end to end) and a lying peer can only point us at addresses it
signed itself. The Noise KK handshake bound to the roster means a punched connection to
anyone but the roster peer fails.

The pure parts (message codec, NAT judgement, target choice, reasons) are sans-IO
functions; :class:`Puncher` is the asyncio adapter a :class:`~.connect.MeshConnector` uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from didmesh.identity.errors import DidmeshError

from .channel import SecureChannel
from .errors import HandshakeFailed
from .peer import SELECT
from .plan import MeshPlan, format_endpoint, parse_endpoint
from .transport import ByteLink, TcpLink

CONNECT: Final = 0x30  # {"addrs": [endpoint...], "nat": NAT_*}
SYNC: Final = 0x31  # u8 attempt number: dial now
DONE: Final = 0x32  # utf-8 reason: punching is over, SELECT on the relayed link follows
MAX_ATTEMPTS: Final = 3
MAX_TARGETS: Final = 4
MAX_MESSAGE: Final = 2048
RESYN_INTERVAL: Final = 0.25
MIN_SYNC_INTERVAL: Final = 0.2
#: one attempt's window: the base (a SYN retransmission fits in it) plus two RTTs
WINDOW_BASE: Final = 2.0
WINDOW_MAX: Final = 6.0
#: direct attempts alone before the relayed link starts, for a peer in another home
PUNCH_GRACE: Final = 0.5

NAT_OPEN: Final = "open"  # the relay sees one of our interface addresses
NAT_EIM: Final = "eim"  # the same public port as announced: endpoint-independent mapping
NAT_SYM: Final = "sym"  # another port than announced: symmetric NAT
NAT_UNKNOWN: Final = "unknown"  # no relay told us
NATS: Final = (NAT_OPEN, NAT_EIM, NAT_SYM, NAT_UNKNOWN)

#: ``(relay_url, local_port) -> (address, port | None)``
Observe = Callable[[str, int], Awaitable[tuple[str, int | None]]]


class PunchError(HandshakeFailed):
    """A punch coordination message was malformed (the authenticated peer misbehaved)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="punch")


# ---------------------------------------------------------------------- sans-IO parts


@dataclass(frozen=True)
class Offer:
    """What one party tells its peer in CONNECT."""

    addrs: tuple[str, ...]
    nat: str

    def encode(self) -> bytes:
        body = json.dumps({"addrs": list(self.addrs), "nat": self.nat}, separators=(",", ":"))
        return bytes((CONNECT,)) + body.encode()

    @classmethod
    def decode(cls, msg: bytes) -> Offer:
        if not msg or msg[0] != CONNECT or len(msg) > MAX_MESSAGE:
            raise PunchError("a malformed punch CONNECT message")
        try:
            doc = json.loads(msg[1:])
        except (ValueError, UnicodeDecodeError):
            raise PunchError("a punch CONNECT message that is not JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"addrs", "nat"}:
            raise PunchError("a punch CONNECT message with unexpected fields")
        addrs, nat = doc["addrs"], doc["nat"]
        if nat not in NATS or not isinstance(addrs, list) or len(addrs) > MAX_TARGETS:
            raise PunchError("a punch CONNECT message with a bad NAT kind or too many addresses")
        for a in addrs:
            if not isinstance(a, str):
                raise PunchError("a punch CONNECT message with a non-text address")
            try:
                parse_endpoint(a)
            except DidmeshError:
                raise PunchError(f"a punch CONNECT message with a bad address {a[:80]!r}") \
                    from None
        return cls(tuple(addrs), nat)


def encode_sync(attempt: int) -> bytes:
    return bytes((SYNC, attempt & 0xFF))


def encode_done(reason: str) -> bytes:
    return bytes((DONE,)) + reason.encode()[:300]


def decode_done(msg: bytes) -> str:
    text = msg[1:301].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


def session_port(endpoints: Sequence[str]) -> int | None:
    """The one port a party's gathered candidates share (None: none, or several)."""
    ports = set()
    for e in endpoints:
        with contextlib.suppress(DidmeshError):
            ports.add(parse_endpoint(e)[1])
    return ports.pop() if len(ports) == 1 else None


def judge_nat(seen: tuple[str, int | None] | None, signed: Sequence[str],
              local_addresses: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Our NAT kind and the addresses to offer, from a fresh observation ``seen`` of our
    session port, the endpoints we signed, and our interfaces' addresses.

    Only a signed endpoint is offered (the peer would not dial anything else)."""
    if seen is None or seen[1] is None:
        return NAT_UNKNOWN, ()
    addr, port = seen[0], seen[1]
    if addr.startswith("127.") or addr == "::1":  # a relay on this machine: no NAT to learn
        return NAT_UNKNOWN, ()
    endpoint = format_endpoint(addr, port)
    if addr in local_addresses:
        return NAT_OPEN, (endpoint,) if endpoint in signed else ()
    if endpoint in signed:
        return NAT_EIM, (endpoint,)
    same_host = [e for e in signed if _host(e) == addr]
    if same_host:  # the address we announced, a port that moved: per-connection mapping
        return NAT_SYM, ()
    return NAT_UNKNOWN, ()


def _host(endpoint: str) -> str | None:
    try:
        return parse_endpoint(endpoint)[0]
    except DidmeshError:
        return None


def targets(offer: Offer, signed: Sequence[str]) -> list[tuple[str, int]]:
    """Where to dial the peer: its offered addresses that it also signed, loopback left out."""
    out = []
    for a in offer.addrs:
        if a in signed:
            host, port = parse_endpoint(a)
            if not host.startswith("127.") and host != "::1":
                out.append((host, port))
    return out[:MAX_TARGETS]


def why_not(me: int, mine: Offer, peer: int, theirs: Offer, dial: Sequence[tuple[str, int]]
            ) -> str | None:
    """Why this pair should not try to punch (None: try). Symmetric NATs first."""
    syms = [p for p, o in sorted(((me, mine), (peer, theirs))) if o.nat == NAT_SYM]
    if syms:
        return "relayed: symmetric NAT at " + " and ".join(f"party {p}" for p in syms)
    for p, o in sorted(((me, mine), (peer, theirs))):
        if not o.addrs:
            return f"relayed: no observed address at party {p}"
    if not dial:
        return f"relayed: party {peer} offered no address it announced"
    return None


@dataclass
class SyncGate:
    """The responder's bound on dials a peer can trigger: at most ``max_attempts`` SYNCs
    are honoured, none sooner than ``min_interval`` seconds after the previous honoured
    one (time injected: ``admit(now)``)."""

    max_attempts: int = MAX_ATTEMPTS
    min_interval: float = MIN_SYNC_INTERVAL
    admitted: int = 0
    last: float | None = None

    def admit(self, now: float) -> bool:
        if self.admitted >= self.max_attempts:
            return False
        if self.last is not None and now - self.last < self.min_interval:
            return False
        self.admitted += 1
        self.last = now
        return True


def window(rtt: float) -> float:
    return min(WINDOW_MAX, WINDOW_BASE + 2 * rtt)


# ---------------------------------------------------------------------- asyncio adapter


class PunchedLink(TcpLink):
    """A TCP link opened by hole punching (a sibling of direct and relayed links)."""

    kind = "punched"


class Connector(Protocol):
    """What the puncher needs of :class:`~.connect.MeshConnector`."""

    plan: MeshPlan

    async def _initiate(self, link: ByteLink, peer_id: int, deadline: float
                        ) -> SecureChannel: ...

    async def _respond(self, link: ByteLink, deadline: float, expect: int | None
                       ) -> tuple[int, SecureChannel]: ...


async def next_message(link: ByteLink, ch: SecureChannel, deadline: float) -> bytes:
    while True:
        msg = ch.next_message()
        if msg is not None:
            return msg
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        data = await link.read_some(remaining)
        if not data:
            raise ConnectionError("the relayed link closed during hole punching")
        ch.receive_data(data)


async def dial_from(port: int, dial: Sequence[tuple[str, int]], span: float) -> PunchedLink:
    """Connect from local ``port`` to the first of ``dial`` that answers within ``span`` s,
    re-sending a SYN (a new connect) at most every :data:`RESYN_INTERVAL` s when one is
    refused. Raises TimeoutError when none connects."""
    loop = asyncio.get_running_loop()
    end = time.monotonic() + span

    async def one(host: str, rport: int) -> PunchedLink:
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            started = time.monotonic()
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if hasattr(socket, "SO_REUSEPORT"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.setblocking(False)
                sock.bind(("", port))
                await asyncio.wait_for(loop.sock_connect(sock, (host, rport)), remaining)
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


@dataclass
class PunchStats:
    """Per connector (observability, tests): attempts made, pairs punched."""

    attempts: int = 0
    punched: int = 0
    seconds: dict[int, float] | None = None


class Puncher:
    """Runs the punch coordination of one party's pairs (one per :class:`MeshConnector`)."""

    def __init__(self, connector: Connector, observe: Observe | None,
                 relays: Sequence[str], local_addresses: Callable[[], Sequence[str]]) -> None:
        self.connector = connector
        self.plan = connector.plan
        self._observe = observe
        self._relays = list(relays)
        self._local_addresses = local_addresses
        self._offer: asyncio.Task[Offer] | None = None
        self._claims: dict[tuple[str, int], asyncio.Future[TcpLink]] = {}
        self._port: int | None = None
        self.stats = PunchStats(seconds={})

    @property
    def port(self) -> int | None:
        """The session port: the one our interfaces' candidates share (behind a symmetric
        NAT the observed candidate has another)."""
        if self._port is None:
            local = set(self._locals())
            own = [e for e in self.plan.me.endpoints if _host(e) in local]
            self._port = session_port(own or self.plan.me.endpoints) or 0
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

    def relay_grace(self, peer: int, grace: float) -> float:
        """How long the pair's direct attempts run alone before the relayed link (and the
        punch) starts: ``grace`` when the two parties announced an address in common (one
        home behind one NAT, or one machine), else at most :data:`PUNCH_GRACE`: in
        different homes a direct connect only succeeds to a public peer, and that takes a
        round trip, not seconds. Both parties compute the same from the signed roster."""
        mine = {_host(e) for e in self.plan.me.endpoints}
        theirs = {_host(e) for e in self.plan.party(peer).endpoints}
        if mine & theirs or not mine or not theirs:
            return grace
        return min(grace, PUNCH_GRACE)

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
        sent = time.monotonic()
        link.write(ch.send(mine.encode()))
        theirs = Offer.decode(await next_message(link, ch, min(deadline, sent + 10.0)))
        rtt = time.monotonic() - sent
        dial = targets(theirs, self.plan.party(peer).endpoints)
        reason = why_not(self.plan.my_party_id, mine, peer, theirs, dial)
        port = self.port
        attempt = 0
        while reason is None and port is not None:
            attempt += 1
            self.stats.attempts += 1
            span = window(rtt)
            link.write(ch.send(encode_sync(attempt)))
            await asyncio.sleep(rtt / 2)
            got = await self._attempt(peer, port, dial, span, deadline, initiator=True)
            if got is not None:
                link.abort()
                self._punched(peer, t0, got[0])
                return got
            if attempt >= MAX_ATTEMPTS or time.monotonic() >= deadline:
                reason = f"relayed: hole punching failed {attempt} times"
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
        mine = await self._bounded(self.offer(), deadline)
        link.write(ch.send(mine.encode()))
        dial = targets(theirs, self.plan.party(peer).endpoints)
        port = self.port
        reason = why_not(self.plan.my_party_id, mine, peer, theirs, dial) or \
            "relayed: hole punching failed"
        gate = SyncGate()
        loop = asyncio.get_running_loop()
        reader = loop.create_task(next_message(link, ch, deadline))
        trying: asyncio.Task[tuple[ByteLink, SecureChannel] | None] | None = None
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
                       span: float, deadline: float, *, initiator: bool
                       ) -> tuple[ByteLink, SecureChannel] | None:
        """One simultaneous open and handshake; None if it failed."""
        span = max(0.05, min(span, deadline - time.monotonic()))
        try:
            plink = await self._dial_or_claim(port, dial, span) if initiator \
                else await dial_from(port, dial, span)
        except (OSError, TimeoutError):
            return None
        try:
            if initiator:
                pch = await self.connector._initiate(plink, peer, deadline)
            else:
                _, pch = await self.connector._respond(plink, deadline, peer)
        except BaseException as exc:
            plink.abort()
            if isinstance(exc, Exception):
                return None
            raise
        return plink, pch

    async def _dial_or_claim(self, port: int, dial: Sequence[tuple[str, int]], span: float
                             ) -> TcpLink:
        """Dial; but if the peer's SYN reached our listener on ``port`` before our own
        connect (no NAT in front of us), the listener hands that connection over here."""
        loop = asyncio.get_running_loop()
        claims: dict[tuple[str, int], asyncio.Future[TcpLink]] = {
            t: loop.create_future() for t in dial}
        self._claims.update(claims)
        dialing = loop.create_task(dial_from(port, dial, span))
        result: TcpLink | None = None
        try:
            waits: set[asyncio.Future[Any]] = {dialing, *claims.values()}
            done, _ = await asyncio.wait(waits, timeout=span + 0.5,
                                         return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                if fut is not dialing:
                    result = fut.result()
                    return result
            if dialing in done:
                result = dialing.result()
                return result
            raise TimeoutError
        finally:
            for t in dial:
                self._claims.pop(t, None)
            dialing.cancel()
            try:
                other: TcpLink | None = await dialing
            except BaseException:  # noqa: BLE001 - it failed or was cancelled: nothing to drop
                other = None
            if other is not None and other is not result:
                other.abort()
            for fut in claims.values():
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled() and fut.result() is not result:
                    fut.result().abort()

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
        """Count a punched pair; its description says how long the punch took (from the
        relayed handshake to the punched one)."""
        took = time.monotonic() - t0
        self.stats.punched += 1
        assert self.stats.seconds is not None
        self.stats.seconds[peer] = took
        link.description = link.description.replace("(punched)", f"(punched in {took:.2f} s)")

    @staticmethod
    async def _bounded(aw: Awaitable[Offer], deadline: float) -> Offer:
        try:
            return await asyncio.wait_for(aw, max(0.01, min(6.0, deadline - time.monotonic())))
        except TimeoutError:
            return Offer((), NAT_UNKNOWN)


def _describe(link: ByteLink, reason: str) -> None:
    if "(" not in link.description:
        link.description = f"{link.description} ({reason})"


def is_connect(msg: bytes) -> bool:
    return msg[:1] == bytes((CONNECT,))


__all__ = [
    "CONNECT", "DONE", "MAX_ATTEMPTS", "NAT_EIM", "NAT_OPEN", "NAT_SYM", "NAT_UNKNOWN", "SYNC",
    "Offer", "PunchError", "PunchedLink", "Puncher", "dial_from", "is_connect", "judge_nat",
    "session_port", "targets", "why_not",
]
