"""Running a relay process: flags, logging, signals (specs/relay.md, "Running a relay").

``python -m didmesh.relay`` and ``didmesh relay serve`` both end up in :func:`serve`. On
start the relay prints one line ``didmesh relay listening on http://HOST:PORT`` (the real
port when ``--port 0``) on stdout. SIGTERM/SIGINT: stop accepting, close WebSockets with
1001, let in-flight requests finish (up to ``shutdown_timeout_s``), close the store.
Logs are JSON lines on stderr; access logs carry method, path (no query string), status,
size, duration and error code, never bodies, keys or tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from didmesh.identity.errors import DidmeshError

from .app import RELAY_KEY, build_app
from .config import RelayConfig
from .conns import (
    ACCEPT_BACKLOG,
    ConnectionGuard,
    connection_budget,
    deepen_listen_queue,
    guard_server,
    raise_nofile,
    throttled_exception_handler,
)
from .errors import RelayConfigError
from .options import add_serve_arguments, config_from_args
from .store.url import open_store

LISTENING = "didmesh relay listening on"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        fields_: dict[str, Any] = {
            "remote": request.get("client", request.remote),
            "method": request.method,
            "path": request.rel_url.path[:200],
            "status": response.status,
            "bytes": response.body_length,
            "ms": round(time * 1000, 2),
        }
        code = request.get("error_code")
        if code:
            fields_["error"] = code
        self.logger.info("access", extra={"fields": fields_})


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("didmesh")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    access = logging.getLogger("didmesh.relay.access")
    access.setLevel(level)
    aio = logging.getLogger("aiohttp")
    aio.handlers[:] = [handler]
    aio.setLevel(logging.WARNING)
    aio.propagate = False


def url_for(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def tls_context(config: RelayConfig) -> ssl.SSLContext | None:
    """The server TLS context for ``tls_cert``/``tls_key`` (None: plain HTTP)."""
    if not config.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise RelayConfigError(
            f"cannot load the TLS certificate {config.tls_cert} with key {config.tls_key}: "
            f"{getattr(exc, 'strerror', None) or exc}"
        ) from None
    return ctx


async def serve(
    config: RelayConfig,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set)."""
    tls = tls_context(config)
    nofile, _ = raise_nofile()
    budget = connection_budget(nofile, config.max_connections)
    asyncio.get_running_loop().set_exception_handler(throttled_exception_handler)
    store = open_store(config.store, config.secret_file)
    app = build_app(config, store)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=JsonAccessLogger,
        access_log=logging.getLogger("didmesh.relay.access") if config.access_log else None,
        shutdown_timeout=config.shutdown_timeout_s,
        # aiohttp closes a connection whose request headers are not complete this long
        # after it opened or after the previous response: our header timeout
        keepalive_timeout=config.header_timeout_s,
        lingering_time=2.0,
    )
    await runner.setup()
    assert runner.server is not None
    guard = ConnectionGuard(
        config.conns_per_address, budget, exempt=app[RELAY_KEY].proxies.trusts
    )
    guard_server(runner.server, guard)
    app[RELAY_KEY].guard = guard
    try:
        site = web.TCPSite(
            runner, config.host, config.port, backlog=ACCEPT_BACKLOG, ssl_context=tls
        )
        await site.start()
        for server in (getattr(s, "_server", None) for s in runner.sites):
            deepen_listen_queue(getattr(server, "sockets", None))
        port = config.port
        for addr in runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                port = int(addr[1])
                break
        url = url_for(config.host, port, "https" if tls else "http")
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        (on_ready or _print_ready)(url)
        await stop.wait()
        logging.getLogger("didmesh.relay").info("shutting down")
    finally:
        t0 = time.monotonic()
        await runner.cleanup()
        logging.getLogger("didmesh.relay").info(
            "stopped", extra={"fields": {"shutdown_ms": round((time.monotonic() - t0) * 1000)}}
        )


def _print_ready(url: str) -> None:
    print(f"{LISTENING} {url}", flush=True)


def run(config: RelayConfig) -> int:
    setup_logging()
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m didmesh.relay", description="Run a didmesh community relay."
    )
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(config_from_args(args))
    except DidmeshError as exc:
        print(f"didmesh relay: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. address in use
        print(f"didmesh relay: {exc}", file=sys.stderr)
        return 2
