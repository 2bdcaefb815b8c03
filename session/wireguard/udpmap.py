"""The public mapping of the UDP port ``wireguard-go`` will use (specs/wireguard.md,
section 6.3), learned from the session's relays over STUN (relay/stun.py).

:func:`learn_mapping` binds the port itself, sends STUN Binding requests from it to each
server (RFC 8489 retransmissions: 0.25 s, doubling, within ``timeout``), collects the
XOR-MAPPED-ADDRESS answers and closes the socket; ``wireguard-go`` is started on the same
port right after, so its packets leave through the same NAT mapping (a NAT keeps a UDP
mapping for tens of seconds at least; the run's keepalive holds it from then on).
:func:`judge` (pure) names the NAT from the answers: ``open`` (the mapping is one of our
own addresses and the same port), ``eim`` (one mapping for every destination: hole
punching can work), ``sym`` (another mapping per destination: it cannot), ``unknown``
(fewer than two answers tell nothing about the mapping kind, or none at all).
:func:`punch` sends a few datagrams from the port to the peers' candidates after the
endpoint exchange, so that our NAT already lets their handshake in.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from didmesh.relay import stun

NAT_OPEN, NAT_EIM, NAT_SYM, NAT_UNKNOWN = "open", "eim", "sym", "unknown"
NATS = (NAT_OPEN, NAT_EIM, NAT_SYM, NAT_UNKNOWN)
FIRST_RTO = 0.25


@dataclass
class Mapping:
    port: int
    servers: list[tuple[str, int]]
    #: one mapping per server that answered, in the order of ``servers``
    mapped: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def judge(mapped: Sequence[tuple[str, int]], port: int, local: Sequence[str]) -> str:
    """The NAT kind from the mappings of ``port`` seen by different servers."""
    if not mapped:
        return NAT_UNKNOWN
    if all(host in local and p == port for host, p in mapped):
        return NAT_OPEN
    if len(set(mapped)) > 1:
        return NAT_SYM
    return NAT_EIM if len(mapped) > 1 else NAT_UNKNOWN


def learn_mapping(port: int, servers: Sequence[tuple[str, int]], *, timeout: float = 3.0,
                  host: str = "") -> Mapping:
    """Ask every STUN server in ``servers`` from UDP ``port`` (bound here, then closed)."""
    out = Mapping(port, list(servers))
    if not servers:
        return out
    pending: dict[bytes, int] = {}
    answers: dict[int, tuple[str, int]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            out.notes.append(f"cannot bind UDP port {port} to learn its mapping: {exc.strerror}")
            return out
        s.setblocking(False)
        requests = {}
        for i, _ in enumerate(servers):
            txid, req = stun.binding_request()
            pending[txid] = i
            requests[i] = req
        deadline = time.monotonic() + timeout
        rto, next_send = FIRST_RTO, 0.0
        while len(answers) < len(servers):
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_send:
                for i, server in enumerate(servers):
                    if i not in answers:
                        with contextlib.suppress(OSError):
                            s.sendto(requests[i], server)
                next_send, rto = now + rto, rto * 2
            ready, _, _ = select.select([s], [], [], max(0.0, min(next_send, deadline) - now))
            if not ready:
                continue
            try:
                data, src = s.recvfrom(2048)
            except OSError:  # ICMP unreachable from a server that is down
                continue
            try:
                msg = stun.parse(data)
                i = pending[msg.txid]
                if src[1] != servers[i][1]:  # not from the port we asked
                    continue
                answers[i] = stun.mapped_address(msg)
            except (stun.StunError, KeyError):
                continue
    for i, server in enumerate(servers):
        if i in answers:
            out.mapped.append(answers[i])
        else:
            out.notes.append(f"no STUN answer from {server[0]}:{server[1]} within {timeout:g} s")
    return out


#: what a punch datagram carries (WireGuard drops it: no message type 1-4)
PUNCH = b"didmesh-punch"


def punch(port: int, targets: Sequence[tuple[str, int]], *, count: int = 2,
          host: str = "") -> int:
    """Send ``count`` small datagrams from UDP ``port`` to each of ``targets`` (IPv4),
    then close: our NAT then lets the targets' packets to that port in (the peer's
    WireGuard handshake), before ``wireguard-go`` takes the port over. Returns how many
    were sent."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return 0
        for _ in range(count):
            for target in targets:
                with contextlib.suppress(OSError):
                    s.sendto(PUNCH, target)
                    sent += 1
    return sent
