"""``didmesh``: the command-line entry point.

Each command group lives in its own module with a ``register(subparsers)`` function
that adds its sub-commands and sets ``func`` on them. ``main`` maps the error tree
to exit codes: 0 success, 1 a check failed (bad input from someone else), 2 local
misuse or configuration, 130 interrupted. Expected failures print one line, never a
traceback (set DIDMESH_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from didmesh.identity.errors import DidmeshError

from .output import Output

#: command-group modules, in help order
COMMAND_MODULES: list[str] = [
    "didmesh.session.cli.id_cmd",
    "didmesh.session.cli.session_cmd",
    "didmesh.session.cli.invite_cmd",
    "didmesh.session.cli.accept_cmd",
    "didmesh.session.cli.status_cmd",
    "didmesh.session.cli.contacts_cmd",
    "didmesh.session.cli.credential_cmd",
    "didmesh.session.cli.relay_cmd",
    "didmesh.session.cli.run_cmd",
    "didmesh.session.cli.wg_cmd",
    "didmesh.session.cli.vcapi_cmd",
    "didmesh.session.cli.demo_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="didmesh",
        description="Decentralized-identity sessions for multiparty computation with MPyC.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        help="didmesh home directory (default: $DIDMESH_HOME or the user config directory)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "--relay-ca", default=argparse.SUPPRESS, metavar="FILE",
        help="PEM file of CA certificates to trust for https:// relays, besides the system's "
        "(default: $DIDMESH_RELAY_CA)",
    )
    parser.add_argument("--home", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--relay-ca", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(json_mode=bool(getattr(args, "json", False)))
    if getattr(args, "relay_ca", None):  # every relay client (and child process) reads it
        os.environ["DIDMESH_RELAY_CA"] = os.path.abspath(args.relay_ca)
    try:
        rc = args.func(args, out)
        return int(rc or 0)
    except DidmeshError as exc:
        if os.environ.get("DIDMESH_DEBUG"):
            raise
        if out.json_mode:
            out.result({"ok": False, "error": exc.code, "message": exc.message})
        print(f"didmesh: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("didmesh: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
