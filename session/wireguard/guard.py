"""The inbound MPyC connection check over the tunnel (specs/wireguard.md, "Party ids").

WireGuard's cryptokey routing lets a packet in only if its source address is one of the
sending peer's AllowedIPs, and each peer's AllowedIPs are exactly its two tunnel addresses,
derived from its party id (:mod:`.addresses`) and bound to its roster key. MPyC's client
announces its party id in the first two bytes of the connection (little-endian), in
clear. :class:`InboundGuard` holds the connection until those two bytes arrived and
admits it only if

* the announced id is a party this one serves (lower ids connect to higher ones),
* the connection comes from that party's tunnel address, and
* that party is not connected already.

So an MPyC party id is bound to the DID whose key the tunnel authenticated, as the Noise
prologue binds it on the default transport. A refusal names the claimed party and the
party whose address the connection came from. :func:`check_inbound` is the pure rule;
:class:`GuardProtocol` the asyncio adapter that holds the bytes and hands the connection
over.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

from didmesh.session.mesh.faults import PeerMisbehaved
from didmesh.session.mesh.plan import MeshPlan

from .addresses import tunnel_addresses

HELLO_LEN = 2


class InboundRefused(PeerMisbehaved):
    """An inbound MPyC connection over the tunnel announced a party id that its source
    address does not belong to."""

    code = "wireguard_inbound_refused"


class InboundGuard:
    """Who may connect to this party's MPyC port, and who did (sans-IO)."""

    def __init__(self, plan: MeshPlan) -> None:
        self.plan = plan
        self._by_address = {
            tunnel_addresses(plan.roster_hash, p.party_id).ipv4: p.party_id
            for p in plan.parties
        }
        self.admitted: set[int] = set()

    def party_at(self, source: str) -> int | None:
        """The party whose tunnel address ``source`` is (None: no party's)."""
        try:
            addr = ipaddress.ip_address(source.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return self._by_address.get(addr) if isinstance(addr, ipaddress.IPv4Address) \
            else None

    def check_inbound(self, source: str, hello: bytes) -> int:
        """The admitted party id, or :class:`InboundRefused` naming who claimed what."""
        plan = self.plan
        claimed = int.from_bytes(hello[:HELLO_LEN], "little")
        actual = self.party_at(source)
        came = plan.describe(actual) if actual is not None else "an address of no party"
        if actual != claimed:
            expected = (tunnel_addresses(plan.roster_hash, claimed).ipv4
                        if 0 <= claimed < plan.m else None)
            raise InboundRefused(
                f"refused an MPyC connection from {source} ({came}) that announced party id "
                f"{claimed}" + (f", whose tunnel address is {expected}" if expected else
                                " (not in the roster)"),
                party=actual,
            )
        if not claimed < plan.my_party_id:
            raise InboundRefused(
                f"refused an MPyC connection from {came}: party {claimed} does not connect "
                f"to party {plan.my_party_id} (the lower id connects)", party=actual)
        if claimed in self.admitted:
            raise InboundRefused(f"refused a second MPyC connection from {came}",
                                 party=actual)
        self.admitted.add(claimed)
        return claimed


class GuardProtocol(asyncio.Protocol):
    """Holds an inbound connection until its hello is checked, then hands the transport
    to ``make(pid)``'s protocol with the bytes received so far. A refused connection is
    closed and reported to ``on_refused``."""

    def __init__(self, guard: InboundGuard, make: Callable[[int], asyncio.Protocol],
                 on_refused: Callable[[InboundRefused], None]) -> None:
        self.guard = guard
        self.make = make
        self.on_refused = on_refused
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.source = "?"

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if peer else "?"

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) < HELLO_LEN or self.transport is None:
            return
        transport, self.transport = self.transport, None
        try:
            pid = self.guard.check_inbound(self.source, bytes(self.buf[:HELLO_LEN]))
        except InboundRefused as exc:
            transport.abort()
            self.on_refused(exc)
            return
        proto = self.make(pid)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(bytes(self.buf))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
