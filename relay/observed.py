"""Observed address: the relay tells an authenticated client where its connection came
from (the source address and port the relay sees), as a STUN server does.

``GET /v1/observed`` (bearer token) answers ``{"address": "198.51.100.12", "port": 41000,
"transport": "tcp"}``: behind a NAT, the public mapping of the client's socket. Behind a
reverse proxy the relay trusts (``trusted_proxies``) it only knows the address from
``X-Forwarded-For``, so ``port`` is ``null``. Only the client's own address is ever
returned, only to a client that proved control of its DID, and under the relay's usual
rate limits (no reflection: the answer goes back on the same TCP connection).

Parts: :func:`observed_of` and :func:`parse_observed` (sans-IO), :func:`observed_handler`
(the aiohttp adapter, one route in :mod:`.app`), :func:`observe` (a client that asks from
a chosen local port, so that the answer is the mapping of *that* port).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import ssl
import struct
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from didmesh.identity.strict_json import loads_strict

from .errors import RelayProtocolError, RelayUnreachable, error_from_wire

if TYPE_CHECKING:
    from aiohttp import web

    from .app import Relay

PATH = "/v1/observed"
MAX_RESPONSE = 16 * 1024


@dataclass(frozen=True)
class ObservedAddress:
    address: str  # an IPv4 or IPv6 address, IPv4-mapped IPv6 unwrapped
    port: int | None  # None: the relay sits behind a proxy and cannot see source ports
    transport: str = "tcp"

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port, "transport": self.transport}


def _address(text: str) -> str:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def observed_of(peername: Any, forwarded_ip: str | None = None) -> ObservedAddress | None:
    """What the relay tells a client: from the socket's peer, or (behind a trusted proxy)
    the forwarded address without a port. None if neither is a usable address."""
    try:
        if forwarded_ip is not None:
            return ObservedAddress(_address(forwarded_ip), None)
        host, port = peername[0], int(peername[1])
        return ObservedAddress(_address(str(host)), port)
    except (TypeError, ValueError, IndexError):
        return None


def parse_observed(data: Any) -> ObservedAddress:
    """A relay's answer, checked: a relay that answers anything else is misbehaving."""
    if not isinstance(data, dict) or set(data) != {"address", "port", "transport"}:
        raise RelayProtocolError("malformed observed address from the relay")
    addr, port, transport = data["address"], data["port"], data["transport"]
    if transport != "tcp" or not isinstance(addr, str) or len(addr) > 64:
        raise RelayProtocolError("malformed observed address from the relay")
    if port is not None and (type(port) is not int or not 1 <= port <= 65535):
        raise RelayProtocolError("the relay observed an impossible port")
    try:
        clean = _address(addr)
    except ValueError:
        raise RelayProtocolError("the relay observed something that is not an address") from None
    return ObservedAddress(clean, port)


def observed_handler(relay: Relay) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``GET /v1/observed`` handler for ``relay``."""
    from aiohttp import web

    from .errors import RelayInternalError

    async def observed(request: web.Request) -> web.Response:
        await relay._authed(request)
        forwarded = None
        if relay.proxies.trusts(request.remote or ""):  # the socket peer is our proxy
            forwarded = relay._ip(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = observed_of(peer, forwarded)
        if seen is None:
            raise RelayInternalError("the relay cannot tell this connection's source address")
        return web.json_response(seen.to_json(), headers={"Cache-Control": "no-store"})

    return observed


async def observe(url: str, token: str, *, local_port: int | None = None,
                  local_host: str = "", timeout: float = 10.0) -> ObservedAddress:
    """Ask the relay at ``url`` for our observed address, connecting from ``local_port``.

    The socket is bound with ``SO_REUSEADDR`` and ``SO_REUSEPORT``, so the port may be the
    one a listener of ours already holds: the answer is then that port's public mapping.
    One HTTP/1.1 request (``Connection: close``), bounded by ``timeout``.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RelayUnreachable(f"not a relay URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        try:
            return await asyncio.wait_for(
                _observe(parts, port, token, local_port, local_host), timeout)
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL or local_port is None:
                raise
            # the same (port, relay) pair is still in TIME_WAIT from an earlier probe whose
            # close raced the relay's: once more, after a moment
            await asyncio.sleep(0.2)
            return await asyncio.wait_for(
                _observe(parts, port, token, local_port, local_host), timeout)
    except TimeoutError:
        raise RelayUnreachable(f"the relay at {url} did not answer {PATH} within "
                               f"{timeout:g} s") from None
    except OSError as exc:
        raise RelayUnreachable(f"cannot reach the relay at {url}: {exc}") from None


async def _observe(parts: urllib.parse.SplitResult, port: int, token: str,
                   local_port: int | None, local_host: str) -> ObservedAddress:
    assert parts.hostname is not None
    infos = await asyncio.get_running_loop().getaddrinfo(
        parts.hostname, port, type=socket.SOCK_STREAM)
    family, _, _, _, target = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if local_port is not None:
            sock.bind((local_host, local_port))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, target)
    except BaseException:
        sock.close()
        raise
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=tls, server_hostname=parts.hostname if tls else None)
    try:
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        base = parts.path.rstrip("/")
        writer.write((f"GET {base}{PATH} HTTP/1.1\r\nHost: {host}\r\n"
                      f"Authorization: Bearer {token}\r\nAccept: application/json\r\n"
                      "Connection: close\r\n\r\n").encode())
        await writer.drain()
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_RESPONSE and (chunk := await reader.read(4096)):
            chunks.append(chunk)
            total += len(chunk)
        raw = b"".join(chunks)
    finally:
        # closed with a reset (linger 0): no TIME_WAIT here keeps the pair (local_port,
        # relay) free for the next probe and for the session's own connections
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return _response(raw, parts.geturl())


def _response(raw: bytes, url: str) -> ObservedAddress:
    if len(raw) > MAX_RESPONSE:
        raise RelayProtocolError(f"the relay at {url} answered {PATH} with too much")
    head, sep, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(b" ")
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        raise RelayProtocolError(f"the relay at {url} answered {PATH} with no HTTP response")
    status = int(status_line[1])
    if b"transfer-encoding: chunked" in head.lower():
        raise RelayProtocolError(f"the relay at {url} answered {PATH} chunked")
    try:
        data = loads_strict(body, max_bytes=MAX_RESPONSE, error=RelayProtocolError,
                            what="relay response") if body else None
    except RelayProtocolError:
        data = None
    if status != 200:
        raise error_from_wire(status, data, url)
    return parse_observed(data)


__all__ = ["ObservedAddress", "observe", "observed_handler", "observed_of", "parse_observed"]
