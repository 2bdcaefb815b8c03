"""WireGuard keys and configs derived from an agreed roster (specs/wireguard.md).

The alternative to the Noise mesh (``session/mesh/``): after the roster is agreed, every
party derives a WireGuard interface whose peers are exactly the roster's other parties,
and runs plain MPyC over the tunnel addresses. Everything here is pure (no I/O) except
:mod:`.load` (reads the session store) and :mod:`.testing` (a real ``wireguard-go``
harness in network namespaces, for tests and local experiments).

Recipes::

    plan = load_plan(store, "3fa2")                   # the verified roster view
    config = build_config(plan)                       # keys, PSKs, addresses, peers
    text = render_wg_quick(config)                    # or render_setconf(config)
    args = mpyc_args(plan)                            # ["-P", "100.64.…:11365", …, "-I", "1"]
"""

from __future__ import annotations

from .addresses import TunnelAddresses, session_networks, tunnel_addresses
from .config import WgConfig, WgPeer, build_config, interface_name
from .errors import (
    SessionNotAgreed,
    WgConfigInvalid,
    WgNoSessionKey,
    WgPeerKeyInvalid,
    WgUsageError,
    WireGuardError,
)
from .keys import decode_key, derive_psk, encode_key, wg_private_key, wg_public_key
from .load import load_plan
from .mpyc_args import DEFAULT_MPYC_PORT, mpyc_args
from .render import ParsedConf, parse_conf, render_setconf, render_wg_quick

__all__ = [
    "DEFAULT_MPYC_PORT",
    "ParsedConf",
    "SessionNotAgreed",
    "TunnelAddresses",
    "WgConfig",
    "WgConfigInvalid",
    "WgNoSessionKey",
    "WgPeer",
    "WgPeerKeyInvalid",
    "WgUsageError",
    "WireGuardError",
    "build_config",
    "decode_key",
    "derive_psk",
    "encode_key",
    "interface_name",
    "load_plan",
    "mpyc_args",
    "parse_conf",
    "render_setconf",
    "render_wg_quick",
    "session_networks",
    "tunnel_addresses",
    "wg_private_key",
    "wg_public_key",
]
