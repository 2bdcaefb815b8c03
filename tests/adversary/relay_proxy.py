"""A malicious relay: an HTTP/WebSocket proxy in front of a real relay process.

Clients talk to :attr:`MaliciousRelay.url` exactly as to a relay; the proxy forwards every
request to the real relay and lets a test rewrite what passes:

* :attr:`on_post` sees each envelope a client posts (a JSON dict) and returns the envelopes
  to store instead (``[]`` drops it while answering "stored", two copies duplicate it, a
  changed one tampers);
* :attr:`on_deliver` sees each batch of inbox items the relay hands to a DID (over the push
  socket or a poll) and returns the batch to deliver: drop, duplicate, reorder, tamper,
  delay (it may be a coroutine), or inject envelopes captured elsewhere (cross-wire and
  replay between parties and between sessions; every envelope ever posted is kept in
  :attr:`captured`);
* :attr:`on_frame` sees each binary frame of a forwarding link, with the link's session,
  the sending DID and a per-link counter, and returns the frames to forward;
  :attr:`LinkView.cut` drops an end's connection at once, as a relay crash would.

Only loopback: the proxy listens on 127.0.0.1 and forwards to the relay's URL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

Json = dict[str, Any]
MaybeAwaitable = Any


@dataclass
class LinkView:
    """What the proxy knows about one end of a forwarding link."""

    did: str  # the DID this end authenticated as
    session: str = ""
    peer: str = ""
    frames: int = 0  # binary frames seen from this end so far
    partner: LinkView | None = None
    sent: list[bytes] = field(default_factory=list)
    link_id: str = ""
    #: cut this end's client connection at once, without a close frame (a relay crash)
    cut: Callable[[], None] | None = None


def token_did(headers: Any) -> str:
    """The DID a bearer token names (``t1.<b64url 'relay|did|exp'>.<mac>``); '' if none."""
    auth = headers.get("Authorization", "")
    if not auth.startswith("Bearer t1."):
        return ""
    try:
        payload = auth.split(".")[1]
        text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
        return text.split("|")[1]
    except (IndexError, ValueError):
        return ""


async def _maybe(value: MaybeAwaitable) -> Any:
    return await value if inspect.isawaitable(value) else value


class MaliciousRelay:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.on_post: Callable[[Json], MaybeAwaitable] | None = None
        self.on_deliver: Callable[[str, list[Json]], MaybeAwaitable] | None = None
        self.on_frame: Callable[[LinkView, bytes], MaybeAwaitable] | None = None
        self.captured: list[Json] = []  # every envelope posted through us, in order
        self.delivered: dict[str, int] = {}  # items handed to each DID
        self.links: list[LinkView] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), 10)
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> MaliciousRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- HTTP --------------------------------------------------------------------------
    def _headers(self, request: web.Request) -> dict[str, str]:
        drop = {
            "host", "content-length", "transfer-encoding", "connection", "upgrade",
            "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
        }  # fmt: skip
        return {k: v for k, v in request.headers.items() if k.lower() not in drop}

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, bytes, str]:
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body if body else None,
            headers=self._headers(request),
        ) as resp:
            return resp.status, await resp.read(), resp.headers.get("Content-Type", "")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body = await request.read()
        if request.method == "POST" and request.path == "/v1/envelopes":
            return await self._post_envelope(request, body)
        status, data, ctype = await self._forward(request, body)
        if request.method == "GET" and request.path == "/v1/inbox" and status == 200:
            items = json.loads(data)
            items = await self._deliver(token_did(request.headers), items)
            data = json.dumps(items).encode()
        return web.Response(status=status, body=data, content_type=ctype.split(";")[0] or None)

    async def _post_envelope(self, request: web.Request, body: bytes) -> web.StreamResponse:
        try:
            env = json.loads(body)
        except ValueError:
            env = None
        if not isinstance(env, dict):
            status, data, ctype = await self._forward(request, body)
            return web.Response(status=status, body=data, content_type="application/json")
        self.captured.append(env)
        out = [env] if self.on_post is None else await _maybe(self.on_post(env))
        first: tuple[int, bytes, str] | None = None
        for item in out:
            res = await self._forward(request, json.dumps(item).encode())
            first = first or res
        if first is None:  # dropped: pretend it was stored
            fake = {"id": env.get("id"), "received_ms": env.get("ts"),
                    "expires_ms": env.get("ts"), "duplicate": False}  # fmt: skip
            return web.json_response(fake, status=201)
        return web.Response(status=first[0], body=first[1], content_type="application/json")

    async def _deliver(self, did: str, items: list[Json]) -> list[Json]:
        if self.on_deliver is not None:
            items = list(await _maybe(self.on_deliver(did, items)))
        self.delivered[did] = self.delivered.get(did, 0) + len(items)
        return items

    # -- WebSockets --------------------------------------------------------------------
    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        did = token_did(request.headers)
        url = self.upstream.replace("http://", "ws://", 1) + request.path_qs
        try:
            upstream = await self._session.ws_connect(
                url, headers=self._headers(request), autoclose=False, compress=0,
                max_msg_size=64 * 1024 * 1024,
            )  # fmt: skip
        except aiohttp.WSServerHandshakeError as exc:
            return web.json_response(
                {"error": {"code": "auth_invalid", "message": exc.message}}, status=exc.status
            )
        down = web.WebSocketResponse(autoclose=False, max_msg_size=64 * 1024 * 1024)
        await down.prepare(request)
        view = LinkView(did) if request.path == "/v1/link" else None
        if view is not None:
            self.links.append(view)
            transport = request.transport
            view.cut = transport.abort if transport is not None else None

        async def client_to_relay() -> None:
            async for msg in down:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    if view is not None:
                        with contextlib.suppress(ValueError, AttributeError):
                            req = json.loads(msg.data)
                            view.session, view.peer = req.get("session", ""), req.get("peer", "")
                            view.link_id = str(req.get("link_id", ""))
                            self._pair(view)
                    await upstream.send_str(msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    frames = [msg.data]
                    if view is not None:
                        view.frames += 1
                        view.sent.append(msg.data)
                        if self.on_frame is not None:
                            frames = list(await _maybe(self.on_frame(view, msg.data)))
                    for frame in frames:
                        await upstream.send_bytes(frame)
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    await upstream.close(code=down.close_code or 1000)
                    return
            await upstream.close()

        async def relay_to_client() -> None:
            async for msg in upstream:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    data = msg.data
                    if request.path == "/v1/inbox/ws":
                        with contextlib.suppress(ValueError):
                            doc = json.loads(data)
                            if isinstance(doc, dict) and doc.get("type") == "envelopes":
                                doc["items"] = await self._deliver(did, doc.get("items") or [])
                                if not doc["items"]:
                                    continue
                                data = json.dumps(doc)
                    await down.send_str(data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await down.send_bytes(msg.data)
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    await down.close(code=upstream.close_code or 1000)
                    return
            await down.close(code=upstream.close_code or 1001)

        tasks = [asyncio.ensure_future(client_to_relay()), asyncio.ensure_future(relay_to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                await upstream.close()
            with contextlib.suppress(Exception):
                await down.close()
        return down

    def _pair(self, view: LinkView) -> None:
        for other in self.links:
            if (
                other is not view
                and other.partner is None
                and other.session == view.session
                and other.link_id == view.link_id
                and other.did == view.peer
                and other.peer == view.did
            ):
                other.partner, view.partner = view, other
                return


# --------------------------------------------------------------------------- behaviours


def tamper_body(env: Json, index: int = 40) -> Json:
    """The envelope with one byte of its sealed body flipped (base64url re-encoded)."""
    raw = bytearray(base64.urlsafe_b64decode(env["body"] + "=" * (-len(env["body"]) % 4)))
    raw[min(index, len(raw) - 1)] ^= 0x01
    return {**env, "body": base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()}


def deliver_items(envs: list[Json], received_ms: int = 0) -> list[Json]:
    """Inbox items (as the relay serves them) for captured envelopes."""
    return [{"received_ms": received_ms or env.get("ts", 0), "envelope": env} for env in envs]


Deliver = Callable[[str, list[Json]], Awaitable[list[Json]] | list[Json]]
