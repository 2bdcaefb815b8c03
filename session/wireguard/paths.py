"""Which UDP endpoint to give WireGuard for each peer, and which pairs cannot have a UDP
path at all (specs/wireguard.md, section 6.3). Pure: offers, signed endpoints and this
machine's networks in, decisions out.

* :func:`order_candidates`: a peer's endpoints, best first: those in one of this party's
  own networks (the same LAN: no NAT between), then public ones from its run-time offer
  (its NAT's mapping of its WireGuard port, learned over STUN), then the endpoints it
  signed at accept time (as UDP), then the rest; each once, at most
  :data:`MAX_CANDIDATES`. The tunnel tries them in this order and WireGuard's handshake
  tells which one works (a handshake from the peer at another address also wins:
  roaming). In each pair the lower id initiates (:data:`INITIATOR_DELAY` into the wait);
  the higher one gives WireGuard the peer's endpoint only after :data:`RESPONDER_GRACE`
  (:func:`endpoint_choice`), so that two initiations do not cross (WireGuard then loses
  both until its 5 s retry).
* :func:`no_udp_path`: pairs that cannot have a UDP path: one side behind a symmetric NAT
  (another public port per destination) and the other behind any NAT, unless both sit
  behind the same public address (one home: the LAN connects them). Both kinds come from
  the offers; an unknown kind never fails a pair early.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping, Sequence

from didmesh.identity.errors import DidmeshError

from .config import udp_endpoint
from .rendezvous import Offer, parse_udp_endpoint
from .udpmap import NAT_EIM, NAT_SYM

MAX_CANDIDATES = 4
#: seconds on one candidate endpoint before the next (WireGuard re-initiates every 5 s)
TRY_SPAN = 5.5
#: seconds into the handshake wait at which we give WireGuard the first endpoint of a
#: peer we initiate to (the lower id of each pair initiates): the peer, out of the
#: endpoint exchange at about the same time, has its interface up by then
INITIATOR_DELAY = 0.3
#: ... and of a peer that initiates to us, should its handshake not have come by then:
#: two initiations that cross make both handshakes fail until WireGuard's 5 s retry
#: (each side answers the other's and drops the answer to its own), so the answering
#: side waits, between the initiator's first try and its retry
RESPONDER_GRACE = 2.5
#: address blocks behind NATs (RFC 1918, RFC 6598, RFC 4193, link-local, loopback); any
#: other address counts as public (documentation ranges too: the lab uses them)
INTERNAL = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128"))
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _host(endpoint: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(parse_udp_endpoint(endpoint)[0])
    except ValueError:
        return None


def is_public(h: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not any(h.version == n.version and h in n for n in INTERNAL)


def order_candidates(offer: Offer | None, signed: Sequence[str],
                     networks: Sequence[Network]) -> list[str]:
    """A peer's UDP endpoints (``host:port``), best first (module docstring)."""
    offered = list(offer.udp) if offer is not None else []
    announced = []
    for e in signed:
        with contextlib.suppress(DidmeshError):  # a malformed signed endpoint is skipped
            announced.append(udp_endpoint(e))
    everything = offered + announced

    def lan(e: str) -> bool:
        h = _host(e)
        return h is not None and any(h.version == n.version and h in n for n in networks)

    def public(e: str) -> bool:
        h = _host(e)
        return h is not None and is_public(h)

    out: list[str] = []
    for pick in ([e for e in everything if lan(e)], [e for e in offered if public(e)],
                 announced, offered):
        for e in pick:
            h = _host(e)
            if e not in out and h is not None and not h.is_loopback:
                out.append(e)
    return out[:MAX_CANDIDATES]


def endpoint_choice(elapsed: float, n: int, deferred: bool) -> int | None:
    """Which of ``n`` candidates WireGuard should use ``elapsed`` seconds into the
    handshake wait (None: none yet): from :data:`INITIATOR_DELAY` (for a ``deferred``
    peer, one that initiates to us: :data:`RESPONDER_GRACE`) the first, then the next
    every :data:`TRY_SPAN` seconds, round after round."""
    start = RESPONDER_GRACE if deferred else INITIATOR_DELAY
    if n == 0 or elapsed < start:
        return None
    return int((elapsed - start) // TRY_SPAN) % n


def _publics(offer: Offer) -> set[str]:
    return {str(h) for e in offer.udp if (h := _host(e)) is not None and is_public(h)}


def no_udp_path(offers: Mapping[int, Offer]) -> list[tuple[int, int, str]]:
    """``(lo, hi, why)`` for every pair whose offers say no UDP path can exist."""
    out = []
    ids = sorted(offers)
    natted = (NAT_EIM, NAT_SYM)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            ka, kb = offers[a].nat, offers[b].nat
            if NAT_SYM not in (ka, kb) or ka not in natted or kb not in natted:
                continue
            if _publics(offers[a]) & _publics(offers[b]):
                continue  # one home: the LAN connects them
            syms = " and ".join(f"party {p}" for p, k in ((a, ka), (b, kb)) if k == NAT_SYM)
            out.append((a, b, f"symmetric NAT at {syms}"))
    return out
