"""Plain MPyC over the tunnel (specs/wireguard.md, section 6): the ``-P host:port`` list of
all parties' tunnel addresses in party-id order, and ``-I`` this party's id.

Every party listens on its own tunnel address, so one port serves all
(``DEFAULT_MPYC_PORT``, MPyC's own default base port). IPv6 addresses are written without
brackets: MPyC splits ``-P`` at the last colon.
"""

from __future__ import annotations

from didmesh.session.mesh.plan import MeshPlan

from .addresses import tunnel_addresses
from .errors import WgUsageError

DEFAULT_MPYC_PORT = 11365


def mpyc_args(plan: MeshPlan, *, port: int = DEFAULT_MPYC_PORT, ipv6: bool = False) -> list[str]:
    """``["-P", "100.64.0.1:11365", "-P", …, "-I", "<my id>"]`` for this party."""
    if not 0 < port < 65536:
        raise WgUsageError(f"MPyC port {port} is outside 1..65535")
    args: list[str] = []
    for p in plan.parties:
        addr = tunnel_addresses(plan.roster_hash, p.party_id)
        args += ["-P", f"{addr.ipv6 if ipv6 else addr.ipv4}:{port}"]
    return [*args, "-I", str(plan.my_party_id)]
