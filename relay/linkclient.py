"""Relay links without aiohttp: what a relayed mesh run needs, and only that (specs/relay.md).

:class:`LinkClient` speaks the same protocol as :meth:`didmesh.relay.client.RelayClient.open_link`
(challenge, token, ``GET /info`` for the link limits, one ``/v1/link`` WebSocket per peer)
over plain asyncio streams. The challenge and token requests share one kept-alive
connection, and the first link's upgrade reuses it: a link costs the relay round trips of
its requests, not a TCP (and TLS) handshake for each; ``/info`` is asked once per relay
and process. It exists for start-up time: importing aiohttp costs a party about 0.25 s
of CPU, more than everything else a relayed party adds. It sends no pings of its own
(the mesh watches liveness itself: ``ConnectOptions.link_heartbeat`` is off by default;
with a heartbeat the mesh uses the aiohttp client) and answers the relay's.

The byte-level parts are sans-IO and tested on their own: :func:`client_frame` (a masked
frame, RFC 6455 5.3), :class:`ServerFrameReader` (unmasked frames from the relay) and
:func:`parse_head` (an HTTP/1.1 response head). Every wait is bounded by the caller's
timeout; every refusal raises the error class the aiohttp client raises for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from didmesh.identity.keys import IdentityKey
from didmesh.identity.strict_json import loads_strict

from .auth import answer_challenge
from .errors import (
    WIRE_ERRORS,
    AuthExpired,
    AuthInvalid,
    AuthRequired,
    LinkClosed,
    RateLimited,
    RelayConfigError,
    RelayError,
    RelayInternalError,
    RelayProtocolError,
    RelayUnreachable,
    RelayUntrusted,
    error_from_wire,
)
from .observed import ObservedAddress, observe
from .protocol import CloseCode, Linked, LinkRequest, close_reason

#: a PEM file of CA certificates trusted for relays, on top of the system's (``--relay-ca``)
CA_ENV = "DIDMESH_RELAY_CA"
TLS_HINT = (
    "the relay's TLS certificate is not trusted here; if it comes from a private CA, "
    f"pass --relay-ca FILE (or set {CA_ENV})"
)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify relays against the system CAs plus those in ``ca_file``."""
    ctx = ssl.create_default_context()
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise RelayConfigError(
                f"cannot use {ca_file} as the relay CA (--relay-ca / {CA_ENV}): "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from None
    return ctx

ERROR_HEADER = "x-didmesh-error"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # as the aiohttp client
MAX_HEAD_BYTES = 64 * 1024
#: the stream's buffer limit (also the largest HTTP head accepted): a forwarded frame of up
#: to 1 MiB is read without pausing the socket
READ_BUFSIZE = 1 << 20
_AUTH_ERRORS = (AuthExpired, AuthInvalid, AuthRequired)
#: an idle kept-alive connection is reused for this long at most (the relay drops idle
#: connections after its ``header_timeout_s``, 10 s by default)
IDLE_REUSE_S = 4.0
_STALE = (OSError, asyncio.IncompleteReadError)
#: link limits per relay URL, fetched once per process (a relay's ``/info`` limits are its
#: configuration: they change only with a restart, and a link's own limits still apply;
#: a resumed link asks again, see :class:`LinkLimitsCache`)
_LIMITS: dict[str, dict[str, float]] = {}
#: a resumed link (re-opened after the relay lost it: most often a relay restart, which
#: may come with other limits) asks ``/info`` again if the limits held are older than this;
#: the links of one restart share that one request
LIMITS_REFRESH_S = 1.0
#: a request the relay refused as too many (429) is tried again this often, after the wait
#: it names (or 50 ms doubling), at most ``RATE_MAX_WAIT`` s each: parties behind one
#: address (one NAT, one test machine) that all start at once exceed a relay's
#: per-address burst for a moment, and a refused link would fail the whole run
RATE_RETRIES = 5
RATE_MAX_WAIT = 1.0
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DEFAULT_LINK_LIMITS: dict[str, float] = {
    "link_max_frame": 1024 * 1024,
    "link_max_bytes": 1024 * 1024 * 1024,
    "link_max_duration_s": 3600.0,
}
_XOR = [bytes(b ^ k for b in range(256)) for k in range(256)]


# --------------------------------------------------------------------------- sans-IO


def mask(key: bytes, data: bytes | bytearray | memoryview) -> bytearray:
    """``data`` XOR the repeated 4-byte ``key`` (four strided ``translate`` passes)."""
    out = bytearray(data)
    for i in range(4):
        out[i::4] = out[i::4].translate(_XOR[key[i]])
    return out


def client_frame(opcode: int, payload: bytes | bytearray | memoryview,
                 key: bytes | None = None) -> bytearray:
    """A final, masked client-to-relay frame (``key``: 4 random bytes unless given), built
    in one buffer: the payload is copied once and masked in place."""
    key = os.urandom(4) if key is None else key
    out = bytearray(_head(opcode, len(payload)))
    out += key
    start = len(out)
    out += payload
    for i in range(4):
        out[start + i::4] = out[start + i::4].translate(_XOR[key[i]])
    return out


def _head(opcode: int, n: int) -> bytes:
    """A final, masked frame's header up to (not including) its masking key."""
    b0 = 0x80 | opcode
    if n < 126:
        return bytes((b0, 0x80 | n))
    if n < 65536:
        return bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
    return bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")


class FrameError(RelayProtocolError):
    """The relay sent a frame that breaks RFC 6455 or our limits."""


class ServerFrameReader:
    """Incremental parser of the relay's (unmasked) frames: :meth:`feed` bytes, get
    ``(opcode, payload)`` messages back (fragments joined; control frames as they come)."""

    def __init__(self, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._opcode: int | None = None
        self._size = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b1 & 0x80:
                raise FrameError("the relay sent a masked frame")
            if b0 & 0x70:
                raise FrameError("the relay sent a frame with RSV bits set")
            n, h = b1 & 0x7F, 2
            if n == 126:
                h = 4
            elif n == 127:
                h = 10
            if len(buf) - pos < h:
                break
            if h > 2:
                n = int.from_bytes(buf[pos + 2:pos + h], "big")
            fin, op = b0 & 0x80, b0 & 0x0F
            if op >= 0x8:
                if not fin or n > 125:
                    raise FrameError("the relay sent a fragmented or oversized control frame")
            elif op not in (OP_CONT, OP_TEXT, OP_BINARY):
                raise FrameError(f"the relay sent a frame of unknown opcode {op}")
            elif self._size + n > self.max_message:
                raise FrameError(
                    f"the relay sent a message of over {self.max_message} bytes")
            if len(buf) - pos < h + n:
                break
            payload = bytes(buf[pos + h:pos + h + n])
            pos += h + n
            if op >= 0x8:
                out.append((op, payload))
                continue
            if op == OP_CONT:
                if self._opcode is None:
                    raise FrameError("the relay sent a continuation without a message")
            elif self._opcode is not None:
                raise FrameError("the relay started a message inside another")
            else:
                self._opcode = op
            if fin and not self._parts:
                out.append((self._opcode, payload))
            else:
                self._parts.append(payload)
                self._size += n
                if fin:
                    out.append((self._opcode, b"".join(self._parts)))
                    self._parts, self._size = [], 0
            if fin:
                self._opcode = None
        del buf[:pos]
        return out


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and headers (names lower-cased) of an HTTP/1.1 response head."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return int(status), headers
    except (ValueError, IndexError):
        raise RelayProtocolError("the relay sent a malformed HTTP response") from None


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for our ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    digest = hashlib.sha1(key.encode() + _WS_GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


class LinkLimitsCache:
    """One client's view of a relay's link limits (``GET /info``): asked once, again after
    an ask that failed (defaults meanwhile), and again for a resumed link (``fresh``) when
    older than :data:`LIMITS_REFRESH_S`. ``shared``: also through the per-process cache."""

    def __init__(self, base_url: str, fetch: Callable[[], Awaitable[Any]], *,
                 shared: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = base_url
        self._fetch = fetch
        self._shared = shared
        self._clock = clock
        self._future: asyncio.Future[dict[str, float]] | None = None
        self._asked_at = 0.0
        self._failed = False

    async def get(self, *, fresh: bool = False) -> dict[str, float]:
        fut = self._future
        if fut is not None and fut.done() and (
            self._failed or (fresh and self._clock() - self._asked_at > LIMITS_REFRESH_S)
        ):
            if self._shared and _LIMITS.get(self.base_url) == fut.result():
                _LIMITS.pop(self.base_url, None)
            fut = None
        if fut is None:
            self._asked_at = self._clock()
            self._failed = False
            fut = self._future = asyncio.ensure_future(self._ask(fresh))
        return dict(await asyncio.shield(fut))

    async def _ask(self, fresh: bool) -> dict[str, float]:
        cached = _LIMITS.get(self.base_url) if self._shared and not fresh else None
        if cached is not None:  # this process asked this relay already
            return dict(cached)
        try:
            limits = link_limits(await self._fetch())
        except RelayError:
            self._failed = True
            return dict(DEFAULT_LINK_LIMITS)
        if self._shared:
            _LIMITS[self.base_url] = limits
        return dict(limits)

    def close(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.cancel()


def frame_too_big(size: int, max_frame: int) -> LinkClosed:
    """The error for a frame over the relay's ``link_max_frame`` (it would close the link)."""
    return LinkClosed(
        f"a frame of {size} bytes exceeds the relay's link_max_frame "
        f"({max_frame} bytes): split it", CloseCode.MESSAGE_TOO_BIG,
    )


def link_limits(info: Any) -> dict[str, float]:
    """The link limits of a relay's ``/info`` (defaults for what is absent or unusable)."""
    out = dict(DEFAULT_LINK_LIMITS)
    limits = info.get("limits") if isinstance(info, dict) else None
    if isinstance(limits, dict):
        for key in out:
            v = limits.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1 << 62:
                out[key] = int(v) if key != "link_max_duration_s" else float(v)
    return out


def _refusal(status: int, headers: dict[str, str], body: bytes, url: str) -> RelayError:
    code = headers.get(ERROR_HEADER, "")
    cls = WIRE_ERRORS.get(code)
    parsed: Any = None
    with contextlib.suppress(RelayError, ValueError):
        parsed = loads_strict(body, max_bytes=MAX_HEAD_BYTES, error=RelayProtocolError,
                              what="relay response") if body else None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return error_from_wire(status, parsed, url)
    if cls is not None:
        doc = (cls.__doc__ or code).strip().splitlines()[0]
        return cls(f"relay refused {url}: {doc}")
    if status in (401, 403):
        return AuthInvalid(f"relay refused {url} ({status})")
    if status == 429:
        return RateLimited(f"relay refused {url} ({status})")
    if status >= 500:
        return RelayInternalError(f"relay failed on {url} ({status})")
    return RelayProtocolError(f"{url} does not speak the relay link protocol ({status})")


# --------------------------------------------------------------------------- asyncio


class _Conn:
    """One HTTP/1.1 connection to the relay (a request, or a WebSocket upgrade)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def head(self) -> tuple[int, dict[str, str]]:
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise RelayProtocolError("the relay sent an oversized HTTP head") from None
        return parse_head(raw)

    async def body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            out = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if len(out) + size > MAX_MESSAGE_BYTES:
                    raise RelayProtocolError("the relay sent an oversized response")
                out += await self.reader.readexactly(size + 2)
                del out[len(out) - 2:]
                if size == 0:
                    return bytes(out)
        if "content-length" in headers:
            n = int(headers["content-length"])
            if not 0 <= n <= MAX_MESSAGE_BYTES:
                raise RelayProtocolError("the relay sent an oversized response")
            return await self.reader.readexactly(n)
        return await self.reader.read(MAX_MESSAGE_BYTES)

    @staticmethod
    def reusable(headers: dict[str, str]) -> bool:
        """Whether the connection may carry another request after this response (its body
        was delimited, and the relay did not say it closes)."""
        delimited = ("content-length" in headers
                     or "chunked" in headers.get("transfer-encoding", "").lower())
        return delimited and headers.get("connection", "").lower() != "close"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class LinkClient:
    """Opens links on one relay for one identity; the token is fetched once and shared."""

    def __init__(self, base_url: str, identity: IdentityKey, *, timeout: float = 10.0,
                 ca_file: str | None = None) -> None:
        """``ca_file``: PEM CA certificates trusted for ``https://`` relays besides the
        system's (default: ``$DIDMESH_RELAY_CA``), as :class:`~.client.RelayClient`."""
        self.base_url = base_url.rstrip("/")
        try:
            parts = urlsplit(self.base_url)
            port = parts.port  # raises ValueError for a port out of range
        except ValueError:
            port, parts = None, urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RelayProtocolError(f"not a relay URL: {base_url[:200]!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port or (443 if self._tls else 80)
        self._netloc = parts.netloc.rsplit("@", 1)[-1]
        self._prefix = parts.path.rstrip("/")
        self.identity = identity
        self.timeout = timeout
        self._ssl = tls_context(ca_file if ca_file is not None else os.environ.get(CA_ENV)) \
            if self._tls else None
        self._token: asyncio.Future[str] | None = None
        self._limits = LinkLimitsCache(self.base_url, lambda: self._json("GET", "/info"),
                                       shared=True)
        self.relay_id: str | None = None
        # one kept-alive connection (the token's): the upgrade that follows reuses it, so
        # a link costs no TCP (and TLS) handshake of its own
        self._idle: tuple[_Conn, float] | None = None

    def _take_idle(self) -> _Conn | None:
        idle, self._idle = self._idle, None
        if idle is None:
            return None
        conn, since = idle
        if (time.monotonic() - since > IDLE_REUSE_S or conn.writer.is_closing()
                or conn.reader.at_eof()):
            conn.close()
            return None
        return conn

    def _keep(self, conn: _Conn) -> None:
        if self._idle is not None:
            self._idle[0].close()
        self._idle = (conn, time.monotonic())

    async def _connect(self) -> _Conn:
        url = self.base_url
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                self._host, self._port, ssl=self._ssl, limit=READ_BUFSIZE,
                server_hostname=self._host if self._ssl else None), self.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise RelayUntrusted(f"cannot reach the relay at {url}: {TLS_HINT} ({exc})") from exc
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise RelayUnreachable(
                f"cannot reach the relay at {url}: {exc.__class__.__name__} {exc}".strip()
            ) from exc
        return _Conn(reader, writer)

    def _request_head(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {self._prefix}{path} HTTP/1.1", f"Host: {self._netloc}",
                 *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        return "\r\n".join(lines).encode("latin-1")

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(RATE_RETRIES + 1):
            try:
                return await self._json_once(method, path, body)
            except RateLimited as exc:
                if attempt == RATE_RETRIES:
                    raise
                await _rate_wait(exc, attempt)
        raise AssertionError("unreachable")

    async def _json_once(self, method: str, path: str, body: Any = None) -> Any:
        url = self.base_url + path
        data = b"" if body is None else json.dumps(body).encode()
        request = self._request_head(method, path, {
            "Content-Type": "application/json", "Content-Length": str(len(data))}) + data
        for attempt in range(2):
            conn = self._take_idle() if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            keep = False
            try:
                async with asyncio.timeout(self.timeout):
                    conn.writer.write(request)
                    status, headers = await conn.head()
                    payload = await conn.body(headers)
                keep = _Conn.reusable(headers)
            except _STALE as exc:
                if reused:  # the relay closed the idle connection: once more on a new one
                    continue
                raise RelayUnreachable(
                    f"cannot reach the relay at {url}: {exc.__class__.__name__} {exc}".strip()
                ) from exc
            except (asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
                raise RelayUnreachable(
                    f"cannot reach the relay at {url}: {exc.__class__.__name__} {exc}".strip()
                ) from exc
            finally:
                if keep:
                    self._keep(conn)
                else:
                    conn.close()
            if status >= 400:
                raise _refusal(status, headers, payload, url)
            return loads_strict(payload, max_bytes=MAX_MESSAGE_BYTES,
                                error=RelayProtocolError, what="relay response")
        raise RelayUnreachable(f"cannot reach the relay at {url}: it closed the connection")

    async def token(self) -> str:
        """A bearer token for our DID: fetched once per client (one challenge for all of a
        run's links on this relay), again only after the relay refused it."""
        if self._token is None:
            self._token = asyncio.ensure_future(self._fetch_token())
        fut = self._token
        try:
            return await asyncio.shield(fut)
        except BaseException:
            if fut.done() and self._token is fut:
                self._token = None  # the next caller tries again (once, for all waiters)
            raise

    async def _fetch_token(self) -> str:
        ch = await self._json("POST", "/v1/auth/challenge", {"did": self.identity.did})
        self.relay_id, answer = answer_challenge(self.identity, ch)
        tok = await self._json("POST", "/v1/auth/token", answer)
        if not isinstance(tok, dict) or not isinstance(tok.get("token"), str):
            raise RelayProtocolError("malformed token from the relay")
        return str(tok["token"])

    async def info(self) -> Any:
        """The relay's ``GET /info`` document (as it came; callers check what they use)."""
        return await self._json("GET", "/info")

    async def link_limits(self, *, fresh: bool = False) -> dict[str, float]:
        """The relay's link limits from its ``/info`` (:class:`LinkLimitsCache`; defaults
        if it fails); ``fresh``: for a resumed link, asked again unless just asked."""
        return await self._limits.get(fresh=fresh)

    async def _upgrade(self, path: str, first: bytes = b"") -> _Conn:
        for attempt in range(RATE_RETRIES + 1):
            try:
                return await self._upgrade_once(path, first)
            except RateLimited as exc:
                if attempt == RATE_RETRIES:
                    raise
                await _rate_wait(exc, attempt)
        raise AssertionError("unreachable")

    async def _upgrade_once(self, path: str, first: bytes = b"") -> _Conn:
        """One upgrade request; ``first`` (a client frame) goes in the same write, right
        after it, without waiting for the 101: the relay reads it as the WebSocket's first
        message once the upgrade is done (a refused upgrade's connection is closed)."""
        url = self.base_url + path
        attempt = 0
        while True:
            token = await self.token()
            key = base64.b64encode(os.urandom(16)).decode()
            conn = self._take_idle()  # the token's connection, if still open
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                conn.writer.write(self._request_head("GET", path, {
                    "Upgrade": "websocket", "Connection": "Upgrade",
                    "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13",
                    "Authorization": "Bearer " + token}) + first)
                status, headers = await conn.head()
                if status == 101:
                    if not hmac.compare_digest(headers.get("sec-websocket-accept", ""),
                                               accept_key(key)):
                        raise RelayProtocolError(f"{url}: wrong Sec-WebSocket-Accept")
                    return conn
                body = b""
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        body = await conn.body(headers)
                err = _refusal(status, headers, body, url)
            except _STALE as exc:
                conn.close()
                if reused:  # the relay closed the idle connection: again on a new one
                    continue
                raise RelayUnreachable(f"cannot reach the relay at {url}: {exc}") from exc
            except BaseException:
                conn.close()
                raise
            conn.close()
            if isinstance(err, _AUTH_ERRORS) and attempt == 0:
                attempt += 1
                self._token = None  # expired, or the relay restarted with a new secret
                continue
            raise err

    async def open_link(self, session: str, peer: str, *, link_id: str = "",
                        timeout: float = 40.0) -> WsLink:
        """Ask the relay to link us with ``peer`` in ``session``; returns once both ends
        joined. Raises :class:`LinkClosed` (with the relay's close code), a
        :class:`RelayError`, or TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            # alongside the upgrade; a resumed link's relay may have restarted with others
            limits = asyncio.ensure_future(self.link_limits(fresh=bool(link_id)))
            req = LinkRequest(session, peer, link_id)
            try:
                # the route lets a proxy send both ends to one relay process (relay.md);
                # the link request rides with the upgrade: no round trip of its own
                conn = await self._upgrade(
                    "/v1/link?route=" + req.route(self.identity.did),
                    bytes(client_frame(OP_TEXT, req.to_json().encode())))
                link = WsLink(conn, peer)
                try:
                    op, data = await link.next_message()
                except BaseException:
                    conn.close()
                    raise
                if op == OP_TEXT:
                    try:
                        link.linked = Linked.parse(data.decode("utf-8", "replace"))
                    except RelayError:
                        await link.close(CloseCode.MALFORMED)
                        raise
                    link.session = link.linked.session
                    link.set_limits(await limits)
                    return link
                code = link.close_code or CloseCode.PEER_GONE
                await link.close(code)
                raise LinkClosed(f"the relay refused the link: {close_reason(code)} ({code})",
                                 code)
            finally:
                if not limits.done():
                    limits.cancel()

    async def observed(self, *, local_port: int | None = None) -> ObservedAddress:
        """Our address and port as this relay sees them (``GET /v1/observed``), asked from
        ``local_port`` if given: as :meth:`~.client.RelayClient.observed`."""
        return await observe(self.base_url, await self.token(), local_port=local_port,
                             timeout=self.timeout)

    async def close(self) -> None:
        if self._token is not None and not self._token.done():
            self._token.cancel()
        self._limits.close()
        idle, self._idle = self._idle, None
        if idle is not None:
            idle[0].close()


async def _rate_wait(exc: RateLimited, attempt: int) -> None:
    """Wait before trying a refused request again: the relay's ``retry_after`` if it gave
    one, else 50 ms doubling; at most :data:`RATE_MAX_WAIT` s."""
    wait = getattr(exc, "retry_after", None)
    if not isinstance(wait, int | float) or not 0 < wait < 3600:
        wait = 0.05 * 2 ** attempt
    await asyncio.sleep(min(RATE_MAX_WAIT, float(wait)) * (1 + 0.25 * random.random()))


class WsLink:
    """An established link (the interface of :class:`didmesh.relay.client.Link`)."""

    def __init__(self, conn: _Conn, peer: str) -> None:
        self._conn = conn
        self.peer = peer
        self.session = ""
        self.linked: Linked | None = None
        self.close_code: int | None = None
        self._frames = ServerFrameReader()
        self._pending: list[tuple[int, bytes]] = []
        self._close_sent = False
        self._reading = False
        self._ended = asyncio.Event()
        self.set_limits(DEFAULT_LINK_LIMITS)

    def set_limits(self, lim: dict[str, float]) -> None:
        self.max_frame = int(lim["link_max_frame"])
        self.max_bytes = int(lim["link_max_bytes"])
        self.max_duration_s = float(lim["link_max_duration_s"])

    @property
    def closed(self) -> bool:
        return self.close_code is not None or self._conn.writer.is_closing()

    async def send_raw(self, opcode: int, payload: bytes | bytearray | memoryview) -> None:
        self._conn.writer.write(client_frame(opcode, payload))  # one write: one segment
        await self._conn.writer.drain()

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Write ``data`` as one frame now, without waiting for the socket to drain: what
        the socket cannot take at once waits in the transport's buffer (as with a direct
        TCP link's write), so it leaves while the caller's event loop is busy elsewhere.
        False: nothing was written (the link is closed or the frame over ``max_frame``)."""
        if self.closed or len(data) > self.max_frame:
            return False
        self._conn.writer.write(client_frame(OP_BINARY, data))
        return True

    async def send(self, data: bytes | memoryview) -> None:
        if self.closed:
            raise self._closed_error()
        if len(data) > self.max_frame:
            raise frame_too_big(len(data), self.max_frame)
        try:
            await self.send_raw(OP_BINARY, data)
        except (ConnectionError, RuntimeError):
            if self.close_code is None:
                self.close_code = CloseCode.ABNORMAL
            self._lost()
            raise self._closed_error() from None

    async def next_message(self) -> tuple[int, bytes]:
        """The next data message, or ``(OP_CLOSE, b"")`` once the link ended (pings answered)."""
        while True:
            while self._pending:
                op, payload = self._pending.pop(0)
                if op == OP_PING:
                    if not self._close_sent:
                        with contextlib.suppress(Exception):
                            self._conn.writer.write(client_frame(OP_PONG, payload))
                    continue
                if op == OP_PONG:
                    continue
                if op == OP_CLOSE:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    if self.close_code is None:
                        self.close_code = code
                    if not self._close_sent:  # answer the relay's close
                        self._close_sent = True
                        with contextlib.suppress(Exception):
                            self._conn.writer.write(client_frame(OP_CLOSE, payload[:2]))
                    self._lost()
                    return OP_CLOSE, b""
                return op, payload
            if self._ended.is_set():
                return OP_CLOSE, b""
            try:
                data = await self._conn.reader.read(1 << 20)
            except (OSError, asyncio.IncompleteReadError):
                data = b""
            if not data:
                if self.close_code is None:  # no close frame: the relay (process) is gone
                    self.close_code = CloseCode.ABNORMAL
                self._lost()
                return OP_CLOSE, b""
            try:
                self._pending += self._frames.feed(data)
            except FrameError:
                self.close_code = CloseCode.MALFORMED
                self._lost()
                raise

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next frame; raises :class:`LinkClosed` when the link ends, TimeoutError."""
        if self.close_code is not None and not self._pending:
            raise self._closed_error()
        self._reading = True
        try:
            async with asyncio.timeout(timeout):
                op, data = await self.next_message()
        finally:
            self._reading = False
        if op == OP_BINARY:
            return data
        if op == OP_TEXT:
            await self.close(CloseCode.MALFORMED)
            raise LinkClosed("the relay sent a text frame on an established link",
                             CloseCode.MALFORMED)
        raise self._closed_error()

    def _lost(self) -> None:
        self._ended.set()
        self._conn.close()

    def _closed_error(self) -> LinkClosed:
        code = self.close_code or CloseCode.PEER_GONE
        return LinkClosed(f"link to {self.peer[:40]}... closed: {close_reason(code)}", code)

    async def close(self, code: int = CloseCode.NORMAL) -> None:
        """Send our close frame and wait (at most 1 s) for the relay's answer."""
        if not self._close_sent and not self._conn.writer.is_closing():
            self._close_sent = True
            with contextlib.suppress(Exception):
                self._conn.writer.write(client_frame(OP_CLOSE, int(code).to_bytes(2, "big")))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        if self._reading:  # the reader task sees the answer
                            await self._ended.wait()
                        else:
                            while (await self.next_message())[0] != OP_CLOSE:
                                pass
        if self.close_code is None:
            self.close_code = code
        self._lost()
