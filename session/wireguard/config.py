"""One party's WireGuard interface, derived from the verified roster view (specs/wireguard.md,
section 5). Pure: a :class:`~didmesh.session.mesh.plan.MeshPlan` in, a :class:`WgConfig` out.

* PrivateKey: this party's per-session key (:func:`.keys.wg_private_key`).
* ListenPort: ``--listen-port``, else the port of this party's first announced endpoint
  (peers send there), else none (WireGuard picks one; this party must then initiate).
* One peer per other party: its session key, the pair's PSK, AllowedIPs = its two tunnel
  addresses (/32 and /128), Endpoint = the host and port of its first announced endpoint
  (as UDP) if it announced one, PersistentKeepalive.

``repr`` of these objects never shows a key or PSK.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from didmesh.session.mesh.faults import PlanError
from didmesh.session.mesh.plan import MeshPlan, parse_endpoint

from .addresses import TunnelAddresses, session_networks, tunnel_addresses
from .errors import WgUsageError
from .keys import derive_psk, encode_key, wg_private_key, wg_public_key

DEFAULT_KEEPALIVE = 25
_IFACE_RE = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")


def interface_name(session_id: str) -> str:
    """The suggested interface name, ``dm`` + the session id's first 8 characters
    (wg-quick names the interface after the file, at most 15 characters)."""
    name = "dm" + session_id[:8]
    if not _IFACE_RE.match(name):
        raise WgUsageError(f"session id {session_id[:12]!r} does not give an interface name")
    return name


def udp_endpoint(endpoint: str) -> str:
    """``tcp://host:port`` (an announced endpoint) -> WireGuard's ``host:port``
    (``[v6]:port`` for IPv6 literals): the same host and port number, over UDP."""
    try:
        host, port = parse_endpoint(endpoint)
    except PlanError as exc:
        raise WgUsageError(exc.message) from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, repr=False)
class WgPeer:
    party_id: int
    did: str
    public_key: bytes
    preshared_key: bytes
    addresses: TunnelAddresses
    endpoint: str | None
    keepalive: int | None

    @property
    def allowed_ips(self) -> tuple[str, str]:
        return self.addresses.allowed_ips()

    def __repr__(self) -> str:
        return f"WgPeer(party={self.party_id}, endpoint={self.endpoint!r})"

    def public_view(self) -> dict[str, Any]:
        return {
            "party": self.party_id,
            "did": self.did,
            "publicKey": encode_key(self.public_key),
            "allowedIPs": list(self.allowed_ips),
            "endpoint": self.endpoint,
            "persistentKeepalive": self.keepalive,
        }


@dataclass(frozen=True, repr=False)
class WgConfig:
    session_id: str
    roster_hash: bytes
    party_id: int
    did: str
    private_key: bytes
    listen_port: int | None
    addresses: TunnelAddresses
    networks: tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]
    peers: tuple[WgPeer, ...]
    warnings: tuple[str, ...] = ()

    @property
    def public_key(self) -> bytes:
        return wg_public_key(self.private_key)

    @property
    def interface(self) -> str:
        return interface_name(self.session_id)

    def interface_addresses(self) -> tuple[str, str]:
        """``("100.64.x.y/22", "fd…/64")``: this party's addresses with the session prefix."""
        v4, v6 = self.networks
        return (
            f"{self.addresses.ipv4}/{v4.prefixlen}",
            f"{self.addresses.ipv6}/{v6.prefixlen}",
        )

    def __repr__(self) -> str:
        return (
            f"WgConfig(session={self.session_id[:8]!r}, party={self.party_id}, "
            f"peers={len(self.peers)})"
        )

    def public_view(self) -> dict[str, Any]:
        """Everything but the private key and the PSKs (safe to print and log)."""
        return {
            "session": self.session_id,
            "rosterHash": self.roster_hash.hex(),
            "party": self.party_id,
            "did": self.did,
            "interface": self.interface,
            "publicKey": encode_key(self.public_key),
            "listenPort": self.listen_port,
            "addresses": list(self.interface_addresses()),
            "peers": [p.public_view() for p in self.peers],
            "warnings": list(self.warnings),
        }


def build_config(
    plan: MeshPlan,
    *,
    listen_port: int | None = None,
    keepalive: int | None = DEFAULT_KEEPALIVE,
    endpoints: Mapping[int, str | None] | None = None,
) -> WgConfig:
    """This party's WireGuard interface from its verified roster view. ``endpoints``
    (party id -> ``host:port``, or None: none for now) overrides the first announced
    endpoint of those peers (the run's choice from its candidates, section 6.3)."""
    if listen_port is not None and not 0 < listen_port < 65536:
        raise WgUsageError(f"listen port {listen_port} is outside 1..65535")
    if keepalive is not None and not 0 < keepalive < 65536:
        raise WgUsageError(f"persistent keepalive {keepalive} is outside 1..65535 seconds")
    me = plan.me
    announced = parse_endpoint(me.endpoints[0])[1] if me.endpoints else None
    warnings: list[str] = []
    if listen_port is not None and announced is not None and listen_port != announced:
        warnings.append(
            f"listen port {listen_port} differs from your announced endpoint's port "
            f"{announced}: peers will send to {announced}"
        )
    peers = []
    for p in plan.peers():
        endpoint = udp_endpoint(p.endpoints[0]) if p.endpoints else None
        if endpoints is not None and p.party_id in endpoints:
            endpoint = endpoints[p.party_id]
        if endpoint is None and not me.endpoints and endpoints is None:
            warnings.append(
                f"neither you nor {plan.describe(p.party_id)} announced an endpoint: "
                "WireGuard cannot connect this pair"
            )
        peers.append(
            WgPeer(
                party_id=p.party_id,
                did=p.did,
                public_key=p.static_public,
                preshared_key=derive_psk(
                    plan.my_static_private, p.static_public, plan.roster_hash,
                    plan.my_party_id, p.party_id,
                ),
                addresses=tunnel_addresses(plan.roster_hash, p.party_id),
                endpoint=endpoint,
                keepalive=keepalive,
            )
        )
    return WgConfig(
        session_id=plan.session_id,
        roster_hash=plan.roster_hash,
        party_id=plan.my_party_id,
        did=me.did,
        private_key=wg_private_key(plan.my_static_private),
        listen_port=listen_port if listen_port is not None else announced,
        addresses=tunnel_addresses(plan.roster_hash, plan.my_party_id),
        networks=session_networks(plan.roster_hash),
        peers=tuple(peers),
        warnings=tuple(warnings),
    )
