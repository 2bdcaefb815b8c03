"""Connection admission before the TLS handshake (specs/relay.md, "Limits").

When the relay serves TLS itself (``tls_cert``/``tls_key``), asyncio's ``create_server(ssl=)``
only tells the HTTP server about a connection once its handshake is done, so the
per-address cap of :class:`~didmesh.relay.conns.ConnectionGuard` came too late: one address
could open thousands of connections and make the relay run a handshake (CPU, memory) for
each. Here the listening socket serves plain TCP to a :class:`TlsGate`, which counts the
connection by its socket address first, closes it at once (no handshake, nothing sent) when
the address or the process is over its cap, and otherwise runs the handshake
(``loop.start_tls``, bounded by ``header_timeout_s``) and hands the TLS transport to
aiohttp's protocol. The guard's count is released when the connection ends, whether during
the handshake (here) or later (:func:`~didmesh.relay.conns.guard_server`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from .conns import ConnectionGuard, log_throttled, peer_address, pre_admitted


class TlsGate(asyncio.Protocol):
    """One accepted TCP connection until its TLS handshake is done."""

    def __init__(
        self, factory: Callable[[], asyncio.BaseProtocol], ctx: ssl.SSLContext,
        guard: ConnectionGuard, handshake_timeout: float,
    ) -> None:
        self.factory, self.ctx, self.guard = factory, ctx, guard
        self.handshake_timeout = handshake_timeout
        self.address: str | None = None
        self.lost = False
        self.eof = False
        self.early: list[bytes] = []  # application data that came before the hand-over
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        address = peer_address(transport)
        why = self.guard.admit(address)
        if why is not None:
            log_throttled(
                "refused:" + address, logging.WARNING, "connection refused before TLS",
                {"remote": address, "reason": why},
            )
            transport.abort()  # no handshake, no answer: a TLS client cannot read plain HTTP
            return
        self.address = address
        self.task = asyncio.get_running_loop().create_task(self._handshake(transport))

    async def _handshake(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        address = self.address
        assert address is not None
        try:
            tls = await loop.start_tls(
                raw, self, self.ctx, server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, EOFError, RuntimeError):
            self.guard.release(address)
            raw.abort()
            return
        except asyncio.CancelledError:
            self.guard.release(address)
            raw.abort()
            raise
        if self.lost or tls is None or tls.is_closing():
            self.guard.release(address)
            if tls is not None:
                tls.abort()
            return
        app = self.factory()
        pre_admitted[id(tls)] = address
        tls.set_protocol(app)
        try:
            app.connection_made(tls)
        finally:
            pre_admitted.pop(id(tls), None)
        if isinstance(app, asyncio.Protocol):
            for chunk in self.early:
                app.data_received(chunk)
            if self.eof and not app.eof_received():
                tls.close()
        self.early.clear()

    # data and EOF that the TLS layer delivers between the handshake and the hand-over
    def data_received(self, data: bytes) -> None:
        self.early.append(bytes(data))

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def tls_gate_factory(
    server: Callable[[], asyncio.BaseProtocol], ctx: ssl.SSLContext,
    guard: ConnectionGuard, handshake_timeout: float,
) -> Callable[[], Any]:
    return lambda: TlsGate(server, ctx, guard, handshake_timeout)
