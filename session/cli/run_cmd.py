"""``didmesh run SESSION -- program.py [args]``: run the agreed MPyC program over the mesh.

Checks first that the program file's SHA-256 is the one the manifest agreed on, then
takes this party's id from the agreed roster, brings up the mesh (direct or relayed per
pair), prints the connectivity check and runs the unmodified program as this party
(specs/mesh.md, sections 6-10). The program's own output goes to stdout; the mesh's to
stderr. When the run completes this party's signed RunReceipt is written next to the
session state (``receipt-<party>.json``) or to ``--receipt``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from didmesh.identity.errors import DidmeshError
from didmesh.session.manifest import verify_program
from didmesh.session.mesh.faults import PlanError
from didmesh.session.mesh.plan import from_roster
from didmesh.session.mesh.runner import run_program

from .common import add_identity_args, load_identity
from .output import Output
from .session_support import labels_of, store_of


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "run",
        help="run the session's MPyC program over the authenticated mesh",
        parents=[common],
        description="Run the agreed MPyC program as this party: "
        "didmesh run SESSION -- program.py [program args]",
    )
    p.add_argument("session", metavar="SESSION")
    p.add_argument("program", metavar="PROGRAM", help="the program file (after --)")
    p.add_argument("program_args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="program arguments (default: the manifest's)")
    paths = p.add_mutually_exclusive_group()
    paths.add_argument("--direct-only", action="store_true",
                       help="connect every pair directly over TCP, never through a relay")
    paths.add_argument("--relay-only", action="store_true",
                       help="connect every pair through a relay")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds of silence after which a party counts as gone (default 30)")
    p.add_argument("--connect-timeout", type=float, default=120.0, metavar="S",
                   help="seconds for every pair to connect (default 120)")
    p.add_argument("--receipt", default=None, metavar="FILE",
                   help="where to write this party's signed run receipt")
    p.add_argument("-v", "--debug", action="store_true",
                   help="on a failure, show tracebacks (also DIDMESH_DEBUG=1)")
    add_identity_args(p)
    p.set_defaults(func=cmd_run)


def _end_failed_run(exc: DidmeshError, out: Output) -> NoReturn:
    """A failed run: its one ``didmesh:`` line, then end the process at once (the
    interpreter's teardown of a large MPyC program's objects would take seconds)."""
    if os.environ.get("DIDMESH_DEBUG"):
        raise exc
    if out.json_mode:
        out.result({"ok": False, "error": exc.code, "message": exc.message})
    print(f"didmesh: {exc.message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(exc.exit_code)


def cmd_run(args: argparse.Namespace, out: Output) -> int:
    if getattr(args, "debug", False):
        os.environ["DIDMESH_DEBUG"] = "1"
    identity = load_identity(args)
    store = store_of(args)
    stored = store.load(store.resolve(args.session))
    manifest = stored.manifest
    verify_program(manifest, args.program)  # nothing starts with another program
    roster = stored.agreed_roster
    if roster is None:
        raise PlanError(
            f"session {manifest.session_id[:8]} has no agreed roster yet "
            "(wait with: didmesh status SESSION --wait)"
        )
    if stored.session_private_key is None:
        raise PlanError(f"no session key for {manifest.session_id[:8]} on this machine")
    plan = from_roster(roster, my_did=identity.did,
                       my_static_private=stored.session_private_key,
                       petnames=labels_of(args))
    prog_args = list(args.program_args)
    if prog_args[:1] == ["--"]:
        prog_args = prog_args[1:]
    if not prog_args:
        prog_args = list(manifest.program.args)
    out.progress(f"running {manifest.program.name} as {plan.describe(plan.my_party_id)} "
                 f"of {plan.m}")
    try:
        result = run_program(
            plan, args.program, prog_args, direct_only=args.direct_only,
            relay_only=args.relay_only, timeout=args.timeout, identity=identity,
            connect_timeout=args.connect_timeout, report=out.progress, hard_exit=True,
        )
    except DidmeshError as exc:
        _end_failed_run(exc, out)
    receipt_path = Path(args.receipt) if args.receipt else (
        stored.path / f"receipt-{plan.my_party_id}.json")
    if result.receipt is not None:
        receipt_path.write_text(json.dumps(result.receipt, indent=2))
    out.progress(f"run complete; receipt: {receipt_path}")
    out.result({"ok": True, "session": manifest.session_id, "party": plan.my_party_id,
                "receipt": str(receipt_path), "setup_seconds": result.setup_seconds})
    return result.exit_code
