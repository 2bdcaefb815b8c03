"""``didmesh id``: create, list, show and export identities."""

from __future__ import annotations

import argparse
import json

from didmesh.identity.didkey import DidKey
from didmesh.identity.keystore import KDF_LEVELS, IdentityEntry

from .common import add_identity_args, keystore, passphrase_source
from .output import Output


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("id", help="manage your identities (did:key)", parents=[common])
    ids = p.add_subparsers(dest="id_command", metavar="ACTION")
    ids.required = True

    new = ids.add_parser("new", help="create a new identity", parents=[common])
    new.add_argument("--name", default=None, help="a local name for it (default: 'default')")
    new.add_argument(
        "--no-passphrase",
        action="store_true",
        help="store the key unencrypted (file mode 0600), for servers and scripts",
    )
    new.add_argument("--force", action="store_true", help="replace an identity of the same name")
    new.add_argument("--set-default", action="store_true", help="make it the default identity")
    new.add_argument(
        "--kdf",
        choices=sorted(KDF_LEVELS),
        default="interactive",
        help="Argon2id cost for the passphrase (default: interactive)",
    )
    add_identity_args(new, as_option=False)
    new.set_defaults(func=cmd_new)

    lst = ids.add_parser("list", help="list identities", parents=[common])
    lst.set_defaults(func=cmd_list)

    show = ids.add_parser("show", help="show an identity's DID and keys", parents=[common])
    show.add_argument("name", nargs="?", default=None, help="identity name (default: the default)")
    show.set_defaults(func=cmd_show)

    exp = ids.add_parser(
        "export", help="print an identity's public DID document (never the key)", parents=[common]
    )
    exp.add_argument("name", nargs="?", default=None)
    exp.set_defaults(func=cmd_export)

    dflt = ids.add_parser("default", help="make NAME the default identity", parents=[common])
    dflt.add_argument("name")
    dflt.set_defaults(func=cmd_default)


def _entry_json(e: IdentityEntry) -> dict[str, object]:
    data: dict[str, object] = {
        "name": e.name,
        "did": e.did,
        "created": e.created,
        "encrypted": e.encrypted,
        "default": e.default,
    }
    if e.problem:
        data["problem"] = e.problem
    return data


def cmd_new(args: argparse.Namespace, out: Output) -> int:
    ks = keystore(args)
    name = args.name or "default"
    source = None if args.no_passphrase else passphrase_source(args)
    entry = ks.create(name, passphrase=source, force=args.force, kdf_level=args.kdf)
    if args.set_default:
        ks.set_default(name)
        entry = ks.entry(name)
    how = "encrypted with your passphrase" if entry.encrypted else "unencrypted, mode 0600"
    out.result(
        _entry_json(entry) | {"path": str(entry.path)},
        f"created identity {out.bold(entry.name)}{' (default)' if entry.default else ''}\n"
        f"  DID  {entry.did}\n  key  {entry.path} ({how})",
    )
    return 0


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    entries = keystore(args).list()
    if out.json_mode:
        out.result([_entry_json(e) for e in entries])
    elif not entries:
        out.line("no identities yet; create one with 'didmesh id new'")
    else:
        width = max(len(e.name) for e in entries)
        for e in entries:
            if e.problem:
                out.line(f"! {e.name:<{width}}  {out.bad(e.problem)}")
                continue
            mark = "*" if e.default else " "
            lock = "" if e.encrypted else out.dim("  (unencrypted)")
            out.line(f"{mark} {e.name:<{width}}  {e.did}{lock}")
    return 0


def cmd_show(args: argparse.Namespace, out: Output) -> int:
    entry = keystore(args).entry(args.name)
    key = DidKey.parse(entry.did)
    data = _entry_json(entry) | {
        "verificationMethod": key.verification_method_id,
        "keyAgreement": key.key_agreement_id,
        "publicKeyMultibase": key.fingerprint,
        "x25519PublicKeyMultibase": key.x25519_fingerprint,
    }
    out.result(
        data,
        f"{out.bold(entry.name)}{' (default)' if entry.default else ''}\n"
        f"  DID                 {entry.did}\n"
        f"  signing key         {key.verification_method_id}\n"
        f"  key agreement       {key.key_agreement_id}\n"
        f"  created             {entry.created}\n"
        f"  stored              {'encrypted' if entry.encrypted else 'unencrypted'}"
        f" in {entry.path}",
    )
    return 0


def cmd_export(args: argparse.Namespace, out: Output) -> int:
    entry = keystore(args).entry(args.name)
    doc = DidKey.parse(entry.did).document()
    print(json.dumps(doc, indent=2), file=out.stream)
    return 0


def cmd_default(args: argparse.Namespace, out: Output) -> int:
    ks = keystore(args)
    ks.set_default(args.name)
    entry = ks.entry(args.name)
    out.result(_entry_json(entry), f"default identity is now {entry.name} ({entry.did})")
    return 0
