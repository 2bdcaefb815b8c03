"""``didmesh demo``: a whole MPC session on this machine, nothing to set up."""

from __future__ import annotations

import argparse
from pathlib import Path

from .output import Output


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        help="run a complete three-party session on loopback and clean up",
        parents=[common],
        description="Start a relay on loopback, create three identities in a temporary "
        "directory, invite one by DID and one by code, agree a roster, run a secure sum "
        "over the mesh and verify the run receipts.",
    )
    p.add_argument(
        "--program",
        type=Path,
        default=None,
        help="an MPyC program taking --value N (default: examples/secure_sum.py)",
    )
    p.add_argument("--relay-only", action="store_true", help="force every pair through the relay")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds any one step may take (default 120)",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from didmesh.session.demo import run_demo

    result = run_demo(
        out.line,
        program=args.program,
        relay_only=args.relay_only,
        keep=args.keep,
        step_timeout=args.timeout,
    )
    out.result(result, out.ok("demo complete: three parties agreed and computed together"))
    return 0
