"""``didmesh vc-api serve``: a W3C VC API issuer and verifier service (specs/vc-api.yaml)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from didmesh.identity.paths import didmesh_home
from didmesh.identity.proofs import ISSUABLE

from .common import add_identity_args, load_identity
from .output import Output


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("vc-api", help="serve the W3C VC API (issue, verify)", parents=[common])
    actions = p.add_subparsers(dest="vc_api_command", metavar="ACTION")
    actions.required = True
    serve = actions.add_parser(
        "serve",
        help="serve /credentials/issue, /credentials/verify, /presentations/verify",
        parents=[common],
        description=(
            "Serve the W3C VC API until SIGTERM/Ctrl-C. It prints 'didmesh vc-api listening "
            "on URL' once ready. Verifying needs no key and no token. Issuing signs with your "
            "identity and needs 'Authorization: Bearer <token>': the token is made on first "
            "use, stored with mode 0600 (default: <home>/vc-api/token) and printed once."
        ),
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: loopback)"
    )
    serve.add_argument("--port", type=int, default=8471, help="port (0: any free port)")
    serve.add_argument(
        "--suite",
        choices=ISSUABLE,
        default="eddsa-rdfc-2022",
        help="proof suite for issuing (a request may choose another with options.cryptosuite)",
    )
    serve.add_argument("--token-file", metavar="FILE", help="where the issuing token is kept")
    serve.add_argument(
        "--verify-only", action="store_true", help="do not load a key; /credentials/issue is off"
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate")
    serve.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert")
    add_identity_args(serve)
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    # aiohttp's server and the service: only when serving
    from didmesh.session.vcapi.server import (
        VcApiConfigError,
        default_token_path,
        is_loopback,
        load_or_create_token,
        run,
        tls_context,
        utc_now,
    )
    from didmesh.session.vcapi.service import VcApiService

    if not 0 <= args.port <= 65535:
        raise VcApiConfigError(f"--port {args.port} is not a TCP port")
    ssl_context = tls_context(args.tls_cert, args.tls_key)
    key = token = None
    if not args.verify_only:
        key = load_identity(args)
        home = didmesh_home(getattr(args, "home", None))
        info = load_or_create_token(
            Path(args.token_file) if args.token_file else default_token_path(home)
        )
        token = info.token
        if info.created:
            print(
                f"didmesh vc-api: issuing token (shown once; kept in {info.path}): {info.token}",
                file=sys.stderr,
                flush=True,
            )
        print(f"didmesh vc-api: issuer {key.did}", file=sys.stderr, flush=True)
    if not is_loopback(args.host) and ssl_context is None:
        print(
            f"didmesh vc-api: warning: listening on {args.host} without TLS; put it behind "
            "a TLS proxy or use --tls-cert/--tls-key",
            file=sys.stderr,
            flush=True,
        )
    service = VcApiService(key, token, utc_now, suite=args.suite)
    return run(service, args.host, args.port, ssl_context)
