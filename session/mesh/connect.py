"""Bringing up the mesh: per-pair path selection, hello, handshake (specs/mesh.md, "Paths").

For each pair the party with the lower id is the initiator. It opens a byte link —
directly over TCP to an endpoint the roster announces for the peer, or through a
forwarding link on one of the session's relays — and writes a cleartext *hello*
(:data:`HELLO_LEN` bytes: ``b"DMSH" || version 1 || tag || u32 initiator || u32
responder`` with ``tag = BLAKE2s("didmesh/mesh/hello" || roster_hash)[:16]``) so that a
listener serving several peers knows which roster entry to use, then the Noise KK
handshake (:class:`~.channel.MeshHandshake`). The hello is only a hint: the prologue
binds the roster hash and both ids, so a wrong claim fails the handshake. A responder
that rejects a hello or a handshake writes ``b"DMSX" || code`` (an unauthenticated
diagnostic) and closes.

Path choice (automatic unless ``direct_only``/``relay_only``): direct attempts start at
once and are retried (a peer may not listen yet) until the deadline; a relayed attempt
starts after ``direct_grace`` seconds without success (at once with ``relay_only``).
Whichever completes its handshake first wins: the initiator commits by sending SELECT
as the channel's first message and drops the other attempt; the responder takes the
path on which SELECT arrives. A handshake that fails on a link this party opened (or on a
relayed link, whose ends the relay authenticated) ends attempts on that kind of path;
when no kind is left the pair fails at once. An *inbound* direct connection proves
nothing until its handshake completes — anybody can connect and claim an id — so one
that fails is only dropped and its reason remembered: the listener keeps waiting for the
real peer until the deadline, and the pair's final error quotes the last reason. At most
``inbound_limit`` inbound connections may be handshaking at once (a new one evicts the
oldest) and each has ``handshake_timeout`` seconds. Every wait is bounded.

A relayed pair may then be upgraded before SELECT: the initiator's first channel message
is a hole-punch CONNECT instead (:mod:`.punch`, specs/mesh.md section 6.1), and the pair
ends on a punched TCP link or, with the reason in its description, on the relayed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey

from .channel import MeshHandshake, SecureChannel
from .errors import HandshakeFailed
from .faults import ConnectFailed, PathUnavailable
from .peer import SELECT, PeerChannel
from .plan import MeshPlan, parse_endpoint
from .punch import is_connect
from .puncher import Puncher, next_message
from .transport import ByteLink, RelayedLink, TcpLink, open_tcp, serve_tcp

HELLO_MAGIC: Final = b"DMSH"
HELLO_VERSION: Final = 1
HELLO_LEN: Final = 4 + 1 + 16 + 4 + 4
REJECT_MAGIC: Final = b"DMSX"
REJECT_ROSTER: Final = b"R"  # hello tag differs: another roster
REJECT_PARTY: Final = b"P"  # ids not in the roster / not us
REJECT_AUTH: Final = b"A"  # handshake did not authenticate
_REJECT_TEXT: Final = {
    REJECT_ROSTER: "its roster hash differs from ours (it agreed another roster)",
    REJECT_PARTY: "it does not accept our party ids (another roster or a stale endpoint)",
    REJECT_AUTH: "our handshake did not authenticate at its end: altered in transit, or it "
    "holds another roster or key for us",
}

#: ``(relay_url, peer_did) -> link`` with ``send``/``recv``/``close`` coroutines.
RelayOpener = Callable[[str, str], Awaitable[Any]]


def reason_of(exc: BaseException) -> str:
    """A failure's reason for a message, never empty (``str(TimeoutError())`` is ``""``)."""
    text = getattr(exc, "message", None) or str(exc)
    if text:
        return str(text)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionError | EOFError):
        return f"the connection closed ({type(exc).__name__})"
    return type(exc).__name__


def hello_tag(roster_hash: bytes) -> bytes:
    return hashlib.blake2s(b"didmesh/mesh/hello" + roster_hash).digest()[:16]


def encode_hello(roster_hash: bytes, initiator: int, responder: int) -> bytes:
    return (
        HELLO_MAGIC + bytes((HELLO_VERSION,)) + hello_tag(roster_hash)
        + struct.pack(">II", initiator, responder)
    )


class _Rejected(Exception):
    """Responder side: a hello or handshake from ``claimed`` (if known) was refused."""

    def __init__(self, claimed: int | None, error: HandshakeFailed) -> None:
        super().__init__(error.message)
        self.claimed = claimed
        self.error = error


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

    def __post_init__(self) -> None:
        if self.direct_only and self.relay_only:
            raise PathUnavailable("--direct-only and --relay-only exclude each other")
        if self.inbound_limit < 1:
            raise PathUnavailable(f"inbound_limit must be at least 1, not {self.inbound_limit}")
        if self.link_heartbeat is not None and not self.link_heartbeat > 0:
            raise PathUnavailable(
                f"link_heartbeat must be positive seconds or None, not {self.link_heartbeat!r}"
            )


@dataclass
class _PairState:
    peer_id: int
    future: asyncio.Future[tuple[ByteLink, SecureChannel]]
    kinds_left: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    #: why the last inbound direct connection claiming this peer failed (unauthenticated)
    inbound_failure: str | None = None


@dataclass
class InboundStats:
    """Inbound direct connections of one :class:`MeshConnector` (observability, tests)."""

    pending: int = 0  # in hello/handshake now
    peak: int = 0  # most ever pending at once (at most ``inbound_limit``)
    accepted: int = 0  # completed the handshake (and SELECT)
    failed: int = 0  # dropped: bad hello or handshake, timeout, closed, evicted
    evicted: int = 0  # of those, dropped to make room for a newer connection


@dataclass
class _Attempt:
    """Responder side: what an inbound connection has claimed so far."""

    claimed: int | None = None
    #: on a relayed link, whether a punch CONNECT may come instead of SELECT
    punch: bool = False
    #: on a relayed link: the initiator's first channel message, if it is a punch CONNECT
    first: bytes = b""


async def _read_exact(link: ByteLink, n: int, buf: bytearray, deadline: float) -> bytes:
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        data = await link.read_some(remaining)
        if not data:
            raise ConnectionError("the connection closed")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


async def _run_handshake(
    link: ByteLink, hs: MeshHandshake, first: bytes, deadline: float, buf: bytearray
) -> SecureChannel:
    out = hs.step(bytes(buf)) if buf else b""
    buf.clear()
    if first or out:
        link.write(first + out)
    while not hs.complete:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        data = await link.read_some(remaining)
        if not data:
            raise ConnectionError("the connection closed during the handshake")
        if data.startswith(REJECT_MAGIC):
            code = data[4:5]
            raise HandshakeFailed(
                f"it rejected the handshake: {_REJECT_TEXT.get(code, 'no reason given')}",
                reason="rejected",
            )
        out = hs.step(data)
        if out:
            link.write(out)
    return hs.into_channel()


class MeshConnector:
    """Connects this party to all its peers; :meth:`connect_all` returns the channels."""

    def __init__(
        self,
        plan: MeshPlan,
        identity: IdentityKey | None,
        options: ConnectOptions,
        *,
        relay_opener: RelayOpener | None = None,
    ) -> None:
        self.plan = plan
        self.identity = identity
        self.options = options
        self.relay_opener = relay_opener
        self._pairs: dict[int, _PairState] = {}
        self._servers: list[asyncio.Server] = []
        #: inbound direct links still in hello/handshake, oldest first
        self._inbound: dict[TcpLink, None] = {}
        self._evicted: set[TcpLink] = set()
        #: the last failure of an inbound connection that claimed no pair of ours
        self._anonymous_failure: str | None = None
        self.inbound = InboundStats()
        if options.relay_only and not plan.relays:
            raise PathUnavailable("--relay-only, but the session names no relay")
        if plan.relays and relay_opener is None and identity is not None:
            self.relay_opener = default_relay_opener(plan, identity, options)
        #: hole punching over relayed links (specs/mesh.md, "Punched paths")
        self.puncher: Puncher | None = None
        if not options.relay_only and not options.direct_only and plan.relays:
            from .candidates import interface_addresses

            self.puncher = Puncher(
                self, getattr(self.relay_opener, "observe", None), plan.relays,
                lambda: [a for _, a in interface_addresses()])

    # ------------------------------------------------------------------ kinds

    def _kinds(self, peer_id: int) -> set[str]:
        kinds = set()
        o = self.options
        lo = min(peer_id, self.plan.my_party_id)
        hi = max(peer_id, self.plan.my_party_id)
        # the responder (hi) must announce an endpoint for a direct path
        if not o.relay_only and self.plan.party(hi).endpoints:
            kinds.add("direct")
        if not o.direct_only and self.plan.relays and self.relay_opener is not None:
            kinds.add("relay")
        del lo
        return kinds

    def _path_failed(self, st: _PairState, kind: str, why: str) -> None:
        st.errors.append(f"{kind}: {why}")
        st.kinds_left.discard(kind)
        if not st.kinds_left and not st.future.done():
            st.future.set_exception(self._pair_error(st))

    def _pair_error(self, st: _PairState) -> ConnectFailed:
        detail = "; ".join(st.errors[-3:]) or "no path is available"
        return ConnectFailed(
            f"cannot connect {self.plan.describe_pair(self.plan.my_party_id, st.peer_id)}: "
            f"{detail}",
            party=st.peer_id,
        )

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
            st = _PairState(p.party_id, fut, set(kinds))
            self._pairs[p.party_id] = st
            if not kinds:
                fut.set_exception(self._pair_error(st))
        lower = [p.party_id for p in plan.peers() if p.party_id < plan.my_party_id]
        if lower and not self.options.relay_only and plan.me.endpoints:
            await self._listen()
        if self.puncher is not None:
            self.puncher.started = start
            if any(self.puncher.other_home(pid) for pid, st in self._pairs.items()
                   if "relay" in st.kinds_left):
                # ask the relay where the session port is seen from (and get its token)
                # now, while the links come up: the punch needs the answer soonest
                self.puncher.start_observing()
        tasks = []
        for st in self._pairs.values():
            if st.future.done():
                continue
            tasks.append(loop.create_task(self._pair(st, deadline)))
        try:
            results: dict[int, PeerChannel] = {}
            for pid, st in self._pairs.items():
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    link, ch = await asyncio.wait_for(asyncio.shield(st.future), remaining)
                except TimeoutError:
                    note = self._inbound_note(st)
                    if note is not None:
                        st.errors.append(
                            f"direct: no valid handshake before the deadline; last attempt {note}"
                        )
                    st.errors.append(f"no path completed within {self.options.connect_timeout:g} s")
                    raise self._pair_error(st) from None
                results[pid] = PeerChannel(pid, plan.describe(pid), link, ch)
            return results
        except BaseException:
            for st in self._pairs.values():
                if st.future.done() and not st.future.cancelled() and not st.future.exception():
                    st.future.result()[0].abort()
            raise
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.close_listeners()
            if self.puncher is not None:
                self.puncher.close()
            for st in self._pairs.values():
                if not st.future.done():
                    st.future.cancel()
                elif not st.future.cancelled():
                    st.future.exception()  # mark retrieved

    def close_listeners(self) -> None:
        """Stop listening and drop inbound connections still handshaking."""
        for s in self._servers:
            s.close()
        self._servers.clear()
        for link in list(self._inbound):
            link.abort()

    # ------------------------------------------------------------------ per pair

    async def _pair(self, st: _PairState, deadline: float) -> None:
        initiator = self.plan.my_party_id < st.peer_id
        attempts: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        try:
            if "direct" in st.kinds_left and initiator:
                attempts.append(loop.create_task(self._direct_initiator(st, deadline)))
            if "relay" in st.kinds_left:
                grace = 0.0 if (self.options.relay_only or "direct" not in st.kinds_left) \
                    else self.options.direct_grace
                if grace and self.puncher is not None:  # another home: punch sooner
                    grace = self.puncher.relay_grace(st.peer_id, grace)
                attempts.append(loop.create_task(self._relay(st, deadline, grace, initiator)))
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(st.future), deadline - time.monotonic())
        finally:
            for a in attempts:
                a.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)

    def _won(self, st: _PairState, link: ByteLink, ch: SecureChannel, initiator: bool) -> None:
        if st.future.done():
            link.abort()
            return
        if initiator:
            link.write(ch.send(bytes((SELECT,))))
        st.future.set_result((link, ch))

    async def _direct_initiator(self, st: _PairState, deadline: float) -> None:
        plan = self.plan
        endpoints = [parse_endpoint(e) for e in plan.party(st.peer_id).endpoints]
        delay = 0.02
        last = "no endpoint"
        while not st.future.done() and time.monotonic() < deadline:
            for host, port in endpoints:
                try:
                    link = await open_tcp(host, port, min(self.options.tcp_timeout,
                                                          max(0.01, deadline - time.monotonic())))
                except (OSError, TimeoutError) as exc:
                    last = f"{host}:{port}: {reason_of(exc)}"
                    continue
                try:
                    ch = await self._initiate(link, st.peer_id, deadline)
                except HandshakeFailed as exc:
                    link.abort()
                    self._path_failed(st, "direct", f"{link.description}: {exc.message}")
                    return
                except (OSError, ConnectionError, TimeoutError, DidmeshError) as exc:
                    link.abort()
                    last = f"{link.description}: {reason_of(exc)}"
                    continue
                self._won(st, link, ch, True)
                return
            if last not in st.errors[-1:]:
                st.errors.append(f"direct: {last}")
                del st.errors[:-4]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)  # as MPyC retries: a late peer costs <= 0.1 s

    async def _initiate(self, link: ByteLink, peer_id: int, deadline: float) -> SecureChannel:
        plan = self.plan
        hs = MeshHandshake.for_parties(
            local_id=plan.my_party_id,
            remote_id=peer_id,
            local_static_private=plan.my_static_private,
            remote_static_public=plan.party(peer_id).static_public,
            roster_hash=plan.roster_hash,
        )
        hd = min(deadline, time.monotonic() + self.options.handshake_timeout)
        first = encode_hello(plan.roster_hash, plan.my_party_id, peer_id) + hs.step()
        return await _run_handshake(link, hs, first, hd, bytearray())

    async def _respond(self, link: ByteLink, deadline: float, expect: int | None,
                       attempt: _Attempt | None = None) -> tuple[int, SecureChannel]:
        """Read a hello, run the responder handshake, wait for SELECT.

        ``attempt.claimed`` is set to the initiator id the hello claims, once read."""
        plan = self.plan
        buf = bytearray()
        hd = min(deadline, time.monotonic() + self.options.handshake_timeout)
        hello = await _read_exact(link, HELLO_LEN, buf, hd)
        if hello[:4] != HELLO_MAGIC or hello[4] != HELLO_VERSION:
            link.write(REJECT_MAGIC + REJECT_PARTY)
            raise _Rejected(None, HandshakeFailed(
                "a connection did not start with a didmesh hello", reason="malformed"))
        ini, resp = struct.unpack(">II", hello[21:29])
        if attempt is not None and resp == plan.my_party_id:
            attempt.claimed = ini
        if hello[5:21] != hello_tag(plan.roster_hash):
            link.write(REJECT_MAGIC + REJECT_ROSTER)
            who = plan.describe(ini) if ini < plan.m else f"a party claiming id {ini}"
            raise _Rejected(ini, HandshakeFailed(
                f"{who} uses another roster (its roster hash differs from ours)",
                reason="roster",
            ))
        if resp != plan.my_party_id or not ini < resp or (expect is not None and ini != expect):
            link.write(REJECT_MAGIC + REJECT_PARTY)
            raise _Rejected(None, HandshakeFailed(
                f"hello names parties {ini} -> {resp}, not a pair of ours", reason="party"))
        hs = MeshHandshake.for_parties(
            local_id=plan.my_party_id,
            remote_id=ini,
            local_static_private=plan.my_static_private,
            remote_static_public=plan.party(ini).static_public,
            roster_hash=plan.roster_hash,
        )
        try:
            ch = await _run_handshake(link, hs, b"", hd, buf)
        except HandshakeFailed as exc:
            link.write(REJECT_MAGIC + REJECT_AUTH)
            raise _Rejected(ini, HandshakeFailed(
                f"{plan.describe(ini)}: {exc.message}", reason=exc.reason
            )) from None
        msg = await next_message(
            link, ch, hd, closed="the connection closed before the path was selected")
        if attempt is not None and attempt.punch and is_connect(msg):
            attempt.first = msg  # the initiator would punch a hole: the caller goes on
            return ini, ch
        if msg != bytes((SELECT,)):
            raise _Rejected(ini, HandshakeFailed(
                f"{plan.describe(ini)} did not select the path", reason="malformed"))
        return ini, ch

    async def _listen(self) -> None:
        by_port: dict[int, list[str]] = {}
        for e in self.plan.me.endpoints:
            host, port = parse_endpoint(e)
            by_port.setdefault(port, []).append(e)
        for port, same in by_port.items():
            e = same[0]
            # gathered candidates share one port: listen on it on every interface, once
            host = parse_endpoint(e)[0] if len(same) == 1 else ""
            try:
                self._servers.append(await serve_tcp(host, port, self._on_direct))
            except OSError:
                try:  # an announced (e.g. NATed) address may not be local: listen on all
                    self._servers.append(await serve_tcp("", port, self._on_direct))
                except OSError as exc:
                    raise PathUnavailable(
                        f"cannot listen on {e} ({exc}); free the port or announce another"
                    ) from exc

    async def _on_direct(self, link: TcpLink) -> None:
        """One inbound direct connection. It is unauthenticated until its handshake
        completes, so a failure only drops it (the pair keeps waiting for its peer)."""
        if self.puncher is not None and self.puncher.claim(link):
            return  # the peer's half of a hole punch, taken over by the puncher
        self._admit(link)
        deadline = time.monotonic() + self.options.handshake_timeout
        attempt = _Attempt()
        try:
            ini, ch = await self._respond(link, deadline, None, attempt)
        except _Rejected as rej:
            link.close()
            self._inbound_failed(link, attempt.claimed, rej.error.message)
            return
        except (OSError, ConnectionError, TimeoutError, DidmeshError) as exc:
            link.abort()
            if link in self._evicted:
                why = (f"dropped: more than {self.options.inbound_limit} connections were "
                       "in their handshake at once")
            elif isinstance(exc, TimeoutError):
                why = (f"no complete handshake within {self.options.handshake_timeout:g} s "
                       "(or the deadline)")
            else:
                why = reason_of(exc)
            self._inbound_failed(link, attempt.claimed, why)
            return
        finally:
            self._inbound.pop(link, None)
            self._evicted.discard(link)
            self.inbound.pending = len(self._inbound)
        self.inbound.accepted += 1
        st = self._pairs.get(ini)
        if st is None:
            link.abort()
            return
        self._won(st, link, ch, False)

    def _admit(self, link: TcpLink) -> None:
        """Track ``link`` as handshaking; evict the oldest beyond ``inbound_limit``."""
        while len(self._inbound) >= self.options.inbound_limit:
            oldest = next(iter(self._inbound))
            del self._inbound[oldest]
            self._evicted.add(oldest)
            self.inbound.evicted += 1
            oldest.abort()  # its handler sees the connection end and records why
        self._inbound[link] = None
        self.inbound.pending = len(self._inbound)
        self.inbound.peak = max(self.inbound.peak, self.inbound.pending)

    def _inbound_failed(self, link: TcpLink, claimed: int | None, why: str) -> None:
        """Remember why an inbound connection failed, for the pair it claimed if any."""
        self.inbound.failed += 1
        st = self._pairs.get(claimed) if claimed is not None else None
        note = f"from {link.description} (unauthenticated) failed: {why}"
        if st is not None and st.peer_id < self.plan.my_party_id:
            st.inbound_failure = note
        else:
            self._anonymous_failure = note

    def _inbound_note(self, st: _PairState) -> str | None:
        """For a pair whose peer would connect to us directly: the last inbound failure."""
        if st.peer_id > self.plan.my_party_id or not self._listening_for(st):
            return None
        return st.inbound_failure or self._anonymous_failure

    def _listening_for(self, st: _PairState) -> bool:
        return "direct" in st.kinds_left and bool(self.plan.me.endpoints)

    async def _relay(self, st: _PairState, deadline: float, grace: float, initiator: bool
                     ) -> None:
        if grace:
            await asyncio.sleep(grace)
        assert self.relay_opener is not None
        peer_did = self.plan.party(st.peer_id).did
        errors = []
        for url in self.plan.relays:
            if st.future.done() or time.monotonic() >= deadline:
                return
            try:
                raw = await asyncio.wait_for(self.relay_opener(url, peer_did),
                                             max(0.01, deadline - time.monotonic()))
            except (OSError, TimeoutError, DidmeshError) as exc:
                errors.append(f"{url}: {reason_of(exc)}")
                continue
            link: ByteLink = RelayedLink(raw, f"relay {url}")
            punch = self.puncher
            if punch is not None:
                punch.start_observing()
            try:
                if initiator:
                    ch = await self._initiate(link, st.peer_id, deadline)
                    if punch is not None:
                        link, ch = await punch.as_initiator(st.peer_id, link, ch, deadline)
                else:
                    attempt = _Attempt(punch=punch is not None)
                    _, ch = await self._respond(link, deadline, st.peer_id, attempt)
                    if attempt.first and punch is not None:
                        link, ch = await punch.as_responder(st.peer_id, link, ch,
                                                            attempt.first, deadline)
                    elif punch is not None:
                        punch.describe_plain(st.peer_id, link)
            except (HandshakeFailed, _Rejected) as exc:
                if isinstance(exc, _Rejected):
                    link.close()  # after our diagnostic: the initiator learns why
                else:
                    link.abort()
                err = exc.error if isinstance(exc, _Rejected) else exc
                self._path_failed(st, "relay", f"{url}: {err.message}")
                return
            except (OSError, ConnectionError, TimeoutError, DidmeshError) as exc:
                link.abort()
                errors.append(f"{url}: {reason_of(exc)}")
                continue
            self._won(st, link, ch, initiator)
            return
        self._path_failed(st, "relay", "; ".join(errors) or "no relay")


class RelayLinks:
    """Opens relayed links, one client per relay: :class:`didmesh.relay.linkclient.LinkClient`
    (asyncio streams) unless ``link_heartbeat`` asks for client pings, then
    :class:`didmesh.relay.client.RelayClient` (aiohttp)."""

    def __init__(self, plan: MeshPlan, identity: IdentityKey, options: ConnectOptions) -> None:
        self.plan = plan
        self.identity = identity
        self.options = options
        self._clients: dict[str, Any] = {}

    async def __call__(self, url: str, peer_did: str) -> Any:
        client = self._client(url)
        if self.options.link_heartbeat is None:
            return await client.open_link(
                self.plan.session_id, peer_did, timeout=self.options.connect_timeout)
        return await client.open_link(
            self.plan.session_id, peer_did, timeout=self.options.connect_timeout,
            heartbeat=self.options.link_heartbeat,
        )

    def _client(self, url: str) -> Any:
        client = self._clients.get(url)
        if client is not None:
            return client
        if self.options.link_heartbeat is None:
            # no pings of our own: the asyncio link client, which spares every relayed
            # party the import of aiohttp (about 0.25 s of CPU)
            from didmesh.relay.linkclient import LinkClient

            client = LinkClient(url, self.identity, timeout=self.options.handshake_timeout)
        else:
            from didmesh.relay.client import RelayClient

            client = RelayClient(url, self.identity, timeout=self.options.handshake_timeout,
                                 heartbeat=self.options.link_heartbeat)
        self._clients[url] = client
        return client

    async def observe(self, url: str, local_port: int) -> tuple[str, int | None]:
        """Our address and ``local_port``'s port as the relay at ``url`` sees them now."""
        seen = await self._client(url).observed(local_port=local_port)
        return seen.address, seen.port

    async def aclose(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5.0)
        self._clients.clear()


def default_relay_opener(
    plan: MeshPlan, identity: IdentityKey, options: ConnectOptions
) -> RelayLinks | None:
    """Links through the relay client, if this installation has it (not imported here:
    it brings in aiohttp, which a run whose pairs all connect directly never needs)."""
    import importlib.util

    try:
        if importlib.util.find_spec("didmesh.relay.client") is None:
            return None
    except (ImportError, ValueError):
        return None
    return RelayLinks(plan, identity, options)
