"""``didmesh run SESSION --transport wireguard``: one run over a WireGuard tunnel that
didmesh brings up and removes itself (specs/wireguard.md, "Running over the tunnel").

1. :func:`.preflight.check`: CAP_NET_ADMIN, ``wg``, ``ip``, and a WireGuard (the kernel's,
   or ``/dev/net/tun`` and ``wireguard-go``: ``impl``, :mod:`.impl`); nothing is touched
   before it passes.
2. :func:`.nat.prepare`: the public mapping of the tunnel's UDP port (STUN, from that
   very port, to the relays' STUN ports), the authenticated exchange of UDP endpoints
   with every peer through the relays, the best endpoint per peer; pairs that can have
   no UDP path (a symmetric NAT) fail here, named, before anything is set up.
3. :class:`.tunnel.Tunnel`: the session's interface (kernel WireGuard where the kernel
   has it, else ``wireguard-go``) from the agreed roster (keys,
   roster-bound PSKs, tunnel addresses, the chosen endpoints), up; a bounded wait for a
   handshake with every peer, trying its other candidates in turn, naming those not
   reached.
4. The mesh runner (:func:`~didmesh.session.mesh.runner.run_program`), unchanged in what
   it checks and reports, with two differences: its control channels (the connectivity
   check, the start barrier, signed aborts, BYE) connect directly between the tunnel
   addresses (:func:`control_plan`), and MPyC's own bytes go over plain TCP in the tunnel
   through :class:`.bridge.WgBridge`, which checks every inbound connection's party id
   against its source address. The receipt names the transport ``wireguard``.
5. The tunnel comes down in a ``finally``: on success, program failure, a peer's abort,
   Ctrl-C and SIGTERM/SIGHUP (turned into Ctrl-C for the run). If the process is killed,
   ``wireguard-go``'s keeper (:mod:`.keeper`) lets it carry the kernel's FIN for the run's
   connections to the peers (1 s), then ends it, and it removes the interface and its
   socket (a kernel interface stays); the state file that remains lets
   the next run or ``didmesh wg down`` finish the job. The runner's own hard exit (a
   program that does not give control back after a failure) runs the teardown first
   (``EXIT_HOOKS``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey
from didmesh.session.mesh.plan import MeshPlan, format_endpoint
from didmesh.session.mesh.runner import EXIT_HOOKS, RunResult, run_program

from . import preflight
from .addresses import tunnel_addresses
from .bridge import WgBridge
from .config import build_config
from .impl import choose
from .mpyc_args import DEFAULT_MPYC_PORT
from .nat import free_udp_port, prepare
from .tunnel import Tunnel

TRANSPORT = "wireguard"
MIN_HANDSHAKE_WAIT = 6.0


def control_plan(plan: MeshPlan, port: int) -> MeshPlan:
    """The plan whose only endpoints are the parties' tunnel addresses (``port``), with
    no relay: the mesh's control channels then run inside the tunnel only."""
    parties = tuple(
        dataclasses.replace(p, endpoints=(
            format_endpoint(str(tunnel_addresses(plan.roster_hash, p.party_id).ipv4), port),))
        for p in plan.parties)
    return dataclasses.replace(plan, parties=parties, relays=())


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt (as Ctrl-C does) while the tunnel is
    up, so that the same teardown runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    saved = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def run_over_wireguard(
    plan: MeshPlan,
    program_path: str,
    args: Sequence[str] = (),
    *,
    identity: IdentityKey | None,
    timeout: float = 30.0,
    connect_timeout: float = 120.0,
    handshake_timeout: float = 30.0,
    port: int = DEFAULT_MPYC_PORT,
    report: Callable[[str], None] = lambda _: None,
    hard_exit: bool = False,
    receipt: bool = True,
    workdir: str | None = None,
    digest: str | None = None,
    refuse: DidmeshError | None = None,
    impl: str | None = None,
) -> RunResult:
    """Run ``program_path`` as this party over a WireGuard tunnel (blocking); see the
    module docstring. ``port`` is MPyC's TCP port on the tunnel addresses, ``port + 1``
    the control channels'. ``impl``: ``auto``, ``kernel`` or ``userspace`` (None:
    ``DIDMESH_WG_IMPL``, else ``auto``)."""
    impl = choose(impl)
    t0 = time.perf_counter()
    preflight.check(impl)
    took_preflight = time.perf_counter() - t0
    udp_port = build_config(plan).listen_port or free_udp_port()
    with _signals_interrupt():  # nothing is set up yet: SIGTERM ends it as Ctrl-C does
        prep = prepare(plan, identity, udp_port, timeout=handshake_timeout, report=report)
    for note in prep.notes:
        report(note)
    report(f"WireGuard preflight {took_preflight:.2f} s, STUN {prep.timings['stun']:.2f} s, "
           f"endpoint exchange {prep.timings['exchange']:.2f} s; UDP port {udp_port}, NAT "
           f"{prep.nat}, endpoints from {len(prep.offers)} of {plan.m - 1} peers")
    # the lower id of each pair initiates; we answer lower ids (deferred: their endpoint
    # is given only after a grace period, so that two initiations do not cross)
    deferred = frozenset(p for p in prep.candidates if p < plan.my_party_id)
    # every peer starts with no endpoint and no keepalive: the handshake wait gives them
    # (section 6.3: the initiator first, the candidates in turn)
    cfg = build_config(plan, listen_port=udp_port, keepalive=None,
                       endpoints=dict.fromkeys(prep.candidates))
    tunnel = Tunnel(cfg, report=report, impl=impl)
    EXIT_HOOKS.append(tunnel.down)  # the runner's hard exit skips the finally below
    with _signals_interrupt():
        try:
            t0 = time.perf_counter()
            tunnel.up()
            # one budget for the exchange and the handshakes (at least MIN_HANDSHAKE_WAIT)
            wait = max(MIN_HANDSHAKE_WAIT, handshake_timeout - prep.timings["exchange"])
            report(f"WireGuard interface {tunnel.name} up in {time.perf_counter() - t0:.2f} s "
                   f"({tunnel.note}), {tunnel.address} "
                   f"(session range {cfg.networks[0]}); waiting for handshakes with "
                   f"{len(cfg.peers)} peers (up to {wait:.0f} s)")
            took = tunnel.wait_handshakes(wait, plan.describe, prep.candidates, deferred)
            where = tunnel.endpoints()
            peers = ", ".join(f"party {peer.party_id} at {where.get(peer.party_id, '?')}"
                              for peer in cfg.peers)
            report(f"WireGuard handshakes with all peers complete ({took:.2f} s): {peers}")
            bridge = functools.partial(WgBridge, plan=plan, port=port,
                                       connect_timeout=connect_timeout)
            t_prog = time.perf_counter()
            result = run_program(
                control_plan(plan, port + 1), program_path, args, direct_only=True,
                timeout=timeout, identity=identity, connect_timeout=connect_timeout,
                report=report, hard_exit=hard_exit, receipt=receipt, workdir=workdir,
                digest=digest, refuse=refuse, bridge_factory=bridge, transport=TRANSPORT,
            )
            report(f"WireGuard run: program {time.perf_counter() - t_prog:.2f} s")
            return result
        finally:
            t0 = time.perf_counter()
            try:
                tunnel.down()
            finally:
                with contextlib.suppress(ValueError):
                    EXIT_HOOKS.remove(tunnel.down)
            report(f"WireGuard interface {tunnel.name} removed "
                   f"({time.perf_counter() - t0:.2f} s)")
