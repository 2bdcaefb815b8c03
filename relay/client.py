"""Async relay client (specs/relay.md): post, inbox stream, ack, links.

>>> async with RelayClient("http://127.0.0.1:8470", identity) as relay:   # doctest: +SKIP
...     await relay.send(peer_did, "session-1", b"hello")
...     async for item in relay.inbox():
...         plaintext = item.open(identity, now_ms=...)
...     link = await relay.open_link("session-1", peer_did)

Posting is idempotent on the relay (same envelope id and content = same result), so
:meth:`RelayClient.post` retries with backoff on connection failures, 429 and 5xx. The inbox
stream reconnects with backoff and falls back from WebSocket push to long-poll. Relay
refusals raise the classes of :mod:`didmesh.relay.errors`; connection failures raise
:class:`RelayUnreachable` naming the URL. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from didmesh.identity.keys import IdentityKey
from didmesh.identity.strict_json import loads_strict

from .auth import answer_challenge
from .envelope import DEFAULT_TTL_S, Envelope, open_envelope, seal
from .errors import (
    WIRE_ERRORS,
    AuthExpired,
    AuthInvalid,
    AuthRequired,
    InvalidEnvelope,
    LinkClosed,
    RateLimited,
    RelayConfigError,
    RelayError,
    RelayInternalError,
    RelayProtocolError,
    RelayUnreachable,
    RelayUntrusted,
    Replay,
    ShuttingDown,
    error_from_wire,
)

# the relay CA setting and TLS context are shared with the aiohttp-free link client
from .linkclient import CA_ENV, DEFAULT_LINK_LIMITS, LinkLimitsCache, frame_too_big, tls_context
from .linkclient import TLS_HINT as _TLS_HINT
from .observed import ObservedAddress, observe
from .protocol import CloseCode, Linked, LinkRequest, close_reason

ERROR_HEADER = "X-Didmesh-Error"
_RETRYABLE = (RelayUnreachable, ShuttingDown, RateLimited, RelayInternalError)
_AUTH_ERRORS = (AuthExpired, AuthInvalid, AuthRequired)
#: seconds between WebSocket pings from the client (push socket and links), unless set
DEFAULT_HEARTBEAT_S = 20.0




def unreachable(url: str, exc: BaseException) -> RelayUnreachable:
    """The error for a failed connection to ``url`` (TLS failures say what to do)."""
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
        return RelayUntrusted(f"cannot reach the relay at {url}: {_TLS_HINT} ({exc})")
    return RelayUnreachable(
        f"cannot reach the relay at {url}: {exc.__class__.__name__} {exc}".strip()
    )


#: seconds an idle connection to a relay is kept for reuse (below the relay's 10 s)
KEEPALIVE_S = 5.0

#: socket read size: big forwarded frames arrive in one read instead of several
READ_BUFSIZE = 1 << 20
#: the largest response body or WebSocket message we accept from a relay
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class _Default(enum.Enum):
    CLIENT = "client"  # use the client's ``heartbeat``


def _check_heartbeat(value: float | None) -> float | None:
    if value is not None and not value > 0:  # also refuses NaN
        raise RelayConfigError(
            f"relay client: heartbeat must be positive seconds or None (off), not {value!r}"
        )
    return value


@dataclass(frozen=True)
class PostResult:
    id: str
    received_ms: int
    expires_ms: int
    duplicate: bool = False


@dataclass(frozen=True)
class Received:
    envelope: Envelope
    received_ms: int

    @property
    def id(self) -> str:
        return self.envelope.id

    def open(self, identity: IdentityKey, *, now_ms: int | None = None) -> bytes:
        """Verify and decrypt (raises :class:`EnvelopeRejected`)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return open_envelope(identity, self.envelope, now_ms=now)


class Backoff:
    """Exponential backoff with full jitter: 0.1 s doubling up to ``cap``."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base, self.cap, self.n = base, cap, 0

    def reset(self) -> None:
        self.n = 0

    async def sleep(self, at_least: float = 0.0) -> None:
        delay = min(self.cap, self.base * 2**self.n)
        self.n += 1
        await asyncio.sleep(max(at_least, random.uniform(delay / 2, delay)))


#: the relay's link limits assumed when its /info does not state them (RelayConfig defaults)
class Link:
    """An established link: ordered binary frames to and from the peer.

    ``max_frame`` and ``max_bytes`` are the relay's announced ``link_max_frame`` and
    ``link_max_bytes`` (``/info``): :meth:`send` refuses a frame larger than ``max_frame``
    (the relay would close the link); a caller with more to send splits it.
    """

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, linked: Linked,
        limits: dict[str, float] | None = None,
    ) -> None:
        self._ws = ws
        self.linked = linked
        self.peer = linked.peer
        self.session = linked.session
        self.close_code: int | None = None
        lim = limits or DEFAULT_LINK_LIMITS
        self.max_frame = int(lim["link_max_frame"])
        self.max_bytes = int(lim["link_max_bytes"])
        self.max_duration_s = float(lim["link_max_duration_s"])

    async def send(self, data: bytes | memoryview) -> None:
        if self._ws.closed or self.close_code is not None:
            raise await self._closed()
        if len(data) > self.max_frame:
            raise frame_too_big(len(data), self.max_frame)
        try:
            await self._ws.send_bytes(data)  # type: ignore[arg-type]  # memoryview works
        except (ConnectionError, RuntimeError):
            raise await self._closed() from None

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next frame; raises :class:`LinkClosed` when the link ends, TimeoutError."""
        if self.close_code is not None:
            raise await self._closed()
        try:
            msg = await self._ws.receive(timeout=timeout)
        except (ConnectionError, RuntimeError):  # e.g. answering a ping on a cut connection
            raise await self._closed() from None
        if msg.type is aiohttp.WSMsgType.BINARY:
            return msg.data
        if msg.type is aiohttp.WSMsgType.TEXT:
            await self.close(CloseCode.MALFORMED)
            raise LinkClosed("the relay sent a text frame on an established link",
                             CloseCode.MALFORMED)
        if msg.type is aiohttp.WSMsgType.CLOSE:
            self.close_code = int(msg.data)
        raise await self._closed()

    async def _closed(self) -> LinkClosed:
        """The close code the relay sent, read from the socket if need be (bounded wait)."""
        if self.close_code is None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    while True:
                        msg = await self._ws.receive()
                        if msg.type is aiohttp.WSMsgType.CLOSE:
                            self.close_code = int(msg.data)
                            break
                        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
        if self.close_code is None:
            self.close_code = self._ws.close_code or CloseCode.PEER_GONE
        if not self._ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
        code = self.close_code
        return LinkClosed(f"link to {self.peer[:40]}... closed: {close_reason(code)}", code)

    def __aiter__(self) -> Link:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except LinkClosed:
            raise StopAsyncIteration from None

    async def close(self, code: int = CloseCode.NORMAL) -> None:
        if not self._ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(code=code), 5)
        if self.close_code is None:
            self.close_code = code

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def __aenter__(self) -> Link:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RelayClient:
    def __init__(
        self,
        base_url: str,
        identity: IdentityKey,
        *,
        timeout: float = 10.0,
        retries: int = 4,
        local_addr: str | None = None,
        clock: Callable[[], float] = time.time,
        heartbeat: float | None = DEFAULT_HEARTBEAT_S,
        ca_file: str | None = None,
    ) -> None:
        """``ca_file``: PEM CA certificates trusted for ``https://`` relays besides the
        system's (default: ``$DIDMESH_RELAY_CA``).

        ``heartbeat``: seconds between our WebSocket pings on the push socket and on
        links (a pong must follow within half of it, else aiohttp closes the socket);
        ``None`` turns our pings off. While our event loop is blocked the pong cannot be
        read in time, so a program that blocks for long should pass ``None`` (or more
        than its longest stall) and watch liveness itself, as the mesh does."""
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.timeout = timeout
        self.heartbeat = _check_heartbeat(heartbeat)
        self.retries = retries
        self.clock = clock
        self._local_addr = local_addr
        self._ssl = tls_context(ca_file if ca_file is not None else os.environ.get(CA_ENV))
        self._http: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_expires = 0
        self._auth_lock = asyncio.Lock()
        #: :meth:`inbox` has reached the relay (push socket open, or one poll answered)
        self.inbox_reached = False
        #: the last error :meth:`inbox` retried after (the cause, if it never reached it)
        self.inbox_error: RelayError | None = None
        self.relay_id: str | None = None
        self._push_ws: aiohttp.ClientWebSocketResponse | None = None
        self._limits = LinkLimitsCache(self.base_url, self.info)

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> RelayClient:
        self._session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._limits.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            connector = aiohttp.TCPConnector(
                # drop idle connections before the relay does (its header_timeout_s,
                # 10 s by default), so a request never races the relay's close
                limit=0, ssl=self._ssl, keepalive_timeout=KEEPALIVE_S,
                local_addr=(self._local_addr, 0) if self._local_addr else None,
            )
            self._http = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
                read_bufsize=READ_BUFSIZE,
            )
        return self._http

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- HTTP -------------------------------------------------------------------------------
    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        auth: bool = False,
        timeout: float | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        url = self.base_url + path
        for attempt in range(2):
            headers = {"Content-Type": "application/json"}
            if auth:
                headers["Authorization"] = "Bearer " + await self.token()
            data = raw if raw is not None else (None if body is None else json.dumps(body))
            try:
                async with self._session().request(
                    method, url, data=data, headers=headers, params=params,
                    timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
                ) as resp:
                    payload = await resp.read()
                    status = resp.status
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                    TimeoutError) as exc:
                raise unreachable(url, exc) from exc
            try:
                parsed = loads_strict(
                    payload, max_bytes=MAX_MESSAGE_BYTES, error=RelayProtocolError,
                    what="relay response",
                ) if payload else None
            except RelayProtocolError:
                parsed = None
            if status < 400:
                if parsed is None:
                    raise RelayProtocolError(f"the relay at {url} answered non-JSON")
                return status, parsed
            err = error_from_wire(status, parsed, url)
            if auth and attempt == 0 and isinstance(err, _AUTH_ERRORS):
                self._token = None  # expired or relay restarted with a new secret: once more
                continue
            err.retry_after = float(resp.headers.get("Retry-After", "0") or 0)
            raise err
        raise AssertionError("unreachable")

    async def info(self) -> dict[str, Any]:
        _, data = await self._request("GET", "/info")
        if isinstance(data, dict):
            self.relay_id = data.get("relay_id")
        return data

    async def link_limits(self, *, fresh: bool = False) -> dict[str, float]:
        """The relay's link limits from its ``/info`` (:class:`LinkLimitsCache`; defaults
        if it fails); ``fresh``: for a resumed link, asked again unless just asked."""
        return await self._limits.get(fresh=fresh)

    async def token(self) -> str:
        """A bearer token proving control of our DID (cached until shortly before expiry)."""
        async with self._auth_lock:
            if self._token and self.now_ms() < self._token_expires - 30_000:
                return self._token
            _, ch = await self._request(
                "POST", "/v1/auth/challenge", body={"did": self.identity.did}
            )
            self.relay_id, answer = answer_challenge(self.identity, ch)
            _, tok = await self._request("POST", "/v1/auth/token", body=answer)
            try:
                self._token, self._token_expires = str(tok["token"]), int(tok["expires_ms"])
            except (KeyError, TypeError, ValueError, OverflowError):
                raise RelayProtocolError("malformed token from the relay") from None
            # our clock may differ from the relay's: trust a short lifetime only
            self._token_expires = min(self._token_expires, self.now_ms() + 300_000)
            return self._token

    async def observed(self, *, local_port: int | None = None) -> ObservedAddress:
        """Our address and port as this relay sees them (``GET /v1/observed``), asked from
        ``local_port`` if given (e.g. the port our listener holds): its public mapping."""
        return await observe(self.base_url, await self.token(), local_port=local_port,
                             timeout=self.timeout)

    # -- mailboxes -----------------------------------------------------------------------------
    async def post(self, envelope: Envelope) -> PostResult:
        """Post, retrying with backoff (safe: posting is idempotent)."""
        raw = envelope.to_json()
        backoff = Backoff(cap=2.0)
        for attempt in range(self.retries + 1):
            try:
                _, data = await self._request("POST", "/v1/envelopes", raw=raw)
                try:
                    return PostResult(
                        str(data["id"]), int(data["received_ms"]), int(data["expires_ms"]),
                        bool(data["duplicate"]),
                    )
                except (KeyError, TypeError, ValueError, OverflowError):
                    raise RelayProtocolError("malformed post result from the relay") from None
            except Replay:
                if attempt == 0:
                    raise
                # an earlier attempt of ours was stored and already delivered
                return PostResult(envelope.id, 0, envelope.expires_ms, duplicate=True)
            except RelayUntrusted:
                raise
            except _RETRYABLE as exc:
                if attempt == self.retries:
                    raise
                await backoff.sleep(getattr(exc, "retry_after", 0.0))
        raise AssertionError("unreachable")

    async def send(
        self, to: str, session: str, plaintext: bytes, *, ttl: int = DEFAULT_TTL_S
    ) -> PostResult:
        """Seal ``plaintext`` to ``to`` and post it."""
        env = seal(self.identity, to, session, plaintext, now_ms=self.now_ms(), ttl=ttl)
        return await self.post(env)

    @staticmethod
    def _parse_items(items: Any) -> list[Received]:
        if not isinstance(items, list):
            raise RelayProtocolError("malformed inbox batch from the relay")
        out = []
        for item in items:
            try:
                out.append(Received(Envelope.from_dict(item["envelope"]), int(item["received_ms"])))
            except (KeyError, TypeError, ValueError, OverflowError, InvalidEnvelope) as exc:
                raise RelayProtocolError(f"malformed envelope from the relay: {exc}") from None
        return out

    async def fetch(self, *, wait: float = 0.0, limit: int = 100) -> list[Received]:
        """One (long-)poll: envelopes waiting for us, waiting up to ``wait`` s for the first."""
        _, data = await self._request(
            "GET", "/v1/inbox", auth=True, timeout=wait + self.timeout,
            params={"wait": str(wait), "limit": str(limit)},
        )
        return self._parse_items(data.get("envelopes") if isinstance(data, dict) else None)

    async def ack(self, ids: list[str]) -> int:
        """Delete delivered envelopes from our inbox; returns how many were deleted."""
        total = 0
        for i in range(0, len(ids), 1000):
            _, data = await self._request(
                "POST", "/v1/inbox/ack", body={"ids": ids[i : i + 1000]}, auth=True
            )
            try:
                total += int(data["deleted"])
            except (KeyError, TypeError, ValueError, OverflowError):
                raise RelayProtocolError("malformed ack result from the relay") from None
        return total

    async def ack_over_push(self, ids: list[str]) -> bool:
        """Acknowledge over the open push socket of :meth:`inbox` (no request, no answer:
        cheaper than :meth:`ack`); False if no push socket is open (then call :meth:`ack`).
        An acknowledgement lost with the socket only means the envelopes come again."""
        ws = self._push_ws
        if ws is None or ws.closed:
            return False
        try:
            for i in range(0, len(ids), 1000):
                await ws.send_str(json.dumps({"type": "ack", "ids": ids[i : i + 1000]}))
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def inbox(
        self, *, push: bool = True, poll_wait: float = 25.0, auto_ack: bool = False
    ) -> AsyncIterator[Received]:
        """Every envelope for us, as it arrives (each once per iterator); forever.

        Reconnects with backoff. Envelopes are re-sent by the relay until acknowledged:
        call :meth:`ack` after handling them, or pass ``auto_ack=True`` to acknowledge each
        item when the loop asks for the next one (over the push socket: no extra request;
        an item the loop breaks on is not acknowledged: ack it yourself).
        Wrap in ``asyncio.timeout`` to bound it.
        """
        seen: OrderedDict[str, None] = OrderedDict()
        backoff = Backoff()

        def fresh(items: list[Received]) -> list[Received]:
            out = []
            for item in items:
                if item.id not in seen:
                    seen[item.id] = None
                    out.append(item)
            while len(seen) > 100_000:
                seen.popitem(last=False)
            return out

        while True:
            try:
                if push:
                    try:
                        async for batch in self._push_batches(backoff):
                            for item in fresh(batch):
                                yield item
                                if auto_ack and self._push_ws is not None:
                                    with contextlib.suppress(ConnectionError, RuntimeError):
                                        await self._push_ws.send_str(
                                            '{"type":"ack","ids":["' + item.id + '"]}'
                                        )
                    except _PushUnavailable:
                        push = False
                        continue
                else:
                    batch = await self.fetch(wait=poll_wait)
                    self.inbox_reached = True
                    backoff.reset()
                    for item in fresh(batch):
                        yield item
                    if auto_ack and batch:
                        await self.ack([i.id for i in batch])
                    continue
            except RelayUntrusted:
                raise  # retrying cannot help: say so now
            except (RelayUnreachable, ShuttingDown, RelayInternalError, RateLimited) as exc:
                self.inbox_error = exc
            await backoff.sleep()

    async def _push_batches(self, backoff: Backoff) -> AsyncIterator[list[Received]]:
        url = self.base_url + "/v1/inbox/ws"
        ws = await self._ws_connect(url, lambda _status: _PushUnavailable(),
                                    heartbeat=self.heartbeat)
        async with ws:
            backoff.reset()
            self._push_ws = ws
            self.inbox_reached = True  # the relay sends what waits right after the upgrade
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = loads_strict(
                    msg.data, max_bytes=MAX_MESSAGE_BYTES, error=RelayProtocolError,
                    what="push message from the relay",
                )
                if isinstance(data, dict) and data.get("type") == "envelopes":
                    yield self._parse_items(data.get("items"))
        self._push_ws = None
        raise RelayUnreachable(f"push connection to {url} closed ({ws.close_code})")

    async def _ws_connect(
        self, url: str, unknown: Callable[[int], Exception], **kw: Any
    ) -> aiohttp.ClientWebSocketResponse:
        """Upgrade ``url`` with our token (renewed once if the relay refuses it). A refusal
        without a relay error code raises ``unknown(status)``."""
        for attempt in range(2):
            headers = {"Authorization": "Bearer " + await self.token()}
            try:
                return await self._session().ws_connect(
                    url, headers=headers, max_msg_size=MAX_MESSAGE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0), **kw,
                )
            except aiohttp.WSServerHandshakeError as exc:
                err = _handshake_error(exc, url) or unknown(exc.status)
                if isinstance(err, _AUTH_ERRORS) and attempt == 0:
                    self._token = None
                    continue
                raise err from None
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise unreachable(url, exc) from exc
        raise AuthInvalid("the relay keeps refusing our token")

    # -- links ---------------------------------------------------------------------------
    async def open_link(
        self, session: str, peer: str, *, link_id: str = "", timeout: float = 40.0,
        heartbeat: float | None | _Default = _Default.CLIENT,
    ) -> Link:
        """Ask the relay to link us with ``peer`` in ``session``; returns once both ends joined.

        ``heartbeat``: our WebSocket ping interval on this link (seconds, ``None`` = off);
        by default the client's. The relay pings too (its ``ws_heartbeat_s``).

        Raises :class:`LinkClosed` (close code: pairing timeout, duplicate...), :class:`LinkLimit`,
        :class:`RelayUnreachable`, or TimeoutError after ``timeout`` seconds.
        """
        req = LinkRequest(session, peer, link_id)
        url = self.base_url + "/v1/link?route=" + req.route(self.identity.did)
        beat = self.heartbeat if heartbeat is _Default.CLIENT else _check_heartbeat(heartbeat)
        async with asyncio.timeout(timeout):
            # alongside the upgrade; a resumed link's relay may have restarted with others
            limits = asyncio.ensure_future(self.link_limits(fresh=bool(link_id)))
            try:
                # autoclose off: we read the relay's close code ourselves (aiohttp reports 1006
                # if the relay drops TCP right after its close frame)
                ws = await self._ws_connect(
                    url,
                    lambda status: RelayProtocolError(
                        f"{url} does not speak the relay link protocol ({status})"
                    ),
                    heartbeat=beat, compress=0, autoclose=False,
                )
                try:
                    await ws.send_str(req.to_json())
                    msg = await ws.receive()
                except BaseException:
                    await ws.close()
                    raise
                if msg.type is aiohttp.WSMsgType.TEXT:
                    try:
                        linked = Linked.parse(msg.data)
                    except RelayError:
                        await ws.close(code=CloseCode.MALFORMED)
                        raise
                    return Link(ws, linked, await limits)
                code = int(msg.data) if msg.type is aiohttp.WSMsgType.CLOSE else (
                    ws.close_code or CloseCode.PEER_GONE)
                with contextlib.suppress(Exception):
                    await ws.close()
                raise LinkClosed(
                    f"the relay refused the link: {close_reason(code)} ({code})", code
                )
            finally:
                if not limits.done():
                    limits.cancel()


class _PushUnavailable(Exception):
    pass


def _handshake_error(exc: aiohttp.WSServerHandshakeError, url: str) -> RelayError | None:
    """Map a refused WebSocket upgrade to the relay's error (sent as a header)."""
    code = exc.headers.get(ERROR_HEADER, "") if exc.headers else ""
    cls = WIRE_ERRORS.get(code)
    if cls is not None:
        doc = (cls.__doc__ or code).strip().splitlines()[0]
        return cls(f"relay refused {url}: {doc}")
    if exc.status in (401, 403):
        return AuthInvalid(f"relay refused {url} ({exc.status})")
    if exc.status == 429:
        return RateLimited(f"relay refused {url} ({exc.status})")
    if exc.status >= 500:
        return RelayInternalError(f"relay failed on {url} ({exc.status})")
    return None
