"""Pre-dialing the early punch (specs/mesh.md 6.1, "Early punch").

A party process (:mod:`.party`) reads its launch document and, before its heavy imports
(asyncio, cryptography, the relay client, the mesh: 100 ms and more), sends the SYNs its
early punches will send anyway: for each peer that :func:`~.endpoints.early_targets`
names (the very decision the run's :class:`~.puncher.Puncher` takes), one non-blocking
socket bound to the session port (``SO_REUSEADDR``/``SO_REUSEPORT``) whose ``connect``
is under way. Behind an endpoint-independent NAT that SYN opens the mapping the peer's
SYN needs, that much sooner; the kernel completes a simultaneous open while the process
is still importing. The early punch then adopts the socket for its target
(:func:`~.puncher.dial_from`) instead of dialing anew; whatever it never adopts is closed
when the run's mesh is up (:meth:`PreDialed.close`).

Only the launch document is read: it comes from the party's own parent (through a pipe),
which verified the roster; nothing is pre-dialed from anything else. Light to import: no
asyncio, no cryptography.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterable, Mapping, Sequence

from .endpoints import early_targets
from .faults import PlanError
from .netif import interface_addresses

TYPE_CHECKING = False  # as typing's, without importing typing
if TYPE_CHECKING:
    from .plan import MeshPlan


class PreDialed:
    """Sockets whose SYN left early, one per target ``(host, port)``, all bound to
    :attr:`port`; :attr:`sent`: when (``time.monotonic()``). :meth:`take` hands one over
    (its owner then closes it); :meth:`close` closes those never taken."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = time.monotonic()
        self._socks: dict[tuple[str, int], socket.socket] = {}

    def __len__(self) -> int:
        return len(self._socks)

    @property
    def targets(self) -> list[tuple[str, int]]:
        return list(self._socks)

    def take(self, target: tuple[str, int]) -> socket.socket | None:
        """The socket dialing ``target``, if any (once: it is the caller's from now on)."""
        return self._socks.pop(target, None)

    def close(self) -> None:
        """Close every socket never taken (the pair went another way, or never punched)."""
        socks, self._socks = self._socks, {}
        for sock in socks.values():
            sock.close()


def bind_for_punch(sock: socket.socket, port: int) -> None:
    """Make ``sock`` a punch socket: non-blocking, bound to local ``port`` beside the
    listener and the other punches on it (``SO_REUSEADDR``, ``SO_REUSEPORT``). OSError if
    that fails (the caller closes the socket). The pre-dial and the early punch's own
    dials (:func:`~.puncher.dial_from`) both use it, so the two share the port alike."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setblocking(False)
    sock.bind(("", port))


def predial(port: int, targets: Iterable[tuple[str, int]]) -> PreDialed:
    """Start a non-blocking connect from local ``port`` to each of ``targets``. A target
    that fails at once (no route, a bad address) gets no socket: the early punch dials it
    as usual."""
    out = PreDialed(port)
    for host, rport in targets:
        if (host, rport) in out._socks:
            continue
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        try:
            bind_for_punch(sock, port)
            err = sock.connect_ex((host, rport))
        except OSError:
            sock.close()
            continue
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            continue
        out._socks[(host, rport)] = sock
    out.sent = time.monotonic()
    return out


def local_addresses() -> list[str]:
    """Our interfaces' addresses; none if the machine will not tell (as the puncher)."""
    try:
        return [a for _, a in interface_addresses()]
    except OSError:
        return []


def _decide(me: int, endpoints: Sequence[Sequence[str]], addresses: Iterable[str], *,
            relays: bool, relay_only: bool, direct_only: bool
            ) -> tuple[int | None, list[tuple[str, int]]]:
    port, targets = early_targets(me, endpoints, addresses, relays=relays,
                                  relay_only=relay_only, direct_only=direct_only)
    if port is None or not targets:
        return None, []
    return port, [t for peer in sorted(targets) for t in targets[peer]]


def decide(doc: object, addresses: Iterable[str]) -> tuple[int | None, list[tuple[str, int]]]:
    """What the launch document's run will punch early: ``(port, targets)`` (pure: the
    decision of :func:`~.endpoints.early_targets`, the run's puncher's own). Nothing for
    a document it cannot read (the runner then says what is wrong with it)."""
    if not isinstance(doc, Mapping):
        return None, []
    try:
        plan, options = doc["plan"], doc.get("options") or {}
        parties = plan["parties"]
        if [int(p["party_id"]) for p in parties] != list(range(len(parties))):
            return None, []
        endpoints = [tuple(str(e) for e in p["endpoints"]) for p in parties]
        me = int(plan["my_party_id"])
        if not 0 <= me < len(endpoints):
            return None, []
        return _decide(me, endpoints, addresses, relays=bool(plan.get("relays")),
                       relay_only=bool(options.get("relay_only")),
                       direct_only=bool(options.get("direct_only")))
    except (KeyError, TypeError, ValueError, AttributeError, PlanError):
        return None, []


def decide_plan(plan: MeshPlan, addresses: Iterable[str], *, relay_only: bool = False,
                direct_only: bool = False) -> tuple[int | None, list[tuple[str, int]]]:
    """As :func:`decide`, for a run of ``plan`` (a verified roster's view)."""
    return _decide(plan.my_party_id, [p.endpoints for p in plan.parties], addresses,
                   relays=bool(plan.relays), relay_only=relay_only, direct_only=direct_only)


def from_plan(plan: MeshPlan, *, relay_only: bool = False, direct_only: bool = False,
              addresses: Iterable[str] | None = None) -> PreDialed | None:
    """Pre-dial what a run of ``plan`` with these options will punch early (None:
    nothing): for ``didmesh run``, once it has verified the roster."""
    port, targets = decide_plan(plan, local_addresses() if addresses is None else addresses,
                                relay_only=relay_only, direct_only=direct_only)
    return None if port is None else predial(port, targets)


def from_launch(doc: object, addresses: Iterable[str] | None = None) -> PreDialed | None:
    """Pre-dial what the launch document's run will punch early (:func:`decide`; None:
    nothing). Never raises. ``addresses``: our interfaces' addresses (default: asked now)."""
    port, targets = decide(doc, local_addresses() if addresses is None else addresses)
    if port is None:
        return None
    return predial(port, targets)


__all__ = [
    "PreDialed", "bind_for_punch", "decide", "decide_plan", "from_launch", "from_plan",
    "local_addresses", "predial",
]
