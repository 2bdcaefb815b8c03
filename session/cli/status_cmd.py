"""``didmesh status SESSION [--wait]``: who accepted, the roster, and the short
authentication string (SAS) once every party confirmed the roster."""

from __future__ import annotations

import argparse

from .common import add_identity_args
from .output import Output
from .session_support import (
    add_timeout,
    engine_of,
    labels_of,
    render_session,
    report_session,
    session_view,
    store_of,
    sync,
    wait_until_agreed,
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", help="show a session, its roster and its SAS", parents=[common])
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--wait", action="store_true",
                   help="wait until the roster is agreed (or the session ends)")  # fmt: skip
    p.add_argument("--offline", action="store_true", help="do not contact the relays")
    add_timeout(p)
    add_identity_args(p)
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    if args.offline:
        store = store_of(args)
        state = store.load_state(store.resolve(args.session))
        labels = labels_of(args)
        view = session_view(state, labels)
        out.result(view, render_session(view, out, labels))
        return 0
    engine = engine_of(args)
    sid = engine.store.resolve(args.session)
    relays = list(engine.load(sid).manifest["relays"])
    if args.wait:
        wait_until_agreed(engine, sid, relays, out, timeout=args.timeout)
    else:
        sync(engine, relays, out)
    return report_session(engine, sid, out, must_be_agreed=bool(args.wait))
