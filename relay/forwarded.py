"""The client address behind reverse proxies (specs/relay.md, "Behind a reverse proxy").

Only proxies the operator lists (``trusted_proxies``: addresses or networks) may say who the
client is. Each proxy *appends* the address it received the request from to
``X-Forwarded-For``; entries to the left of that can be anything the client wrote. So the
client address is the **rightmost** entry not added by a trusted proxy: walk the list from
the right, skipping trusted addresses, and stop at the first other one. A request whose
socket peer is not trusted is that peer, whatever its headers say. No I/O here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .errors import RelayConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: entries looked at, from the right (a header cannot make the relay walk a long list)
MAX_HOPS = 32


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as proxies write it (``1.2.3.4``, ``2001:db8::1``, ``[2001:db8::1]``,
    ``1.2.3.4:5678``), or None."""
    t = text.strip()
    if t.startswith("[") and "]" in t:
        t = t[1 : t.index("]")]
    elif t.count(":") == 1:  # IPv4 with a port
        t = t.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(t)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class TrustedProxies:
    """``trusted_proxies`` parsed: a comma-separated list of addresses and networks."""

    def __init__(self, spec: str) -> None:
        self.networks: list[Network] = []
        for item in (x.strip() for x in spec.split(",")):
            if not item:
                continue
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise RelayConfigError(
                    f"trusted_proxies: {item[:60]!r} is not an IP address or network "
                    "(e.g. 127.0.0.1, 10.0.0.0/8, ::1)"
                ) from None

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        addr = parse_address(address)
        return addr is not None and any(addr in net for net in self.networks)

    def client_address(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """The address limits apply to, given the socket ``peer`` and the values of every
        ``X-Forwarded-For`` header (in order)."""
        if not self.trusts(peer):
            return peer
        entries = [e for header in forwarded_for for e in header.split(",")][-MAX_HOPS:]
        addr = None
        for entry in reversed(entries):
            addr = parse_address(entry)
            if addr is None:  # a proxy we trust wrote garbage: do not guess
                return peer
            if not any(addr in net for net in self.networks):
                return str(addr)
        # every hop is trusted: the leftmost is where the request started
        return str(addr) if addr is not None else peer
