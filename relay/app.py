"""The relay's aiohttp application: HTTP endpoints, push and link WebSockets
(specs/relay.md; endpoints in specs/relay-api.yaml).

This module is the adapter: every decision is made by the sans-IO parts (envelope, auth,
protocol, limits) and the store; handlers only move bytes and map errors to responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMessage, WSMsgType, web
from didmesh.identity.strict_json import loads_strict

from .auth import Authenticator
from .config import RelayConfig
from .conns import ConnectionGuard, log_throttled, throttle_allows
from .envelope import Envelope
from .errors import (
    AuthInvalid,
    AuthRequired,
    InvalidEnvelope,
    LinkLimit,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    RelayConfigError,
    RelayError,
    RelayInternalError,
    RelayRequestError,
    RequestTimeout,
    ShuttingDown,
    StaleEnvelope,
    TooLarge,
    UnsupportedMediaType,
    client_names,
    error_body,
)
from .fastlink import FastLink
from .forwarded import TrustedProxies
from .httperrors import BODY_ERRORS, body_error
from .limits import LimitSettings
from .links import (
    LinkDuplicate,
    LinkEnd,
    LinkHub,
    LinkPeerGone,
    close_peer,
    close_ws,
    receive_data,
    settle,
)
from .logtext import inert, request_target_path
from .metrics import Metrics, process_stats
from .observed import observed_handler
from .protocol import (
    CloseCode,
    close_reason,
    parse_ack_ids,
    parse_link_request,
    parse_push_client_message,
)
from .secret import fingerprint
from .splice import Splice
from .store.base import PutPolicy, Store, StoredEnvelope
from .store.url import parse_store_url

log = logging.getLogger("didmesh.relay")
#: the 404 and 405 messages: fixed, never the path or method the client sent
NOT_FOUND_MESSAGE = (
    "no such endpoint on this relay (GET /info describes it; the API is specs/relay-api.yaml)"
)
METHOD_NOT_ALLOWED_MESSAGE = (
    "this endpoint does not take that method; the Allow header lists the ones it takes"
)
#: seconds between checks that the processes on a shared store agree on secret and relay id
AGREE_INTERVAL_S = 5.0


def _version() -> str:
    try:
        return importlib.metadata.version("didmesh")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RELAY_KEY: web.AppKey[Relay] = web.AppKey("relay", object)  # type: ignore[arg-type]


class Relay:
    """State of one relay process; the handlers are its methods."""

    def __init__(
        self, config: RelayConfig, store: Store, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.metrics = Metrics()
        self.hub = LinkHub(config, self.metrics, store.bus)
        limits = store.limits(LimitSettings.of(config), clock)
        self.rate_ip, self.rate_did, self.slots = limits.rate_ip, limits.rate_did, limits.slots
        self.auth: Authenticator | None = None
        self.relay_id = config.relay_id
        self.stun_ports: list[int] = []  # the UDP ports relay/stun.py answers on (server.py)
        self.shutting_down = False
        self.draining = False
        self._sockets: set[web.WebSocketResponse] = set()
        self._push: set[web.WebSocketResponse] = set()
        self.guard: ConnectionGuard | None = None  # set by the server (connection caps)
        self.proxies = TrustedProxies(config.trusted_proxies)
        self._prune_task: asyncio.Task[None] | None = None
        self._agree_task: asyncio.Task[None] | None = None
        self.secret_fp = ""
        self._flushed: dict[str, int] = {}
        self._flush_lock = asyncio.Lock()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- lifecycle --------------------------------------------------------------------
    async def on_startup(self, app: web.Application) -> None:
        await self.store.start()
        secret = await self.store.secret()
        if not self.relay_id:
            self.relay_id = "relay-" + hashlib.sha256(b"relay-id" + secret).hexdigest()[:16]
        self.auth = Authenticator(
            secret,
            self.relay_id,
            challenge_ttl_ms=self.config.challenge_ttl_s * 1000,
            token_ttl_ms=self.config.token_ttl_s * 1000,
        )
        self.secret_fp = fingerprint(secret)
        problem = await self.store.agree(self.secret_fp, self.relay_id)
        if problem:
            await self.store.close()
            raise RelayConfigError(problem)
        await self.hub.start(secret)
        self._prune_task = asyncio.create_task(self._prune_loop(), name="relay-prune")
        self._agree_task = asyncio.create_task(self._agree_loop(), name="relay-agree")

    async def on_shutdown(self, app: web.Application) -> None:
        """SIGTERM: refuse new work, wake long-polls, close sockets with 1001."""
        self.shutting_down = True
        self.store.notifier.wake_all()
        sockets = list(self._sockets)
        for ws in sockets:
            close_peer(ws, CloseCode.GOING_AWAY)
        await asyncio.gather(*(settle(ws) for ws in sockets), return_exceptions=True)

    async def drain(self, bound: float, hurry: asyncio.Event) -> int:
        """SIGTERM, before shutdown: refuse new links (503 ``shutting_down``), say
        ``draining`` on /healthz, send push sockets and long-polls elsewhere, and let the
        links this process carries finish, for at most ``bound`` seconds (or until
        ``hurry``). Returns how many links are left (they are then closed with 1001)."""
        self.draining = True
        self.store.notifier.wake_all()
        for ws in list(self._push):
            close_peer(ws, CloseCode.GOING_AWAY)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        while self.slots.active > 0 and not hurry.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hurry.wait(), min(0.1, left))
        return self.slots.active

    async def on_cleanup(self, app: web.Application) -> None:
        for task in (self._prune_task, self._agree_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.hub.stop()
        await self.store.close()

    async def _agree_loop(self) -> None:
        """Processes on one shared store must keep one secret and relay id (a Redis that
        restarted empty would otherwise split them): say so when they do not."""
        while True:
            await asyncio.sleep(AGREE_INTERVAL_S)
            await self._flush_totals()
            problem = await self.store.agree(self.secret_fp, self.relay_id)
            self.metrics.store_disagrees = int(problem is not None)
            if problem:
                log_throttled("agree", logging.ERROR, problem)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.prune_interval_s)
            try:
                self.metrics.envelopes_expired += await self.store.prune(self.now_ms())
            except RelayError as exc:
                log.warning("pruning failed: %s", exc.message)

    # -- helpers -------------------------------------------------------------------------
    def _ip(self, request: web.Request) -> str:
        """The client address limits apply to (also what the access log shows)."""
        ip = request.get("client")
        if ip is None:
            peer = request.remote or "?"
            ip = request["client"] = self.proxies.client_address(
                peer, request.headers.getall("X-Forwarded-For", ())
            )
        return str(ip)

    async def _authed(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        if not header:
            raise AuthRequired()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthInvalid("Authorization must be 'Bearer <token>'")
        assert self.auth is not None
        did = self.auth.verify_token(token.strip(), now_ms=self.now_ms()).did
        request["did"] = did
        await self.rate_did.check(did)
        return did

    async def _body(self, request: web.Request) -> bytes:
        """The whole body, within ``body_timeout_s`` (a slow sender holds a connection)."""
        try:
            return await asyncio.wait_for(request.read(), self.config.body_timeout_s)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self.config.body_timeout_s:g} s"
            ) from None
        except BODY_ERRORS:  # framing or encoding: the connection cannot be trusted further
            request["close"] = True
            raise body_error() from None

    async def _json(self, request: web.Request) -> Any:
        ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if ctype != "application/json":
            raise UnsupportedMediaType()
        return loads_strict(
            await self._body(request), max_bytes=self.config.max_request_bytes,
            error=MalformedRequest, what="request body", too_large=TooLarge,
        )

    @staticmethod
    def _obj(data: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
        if not isinstance(data, dict):
            raise MalformedRequest("request body must be a JSON object")
        unknown = sorted(set(data) - set(required) - set(optional))
        if unknown:
            raise MalformedRequest(f"unknown field(s): {client_names(unknown)}")
        missing = [k for k in required if k not in data]
        if missing:
            raise MalformedRequest(f"missing field(s): {', '.join(missing)}")

    # -- middleware ------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.metrics.requests += 1
        self._ip(request)
        try:
            length = request.content_length
            if length is not None and length > self.config.max_request_bytes:
                # refused before reading a byte of it, and the connection is not kept
                request["close"] = True
                raise TooLarge(
                    f"request body of {length} bytes exceeds this relay's max_request_bytes "
                    f"({self.config.max_request_bytes})"
                )
            if request.path.startswith("/v1/"):
                if self.shutting_down:
                    raise ShuttingDown()
                await self.rate_ip.check(self._ip(request))
            return await handler(request)
        except RelayError as exc:
            return self._error(request, exc)
        except web.HTTPException as exc:
            # fixed text: nothing the client sent (path, method) is repeated back
            if exc.status == 404:
                return self._error(request, NotFound(NOT_FOUND_MESSAGE))
            if exc.status == 405:
                resp = self._error(request, MethodNotAllowed(METHOD_NOT_ALLOWED_MESSAGE))
                if "Allow" in exc.headers:
                    resp.headers["Allow"] = exc.headers["Allow"]
                return resp
            if exc.status == 413:
                return self._error(
                    request,
                    TooLarge("request body exceeds this relay's max_request_bytes "
                             f"({self.config.max_request_bytes})"),
                )
            if exc.status < 400:
                raise
            return self._error(request, MalformedRequest(exc.reason or "bad request"))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            # a bug a client can trigger must not fill the disk: bounded like accept errors
            if throttle_allows("bug:" + type(exc).__name__):
                log.exception("unexpected failure on %s %s", inert(request.method, 20),
                              request_target_path(request.raw_path))
            return self._error(request, RelayInternalError())

    def _error(self, request: web.Request, exc: RelayError) -> web.Response:
        status = exc.status if isinstance(exc, RelayRequestError) else 500
        if not isinstance(exc, RelayRequestError):
            # store and bus failures name internal addresses: log them, tell the client less
            log_throttled("internal:" + type(exc).__name__, logging.ERROR,
                          "internal failure",
                          {"path": request_target_path(request.raw_path), "error": exc.message})
            status = 500
            exc = RelayInternalError("the relay failed internally; retry later")
        self.metrics.reject(exc.code)
        request["error_code"] = exc.code
        headers = {"X-Didmesh-Error": exc.code}
        retry = getattr(exc, "retry_after", None)
        if isinstance(exc, RateLimited) and retry is not None:
            headers["Retry-After"] = str(max(1, int(retry + 0.999)))
        resp = web.json_response(error_body(exc), status=status, headers=headers)
        if request.get("close") or isinstance(exc, RequestTimeout):
            resp.force_close()
        return resp

    # -- public endpoints ---------------------------------------------------------------------
    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "software": "didmesh-relay",
                "version": __version__,
                "protocol": 1,
                "relay_id": self.relay_id,
                "store": parse_store_url(self.config.store).kind,
                "time_ms": self.now_ms(),
                "limits": self.config.public_limits(),
                "stun": {"ports": list(self.stun_ports)},
            }
        )

    async def healthz(self, request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(self.store.ping(), 5)
        except Exception as exc:
            log.warning("health check failed: %s", exc)
            return web.json_response({"status": "unavailable"}, status=503)
        if self.shutting_down or self.draining:
            status = "stopping" if self.shutting_down else "draining"
            return web.json_response({"status": status}, status=503)
        return web.json_response({"status": "ok"})

    async def _flush_totals(self) -> dict[str, int] | None:
        async with self._flush_lock:
            now = self.metrics.counters()
            deltas = {k: v - self._flushed.get(k, 0) for k, v in now.items()}
            totals = await self.store.add_totals(deltas)
            if totals is not None:
                self._flushed = now
            return totals

    async def metrics_text(self, request: web.Request) -> web.Response:
        self.metrics.links_active = self.slots.active - self.metrics.links_waiting
        try:
            await asyncio.wait_for(self.store.ping(), 2)
            up = True
        except Exception:
            up = False
        cluster = await self._flush_totals() if up else None
        g = self.guard
        text = self.metrics.render(
            process=process_stats(),
            connections=(g.open, g.refused_address, g.refused_total) if g else None,
            store_up=up, cluster=cluster,
        )
        return web.Response(
            text=text, content_type="text/plain", charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    # -- authentication ----------------------------------------------------------------------
    async def challenge(self, request: web.Request) -> web.Response:
        data = await self._json(request)
        self._obj(data, ("did",))
        assert self.auth is not None
        ch = self.auth.issue_challenge(data["did"], now_ms=self.now_ms())
        return web.json_response(
            {"challenge": ch.encoded, "relay_id": self.relay_id, "expires_ms": ch.expires_ms}
        )

    async def token(self, request: web.Request) -> web.Response:
        data = await self._json(request)
        self._obj(data, ("did", "challenge", "signature"))
        assert self.auth is not None
        now = self.now_ms()
        ch = self.auth.redeem(data["did"], data["challenge"], data["signature"], now_ms=now)
        if not await self.store.claim_nonce(ch.nonce, ch.expires_ms, now):
            raise AuthInvalid("this challenge was already used: request a new one")
        await self.rate_did.check(ch.did)
        tok = self.auth.issue_token(ch.did, now_ms=now)
        return web.json_response(
            {"token": tok.encoded, "did": tok.did, "expires_ms": tok.expires_ms}
        )

    # -- mailboxes -------------------------------------------------------------------------------
    async def post_envelope(self, request: web.Request) -> web.Response:
        ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if ctype != "application/json":
            raise UnsupportedMediaType()
        raw = await self._body(request)
        cfg = self.config
        if len(raw) > cfg.max_envelope_bytes:
            raise TooLarge(f"envelope of {len(raw)} bytes exceeds this relay's "
                           f"max_envelope_bytes ({cfg.max_envelope_bytes})")
        env = Envelope.from_json(raw, max_bytes=cfg.max_envelope_bytes)
        env.verify_signature()
        await self.rate_did.check(env.sender)
        now = self.now_ms()
        window, skew = cfg.replay_window_s * 1000, cfg.max_clock_skew_s * 1000
        if env.ts > now + skew:
            raise StaleEnvelope(
                f"envelope ts is {env.ts - now} ms in the future (max skew {skew} ms)"
            )
        if env.ts < now - window:
            raise StaleEnvelope(
                f"envelope ts is {now - env.ts} ms old; the replay window is {window} ms: "
                "seal it again with the current time"
            )
        expires = min(env.expires_ms, now + cfg.envelope_max_ttl_s * 1000)
        if expires < now:
            raise InvalidEnvelope("envelope has already expired (ts + ttl is in the past)")
        item = StoredEnvelope.of(env, received_ms=now, expires_ms=expires)
        policy = PutPolicy(env.ts + window + skew, cfg.inbox_max_envelopes, cfg.inbox_max_bytes)
        res = await self.store.put(item, policy)
        if res.duplicate:
            self.metrics.envelopes_duplicate += 1
        else:
            self.metrics.envelopes_stored += 1
        return web.json_response(
            {
                "id": res.id,
                "received_ms": res.received_ms,
                "expires_ms": res.expires_ms,
                "duplicate": res.duplicate,
            },
            status=200 if res.duplicate else 201,
        )

    def _items(self, items: list[StoredEnvelope]) -> bytes:
        """``[{"received_ms", "envelope"}, ...]`` without re-parsing the stored JSON."""
        self.metrics.envelopes_delivered += len(items)
        parts = [b'{"received_ms":%d,"envelope":%s}' % (i.received_ms, i.data) for i in items]
        return b"[" + b",".join(parts) + b"]"

    async def inbox(self, request: web.Request) -> web.Response:
        did = await self._authed(request)
        try:
            wait = float(request.query.get("wait", "0"))
            limit = int(request.query.get("limit", str(self.config.fetch_max_envelopes)))
        except ValueError:
            raise MalformedRequest("wait must be a number of seconds, limit an integer") from None
        if not (0 <= wait <= 3600) or limit < 1:
            raise MalformedRequest("wait must be in [0, 3600] and limit at least 1")
        wait = min(wait, self.config.long_poll_max_s)
        limit = min(limit, self.config.fetch_max_envelopes)
        with self.store.notifier.listen(did) as ev:
            items = await self.store.fetch(did, limit=limit, now_ms=self.now_ms())
            if not items and wait > 0 and not (self.shutting_down or self.draining):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), wait)
                items = await self.store.fetch(did, limit=limit, now_ms=self.now_ms())
        return web.Response(
            body=b'{"envelopes":' + self._items(items) + b"}", content_type="application/json"
        )

    async def ack(self, request: web.Request) -> web.Response:
        did = await self._authed(request)
        data = await self._json(request)
        self._obj(data, ("ids",))
        n = await self.store.ack(did, parse_ack_ids(data["ids"]))
        self.metrics.envelopes_acked += n
        return web.json_response({"deleted": n})

    async def inbox_ws(self, request: web.Request) -> web.StreamResponse:
        did = await self._authed(request)
        if self.draining:
            raise ShuttingDown("this relay process is draining for a restart: reconnect")
        ws = web.WebSocketResponse(heartbeat=self.config.ws_heartbeat_s, max_msg_size=256 * 1024)
        await ws.prepare(request)
        self._sockets.add(ws)
        self._push.add(ws)
        self.metrics.ws_push_active += 1
        sent: set[str] = set()
        limit = self.config.fetch_max_envelopes

        async def read_acks() -> None:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    await close_ws(ws, CloseCode.MALFORMED)
                    return
                try:
                    ids = parse_push_client_message(msg.data)
                except MalformedRequest:
                    await close_ws(ws, CloseCode.MALFORMED)
                    return
                n = await self.store.ack(did, ids)
                self.metrics.envelopes_acked += n
                sent.difference_update(ids)

        reader = asyncio.create_task(read_acks())
        try:
            with self.store.notifier.listen(did) as ev:
                while not ws.closed and not reader.done() and not self.shutting_down \
                        and not self.draining:
                    ev.clear()
                    items = await self.store.fetch(did, limit=limit, now_ms=self.now_ms())
                    if len(items) < limit:
                        sent.intersection_update(i.id for i in items)
                    new = [i for i in items if i.id not in sent]
                    if new:
                        await ws.send_str(
                            '{"type":"envelopes","items":' + self._items(new).decode() + "}"
                        )
                        sent.update(i.id for i in new)
                    waiter = asyncio.ensure_future(ev.wait())
                    await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.metrics.ws_push_active -= 1
            self._sockets.discard(ws)
            self._push.discard(ws)
            await settle(ws)
            await close_ws(ws, CloseCode.GOING_AWAY if self.shutting_down else CloseCode.NORMAL)
        return ws

    # -- links ---------------------------------------------------------------------------
    async def link(self, request: web.Request) -> web.StreamResponse:
        did = await self._authed(request)
        if self.draining:
            raise ShuttingDown(
                "this relay process is draining for a restart: open the link again"
            )
        await self.slots.acquire(did)
        try:
            return await self._link(request, did)
        finally:
            await self.slots.release(did)

    async def _link(self, request: web.Request, did: str) -> web.StreamResponse:
        cfg = self.config
        # link pings are ours (link_heartbeat_s): FastLink sends them once paired in this
        # process, RemotePipe across processes; before pairing, the pairing timeout bounds
        # the wait. Pings from the client are answered by receive_data / FastLink.
        ws = web.WebSocketResponse(
            # aiohttp refuses frames of max_msg_size bytes and more; ours is inclusive
            heartbeat=None, autoping=False, max_msg_size=cfg.link_max_frame + 1,
            compress=False,
        )
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            try:
                request_msg = await receive_data(ws, cfg.link_pair_timeout_s)
            except TimeoutError:
                await close_ws(ws, CloseCode.PAIR_TIMEOUT)
                return ws
            if request_msg.type is WSMsgType.BINARY:
                self.metrics.reject("not_linked")
                await close_ws(ws, CloseCode.NOT_LINKED)
                return ws
            if request_msg.type is not WSMsgType.TEXT:
                return ws
            try:
                req = parse_link_request(request_msg.data, did)
            except MalformedRequest:
                self.metrics.reject("malformed")
                await close_ws(ws, CloseCode.MALFORMED)
                return ws
            end = LinkEnd(did, req, ws, request.transport, request.protocol)
            # frames before "linked" are a protocol violation: watch the socket while waiting
            join = asyncio.ensure_future(self.hub.join(end))
            early = end.early = asyncio.ensure_future(receive_data(ws))
            await asyncio.wait({join, early}, return_when=asyncio.FIRST_COMPLETED)
            first: WSMessage | None = None  # a frame that raced with "linked"
            if early.done() and not end.paired.done():
                join.cancel()
                with contextlib.suppress(BaseException):
                    await join
                msg = early.result()
                if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                    self.metrics.reject("not_linked")
                    await close_ws(ws, CloseCode.NOT_LINKED)
                return ws
            if early.done():  # sent after "linked" reached the client: the first frame
                first = early.result()
            else:
                early.cancel()
                with contextlib.suppress(BaseException):
                    await early
            try:
                pairing = await join
            except TimeoutError:
                await close_ws(ws, CloseCode.PAIR_TIMEOUT)
                return ws
            except LinkDuplicate:
                await close_ws(ws, CloseCode.DUPLICATE)
                return ws
            except LinkPeerGone:
                await close_ws(ws, CloseCode.PEER_GONE)
                return ws
            except RelayError as exc:  # the store failed while pairing (Redis trouble)
                log_throttled("link-pairing-failed", logging.WARNING, "link pairing failed",
                              {"error": exc.message[:300]})
                await close_ws(ws, CloseCode.INTERNAL)
                return ws
            # an idle link lives long: keep nothing of its start-up (two finished tasks,
            # the request message) referenced from this frame while it runs
            join = early = end.early = request_msg = None  # type: ignore[assignment]
            link_name = hashlib.sha256(
                f"{req.session}|{min(did, req.peer)}|{max(did, req.peer)}|{req.link_id}".encode()
            ).hexdigest()[:12]  # names the link in logs without DIDs or session ids
            path = (
                "spliced" if isinstance(pairing, Splice)
                or (isinstance(pairing, FastLink) and pairing.spliced)
                else "local" if isinstance(pairing, FastLink) else "cross-process"
            )
            log.info("link end paired", extra={"fields": {"link": link_name, "path": path}})
            if isinstance(pairing, Splice):
                # the first end's process runs the link and closes it with a code
                if first is not None:  # a frame before "linked": cut the link
                    self.metrics.reject("not_linked")
                    pairing.abort()
                    first = None
                await pairing.run()
                code = pairing.close_code or CloseCode.PEER_GONE
                log.info("link end closed", extra={"fields": {
                    "link": link_name, "path": path, "code": int(code),
                    "reason": close_reason(int(code))}})
                return ws
            if isinstance(pairing, FastLink):
                if first is not None:  # read by aiohttp, so sent before "linked"
                    if first.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                        self.metrics.reject("not_linked")
                        pairing.close(CloseCode.NOT_LINKED)
                    else:  # closed or broken before the link was up
                        pairing.close(CloseCode.PEER_GONE)
                    first = None
                await pairing.run(ws)
                code = pairing.state.closed_code or CloseCode.GOING_AWAY
            else:
                self.metrics.links_total += pairing.role == "b"
                if not pairing.linked_sent:
                    await ws.send_str(self.hub.linked_json(end))
                code = await pairing.run(self.metrics, first)
            log.info("link end closed", extra={"fields": {
                "link": link_name, "code": int(code), "reason": close_reason(int(code))}})
            return ws
        finally:
            self._sockets.discard(ws)
            await settle(ws)
            await close_ws(ws, CloseCode.GOING_AWAY if self.shutting_down else CloseCode.NORMAL)


def build_app(
    config: RelayConfig, store: Store, *, clock: Callable[[], float] = time.time
) -> web.Application:
    relay = Relay(config, store, clock=clock)
    app = web.Application(
        middlewares=[relay.middleware], client_max_size=config.max_request_bytes
    )
    app[RELAY_KEY] = relay
    app.on_startup.append(relay.on_startup)
    app.on_shutdown.append(relay.on_shutdown)
    app.on_cleanup.append(relay.on_cleanup)
    r = app.router
    r.add_get("/info", relay.info)
    r.add_get("/healthz", relay.healthz)
    if not config.metrics_listen:  # else on its own address only (server.py)
        r.add_get("/metrics", relay.metrics_text)
    r.add_post("/v1/auth/challenge", relay.challenge)
    r.add_post("/v1/auth/token", relay.token)
    r.add_post("/v1/envelopes", relay.post_envelope)
    r.add_get("/v1/inbox", relay.inbox)
    r.add_post("/v1/inbox/ack", relay.ack)
    r.add_get("/v1/inbox/ws", relay.inbox_ws)
    r.add_get("/v1/link", relay.link)
    r.add_get("/v1/observed", observed_handler(relay))
    return app


__all__ = ["LinkLimit", "Relay", "build_app"]
