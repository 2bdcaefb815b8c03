"""``didmesh session new|show|wait|cancel`` and ``didmesh sessions``."""

from __future__ import annotations

import argparse

from ..engine import utcnow
from ..errors import BadSessionParameters
from ..manifest import new_manifest, parse_duration
from ..state import ENDED, Status
from .common import add_identity_args
from .endpoints import add_endpoint_args, announced_endpoints
from .output import Output
from .session_support import (
    add_timeout,
    engine_of,
    flush_now,
    labels_of,
    render_session,
    report_session,
    session_view,
    store_of,
    wait_until_agreed,
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("session", help="create and drive MPC sessions", parents=[common])
    ss = p.add_subparsers(dest="session_command", metavar="ACTION")
    ss.required = True

    new = ss.add_parser("new", help="create a session (you organize it, as party 0)",
                        parents=[common])  # fmt: skip
    new.add_argument("--program", required=True, metavar="PATH",
                     help="the MPyC program: a file, or a folder (a bundle: every file in it "
                     "is agreed, and the program runs from that folder)")
    new.add_argument("--entry", default=None, metavar="FILE",
                     help="with a folder: the file to run (default: __main__.py, main.py or "
                     "the only top-level .py file)")
    new.add_argument("--include", action="append", default=[], metavar="GLOB",
                     help="with a folder: bundle only files matching GLOB (repeatable)")
    new.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                     help="with a folder: leave out files matching GLOB (repeatable; "
                     "__pycache__, *.pyc and hidden files are always left out)")
    new.add_argument("--parties", required=True, type=int, metavar="M", help="number of parties")
    new.add_argument("--threshold", type=int, default=None, metavar="T",
                     help="MPyC threshold t (default: (m-1)//2)")  # fmt: skip
    new.add_argument("--relay", action="append", required=True, metavar="URL",
                     help="relay URL (repeatable; messages go through all)")  # fmt: skip
    new.add_argument("--name", default=None,
                     help="a human name (default: the program file's stem or folder's name)")
    new.add_argument("--valid-for", default="24h", metavar="DURATION",
                     help="validity window, e.g. 30m, 2h, 7d (default: 24h)")  # fmt: skip
    new.add_argument("--mpyc", default=None, metavar="RANGE",
                     help="MPyC version range (default: the installed minor version)")  # fmt: skip
    new.add_argument("--arg", action="append", default=[], metavar="ARG",
                     help="a program argument every party runs with (repeatable, in order; "
                     "e.g. --arg=--size --arg=5)")  # fmt: skip
    new.add_argument("--input-name", action="append", default=[], metavar="NAME",
                     help="a private input each party gives with 'run --input NAME=VALUE' "
                     "(repeatable; declared names catch typos)")  # fmt: skip
    add_endpoint_args(new)
    add_identity_args(new)
    new.set_defaults(func=cmd_new)

    show = ss.add_parser("show", help="show a session (no network)", parents=[common])
    show.add_argument("session", metavar="SESSION")
    add_identity_args(show)
    show.set_defaults(func=cmd_show)

    wait = ss.add_parser(
        "wait",
        help="drive the protocol until the roster is agreed (serves invite codes too)",
        parents=[common],
    )
    wait.add_argument("session", metavar="SESSION")
    add_timeout(wait)
    add_identity_args(wait)
    wait.set_defaults(func=cmd_wait)

    cancel = ss.add_parser("cancel", help="cancel a session you organize", parents=[common])
    cancel.add_argument("session", metavar="SESSION")
    add_identity_args(cancel)
    cancel.set_defaults(func=cmd_cancel)

    lst = sub.add_parser("sessions", help="list the sessions in this home", parents=[common])
    lst.set_defaults(func=cmd_list)


def cmd_new(args: argparse.Namespace, out: Output) -> int:
    from ..mesh.faults import ReservedOption
    from ..mesh.mpyc_bridge import mpyc_argv

    try:  # the agreed arguments must not set what didmesh sets (else no run could start)
        mpyc_argv("program", args.arg, party_id=0, m=args.parties)
    except ReservedOption as exc:
        raise BadSessionParameters(f"--arg: {exc.message}") from None
    engine = engine_of(args)
    manifest = new_manifest(
        organizer=engine.key.did,
        program=args.program,
        parties=args.parties,
        threshold=args.threshold,
        relays=args.relay,
        name=args.name,
        valid_for=parse_duration(args.valid_for),
        mpyc_range=args.mpyc,
        args=args.arg,
        include=args.include,
        exclude=args.exclude,
        entry=args.entry,
        inputs=args.input_name,
        now=utcnow(),
    )
    state = engine.create_session(
        manifest, announced_endpoints(args, engine.key, manifest.relays, out))
    engine.store.remember_relays(list(manifest.relays))
    view = session_view(state, engine.labels)
    out.result(
        view,
        f"created session {out.bold(state.session_id)} ({manifest.name!r}, "
        f"{manifest.parties} parties, threshold {manifest.threshold})\n"
        f"  invite people:  didmesh invite {state.session_id[:8]} --to NAME_OR_DID\n"
        f"                  didmesh invite {state.session_id[:8]} --code\n"
        f"  then:           didmesh session wait {state.session_id[:8]}",
    )
    return 0


def cmd_show(args: argparse.Namespace, out: Output) -> int:
    store = store_of(args)
    state = store.load_state(store.resolve(args.session))
    labels = labels_of(args)
    view = session_view(state, labels)
    out.result(view, render_session(view, out, labels))
    return 0


def cmd_wait(args: argparse.Namespace, out: Output) -> int:
    engine = engine_of(args)
    sid = engine.store.resolve(args.session)
    state = engine.load(sid)
    wait_until_agreed(engine, sid, list(state.manifest["relays"]), out, timeout=args.timeout)
    return report_session(engine, sid, out, must_be_agreed=True)


def cmd_cancel(args: argparse.Namespace, out: Output) -> int:
    engine = engine_of(args)
    sid = engine.store.resolve(args.session)
    engine.cancel(sid)
    flush_now(engine, sid, out)
    out.result({"sessionId": sid, "status": "cancelled"}, f"cancelled session {sid[:8]}")
    return 0


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    store = store_of(args)
    labels = labels_of(args)
    states = store.all_states()
    views = [session_view(s, labels) for s in states]
    if out.json_mode:
        out.result(views)
        return 0
    if not views:
        out.line("no sessions yet; create one with 'didmesh session new' or see 'didmesh invites'")
        return 0
    for v in sorted(views, key=lambda v: v["validFrom"]):
        status = v["status"]
        colour = out.ok if status == Status.AGREED else out.bad if status in ENDED else str
        org = "you" if v["role"] == "organizer" else (v["organizerName"] or v["organizer"][:24])
        out.line(
            f"{v['sessionId'][:12]}  {colour(status):<12} {v['name'][:24]:<24} "
            f"{v['parties']} parties  organizer {org}  until {v['validUntil']}"
        )
    return 0
