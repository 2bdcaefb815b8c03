"""``didmesh wg``: WireGuard configs and MPyC arguments from an agreed roster
(specs/wireguard.md).

``didmesh wg config SESSION`` writes this party's WireGuard config (mode 0600; it holds the
private key and the pairwise preshared keys) to ``--out`` or next to the session state,
and prints only public data: addresses, peers, next steps. ``--stdout`` prints the config
itself, secrets included, for piping into another tool. ``didmesh wg mpyc-args SESSION``
prints the ``-P host:port ... -I id`` arguments for plain MPyC over the tunnel::

    sudo wg-quick up "$(didmesh wg config S --json | jq -r .file)"
    python program.py $(didmesh wg mpyc-args S)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from didmesh.session.wireguard import preflight as wg_preflight
from didmesh.session.wireguard.config import DEFAULT_KEEPALIVE, WgConfig, build_config
from didmesh.session.wireguard.errors import WgUsageError
from didmesh.session.wireguard.load import load_plan
from didmesh.session.wireguard.mpyc_args import DEFAULT_MPYC_PORT, mpyc_args
from didmesh.session.wireguard.render import RENDERERS
from didmesh.session.wireguard.tunnel import find_leftover, is_alive, remove, run_interface

from .common import write_out
from .output import Output
from .session_support import labels_of, store_of

_WG_QUICK_NAME = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}\.conf$")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "wg",
        help="WireGuard configs and MPyC arguments from an agreed roster",
        description="Run plain MPyC over a WireGuard tunnel whose peers are exactly the "
        "agreed roster (specs/wireguard.md).",
    )
    wsub = p.add_subparsers(dest="wg_command", metavar="COMMAND")
    wsub.required = True

    c = wsub.add_parser(
        "config", parents=[common], help="write this party's WireGuard config (mode 0600)",
        description="Derive this party's WireGuard interface from the agreed roster: its "
        "per-session key, one peer per other party with a roster-bound preshared key, "
        "tunnel addresses from the roster hash.",
    )
    c.add_argument("session", metavar="SESSION")
    where = c.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="FILE", default=None,
                       help="write the config here (default: next to the session state)")
    where.add_argument("--stdout", action="store_true",
                       help="print the config, PRIVATE KEY INCLUDED, to stdout instead")
    c.add_argument("--format", choices=sorted(RENDERERS), default="wg-quick",
                   help="wg-quick (default; has Address) or setconf (for 'wg setconf')")
    c.add_argument("--listen-port", type=int, default=None, metavar="N",
                   help="UDP port to listen on (default: your announced endpoint's port)")
    c.add_argument("--keepalive", type=int, default=DEFAULT_KEEPALIVE, metavar="S",
                   help=f"PersistentKeepalive seconds, 0 for none (default {DEFAULT_KEEPALIVE})")
    c.set_defaults(func=cmd_config)

    m = wsub.add_parser(
        "mpyc-args", parents=[common], help="print MPyC's -P ... -I arguments for the tunnel",
        description="Print '-P host:port' for every party's tunnel address and '-I' this "
        "party's id: python program.py $(didmesh wg mpyc-args SESSION)",
    )
    m.add_argument("session", metavar="SESSION")
    m.add_argument("--port", type=int, default=DEFAULT_MPYC_PORT, metavar="N",
                   help=f"MPyC's TCP port on every tunnel address (default {DEFAULT_MPYC_PORT})")
    m.add_argument("--ipv6", action="store_true", help="use the IPv6 tunnel addresses")
    m.set_defaults(func=cmd_mpyc_args)

    d = wsub.add_parser(
        "down", parents=[common],
        help="remove what a stopped 'didmesh run --transport wireguard' left behind",
        description="Remove this party's WireGuard interface of the session (a kernel "
        "WireGuard link, or wireguard-go's with its process and UAPI socket) and its state "
        "file, if a run left them (a run removes them itself unless it was killed; the "
        "next run also does).",
    )
    d.add_argument("session", metavar="SESSION")
    d.set_defaults(func=cmd_down)


def _next_steps(cfg: WgConfig, fmt: str, path: str) -> list[str]:
    iface = cfg.interface
    if fmt == "wg-quick":
        return [f"  sudo wg-quick up {path}"]
    v4, v6 = cfg.interface_addresses()
    return [
        f"  sudo ip link add dev {iface} type wireguard   # or: sudo wireguard-go {iface}",
        f"  sudo wg setconf {iface} {path}",
        f"  sudo ip address add {v4} dev {iface}",
        f"  sudo ip address add {v6} dev {iface}",
        f"  sudo ip link set {iface} up",
    ]


def _human(cfg: WgConfig, fmt: str, path: str | None) -> str:
    v4, v6 = cfg.interface_addresses()
    lines = [
        f"WireGuard for session {cfg.session_id[:8]}, party {cfg.party_id} "
        f"of {len(cfg.peers) + 1}",
        f"  interface {cfg.interface}  addresses {v4} {v6}  listen port "
        f"{cfg.listen_port if cfg.listen_port is not None else '(any)'}",
    ]
    for p in cfg.peers:
        lines.append(f"  peer party {p.party_id}  {', '.join(p.allowed_ips)}  "
                     f"endpoint {p.endpoint or '(learned from its handshake)'}")
    if path is not None:
        lines += [f"wrote {path} (mode 0600: it holds your private key)", "next:",
                  *_next_steps(cfg, fmt, path)]
    return "\n".join(lines)


def cmd_config(args: argparse.Namespace, out: Output) -> int:
    store = store_of(args)
    plan = load_plan(store, args.session, labels_of(args))
    if args.keepalive < 0:
        raise WgUsageError("--keepalive must be 0 (off) or a number of seconds")
    cfg = build_config(plan, listen_port=args.listen_port, keepalive=args.keepalive or None)
    text = RENDERERS[args.format](cfg)
    for warning in cfg.warnings:
        out.progress(f"warning: {warning}")
    view: dict[str, Any] = {"ok": True, "format": args.format, **cfg.public_view()}
    if args.stdout:
        if out.json_mode:
            out.result({**view, "config": text})
        else:
            out.stream.write(text)
            out.stream.flush()
        return 0
    if args.out is not None:
        path = Path(args.out)
    else:
        suffix = ".conf" if args.format == "wg-quick" else ".setconf"
        path = store.root / plan.session_id / f"{cfg.interface}{suffix}"
    if args.format == "wg-quick" and not _WG_QUICK_NAME.match(path.name):
        out.progress(f"warning: wg-quick names the interface after the file; {path.name!r} "
                     "is not NAME.conf with NAME of at most 15 letters, digits or _=+.-")
    write_out(path, text.encode(), private=True)
    view["file"] = str(path)
    out.result(view, _human(cfg, args.format, str(path)))
    return 0


def cmd_mpyc_args(args: argparse.Namespace, out: Output) -> int:
    plan = load_plan(store_of(args), args.session)
    argv = mpyc_args(plan, port=args.port, ipv6=args.ipv6)
    out.result({"ok": True, "session": plan.session_id, "party": plan.my_party_id,
                "args": argv}, " ".join(argv))
    return 0


def cmd_down(args: argparse.Namespace, out: Output) -> int:
    plan = load_plan(store_of(args), args.session)
    name = run_interface(plan.session_id, plan.my_party_id)
    left = find_leftover(name)
    if not left:
        out.result({"ok": True, "interface": name, "removed": []},
                   f"nothing of {name} to remove")
        return 0
    wg_preflight.check_admin()
    st = left.state or {}
    if st.get("run_pid") and is_alive(st.get("run_pid"), st.get("run_start")):
        raise WgUsageError(f"{name} belongs to a run still going (pid {st['run_pid']}); "
                           "stop that run (Ctrl-C), it removes the tunnel itself")
    iface = f"{left.kind} interface" if left.kind else "interface"
    removed = [w for w, there in ((iface, left.link), ("wireguard-go",
               left.wireguard_go), ("state file", left.state is not None)) if there]
    remove(name, state=left.state)
    out.result({"ok": True, "interface": name, "kind": left.kind, "removed": removed},
               f"removed {name}: {', '.join(removed) or 'its socket'}")
    return 0
