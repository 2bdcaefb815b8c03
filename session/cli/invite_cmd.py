"""``didmesh invite`` (by DID/contact or by code), ``didmesh invites`` and ``didmesh withdraw``."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from didmesh.identity.credentials import parse_untrusted
from didmesh.identity.errors import DidmeshError

from ..contacts import Contacts
from ..documents import Gate
from ..errors import BadSessionParameters, SessionUsageError
from ..manifest import parse_duration
from ..state import ACCEPTABLE, Role, Status
from .common import add_identity_args, write_out
from .output import Output
from .session_support import (
    add_relay,
    add_timeout,
    engine_of,
    flush_now,
    pump,
    relay_problems,
    relays_of,
    render_program,
    session_view,
    sync,
    who,
)

MAX_INVITE_FILE = 256 * 1024


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    inv = sub.add_parser("invite", help="invite people to a session you organize",
                         parents=[common])  # fmt: skip
    inv.add_argument("session", metavar="SESSION")
    how = inv.add_mutually_exclusive_group(required=True)
    how.add_argument("--to", action="append", default=[], metavar="DID_OR_CONTACT",
                     help="invite this DID or contact (repeatable)")  # fmt: skip
    how.add_argument("--code", action="store_true",
                     help="print a single-use code (for someone whose DID you lack)")  # fmt: skip
    inv.add_argument("--requires-issuer", default=None, metavar="DID_OR_CONTACT",
                     help="the seat requires a credential from this issuer")  # fmt: skip
    inv.add_argument("--requires-type", default=None, metavar="TYPE",
                     help="... of this credential type")  # fmt: skip
    inv.add_argument("--out", default=None, metavar="FILE",
                     help="also write the invite to FILE (for e-mail or chat)")  # fmt: skip
    inv.add_argument("--code-ttl", default="30m", metavar="DURATION",
                     help="how long a code stays valid (default: 30m)")  # fmt: skip
    inv.add_argument("--code-words", type=int, default=2, metavar="N",
                     help="words in the code (default: 2, i.e. 16 bits)")  # fmt: skip
    inv.add_argument("--no-wait", action="store_true",
                     help="with --code: return at once ('session wait' serves it)")  # fmt: skip
    add_timeout(inv, 600.0)
    add_identity_args(inv)
    inv.set_defaults(func=cmd_invite)

    lst = sub.add_parser("invites", help="fetch and list invites to you (verified)",
                         parents=[common])  # fmt: skip
    add_relay(lst)
    lst.add_argument("--file", action="append", default=[], metavar="FILE",
                     help="import an invite written with 'didmesh invite --out'")  # fmt: skip
    lst.add_argument("--all", action="store_true", help="also list answered invites")
    lst.add_argument("--offline", action="store_true", help="do not contact relays")
    add_identity_args(lst)
    lst.set_defaults(func=cmd_invites)

    wd = sub.add_parser(
        "withdraw",
        help="withdraw an invite (organizer, --invite) or your acceptance (invitee)",
        parents=[common],
    )
    wd.add_argument("session", metavar="SESSION")
    wd.add_argument("--invite", default=None, metavar="DID_OR_CONTACT",
                    help="(organizer) withdraw the invite of this party")  # fmt: skip
    add_identity_args(wd)
    wd.set_defaults(func=cmd_withdraw)


def cmd_invite(args: argparse.Namespace, out: Output) -> int:
    engine = engine_of(args)
    sid = engine.store.resolve(args.session)
    contacts = Contacts(getattr(args, "home", None))
    if args.code:
        return _invite_code(args, out, engine, sid)
    requires = None
    if args.requires_issuer:
        requires = Gate(contacts.resolve(args.requires_issuer), args.requires_type)
    elif args.requires_type:
        raise BadSessionParameters("--requires-type needs --requires-issuer")
    if args.out and len(args.to) != 1:
        raise BadSessionParameters("--out writes one invite: give exactly one --to")
    issued = []
    for target in args.to:
        did = contacts.resolve(target)
        doc = engine.invite(sid, did, requires)
        issued.append({"to": did, "name": engine.labels.get(did), "inviteId": doc["id"]})
        if args.out:
            write_out(args.out, (json.dumps(doc, indent=2) + "\n").encode())
        out.progress(f"invited {who(did, engine.labels, engine.key.did)}")
    delivered = flush_now(engine, sid, out)
    out.result(
        {"sessionId": sid, "invites": issued, "delivered": delivered, "out": args.out},
        "\n".join(
            f"invite for {who(i['to'], engine.labels, engine.key.did)} "
            + ("sent through the relays" if delivered else "queued")
            for i in issued
        )
        + (f"\nwritten to {args.out}" if args.out else ""),
    )
    return 0


def _invite_code(args: argparse.Namespace, out: Output, engine: object, sid: str) -> int:
    from ..engine import Engine

    assert isinstance(engine, Engine)
    if args.requires_issuer or args.out:
        raise BadSessionParameters("--code cannot be combined with --requires-issuer or --out")
    offer = engine.open_code(sid, words=args.code_words, ttl=parse_duration(args.code_ttl))
    state = engine.load(sid)
    relays = list(state.manifest["relays"])
    if args.no_wait:
        out.result(
            {"sessionId": sid, "code": offer.code, "nameplate": offer.nameplate,
             "expiresMs": offer.expires_ms, "relays": relays},
            f"invite code: {out.bold(offer.code)}\n"
            f"  the invitee runs: didmesh claim {offer.code} --relay {relays[0]}\n"
            f"  keep 'didmesh session wait {sid[:8]}' running to answer the claim",
        )  # fmt: skip
        return 0
    out.progress(
        f"invite code: {offer.code}   (the invitee runs: didmesh claim {offer.code} "
        f"--relay {relays[0]})"
    )
    if not out.json_mode:
        out.line(f"invite code: {out.bold(offer.code)}")

    def settled() -> bool:
        current = next(
            (o for o in engine.store.load_codes(sid) if o.nameplate == offer.nameplate), None
        )
        return current is None or current.status in ("claimed", "burned", "expired")

    pump(engine, relays, out, until=settled, timeout=args.timeout,
         what=f"someone to claim code {offer.code}")  # fmt: skip
    final = next(o for o in engine.store.load_codes(sid) if o.nameplate == offer.nameplate)
    flush_now(engine, sid, out)
    data = {"sessionId": sid, "code": offer.code, "status": final.status,
            "claimant": final.claimant}  # fmt: skip
    if final.status != "claimed":
        out.result(data)
        from ..errors import CodeError

        raise CodeError(
            f"code {offer.code} was not claimed: {final.log[-1] if final.log else final.status}"
        )
    out.result(
        data,
        f"code claimed by {who(final.claimant, engine.labels, engine.key.did)}; invite sent",
    )
    return 0


def cmd_invites(args: argparse.Namespace, out: Output) -> int:
    engine = engine_of(args)
    imported = []
    for name in args.file:
        try:
            raw = Path(name).read_bytes()[: MAX_INVITE_FILE + 1]
        except OSError as exc:
            raise BadSessionParameters(f"cannot read {name}: {exc.strerror}") from None
        doc = parse_untrusted(raw, max_bytes=MAX_INVITE_FILE)
        state = engine.import_invite(doc)
        imported.append(state.session_id)
    problems: list[tuple[str, DidmeshError]] = []
    if not args.offline:
        urls = relays_of(args, engine, required=not args.file)
        if urls:
            out.progress(f"fetching from {', '.join(urls)} ...")
            # a relay that is down, answers an error or pushes garbage is an error, never
            # an empty inbox (issue 13); what other relays delivered is still listed
            problems = sync(engine, urls, out, strict=True)
            if problems and len({u for u, _ in problems}) >= len(urls) and not args.file:
                raise relay_problems(problems, "fetch invites")
    rc = _list_invites(args, out, engine)
    if problems:  # after the listing: nothing fetched is hidden, and the exit is non-zero
        raise relay_problems(problems, "fetch invites from every relay")
    return rc


def _list_invites(args: argparse.Namespace, out: Output, engine: object) -> int:
    from ..engine import Engine

    assert isinstance(engine, Engine)
    states = [s for s in engine.my_sessions() if s.role == Role.INVITEE]
    if not args.all:
        states = [s for s in states if s.status in ACCEPTABLE]
    views = [session_view(s, engine.labels) for s in states]
    if out.json_mode:
        out.result(views)
        return 0
    if not views:
        out.line("no pending invites")
        return 0
    for v in views:
        org = v["organizerName"] or v["organizer"]
        req = v.get("requires")
        sid = v["sessionId"][:12]
        out.line(
            f"{out.bold(sid)}  {v['name']!r} from {org}\n"
            f"    {v['parties']} parties, threshold {v['threshold']}, until {v['validUntil']}\n"
            + "\n".join(render_program(v["program"], indent="    "))
            + (f"\n    requires a credential from {req['issuer']}" if req else "")
            + (f"\n    status {v['status']}" if args.all else "")
        )
        if v["status"] == Status.REFUSED and v.get("error"):
            out.line(out.bad(f"    {v['error']['message']}"))
        if v["status"] in ACCEPTABLE:
            out.line(out.dim(f"    accept with: didmesh accept {sid}   "
                             f"(decline: didmesh decline {sid})"))
    return 0


def cmd_withdraw(args: argparse.Namespace, out: Output) -> int:
    engine = engine_of(args)
    sid = engine.store.resolve(args.session)
    state = engine.load(sid)
    if state.role == Role.ORGANIZER:
        if not args.invite:
            raise SessionUsageError(
                "you organize this session: name the invite to withdraw with --invite "
                "(or cancel the session: didmesh session cancel)"
            )
        code = re.fullmatch(r"(\d{1,9})(-[a-z]+)*", args.invite.strip())
        if code:  # an open code, or its number (the nameplate)
            engine.withdraw_code(sid, int(code.group(1)))
            text = f"withdrew the open code {int(code.group(1))}-..."
        else:
            did = Contacts(getattr(args, "home", None)).resolve(args.invite)
            engine.withdraw_invite(sid, did)
            text = f"withdrew the invite of {who(did, engine.labels, engine.key.did)}"
    else:
        if args.invite:
            raise SessionUsageError("only the organizer withdraws invites")
        engine.withdraw(sid)
        text = f"withdrew your acceptance of session {sid[:8]}"
    try:
        flush_now(engine, sid, out)
    except DidmeshError as exc:  # pragma: no cover - flush_now reports and returns
        out.progress(f"warning: {exc.message}")
    out.result({"sessionId": sid, "withdrawn": True, "status": engine.load(sid).status}, text)
    return 0
