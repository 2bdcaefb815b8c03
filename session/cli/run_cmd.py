"""``didmesh run SESSION [-- PROGRAM [ARGS]]``: run the agreed MPyC program over the mesh.

Checks first that this party's copy of the program is the one the manifest agreed on
(the file's SHA-256, or every file of a bundle) and that the arguments are the agreed
ones; then takes this party's id from the agreed roster, brings up the mesh (direct or
relayed per pair), prints the connectivity check and runs the unmodified program as this
party (a bundle from its own folder; specs/mesh.md, sections 6-10). A party whose copy or
arguments differ still connects, only to tell every peer (signed abort) why nothing
starts. Private inputs (``--input NAME=VALUE``) reach the program as environment
variables ``DIDMESH_INPUT_<NAME>``. The program's own output goes to stdout; the mesh's
to stderr. When the run completes this party's signed RunReceipt is written next to the
session state (``receipt-<party>.json``) or to ``--receipt`` (relative to the directory
the command was run from).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from didmesh.identity.errors import DidmeshError
from didmesh.session import gc_pause
from didmesh.session.errors import (
    BadSessionParameters,
    ProgramArgsMismatch,
    ProgramDigestMismatch,
    SessionCancelled,
    SessionRemoteError,
    SessionUsageError,
)
from didmesh.session.manifest import (
    INPUT_NAME_RE,
    Manifest,
    check_args,
    check_inputs,
    verify_program,
)
from didmesh.session.mesh.faults import PlanError
from didmesh.session.mesh.plan import from_roster
from didmesh.session.mesh.predial import from_plan as predial_plan
from didmesh.session.mesh.runner import ending_process, exited_line, run_program
from didmesh.session.state import ENDED, Status

from .common import add_identity_args, labels_of, load_identity, store_of
from .output import Output
from .stdout_guard import reader_gone_guard


def _ended(status: str, sid: str, error: dict[str, Any] | None) -> DidmeshError:
    """Why a session that ended has nothing to run (not "wait for the roster")."""
    why = f": {error['message']}" if error and error.get("message") else ""
    if status == Status.CANCELLED:
        return SessionCancelled(f"session {sid} was cancelled{why}; there is nothing to run")
    if status in (Status.DECLINED, Status.WITHDRAWN):
        did = "declined" if status == Status.DECLINED else "withdrew from"
        return SessionUsageError(f"you {did} session {sid}; there is nothing to run")
    if why.startswith(f": session {sid}"):  # the error names the session already
        return SessionRemoteError(f"{why[2:]}; there is nothing to run")
    did = {Status.REVOKED: "had its invite withdrawn by the organizer"}.get(status, status)
    return SessionRemoteError(f"session {sid} {did}{why}; there is nothing to run")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "run",
        help="run the session's MPyC program over the authenticated mesh",
        parents=[common],
        usage="didmesh run [options] SESSION [-- PROGRAM [ARGS ...]]",
        description="Run the agreed MPyC program as this party: "
        "didmesh run SESSION -- PROGRAM [ARGS]. PROGRAM is the program file, or the "
        "folder of a bundle; ARGS, if given, must be the agreed arguments (MPyC's "
        "--no-log may be added). Private inputs: --input NAME=VALUE, read by the "
        "program from the environment variable DIDMESH_INPUT_NAME.",
    )
    p.add_argument("session", metavar="SESSION")
    program = p.add_argument("program", metavar="PROGRAM", default=None,
                             help="the program file or bundle folder (after --)")
    rest = p.add_argument("program_args", nargs=argparse.REMAINDER, metavar="ARGS",
                          help="program arguments (optional; default and only choice: the "
                          "agreed ones)")
    # both optional, yet matched as "one, then the rest", so that options may come
    # between SESSION and "--" (nargs="?" would let ARGS swallow them); cmd_run says
    # what is missing
    program.required = rest.required = False
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="a private input of this party, given to the program as the "
                   "environment variable DIDMESH_INPUT_<NAME> (repeatable)")
    p.add_argument("--input-file", action="append", default=[], metavar="NAME=PATH",
                   help="a private input file of this party: the program finds its absolute "
                   "path in DIDMESH_INPUT_<NAME>_FILE (repeatable)")
    paths = p.add_mutually_exclusive_group()
    paths.add_argument("--direct-only", action="store_true",
                       help="connect every pair directly over TCP, never through a relay")
    paths.add_argument("--relay-only", action="store_true",
                       help="connect every pair through a relay")
    p.add_argument("--transport", choices=("noise", "wireguard"), default="noise",
                   help="noise (default): the authenticated mesh, direct or relayed; "
                   "wireguard: a WireGuard tunnel didmesh brings up for the run and removes "
                   "afterwards (needs root or CAP_NET_ADMIN, /dev/net/tun and wireguard-go; "
                   "specs/wireguard.md)")
    p.add_argument("--wg-impl", choices=("auto", "kernel", "userspace"), default=None,
                   help="--transport wireguard: auto (default, or DIDMESH_WG_IMPL): the "
                   "kernel's WireGuard where the kernel has it, else wireguard-go; kernel or "
                   "userspace (wireguard-go) to insist on one")
    p.add_argument("--handshake-timeout", type=float, default=30.0, metavar="S",
                   help="--transport wireguard: seconds for a WireGuard handshake with every "
                   "peer (default 30)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds of silence after which a party counts as gone, and without "
                   "any MPyC message after which the run counts as deadlocked (default 30)")
    p.add_argument("--connect-timeout", type=float, default=120.0, metavar="S",
                   help="seconds for every pair to connect (default 120)")
    p.add_argument("--resume-timeout", type=float, default=15.0, metavar="S",
                   help="seconds a relayed link that its relay lost may take to be resumed "
                   "(on that relay or another of the session) before the run fails naming "
                   "the relay (default 15; 0: no resumption)")
    p.add_argument("--receipt", default=None, metavar="FILE",
                   help="where to write this party's signed run receipt (default: "
                   "receipt-PARTY.json in the session's folder under the didmesh home)")
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


INPUT_PREFIX = "DIDMESH_INPUT_"
MAX_INPUT_CHARS = 64 * 1024
#: how long a party that refuses to start waits for its peers, to tell them why
TELL_SECONDS = 10.0


def parse_inputs(items: Sequence[str], files: Sequence[str] = ()) -> dict[str, str]:
    """``NAME=VALUE`` items -> environment variables ``DIDMESH_INPUT_<NAME>``, and
    ``NAME=PATH`` file items -> ``DIDMESH_INPUT_<NAME>_FILE`` = the file's absolute path
    (taken from where the command runs, since a bundle runs in its own folder)."""
    env: dict[str, str] = {}
    for option, item in [("--input", i) for i in items] + [("--input-file", f) for f in files]:
        name, sep, value = item.partition("=")
        if not sep or not INPUT_NAME_RE.match(name):
            raise BadSessionParameters(
                f"{option} {item[:40]!r}: give NAME=VALUE, NAME of letters, digits and _"
            )
        if len(value) > MAX_INPUT_CHARS or "\0" in value:
            raise BadSessionParameters(f"{option} {name}: the value is too long or has a NUL")
        key = INPUT_PREFIX + name.upper()
        if option == "--input-file":
            key += "_FILE"
            if not os.path.isfile(value):
                raise BadSessionParameters(f"--input-file {name}: {value} is not a file")
            value = os.path.abspath(value)
        if key in env:
            raise BadSessionParameters(f"{option} {name} is given twice")
        env[key] = value
    return env


def _peer_reason(exc: DidmeshError) -> str:
    """What the peers are told (short, no local paths) when this party refuses to start."""
    if isinstance(exc, ProgramDigestMismatch):
        what = f"{exc.file} {exc.problem}" if exc.file else "it is not the agreed one"
        return f"its copy of the program differs: {what[:160]}; nothing starts"
    if isinstance(exc, ProgramArgsMismatch):
        return f"its program arguments differ: {(exc.argument or '')[:160]}; nothing starts"
    return exc.message[:250]


def cmd_run(args: argparse.Namespace, out: Output) -> int:
    if getattr(args, "debug", False):
        os.environ["DIDMESH_DEBUG"] = "1"
    try:  # relative to where the command runs, not to where the program runs
        receipt_arg = Path(os.path.abspath(args.receipt)) if args.receipt else None
    except OSError as exc:
        raise BadSessionParameters(
            f"--receipt {args.receipt}: the current directory is gone ({exc.strerror}); "
            "give an absolute path") from None
    inputs = parse_inputs(args.input, args.input_file)
    wireguard = args.transport == "wireguard"
    if not 0 <= args.resume_timeout <= 3600:
        raise BadSessionParameters("--resume-timeout: give seconds in [0, 3600]")
    if args.wg_impl is not None and not wireguard:
        raise SessionUsageError("--wg-impl goes with --transport wireguard")
    if wireguard:
        if args.relay_only:
            raise SessionUsageError("--relay-only and --transport wireguard exclude each "
                                    "other: the tunnel is direct (UDP) between every pair")
        if not 0 < args.handshake_timeout <= 3600:
            raise BadSessionParameters("--handshake-timeout: give seconds in (0, 3600]")
        from didmesh.session.wireguard import preflight as wg_preflight
        from didmesh.session.wireguard.impl import choose as wg_choose

        args.wg_impl = wg_choose(args.wg_impl)
        wg_preflight.check(args.wg_impl)  # before anything is touched
    identity = load_identity(args)
    store = store_of(args)
    stored = store.load(store.resolve(args.session))
    manifest = stored.manifest
    sid = manifest.session_id[:8]
    given_inputs = [i.partition("=")[0].upper() for i in [*args.input, *args.input_file]]
    check_inputs(manifest, given_inputs)  # a typo in a name is refused here, before all
    if args.program is None:
        what = (f"the folder of its {len(manifest.program.files)}-file bundle"
                if manifest.program.is_bundle else f"its file {manifest.program.name}")
        raise SessionUsageError(
            f"which program? session {sid} agreed on {manifest.program.name}: give "
            f"{what}, as in: didmesh run {sid} -- PATH"
        )
    given = list(args.program_args or [])
    if given[:1] == ["--"]:
        given = given[1:]
    refusal: DidmeshError | None = None
    local = None
    prog_args: list[str] = []
    try:  # nothing starts with another program or other arguments
        local = verify_program(manifest, args.program)
        prog_args = check_args(manifest, given)
    except (ProgramDigestMismatch, ProgramArgsMismatch) as exc:
        refusal = exc
    if stored.state.status in ENDED:
        raise _ended(stored.state.status, sid, stored.state.error)
    roster = stored.agreed_roster
    if roster is None:
        if refusal is not None:
            raise refusal
        raise PlanError(
            f"session {sid} has no agreed roster yet "
            "(wait with: didmesh status SESSION --wait)"
        )
    if stored.session_private_key is None:
        raise refusal or PlanError(f"no session key for {sid} on this machine")
    plan = from_roster(roster, my_did=identity.did,
                       my_static_private=stored.session_private_key,
                       petnames=labels_of(args))
    if refusal is not None:
        _tell_peers(plan, identity, args, refusal, out, args.program)
        raise refusal
    assert local is not None
    # the roster is verified (agreed_roster): the early punch's SYNs leave now (mesh.md 6.1)
    predialed = None if wireguard else predial_plan(
        plan, relay_only=args.relay_only, direct_only=args.direct_only)
    out.progress(f"running {manifest.program.name} as {plan.describe(plan.my_party_id)} "
                 f"of {plan.m}")
    for name in manifest.program.inputs:
        if name not in given_inputs:
            out.progress(f"note: no --input {name}=... given; the program decides what that means")
    os.environ.update(inputs)
    common: dict[str, Any] = dict(
        timeout=args.timeout, identity=identity, connect_timeout=args.connect_timeout,
        report=out.progress, hard_exit=True,
        workdir=str(local.root) if manifest.program.is_bundle else None,
        digest="sha256:" + manifest.program.sha256,
    )
    # `| head` (also `2>&1 | head`) must not fail the joint run
    with reader_gone_guard() as stdout, reader_gone_guard("stderr"):
        try:  # over WireGuard the tunnel is down again before the failure line
            if wireguard:
                from didmesh.session.wireguard.run import run_over_wireguard

                # the tunnel's set-up waits (STUN, endpoint exchange, handshakes) before
                # MPyC's import: the collector paused for the start-up is on for those
                gc_pause.resume()
                result = run_over_wireguard(plan, str(local.entry), prog_args,
                                            handshake_timeout=args.handshake_timeout,
                                            impl=args.wg_impl, **common)
            else:
                result = run_program(plan, str(local.entry), prog_args,
                                     direct_only=args.direct_only, relay_only=args.relay_only,
                                     predialed=predialed,
                                     resume_timeout=args.resume_timeout, **common)
        except DidmeshError as exc:
            _end_failed_run(exc, out)
        default_path = stored.path / f"receipt-{plan.my_party_id}.json"
        receipt_path = receipt_arg or default_path
        if result.receipt is not None:
            receipt_path = _write_receipt(result.receipt, receipt_path, default_path, manifest)
        out.progress(f"run complete; receipt: {receipt_path}" + (
                "  (stdout's reader went away: the rest of the program's output was "
                "discarded)" if stdout.reader_gone else ""))
        out.result({"ok": True, "session": manifest.session_id, "party": plan.my_party_id,
                    "transport": args.transport,
                    "receipt": str(receipt_path), "setup_seconds": result.setup_seconds,
                    "program_exit_status": result.exit_code})
    if result.exit_code:  # the joint run completed, then the program exited non-zero
        print(f"didmesh: {exited_line(plan, result.exit_code)}", file=sys.stderr, flush=True)
    ending_process()  # the command ends next (didmesh run is one process per run)
    return result.exit_code


def _tell_peers(plan: Any, identity: Any, args: argparse.Namespace, refusal: DidmeshError,
                out: Output, program: str) -> None:
    """Connect only to send every peer a signed abort saying why nothing starts here."""
    wait = min(TELL_SECONDS, args.connect_timeout)
    out.progress(f"nothing starts here; telling the other parties why (up to {wait:g} s; "
                 "Ctrl-C stops)")
    tell = type(refusal)(_peer_reason(refusal))
    gc_pause.resume()  # no program follows: the connecting (up to TELL_SECONDS) is collected
    try:
        if args.transport == "wireguard":  # the peers listen inside the tunnel only
            from didmesh.session.wireguard.run import run_over_wireguard

            run_over_wireguard(plan, program, [], timeout=args.timeout, identity=identity,
                               connect_timeout=wait, handshake_timeout=wait,
                               report=lambda _: None, refuse=tell, impl=args.wg_impl)
        else:
            run_program(plan, program, [], direct_only=args.direct_only,
                        relay_only=args.relay_only, timeout=args.timeout, identity=identity,
                        connect_timeout=wait, report=lambda _: None, hard_exit=False,
                        refuse=tell)
    except (DidmeshError, OSError, KeyboardInterrupt):
        pass  # the local refusal is what this party reports (also after Ctrl-C)


def _write_receipt(doc: dict[str, Any], path: Path, fallback: Path,
                   manifest: Manifest) -> Path:
    """Write the receipt; if that fails, save it elsewhere and say where (one line)."""
    text = json.dumps(doc, indent=2)
    try:
        path.write_text(text)
        return path
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    for other in (fallback, None):
        try:
            if other is None:
                fd, name = tempfile.mkstemp(
                    prefix=f"didmesh-receipt-{manifest.session_id[:8]}-", suffix=".json")
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
                other = Path(name)
            elif other == path:
                continue
            else:
                other.write_text(text)
        except OSError:
            continue
        print(f"didmesh: could not write the receipt to {path} ({reason}); "
              f"it is in {other}", file=sys.stderr, flush=True)
        return other
    print(f"didmesh: could not write the receipt to {path} ({reason}) nor elsewhere; "
          "here it is:", file=sys.stderr, flush=True)
    print(text, file=sys.stderr, flush=True)
    return path
