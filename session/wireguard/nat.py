"""Before the tunnel: learn this party's UDP mapping, exchange endpoints with the peers,
choose an endpoint per peer, and fail early where no UDP path can exist
(specs/wireguard.md, section 6.3). The adapter between :mod:`.udpmap` (STUN),
:mod:`.rendezvous` (the authenticated exchange over the relays) and :mod:`.paths` (pure
decisions); :func:`prepare` is what the run calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from didmesh.identity.keys import IdentityKey
from didmesh.session.mesh.plan import MeshPlan

from .errors import WgTunnelFailed
from .paths import Network, no_udp_path, order_candidates
from .rendezvous import Offer, exchange, format_udp_endpoint, parse_udp_endpoint
from .udpmap import NAT_UNKNOWN, judge, learn_mapping, punch


@dataclass
class Prepared:
    port: int
    nat: str
    mine: Offer
    offers: dict[int, Offer]
    candidates: dict[int, list[str]]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def local_networks() -> list[Network]:
    """This machine's networks (address/prefix of every non-loopback address)."""
    try:
        out = subprocess.run(["ip", "-j", "address", "show"], capture_output=True, text=True,
                             timeout=5).stdout
        links = json.loads(out or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    nets: list[Network] = []
    for link in links:
        for a in link.get("addr_info", []):
            with contextlib.suppress(ValueError, TypeError):
                iface = ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
                if not iface.ip.is_loopback and not iface.ip.is_link_local:
                    nets.append(iface.network)
    return nets


async def stun_servers(plan: MeshPlan, identity: IdentityKey, timeout: float
                       ) -> tuple[list[tuple[str, int]], list[str]]:
    """``(IPv4 address, port)`` of every STUN port the session's relays announce."""
    from didmesh.relay.linkclient import LinkClient

    servers: list[tuple[str, int]] = []
    notes: list[str] = []
    loop = asyncio.get_running_loop()
    for url in plan.relays:
        client = LinkClient(url, identity, timeout=timeout)
        try:
            info = await asyncio.wait_for(client.info(), timeout)
            ports = info.get("stun", {}).get("ports", []) if isinstance(info, dict) else []
            host = urllib.parse.urlsplit(url).hostname or ""
            addr = (await loop.getaddrinfo(host, None, family=socket.AF_INET,
                                           type=socket.SOCK_DGRAM))[0][4][0]
            good = [p for p in ports if type(p) is int and 0 < p < 65536][:2]
            servers += [(str(addr), p) for p in good]
            if not good:
                notes.append(f"the relay {url} announces no STUN port")
        except Exception as exc:  # noqa: BLE001 - one relay that fails is a note
            notes.append(f"no STUN ports from {url}: "
                         f"{getattr(exc, 'message', None) or type(exc).__name__}")
        finally:
            with contextlib.suppress(Exception):
                await client.close()
    return servers, notes


def prepare(plan: MeshPlan, identity: IdentityKey | None, port: int, *, timeout: float,
            report: Callable[[str], None] = lambda _: None,
            addresses: list[str] | None = None) -> Prepared:
    """STUN, exchange, order; raises :class:`WgTunnelFailed` naming the pairs that can
    have no UDP path. Bounded by about ``timeout`` seconds."""
    networks = local_networks()
    mine_addrs = addresses if addresses is not None else [
        str(a) for a in _interface_addresses()]
    notes: list[str] = []
    timings: dict[str, float] = {}
    offers: dict[int, Offer] = {}
    nat = NAT_UNKNOWN
    mapped: list[tuple[str, int]] = []
    t0 = time.perf_counter()
    if plan.relays and identity is not None:
        servers, more = asyncio.run(stun_servers(plan, identity, min(timeout, 5.0)))
        notes += more
        mapping = learn_mapping(port, servers, timeout=min(timeout, 3.0))
        notes += mapping.notes
        mapped = mapping.mapped
        nat = judge(mapped, port, mine_addrs)
    timings["stun"] = time.perf_counter() - t0
    udp = [format_udp_endpoint(h, p) for h, p in dict.fromkeys(mapped)]
    udp += [format_udp_endpoint(a, port) for a in mine_addrs]
    mine = Offer(tuple(dict.fromkeys(udp))[:4], nat)
    t0 = time.perf_counter()
    if plan.relays and identity is not None and plan.m > 1:
        offers, more = asyncio.run(exchange(plan, identity, mine, timeout=timeout))
        notes += more
    timings["exchange"] = time.perf_counter() - t0
    everyone = {**offers, plan.my_party_id: mine}
    bad = no_udp_path(everyone)
    if bad:
        pairs = "; ".join(f"{plan.describe_pair(a, b)} ({why})" for a, b, why in bad)
        raise WgTunnelFailed(
            f"no UDP path can exist between {pairs}: WireGuard cannot connect "
            f"{'this pair' if len(bad) == 1 else 'these pairs'}; use --transport noise "
            "(the default), which can relay")
    candidates = {p.party_id: order_candidates(offers.get(p.party_id), p.endpoints, networks)
                  for p in plan.peers()}
    if offers:  # open our NAT towards the peers' candidates before wireguard-go starts
        targets = []
        for pid, cands in candidates.items():
            if pid in offers:
                for c in cands:
                    host, p = parse_udp_endpoint(c)
                    if ":" not in host:
                        targets.append((host, p))
        punch(port, targets)
    return Prepared(port, nat, mine, offers, candidates, notes, timings)


def _interface_addresses() -> list[str]:
    from didmesh.session.mesh.candidates import interface_addresses, usable

    return [a for _, a in interface_addresses() if usable(a)]
