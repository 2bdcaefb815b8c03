"""Tunnel addresses (specs/wireguard.md, section 4): deterministic, per party id, from the
roster hash, so every party computes every other party's address on its own.

::

    d      = SHA-256("didmesh/wireguard/addresses/v1" || 0x00 || roster_hash)
    IPv6   fd || d[0:5] || 0000 :: /64            (RFC 4193 ULA, 40-bit global id from d)
           party i = prefix + (i + 1)             (interface id i+1; ::0 is the anycast)
    IPv4   100.64.0.0/10 (RFC 6598), split into 4096 /22s; the session's is number
           uint16_be(d[5:7]) mod 4096; party i = network + (i + 1)

Within one session the addresses never collide (the party id is added to a common
prefix). Two *different* sessions on one host share an IPv4 /22 with probability 1/4096
(their IPv6 /64s with 2^-40); use ``--ipv6`` for MPyC when running many sessions at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from .errors import WgUsageError

ADDRESS_LABEL = b"didmesh/wireguard/addresses/v1\0"
IPV4_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
IPV4_PREFIX = 22
IPV6_PREFIX = 64
#: party ids 0..MAX_PARTY_ID get an IPv4 address inside the session's /22 (not its last)
MAX_PARTY_ID = 2 ** (32 - IPV4_PREFIX) - 3


@dataclass(frozen=True)
class TunnelAddresses:
    party_id: int
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address

    def allowed_ips(self) -> tuple[str, str]:
        """``("a.b.c.d/32", "fd…/128")``: what a peer may send from through the tunnel."""
        return (f"{self.ipv4}/32", f"{self.ipv6}/128")


def _digest(roster_hash: bytes) -> bytes:
    if len(roster_hash) != 32:
        raise WgUsageError(f"a roster hash is 32 bytes, got {len(roster_hash)}")
    return hashlib.sha256(ADDRESS_LABEL + roster_hash).digest()


def session_networks(
    roster_hash: bytes,
) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    """The session's IPv4 /22 and IPv6 /64."""
    d = _digest(roster_hash)
    index = int.from_bytes(d[5:7], "big") % 2 ** (IPV4_PREFIX - IPV4_SPACE.prefixlen)
    base4 = int(IPV4_SPACE.network_address) + (index << (32 - IPV4_PREFIX))
    v4 = ipaddress.IPv4Network((base4, IPV4_PREFIX))
    v6 = ipaddress.IPv6Network((int.from_bytes(b"\xfd" + d[0:5] + bytes(10), "big"), IPV6_PREFIX))
    return v4, v6


def tunnel_addresses(roster_hash: bytes, party_id: int) -> TunnelAddresses:
    """Party ``party_id``'s tunnel addresses in the session with this roster hash."""
    if not 0 <= party_id <= MAX_PARTY_ID:
        raise WgUsageError(
            f"party id {party_id} is outside 0..{MAX_PARTY_ID}, the ids a /{IPV4_PREFIX} holds"
        )
    v4, v6 = session_networks(roster_hash)
    return TunnelAddresses(
        party_id,
        ipaddress.IPv4Address(int(v4.network_address) + party_id + 1),
        ipaddress.IPv6Address(int(v6.network_address) + party_id + 1),
    )
