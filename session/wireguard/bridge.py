"""MPyC over the WireGuard tunnel, with every inbound connection checked
(specs/wireguard.md, "Running over the tunnel").

:class:`WgBridge` is the mesh bridge (:class:`~didmesh.session.mesh.mpyc_bridge.MpycBridge`)
with another ``Runtime.start()``: after the same start barrier as on the mesh (every
party's program reached ``mpc.start()``, told over the control channels), MPyC's own
``MessageExchanger`` objects run over plain TCP inside the tunnel, as plain MPyC would —
except that

* this party listens on its own tunnel address only (nothing on other interfaces), and
  connects from it;
* every inbound connection passes :class:`~.guard.GuardProtocol` first: the party id it
  announces must be the one whose tunnel address it comes from.

A refused connection is fatal for the run (as a party claiming another id is on the
mesh): the error names the party it came from. Connecting is retried until
``connect_timeout``; a peer not reached by then is named.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from didmesh.session.mesh.faults import ConnectFailed
from didmesh.session.mesh.mpyc_bridge import AppPort, MpycBridge
from didmesh.session.mesh.mpyc_start import started_alone
from didmesh.session.mesh.plan import MeshPlan

from .addresses import tunnel_addresses
from .guard import GuardProtocol, InboundGuard


class _Counting(asyncio.Protocol):
    """Counts the bytes a ``MessageExchanger`` receives (it counts what it sends)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.received = 0

    def connection_made(self, transport: Any) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.inner.data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.inner.connection_lost(exc)


def _same(link: _Counting) -> _Counting:
    return link


class WgBridge(MpycBridge):
    def __init__(
        self,
        ports: Mapping[int, AppPort],
        *,
        party_id: int,
        m: int,
        on_error: Callable[[BaseException], None],
        plan: MeshPlan,
        port: int,
        connect_timeout: float = 60.0,
    ) -> None:
        super().__init__(ports, party_id=party_id, m=m, on_error=on_error)
        self.plan = plan
        self.port = port
        self.connect_timeout = connect_timeout
        self.guard = InboundGuard(plan)
        self.address = str(tunnel_addresses(plan.roster_hash, party_id).ipv4)
        self.links: dict[int, _Counting] = {}

    def bytes_per_peer(self) -> dict[int, dict[str, int]]:
        return {pid: {"sent": int(getattr(c.inner, "nbytes_sent", 0)),
                      "received": c.received} for pid, c in sorted(self.links.items())}

    async def _start(self, rt: Any, exchanger: Any) -> None:
        start_line = f"Start MPyC runtime v{rt.version} over the didmesh WireGuard tunnel"
        m = len(rt.parties)
        if started_alone(rt, start_line):
            return
        loop = rt._loop
        await self.start_barrier()  # the same start barrier as on the mesh
        logging.info(start_line)  # only now, as over the mesh
        for peer in rt.parties:
            peer.protocol = asyncio.Future(loop=loop) if peer.pid == rt.pid else None

        def make(pid: int) -> asyncio.Protocol:
            link = self.links[pid] = _Counting(exchanger(rt))
            return link

        server = None
        if rt.pid:
            server = await loop.create_server(
                lambda: GuardProtocol(self.guard, make, self.on_error),
                host=self.address, port=self.port, reuse_address=True,
            )
        try:
            deadline = time.monotonic() + self.connect_timeout
            await asyncio.gather(*(self._connect(rt, exchanger, peer.pid, deadline)
                                   for peer in rt.parties[rt.pid + 1:]))
            await rt.parties[rt.pid].protocol
        finally:
            if server is not None:
                server.close()
        logging.info(f"All {m} parties connected via didmesh (WireGuard).")
        rt.start_time = time.time()

    async def _connect(self, rt: Any, exchanger: Any, pid: int, deadline: float) -> None:
        loop = rt._loop
        host = str(tunnel_addresses(self.plan.roster_hash, pid).ipv4)
        why = "no attempt"
        while time.monotonic() < deadline:
            try:
                link = _Counting(exchanger(rt, pid))
                await asyncio.wait_for(loop.create_connection(
                    functools.partial(_same, link), host, self.port, local_addr=(self.address, 0)),
                    max(0.1, deadline - time.monotonic()))
                self.links[pid] = link
                return
            except (OSError, TimeoutError) as exc:
                why = str(exc) or type(exc).__name__
            await asyncio.sleep(0.1)
        raise ConnectFailed(
            f"could not open MPyC's connection to {self.plan.describe(pid)} at {host}:"
            f"{self.port} over the tunnel within {self.connect_timeout:g} s ({why})",
            party=pid)
