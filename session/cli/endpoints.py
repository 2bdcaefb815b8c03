"""What a party announces in its signed acceptance (or the organizer in its session):
``--endpoint`` as given, nothing with ``--no-direct``, else gathered candidates
(:mod:`didmesh.session.mesh.candidates`: its interfaces' addresses on one port picked for
the session, and that port's address as each relay observes it)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient

from ..mesh.candidates import OBSERVED, gather
from .output import Output

OBSERVE_TIMEOUT = 5.0


def add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--endpoint", action="append", default=[], metavar="tcp://HOST:PORT",
                       help="where your mesh listens (repeatable; default: your interfaces' "
                            "addresses and your address as the relay sees it, on a port "
                            "picked for the session)")  # fmt: skip
    group.add_argument("--no-direct", action="store_true",
                       help="announce no address: peers reach you only through the relay")


def announced_endpoints(args: argparse.Namespace, key: IdentityKey, relays: Sequence[str],
                        out: Output) -> list[str]:
    """The endpoints to sign into the acceptance (or session), telling the user what."""
    if args.endpoint:
        return list(args.endpoint)
    if args.no_direct:
        out.progress("announcing no address (--no-direct): every pair goes through the relay")
        return []

    async def observe(url: str, port: int) -> tuple[str, int | None]:
        async with RelayClient(url, key, timeout=OBSERVE_TIMEOUT, retries=0) as client:
            seen = await client.observed(local_port=port)
        return seen.address, seen.port

    try:
        gathered = asyncio.run(gather(relays, observe, timeout=OBSERVE_TIMEOUT))
    except OSError as exc:
        out.progress(f"warning: no address to announce ({exc}); peers will use the relay")
        return []
    for note in gathered.notes:
        out.progress(f"note: {note}")
    if gathered.candidates:
        shown = ", ".join(
            f"{c.endpoint} ({'seen by ' + c.source if c.kind == OBSERVED else c.source})"
            for c in gathered.candidates)
        out.progress(f"announcing to the roster's parties: {shown} (--no-direct: none)")
    return gathered.endpoints
