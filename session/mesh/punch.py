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
3. attempt 1 needs no SYNC: the responder dials as soon as it has answered CONNECT, the
   initiator as soon as that answer arrives (half a relay round trip later); both
   connect *from their session port* (``SO_REUSEADDR``/``SO_REUSEPORT``) to the other's
   observed address. The responder's early SYN opens its own NAT's mapping (the
   initiator's NAT drops it silently; with no NAT, the initiator's listener hands it to
   the punch, expected from the moment CONNECT left), and the initiator's SYN then finds
   that mapping open: TCP simultaneous open. A retry (attempts 2 and 3): the initiator
   sends SYNC and dials ``RTT/2`` later, the responder dials when SYNC arrives;
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

This module is the sans-IO part: the message codec, the NAT judgement, the choice of
targets, the reasons and the bound on SYNC-triggered dials (:class:`SyncGate`, time
injected). :mod:`.puncher` is the asyncio adapter a :class:`~.connect.MeshConnector` uses.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from didmesh.identity.errors import DidmeshError
from didmesh.identity.strict_json import loads_strict

from .endpoints import (
    MAX_TARGETS,
    dialable,
    format_endpoint,
    host_of,
    looks_nated,
    parse_endpoint,
    session_port,
    signed_targets,
)
from .errors import HandshakeFailed

CONNECT: Final = 0x30  # {"addrs": [endpoint...], "nat": NAT_*}
SYNC: Final = 0x31  # u8 attempt number: dial now (attempts 2 and 3; attempt 1 needs none)
DONE: Final = 0x32  # utf-8 reason: punching is over, SELECT on the relayed link follows
MAX_ATTEMPTS: Final = 3
MAX_MESSAGE: Final = 2048
RESYN_INTERVAL: Final = 0.25
MIN_SYNC_INTERVAL: Final = 0.2
#: one attempt's window: the base (a SYN retransmission fits in it) plus two RTTs
WINDOW_BASE: Final = 2.0
WINDOW_MAX: Final = 6.0
#: an early punch (before any coordination, from the signed endpoints alone) dials for at
#: most this long; its SYN_SENT socket waits for the peer's SYN (the kernel retransmits its
#: own), a refused connect is re-sent at most every RESYN_INTERVAL
EARLY_WINDOW: Final = 6.0
#: direct attempts alone before the relayed link (and with it the punch) starts, for a peer
#: in another home: none, the two race (a direct connect there only succeeds to a public
#: peer, and whichever path completes its handshake first wins)
PUNCH_GRACE: Final = 0.0

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
        doc = loads_strict(msg[1:], max_bytes=MAX_MESSAGE, error=PunchError,
                           what="a punch CONNECT message")
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
    same_host = [e for e in signed if host_of(e) == addr]
    if same_host:  # the address we announced, a port that moved: per-connection mapping
        return NAT_SYM, ()
    return NAT_UNKNOWN, ()


def targets(offer: Offer, signed: Sequence[str]) -> list[tuple[str, int]]:
    """Where to dial the peer: its offered addresses that it also signed, loopback left out."""
    return dialable(offer.addrs, signed)


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
    """The responder's bound on dials a peer can trigger: at most ``max_attempts`` dials
    (attempt 1, on CONNECT, then SYNCs), none sooner than ``min_interval`` seconds after
    the previous one (time injected: ``admit(now)``)."""

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


def is_connect(msg: bytes) -> bool:
    return msg[:1] == bytes((CONNECT,))


__all__ = [
    "CONNECT", "DONE", "EARLY_WINDOW", "MAX_ATTEMPTS", "MAX_TARGETS", "NAT_EIM", "NAT_OPEN",
    "NAT_SYM", "NAT_UNKNOWN", "PUNCH_GRACE", "SYNC", "Offer", "PunchError", "SyncGate",
    "host_of", "is_connect", "judge_nat", "looks_nated", "session_port", "signed_targets",
    "targets", "why_not", "window",
]
