"""``didmesh vc-api serve``: the VC API over aiohttp (specs/vc-api.yaml).

A thin adapter: every request goes to :meth:`VcApiService.handle`. Loopback by default;
the body is capped (413) before it is parsed; SIGTERM/SIGINT stop the server. Once
listening it prints ``didmesh vc-api listening on URL`` on stdout.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from didmesh.identity.errors import LocalError
from didmesh.identity.paths import write_private
from didmesh.session.mesh.candidates import is_loopback

from .service import MAX_REQUEST_BYTES, VcApiService

LISTENING = "didmesh vc-api listening on"
TOKEN_BYTES = 32


class VcApiConfigError(LocalError):
    """The VC API server cannot start with the options given."""

    code = "vc_api_config"


@dataclass(frozen=True)
class TokenInfo:
    token: str
    path: Path
    created: bool


def load_or_create_token(path: Path) -> TokenInfo:
    """The issuing bearer token stored at ``path`` (0600), created when missing."""
    if path.exists():
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise VcApiConfigError(
                f"{path} is readable by others (mode {oct(mode & 0o777)}); chmod 600 it"
            )
        token = path.read_text("utf-8").strip()
        if len(token) < 32:
            raise VcApiConfigError(f"{path} holds no usable token (delete it to make a new one)")
        return TokenInfo(token, path, False)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    write_private(path, (token + "\n").encode())
    return TokenInfo(token, path, True)


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not cert or not key:
        raise VcApiConfigError("TLS needs both --tls-cert and --tls-key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise VcApiConfigError(f"cannot load the TLS certificate or key: {exc}") from None
    return ctx


def build_app(service: VcApiService) -> web.Application:
    async def dispatch(request: web.Request) -> web.StreamResponse:
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            body = b""
            too_large = True
        else:
            try:
                body = await request.read()
                too_large = False
            except web.HTTPRequestEntityTooLarge:
                body, too_large = b"", True
        if too_large:
            return web.json_response(
                {
                    "type": "https://didmesh.dev/errors#request_too_large",
                    "title": "request_too_large",
                    "detail": f"the request is over {MAX_REQUEST_BYTES} bytes",
                },
                status=413,
            )
        # Canonicalization is CPU work (bounded: identity/jsonld.py caps blank nodes): run
        # it off the event loop, one request at a time, so the server keeps accepting.
        async with busy:
            reply = await asyncio.to_thread(
                service.handle, request.method, request.path, request.headers, body
            )
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)

    busy = asyncio.Semaphore(1)
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


async def serve(
    service: VcApiService,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    runner = web.AppRunner(build_app(service), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        for addr in runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                port = int(addr[1])
                break
        scheme = "https" if ssl_context else "http"
        shown = f"[{host}]" if ":" in host else host
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        (on_ready or (lambda url: print(f"{LISTENING} {url}", flush=True)))(
            f"{scheme}://{shown}:{port}"
        )
        await stop.wait()
    finally:
        await runner.cleanup()


def run(service: VcApiService, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
    try:
        asyncio.run(serve(service, host, port, ssl_context=ssl_context))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # address in use, permission
        raise VcApiConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return 0


def utc_now() -> datetime:
    return datetime.now(UTC)


def default_token_path(home: Path) -> Path:
    return home / "vc-api" / "token"


__all__ = [
    "LISTENING",
    "TokenInfo",
    "VcApiConfigError",
    "build_app",
    "default_token_path",
    "is_loopback",
    "load_or_create_token",
    "run",
    "serve",
    "tls_context",
    "utc_now",
]
