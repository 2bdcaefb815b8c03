"""The nftables ruleset of a lab's home router (rendered as text; applied with ``nft -f -``).

Both kinds masquerade what leaves by ``wan`` and keep a home-router firewall: from the
WAN only replies of connections the LAN opened get in (conntrack's address-and-port
dependent filtering); anything unsolicited is dropped silently, as real home routers do
(no RST: a peer's early SYN during a simultaneous open must not kill the attempt).
Traffic inside the LAN is always let through (where ``br_netfilter`` makes bridged
packets cross the IP hooks, it would otherwise meet the forward policy).

- ``eim``: plain ``masquerade``. Linux keeps the source port when it is free, and a
  second destination from the same socket gets the same public port: endpoint-independent
  mapping, as most home routers.
- ``sym``: ``masquerade fully-random``: every new connection (each destination) gets a
  random public port: address-and-port-dependent ("symmetric") mapping.
"""

from __future__ import annotations

from .netns import LabError
from .topology import EIM, SYMMETRIC

TABLE = "didmesh_lab"
WAN, LAN = "wan", "lan"


def ruleset(kind: str, lan: str) -> str:
    """The ruleset of a home of ``kind`` whose LAN is ``lan`` (a CIDR)."""
    if kind not in (EIM, SYMMETRIC):
        raise LabError(f"no NAT of kind {kind!r} (use {EIM!r} or {SYMMETRIC!r})")
    flags = " fully-random" if kind == SYMMETRIC else ""
    return f"""\
table ip {TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{WAN}" masquerade{flags}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{LAN}" oifname "{WAN}" accept
        ip saddr {lan} ip daddr {lan} accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{WAN}" ct state established,related accept
        iifname "{WAN}" drop
    }}
}}
"""
