"""Endpoints (``tcp://host:port``, specs/mesh.md "Paths") and the early punch's decision
from the signed endpoints alone (specs/mesh.md 6.1, "Early punch"): pure functions.

Which pairs punch early, from which local port and to which targets is decided here once
and used by both the run's :class:`~.puncher.Puncher` and the party process's pre-dial
(:mod:`.predial`), so the two cannot drift apart. This module is light to import (no
cryptography, no asyncio): the party process pre-dials from it within a few ms of reading
its launch document, before its heavy imports.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence

from .faults import PlanError

_ENDPOINT_RE = re.compile(
    r"^tcp://(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>\d{1,5})$")
#: a punch dials at most this many of a peer's addresses
MAX_TARGETS = 4


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``tcp://host:port`` -> ``(host, port)``; raises :class:`PlanError` otherwise."""
    m = _ENDPOINT_RE.match(endpoint)
    if m is None:
        raise PlanError(f"endpoint {endpoint!r} is not of the form tcp://host:port")
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise PlanError(f"endpoint {endpoint!r}: port {port} out of range")
    return (m.group("v6") or m.group("host"), port)


def format_endpoint(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def host_of(endpoint: str) -> str | None:
    try:
        return parse_endpoint(endpoint)[0]
    except PlanError:
        return None


def session_port(endpoints: Sequence[str]) -> int | None:
    """The one port a party's gathered candidates share (None: none, or several)."""
    ports = set()
    for e in endpoints:
        with contextlib.suppress(PlanError):
            ports.add(parse_endpoint(e)[1])
    return ports.pop() if len(ports) == 1 else None


def looks_nated(endpoints: Sequence[str]) -> bool:
    """Whether a party's signed endpoints name more than one address: interface addresses
    and another one the relay observed (a NAT in front of it). A public party announces
    its one address (interface and observation agree), as does ``--endpoint``."""
    return len({host_of(e) for e in endpoints} - {None}) > 1


def dialable(addrs: Iterable[str], signed: Sequence[str]) -> list[tuple[str, int]]:
    """Where a punch dials the peer: those of ``addrs`` that it also signed, loopback left
    out, at most :data:`MAX_TARGETS`."""
    out = []
    for a in addrs:
        if a in signed:
            host, port = parse_endpoint(a)
            if not host.startswith("127.") and host != "::1":
                out.append((host, port))
    return out[:MAX_TARGETS]


def signed_targets(signed: Sequence[str]) -> list[tuple[str, int]]:
    """Where an early punch dials the peer: the endpoints it signed, loopback left out."""
    return dialable(signed, signed)


# ---------------------------------------------------------------- the early punch's decision


def punch_port(my_endpoints: Sequence[str], local_addresses: Iterable[str]) -> int | None:
    """The session port a punch dials from: the one our interfaces' candidates share
    (behind a symmetric NAT the observed candidate has another); None: no port to punch
    from. ``local_addresses``: our interfaces' addresses (none if the machine will not tell)."""
    local = set(local_addresses)
    own = [e for e in my_endpoints if host_of(e) in local]
    return session_port(own or my_endpoints)


def other_home(mine: Sequence[str], theirs: Sequence[str]) -> bool:
    """Whether two parties announced no address in common (another home: one shared
    address means one home behind one NAT, or one machine) while both announced some: the
    pairs a punch may serve. Both parties compute the same from the signed roster."""
    a = {host_of(e) for e in mine}
    b = {host_of(e) for e in theirs}
    return bool(a and b and not a & b)


def punches_early(me: int, peer: int, endpoints: Sequence[Sequence[str]],
                  port: int | None) -> bool:
    """Whether the pair of ``me`` and ``peer`` punches early (``endpoints``: every party's
    signed endpoints, by party id; ``port``: :func:`punch_port`): parties in different
    homes, the responder (higher id) behind a NAT (a public responder is dialed directly),
    and this party with a session port to punch from."""
    hi = max(me, peer)
    return (port is not None and other_home(endpoints[me], endpoints[peer])
            and looks_nated(endpoints[hi]) and bool(signed_targets(endpoints[peer])))


def punching(*, relays: bool, relay_only: bool, direct_only: bool) -> bool:
    """Whether a run punches at all: it needs a relay (the coordination and the fallback
    run over it) and neither ``--relay-only`` nor ``--direct-only``."""
    return relays and not relay_only and not direct_only


def early_targets(me: int, endpoints: Sequence[Sequence[str]], local_addresses: Iterable[str],
                  *, relays: bool, relay_only: bool = False, direct_only: bool = False
                  ) -> tuple[int | None, dict[int, list[tuple[str, int]]]]:
    """What this party's early punches dial as its run starts: ``(port, {peer: targets})``
    (:func:`punch_port`; per peer that :func:`punches_early`, its :func:`signed_targets`).
    Nothing when the run does not punch (:func:`punching`) or has no session port."""
    if not punching(relays=relays, relay_only=relay_only, direct_only=direct_only):
        return None, {}
    port = punch_port(endpoints[me], local_addresses)
    if port is None:
        return None, {}
    return port, {peer: signed_targets(endpoints[peer]) for peer in range(len(endpoints))
                  if peer != me and punches_early(me, peer, endpoints, port)}


__all__ = [
    "MAX_TARGETS", "dialable", "early_targets", "format_endpoint", "host_of", "looks_nated",
    "other_home", "parse_endpoint", "punch_port", "punches_early", "punching",
    "session_port", "signed_targets",
]
