"""Connection admission against descriptor exhaustion (specs/relay.md, "Limits").

A relay must keep answering when one address opens connections as fast as it can and never
finishes a request (slowloris). Three parts:

* :func:`raise_nofile` lifts the soft ``RLIMIT_NOFILE`` to the hard limit at start;
  :func:`connection_budget` derives how many connections the process admits from that limit,
  keeping a reserve for the store, log files and the listening sockets, so the relay refuses
  connections *before* ``accept()`` fails with ``EMFILE``;
* :class:`ConnectionGuard` (sans-IO) counts open connections per socket address and in
  total and says which to refuse;
* :func:`guard_server` is the adapter: it hooks an aiohttp ``web.Server``'s
  ``connection_made``/``connection_lost`` and answers a refused connection with one small
  HTTP response (``503 too_many_connections``) before closing it.

Headers must arrive within ``header_timeout_s`` (aiohttp's keep-alive timer, which also
covers a connection that never completes its first request) and bodies within
``body_timeout_s`` (:mod:`didmesh.relay.app`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("didmesh.relay")

#: descriptors kept free for the store, logs, DNS, the listening sockets
MIN_RESERVE = 32
#: listen backlog; asyncio accepts up to this many sockets per loop iteration before any
#: is admitted, so the budget keeps three bursts' worth of descriptors free
ACCEPT_BACKLOG = 64


def raise_nofile() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one; return ``(soft, hard)`` after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        want = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else soft
    else:
        want = hard
    if soft != want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):  # e.g. a container that forbids it: keep the soft one
            pass
    return soft, hard


LISTEN_QUEUE = 4096


def deepen_listen_queue(sockets: Any, depth: int = LISTEN_QUEUE) -> None:
    """Give the kernel a deep accept queue while asyncio accepts in small bursts.

    asyncio uses one number for both; a short queue under a connection flood makes the
    kernel drop other clients' SYNs, which they resend only after a second.
    """
    import socket

    for ts in sockets or ():
        dup = socket.socket(fileno=ts.dup().detach()) if hasattr(ts, "dup") else None
        if dup is None:
            continue
        try:
            dup.listen(depth)
        except OSError:
            pass
        finally:
            dup.close()


def connection_budget(nofile: int, configured: int) -> int:
    """Connections the process admits: ``configured`` (0: automatic) but never more than
    the descriptor limit minus a reserve: an eighth (at least :data:`MIN_RESERVE`) plus
    three accept bursts of :data:`ACCEPT_BACKLOG`."""
    if nofile == resource.RLIM_INFINITY or nofile <= 0:
        nofile = 1 << 20
    reserve = max(MIN_RESERVE, nofile // 8) + 3 * ACCEPT_BACKLOG
    cap = max(1, nofile - reserve)
    return min(configured, cap) if configured > 0 else cap


class ConnectionGuard:
    """Open connections per socket address and in total (no I/O).

    ``exempt(address)`` names addresses without a per-address cap (trusted proxies, which
    carry many clients on their connections); they still count towards the total.
    """

    def __init__(
        self, per_address: int, total: int, exempt: Callable[[str], bool] = lambda a: False
    ) -> None:
        self.per_address, self.total, self.exempt = per_address, total, exempt
        self.open = 0
        self._by_addr: dict[str, int] = {}
        self.refused_address = 0
        self.refused_total = 0

    def admit(self, address: str) -> str | None:
        """Count a new connection, or return why it is refused (and count nothing)."""
        if self.open >= self.total:
            self.refused_total += 1
            return (
                f"the relay holds its maximum of {self.total} connections; retry later"
            )
        n = self._by_addr.get(address, 0)
        if self.per_address > 0 and n >= self.per_address and not self.exempt(address):
            self.refused_address += 1
            return (
                f"too many connections from your address (at most {self.per_address} "
                "at once); close some and retry"
            )
        self._by_addr[address] = n + 1
        self.open += 1
        return None

    def release(self, address: str) -> None:
        n = self._by_addr.get(address, 0) - 1
        if n <= 0:
            self._by_addr.pop(address, None)
        else:
            self._by_addr[address] = n
        self.open -= 1

    def count(self, address: str) -> int:
        return self._by_addr.get(address, 0)


class LogThrottle:
    """At most ``burst`` log lines per ``period`` seconds per key; then one summary line
    saying how many were suppressed (time is a parameter)."""

    def __init__(self, period: float = 10.0, burst: int = 5) -> None:
        self.period, self.burst = period, burst
        self._state: dict[str, tuple[float, int, int]] = {}  # key -> (window start, n, dropped)

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """``(log it?, lines suppressed since the last one logged)``."""
        start, n, dropped = self._state.get(key, (now, 0, 0))
        if now - start >= self.period:
            start, n = now, 0
        if n < self.burst:
            self._state[key] = (start, n + 1, 0)
            return True, dropped
        self._state[key] = (start, n, dropped + 1)
        if len(self._state) > 1000:  # bounded: forget the oldest keys
            for k in list(self._state)[:500]:
                del self._state[k]
        return False, 0


_throttle = LogThrottle()


def throttle_allows(key: str) -> bool:
    """True if a line under ``key`` may be logged now (the shared throttle)."""
    return _throttle.allow(key, time.monotonic())[0]


def log_throttled(key: str, level: int, msg: str, fields: dict[str, Any] | None = None) -> None:
    """Log ``msg`` unless ``key`` was logged too often lately (accept errors, refusals)."""
    ok, dropped = _throttle.allow(key, time.monotonic())
    if ok:
        extra = dict(fields or {})
        if dropped:
            extra["suppressed"] = dropped
        log.log(level, msg, extra={"fields": extra})


def refusal_response(message: str) -> bytes:
    """The whole HTTP response sent on a refused connection."""
    body = json.dumps({"error": {"code": "too_many_connections", "message": message}}).encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"X-Didmesh-Error: too_many_connections\r\nRetry-After: 5\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


def peer_address(transport: Any) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return "unix" if peer is not None else "?"


#: id(transport) -> the address a connection was already admitted under (before its TLS
#: handshake, :mod:`didmesh.relay.tlsgate`), set while aiohttp's ``connection_made`` runs
pre_admitted: dict[int, str] = {}


def guard_server(server: Any, guard: ConnectionGuard) -> None:
    """Make aiohttp's ``web.Server`` admit connections through ``guard``."""
    made, lost = server.connection_made, server.connection_lost
    addresses: dict[int, str] = {}

    def connection_made(handler: Any, transport: Any) -> None:
        made(handler, transport)
        admitted = pre_admitted.get(id(transport))
        if admitted is not None:  # counted before its handshake; released when it ends
            addresses[id(handler)] = admitted
            return
        address = peer_address(transport)
        why = guard.admit(address)
        if why is None:
            addresses[id(handler)] = address
            return
        log_throttled(
            "refused:" + address, logging.WARNING, "connection refused",
            {"remote": address, "reason": why},
        )
        try:
            transport.write(refusal_response(why))
        except Exception:  # the peer is already gone
            transport.abort()
        # close once aiohttp's request task has started (it expects a live connection
        # when it starts); the transport sends the response before closing
        asyncio.get_running_loop().call_later(0, handler.force_close)

    def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
        address = addresses.pop(id(handler), None)
        if address is not None:
            guard.release(address)
        lost(handler, exc)

    server.connection_made = connection_made
    server.connection_lost = connection_lost


def throttled_exception_handler(loop: Any, context: dict[str, Any]) -> None:
    """asyncio's exception handler, one line per kind per period (``accept()`` failing
    with ``EMFILE`` must not fill the disk)."""
    exc = context.get("exception")
    msg = str(context.get("message", "event loop error"))
    key = f"loop:{msg}:{type(exc).__name__}"
    fields: dict[str, Any] = {}
    if exc is not None:
        fields["error"] = f"{type(exc).__name__}: {exc}"[:300]
    log_throttled(key, logging.ERROR, msg, fields)
