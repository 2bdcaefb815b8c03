"""Address candidates: where a party's mesh can be reached, gathered without flags.

On ``accept`` (and ``session new``) a party picks one TCP port for the session and
announces, in its signed acceptance, the endpoints ``tcp://ADDR:PORT`` for:

* **host** candidates: the IPv4 addresses of its own interfaces (loopback and link-local
  left out), in the order the kernel lists them, the one towards the relay first;
* **observed** candidates: its address and port as each relay sees them when it asks
  ``GET /v1/observed`` *from that same port* (specs/relay.md section 12): behind a NAT
  with endpoint-independent mapping, the public address a peer can reach (once a path is
  open through the NAT); behind a symmetric NAT, a port that will not be reused.

At most :data:`~didmesh.session.documents.MAX_ENDPOINTS`, host candidates first (a peer on
the same LAN tries them first). When every relay of the session is on loopback, every
party is on this machine: only ``127.0.0.1`` is announced. The run listens on that port on
every interface. The gathering is split so that it can be tested without a network:
:func:`host_candidates`, :func:`order` are pure; :func:`interface_addresses`,
:func:`choose_port` and :func:`gather` touch the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .endpoints import format_endpoint
from .netif import interface_addresses

HOST = "host"
OBSERVED = "observed"
#: where the session port is picked when the system's ephemeral range is unknown (below
#: Linux's default ephemeral range and the IANA dynamic range)
PORT_RANGE = (20000, 32767)
#: Linux: the ports the kernel gives outgoing connections (``connect`` without ``bind``)
EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
#: fewer ports than this below the ephemeral range: use :data:`PORT_RANGE`
MIN_SPAN = 1000

#: ``observe(relay_url, local_port) -> (address, port | None)``: asks one relay
Observe = Callable[[str, int], Awaitable[tuple[str, int | None]]]


@dataclass(frozen=True)
class Candidate:
    kind: str  # HOST or OBSERVED
    address: str
    port: int
    source: str  # the interface, or the relay that observed it

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.address, self.port)


@dataclass
class Gathered:
    port: int
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)  # relays that could not tell us

    @property
    def endpoints(self) -> list[str]:
        return [c.endpoint for c in self.candidates]


def usable(address: str) -> bool:
    """Whether ``address`` is worth announcing (not loopback, link-local, unspecified)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)


def host_candidates(addresses: Sequence[tuple[str, str]], port: int) -> list[Candidate]:
    """``(interface, address)`` pairs -> host candidates on ``port``, unusable ones left out."""
    return [Candidate(HOST, addr, port, name) for name, addr in addresses if usable(addr)]


def order(candidates: Sequence[Candidate], limit: int | None = None) -> list[Candidate]:
    """Host candidates first, then observed ones; each endpoint once; at most ``limit``
    (default: the acceptance's bound, :data:`~didmesh.session.documents.MAX_ENDPOINTS`)."""
    if limit is None:
        # imported here: a run's puncher needs interface_addresses() alone, and the
        # documents module brings in the credential stack (~45 ms at a party's start)
        from didmesh.session.documents import MAX_ENDPOINTS

        limit = MAX_ENDPOINTS
    out: list[Candidate] = []
    seen: set[str] = set()
    for kind in (HOST, OBSERVED):
        for c in candidates:
            if c.kind == kind and c.endpoint not in seen:
                seen.add(c.endpoint)
                out.append(c)
    return out[:limit]


def towards(host: str) -> str | None:
    """The local address this machine would use to reach ``host`` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def port_range(ephemeral: str = EPHEMERAL_RANGE) -> tuple[int, int]:
    """The range the session port is picked in: from 20000 up to just below the system's
    ephemeral range (Linux: 32768-60999 unless configured). A port in the ephemeral range
    may be taken, between ``accept`` and the run, by any outgoing connection of the
    machine, or sit in TIME_WAIT after one for a minute: the run could then not listen on
    it. :data:`PORT_RANGE` where the range cannot be read or leaves fewer than
    :data:`MIN_SPAN` ports below it."""
    low = PORT_RANGE[0]
    try:
        with open(ephemeral, encoding="ascii") as f:
            first = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return PORT_RANGE
    if first - 1 - low < MIN_SPAN:
        return PORT_RANGE
    return low, min(first - 1, 65535)


def choose_port(rng: random.Random | None = None, tries: int = 50) -> int:
    """A TCP port free on every interface, picked at random in :func:`port_range`."""
    rng = rng or random.SystemRandom()
    lo, hi = port_range()
    for _ in range(tries):
        port = rng.randint(lo, hi)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise OSError("no free TCP port found for the mesh; announce one with --endpoint")


def _on_loopback(url: str) -> bool:
    return is_loopback(urllib.parse.urlsplit(url).hostname or "")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def gather(
    relays: Sequence[str],
    observe: Observe | None,
    *,
    port: int | None = None,
    addresses: Sequence[tuple[str, str]] | None = None,
    timeout: float = 5.0,
) -> Gathered:
    """Pick a port (unless given) and gather host and observed candidates for it.

    ``observe`` asks one relay (None: no observed candidates); relays are asked in parallel,
    each within ``timeout``; one that fails is noted, not fatal.
    """
    port = port if port is not None else choose_port()
    if relays and all(_on_loopback(url) for url in relays):
        # every relay is on this machine's loopback, so every party is on this machine
        return Gathered(port, [Candidate(HOST, "127.0.0.1", port, "lo")],
                        ["the relays are on loopback: announcing 127.0.0.1 only"])
    addrs = list(addresses) if addresses is not None else interface_addresses()
    first = None
    loop = asyncio.get_running_loop()
    for url in relays[:1]:
        host = urllib.parse.urlsplit(url).hostname or ""
        with contextlib.suppress(OSError, ValueError, TimeoutError, UnicodeError):
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM),
                min(timeout, 2.0))
            first = towards(str(infos[0][4][0]))
    addrs.sort(key=lambda a: a[1] != first)  # the address towards the relay first
    found = host_candidates(addrs, port)
    notes: list[str] = []
    if observe is not None and relays:
        async def ask(url: str) -> Candidate | None:
            try:
                addr, seen_port = await asyncio.wait_for(observe(url, port), timeout)
            except Exception as exc:  # noqa: BLE001 - any failure: this relay is noted
                notes.append(f"no observed address from {url}: "
                             f"{getattr(exc, 'message', None) or exc!r}")
                return None
            if seen_port is None or not usable(addr):
                notes.append(f"no usable observed address from {url} ({addr} port {seen_port})")
                return None
            return Candidate(OBSERVED, addr, seen_port, url)

        for c in await asyncio.gather(*(ask(u) for u in relays)):
            if c is not None:
                found.append(c)
    return Gathered(port, order(found), notes)
