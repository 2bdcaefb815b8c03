"""``didmesh relay serve``: run a community relay (specs/relay.md, "Running a relay");
``didmesh relay list|forget``: the relays this home remembers as its defaults."""

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
    listed = actions.add_parser(
        "list", parents=[common],
        help="the relays this home remembers (used when a command gets no --relay)")
    listed.set_defaults(func=cmd_list)
    forget = actions.add_parser(
        "forget", parents=[common],
        help="stop using a remembered relay as a default (e.g. a mistyped --relay URL)")
    forget.add_argument("url", metavar="URL")
    forget.set_defaults(func=cmd_forget)


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    from .common import store_of

    urls = store_of(args).known_relays()
    out.result(urls, "\n".join(urls) if urls else
               "no remembered relays (a command's --relay URL is remembered)")
    return 0


def cmd_forget(args: argparse.Namespace, out: Output) -> int:
    from didmesh.session.errors import SessionUsageError

    from .common import store_of

    url = args.url.rstrip("/")
    store = store_of(args)
    if not store.forget_relay(url) and not store.forget_relay(args.url):
        known = ", ".join(store.known_relays()) or "none"
        raise SessionUsageError(f"relay {args.url!r} is not remembered here "
                                f"(remembered: {known})")
    out.result({"forgotten": url}, f"forgot relay {url}")
    return 0


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    home = getattr(args, "home", None)
    if home:
        os.environ["DIDMESH_HOME"] = str(home)  # the default SQLite store lives under it
    from didmesh.relay.server import run  # aiohttp's server: only when serving

    return run(config_from_args(args))
