"""``didmesh accept``, ``didmesh decline`` and ``didmesh claim CODE``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from didmesh.identity.credentials import parse_untrusted

from ..errors import BadSessionParameters, ConfirmationRequired, SessionUsageError
from ..manifest import Manifest, check_mpyc, verify_program
from ..state import ACCEPTABLE, ENDED, REOPENABLE, Role
from .common import add_identity_args
from .endpoints import add_endpoint_args, announced_endpoints
from .output import Output
from .session_support import (
    add_relay,
    add_timeout,
    engine_of,
    factory,
    flush_now,
    raise_state_error,
    relays_of,
    render_session,
    report_session,
    session_view,
    sync,
    wait_until_agreed,
)

MAX_CREDENTIAL_FILE = 256 * 1024


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    acc = sub.add_parser("accept", help="accept an invite (shows the terms and asks)",
                         parents=[common])  # fmt: skip
    acc.add_argument("session", metavar="SESSION")
    acc.add_argument("--yes", action="store_true", help="accept without asking (for scripts)")
    add_endpoint_args(acc)
    acc.add_argument("--credential", action="append", default=[], metavar="FILE",
                     help="present this credential (for a seat that requires one)")  # fmt: skip
    acc.add_argument("--program", default=None, metavar="PATH",
                     help="check that PATH (a file, or a bundle's folder) is the session's "
                     "program, file by file")  # fmt: skip
    acc.add_argument("--wait", action="store_true",
                     help="then wait until every party agreed on the roster")  # fmt: skip
    add_relay(acc)
    add_timeout(acc)
    add_identity_args(acc)
    acc.set_defaults(func=cmd_accept)

    dec = sub.add_parser("decline", help="decline an invite", parents=[common])
    dec.add_argument("session", metavar="SESSION")
    add_identity_args(dec)
    dec.set_defaults(func=cmd_decline)

    claim = sub.add_parser("claim", help="claim a seat with an invite code (e.g. 4-orbit-lantern)",
                           parents=[common])  # fmt: skip
    claim.add_argument("code", metavar="CODE")
    add_relay(claim)
    add_timeout(claim, 60.0)
    add_identity_args(claim)
    claim.set_defaults(func=cmd_claim)


def _ask(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise ConfirmationRequired()
    try:
        answer = input(question)
    except EOFError:
        raise ConfirmationRequired() from None
    return answer.strip().lower() in ("y", "yes")


def _load_credentials(paths: list[str]) -> list[dict[str, Any]]:
    creds = []
    for name in paths:
        try:
            raw = Path(name).read_bytes()[: MAX_CREDENTIAL_FILE + 1]
        except OSError as exc:
            raise BadSessionParameters(f"cannot read {name}: {exc.strerror}") from None
        creds.append(parse_untrusted(raw, max_bytes=MAX_CREDENTIAL_FILE))
    return creds


def cmd_accept(args: argparse.Namespace, out: Output) -> int:
    engine = engine_of(args)
    try:
        sid = engine.store.resolve(args.session)
    except SessionUsageError:
        urls = relays_of(args, engine, required=False)
        if not urls:
            raise
        sync(engine, urls, out)  # the invite may still be on a relay
        sid = engine.store.resolve(args.session)
    else:  # a cancel, a withdrawn invite or a fresh one may be on the relays since `invites`
        state = engine.load(sid)
        if state.role == Role.INVITEE and state.status in (
            *ACCEPTABLE, *REOPENABLE
        ):
            sync(engine, Manifest.from_json(state.manifest).relays, out, idle=0.3)
    state = engine.load(sid)
    if state.role == Role.INVITEE and state.status in ENDED and state.error:
        raise_state_error(state, prefix=f"session {sid[:8]} is {state.status}: ")
    if state.role != Role.INVITEE:
        raise SessionUsageError("you organize this session; invitees accept")
    if state.status not in ACCEPTABLE:
        raise SessionUsageError(
            f"session {sid[:8]} is {state.status}; only a pending invite can be accepted"
        )
    manifest = Manifest.from_json(state.manifest)
    if args.program:
        verify_program(manifest, args.program)
    check_mpyc(manifest)
    creds = _load_credentials(args.credential)
    view = session_view(state, engine.labels)
    if not args.yes and not out.json_mode:
        print(render_session(view, out, engine.labels), file=sys.stderr)
    if not _ask("Accept this invite? [y/N] ", args.yes):
        out.result({"sessionId": sid, "accepted": False}, "not accepted")
        return 1
    endpoints = announced_endpoints(args, engine.key, manifest.relays, out)
    engine.accept(sid, endpoints=endpoints, credentials=creds)
    delivered = flush_now(engine, sid, out)
    if not args.wait:
        out.result(
            {"sessionId": sid, "accepted": True, "delivered": delivered, "status": "accepted",
             "endpoints": endpoints},
            f"accepted session {sid[:8]}; the roster follows once everyone accepted\n"
            f"  watch it with: didmesh status {sid[:8]} --wait",
        )
        return 0
    wait_until_agreed(engine, sid, list(manifest.relays), out, timeout=args.timeout)
    return report_session(engine, sid, out, must_be_agreed=True)


def cmd_decline(args: argparse.Namespace, out: Output) -> int:
    engine = engine_of(args)
    sid = engine.store.resolve(args.session)
    engine.decline(sid)
    flush_now(engine, sid, out)
    out.result({"sessionId": sid, "status": "declined"}, f"declined session {sid[:8]}")
    return 0


def cmd_claim(args: argparse.Namespace, out: Output) -> int:
    engine = engine_of(args)
    urls = relays_of(args, engine)
    out.progress(f"claiming {args.code} through {', '.join(urls)} ...")
    state = asyncio.run(engine.claim(args.code, urls, factory(out), timeout=args.timeout))
    view = session_view(state, engine.labels)
    out.result(
        view,
        render_session(view, out, engine.labels)
        + f"\nclaimed a seat; accept with: didmesh accept {state.session_id[:8]}",
    )
    return 0
