"""Running a relay process: flags, logging, signals (specs/relay.md, "Running a relay").

``python -m didmesh.relay`` and ``didmesh relay serve`` both end up in :func:`serve`. On
start the relay prints one line ``didmesh relay listening on http://HOST:PORT`` (the real
port when ``--port 0``) on stdout. SIGTERM/SIGINT: stop accepting, close WebSockets with
1001, let in-flight requests finish (up to ``shutdown_timeout_s``), close the store.
Logs are JSON lines on stderr; access logs carry method, path (as sent, no query string,
made inert by :mod:`.logtext`), status, size, duration and error code, never bodies, keys
or tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

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
from .httperrors import HTTP_LIMITS, json_http_errors
from .logtext import inert, request_target_path, scrub
from .options import add_serve_arguments, config_from_args
from .store.url import open_store
from .stun import serve_stun
from .tlsgate import tls_gate_factory

LISTENING = "didmesh relay listening on"
log = logging.getLogger("didmesh.relay")


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
        for key, value in out.items():  # no field decodes to a terminal escape (logtext)
            if isinstance(value, str):
                out[key] = scrub(value)
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info), keep_lines=True)
        return json.dumps(out, separators=(",", ":"))


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        fields_: dict[str, Any] = {
            "remote": request.get("client", request.remote),
            "method": inert(request.method, 20),
            # as sent (percent-encoded), never decoded: see logtext
            "path": request_target_path(request.raw_path),
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


class _Site(web.TCPSite):
    """aiohttp's TCP site; with TLS, every accepted connection first passes the connection
    guard by its address and only then gets a handshake (bounded by ``handshake_timeout``;
    asyncio's default is 60 s), see :mod:`didmesh.relay.tlsgate`."""

    def __init__(
        self, *args: Any, handshake_timeout: float, guard: ConnectionGuard, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.handshake_timeout = handshake_timeout
        self.guard = guard

    async def start(self) -> None:
        if self._ssl_context is None:
            await super().start()
            return
        await web.BaseSite.start(self)
        assert self._runner.server is not None
        self._server = await asyncio.get_running_loop().create_server(
            tls_gate_factory(
                self._runner.server, self._ssl_context, self.guard, self.handshake_timeout
            ),
            self._host, self._port, backlog=self._backlog,
        )


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
    """Run until SIGTERM/SIGINT (or ``stop`` is set), then drain and stop."""
    tls = tls_context(config)
    nofile, _ = raise_nofile()
    budget = connection_budget(nofile, config.max_connections)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(throttled_exception_handler)
    store = open_store(config.store, config.secret_file)
    app = build_app(config, store)
    relay = app[RELAY_KEY]
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
        **HTTP_LIMITS,
    )
    await runner.setup()
    assert runner.server is not None
    json_http_errors(runner.server, relay.metrics.reject)
    guard = ConnectionGuard(config.conns_per_address, budget, exempt=relay.proxies.trusts)
    guard_server(runner.server, guard)
    relay.guard = guard
    metrics_runner: web.AppRunner | None = None
    stun_transports: list[asyncio.DatagramTransport] = []
    started = False
    try:
        try:
            site = _Site(
                runner, config.host, config.port, backlog=ACCEPT_BACKLOG, ssl_context=tls,
                handshake_timeout=config.header_timeout_s, guard=guard,
            )
            await site.start()
            if config.metrics_listen:
                host, mport = parse_listen(config.metrics_listen)
                metrics_runner = web.AppRunner(
                    build_metrics_app(relay), access_log=None, **HTTP_LIMITS
                )
                await metrics_runner.setup()
                json_http_errors(metrics_runner.server)
                await web.TCPSite(metrics_runner, host, mport).start()
        except OSError as exc:
            why = exc.strerror or str(exc).rsplit(": ", 1)[-1]
            where = f"{config.host}:{config.port}"
            if config.metrics_listen:
                where += f" or {config.metrics_listen}"
            raise RelayConfigError(f"cannot listen on {where}: {why}") from None
        if config.stun:
            stun_host = config.stun_host or config.host
            stun_ports = stun_ports_for(config, _bound_port(runner, config.port))
            try:
                stun_transports, relay.stun_ports = await serve_stun(
                    stun_host, stun_ports,
                    explicit=[bool(config.stun_port), bool(config.stun_alt_port)])
            except OSError as exc:
                why = exc.strerror or str(exc).rsplit(": ", 1)[-1]
                raise RelayConfigError(
                    f"cannot listen on UDP {stun_host} {stun_ports[0]}/"
                    f"{stun_ports[1] or 'any'} for STUN: {why}; choose other ports "
                    "(--stun-port, --stun-alt-port) or turn STUN off (--no-stun)") from None
        started = True
        for server in (getattr(s, "_server", None) for s in runner.sites):
            deepen_listen_queue(getattr(server, "sockets", None))
        port = _bound_port(runner, config.port)
        url = url_for(config.host, port, "https" if tls else "http")
        stop = stop or asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("started", extra={"fields": startup_fields(config, relay, url, nofile, budget)})
        (on_ready or _print_ready)(url)
        await stop.wait()
        # drain: a second signal (or the bound) ends it early
        hurry = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, hurry.set)
        log.info("draining", extra={"fields": {
            "links": relay.slots.active, "drain_timeout_s": config.drain_timeout_s}})
        left = await relay.drain(config.drain_timeout_s, hurry)
        log.info("shutting down", extra={"fields": {"links_cut": left}})
    finally:
        t0 = time.monotonic()
        for transport in stun_transports:
            transport.close()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
        if started:  # a failed start says one line (the caller's), nothing else
            log.info("stopped", extra={"fields": {
                "shutdown_ms": round((time.monotonic() - t0) * 1000)}})
            _ignore_stop_signals(loop)


def _ignore_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Stopping is done: a repeated SIGTERM/SIGINT from now on has nothing left to do.
    Closing the loop would otherwise put back the default actions, and a signal landing
    while the interpreter exits would kill the stopped relay (-15) or raise
    KeyboardInterrupt (130) instead of its exit 0."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)


def _bound_port(runner: web.AppRunner, default: int) -> int:
    """The TCP port the API listens on (the one bound, if ``port`` was 0)."""
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return default


def stun_ports_for(config: RelayConfig, http_port: int) -> list[int]:
    """The two UDP ports to answer STUN on (0: a free one): ``stun_port``, or the HTTP
    port's number; ``stun_alt_port``, or a free one (specs/relay.md 12.1)."""
    return [config.stun_port or http_port, config.stun_alt_port]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise RelayConfigError(f"metrics_listen must be HOST:PORT, got {text!r}")
    return host, int(port)


def build_metrics_app(relay: Any) -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", relay.metrics_text)
    return app


def startup_fields(
    config: RelayConfig, relay: Any, url: str, nofile: int, budget: int
) -> dict[str, Any]:
    """What the "started" log line says: version, store, effective limits; no secrets."""
    from .app import __version__
    from .store.redis import redact_url

    return {
        "version": __version__,
        "url": url,
        "relay_id": relay.relay_id,
        "store": redact_url(config.store) if config.store else "sqlite (default path)",
        **relay.store.describe(),
        "secret": "file " + config.secret_file if config.secret_file else "store",
        "tls": bool(config.tls_cert),
        "trusted_proxies": config.trusted_proxies,
        "metrics_listen": config.metrics_listen or "api port",
        "link_splice": relay.hub.splice_address or "off",
        "nofile": nofile,
        "max_connections": budget,
        "limits": config.public_limits(),
        "drain_timeout_s": config.drain_timeout_s,
        "stun_ports": list(relay.stun_ports),
        "shutdown_timeout_s": config.shutdown_timeout_s,
    }


def _print_ready(url: str) -> None:
    print(f"{LISTENING} {url}", flush=True)


def run(config: RelayConfig) -> int:
    """Serve until stopped; a bad setting, a taken port or an unusable store raises
    :class:`RelayConfigError` (one line, exit 2, for both entry points)."""
    setup_logging()
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        raise RelayConfigError(f"cannot start the relay: {exc.strerror or exc}") from None
    return 0


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes are one ``didmesh relay:`` line, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"didmesh relay: {message} (see: {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
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
