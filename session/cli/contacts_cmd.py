"""``didmesh contacts add|list|remove``: the local address book of petnames."""

from __future__ import annotations

import argparse

from ..contacts import Contacts
from .output import Output


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("contacts", help="your address book (petnames for DIDs)", parents=[common])
    cs = p.add_subparsers(dest="contacts_command", metavar="ACTION")
    cs.required = True
    add = cs.add_parser("add", help="add a petname for a DID", parents=[common])
    add.add_argument("name")
    add.add_argument("did")
    add.add_argument("--force", action="store_true", help="replace an existing name")
    add.set_defaults(func=cmd_add)
    lst = cs.add_parser("list", help="list contacts", parents=[common])
    lst.set_defaults(func=cmd_list)
    rm = cs.add_parser("remove", help="remove a contact", parents=[common])
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove)


def _book(args: argparse.Namespace) -> Contacts:
    return Contacts(getattr(args, "home", None))


def cmd_add(args: argparse.Namespace, out: Output) -> int:
    _book(args).add(args.name, args.did, force=args.force)
    out.result({"name": args.name, "did": args.did}, f"added {args.name} = {args.did}")
    return 0


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    data = _book(args).all()
    if out.json_mode:
        out.result([{"name": k, "did": v} for k, v in sorted(data.items())])
    elif not data:
        out.line("no contacts yet; add one with 'didmesh contacts add NAME DID'")
    else:
        width = max(len(k) for k in data)
        for name, did in sorted(data.items()):
            out.line(f"{name:<{width}}  {did}")
    return 0


def cmd_remove(args: argparse.Namespace, out: Output) -> int:
    did = _book(args).remove(args.name)
    out.result({"name": args.name, "did": did, "removed": True}, f"removed {args.name}")
    return 0
