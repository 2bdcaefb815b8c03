"""``didmesh relay serve``: run a community relay (specs/relay.md, "Running a relay")."""

from __future__ import annotations

import argparse
import os

from didmesh.relay.options import add_serve_arguments, config_from_args

from .output import Output


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("relay", help="run a community relay", parents=[common])
    actions = p.add_subparsers(dest="relay_command", metavar="ACTION")
    actions.required = True
    serve = actions.add_parser(
        "serve",
        help="serve mailboxes and links until SIGTERM",
        parents=[common],
        description=(
            "Run a relay. It prints 'didmesh relay listening on URL' once ready. The default "
            "store is SQLite under the didmesh home (--home or $DIDMESH_HOME) or the user "
            "data directory."
        ),
    )
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    home = getattr(args, "home", None)
    if home:
        os.environ["DIDMESH_HOME"] = str(home)  # the default SQLite store lives under it
    from didmesh.relay.server import run  # aiohttp's server: only when serving

    return run(config_from_args(args))
