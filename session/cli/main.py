"""``didmesh``: the command-line entry point.

Each command group lives in its own module with a ``register(subparsers)`` function
that adds its sub-commands and sets ``func`` on them. ``main`` maps the error tree
to exit codes: 0 success, 1 a check failed (bad input from someone else), 2 local
misuse or configuration, 130 interrupted, 141 when the reader of stdout went away (as
in ``didmesh status S | head -3``: no error is printed then). Expected failures print
one line, never a traceback (set DIDMESH_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from didmesh.identity.errors import DidmeshError
from didmesh.session import gc_pause

from .output import Output


class _Version(argparse.Action):
    """``--version``: didmesh's and the installed MPyC's versions (looked up only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print didmesh's version (and MPyC's) and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        def of(name: str) -> str:
            try:
                return version(name)
            except PackageNotFoundError:
                return "not installed"

        print(f"didmesh {of('didmesh')} (MPyC {of('mpyc')}, Python {sys.version.split()[0]})")
        parser.exit()


#: the command-group module of each command word: a command's parser loads only its own
#: module, not every command group's imports (``didmesh run`` is part of every party's run
#: time, and a script's or a test's steps are CLI calls). No command word, or an unknown
#: one, loads them all (``--help``, argparse's list of choices).
#: tests/test_cli_rough_edges.py checks this against what each module registers.
COMMANDS: dict[str, str] = {
    "id": "didmesh.session.cli.id_cmd",
    "session": "didmesh.session.cli.session_cmd",
    "sessions": "didmesh.session.cli.session_cmd",
    "invite": "didmesh.session.cli.invite_cmd",
    "invites": "didmesh.session.cli.invite_cmd",
    "withdraw": "didmesh.session.cli.invite_cmd",
    "accept": "didmesh.session.cli.accept_cmd",
    "decline": "didmesh.session.cli.accept_cmd",
    "claim": "didmesh.session.cli.accept_cmd",
    "status": "didmesh.session.cli.status_cmd",
    "contacts": "didmesh.session.cli.contacts_cmd",
    "credential": "didmesh.session.cli.credential_cmd",
    "verify": "didmesh.session.cli.credential_cmd",
    "relay": "didmesh.session.cli.relay_cmd",
    "run": "didmesh.session.cli.run_cmd",
    "wg": "didmesh.session.cli.wg_cmd",
    "vc-api": "didmesh.session.cli.vcapi_cmd",
    "demo": "didmesh.session.cli.demo_cmd",
}
#: every command-group module, in the order their commands are listed in ``--help``
COMMAND_MODULES: list[str] = list(dict.fromkeys(COMMANDS.values()))
#: commands that are the whole process's one run: the cyclic garbage collector is paused
#: while they start (:mod:`didmesh.session.gc_pause`), and on again when they return
PAUSE_GC_COMMANDS = frozenset({"run"})


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (after the top-level ``--home X`` / ``--relay-ca X`` /
    ``--json``)."""
    it = iter(argv)
    for arg in it:
        if arg in ("--home", "--relay-ca"):
            next(it, None)
        elif arg.startswith(("--home=", "--relay-ca=")) or arg == "--json":
            continue
        else:
            return None if arg.startswith("-") else arg
    return None


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose mistakes are one ``didmesh:`` line (not the whole usage)."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("didmesh").strip()
        self.exit(2, f"didmesh: {where + ': ' if where else ''}{message} "
                     f"(see: {self.prog} --help)\n")  # fmt: skip


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="didmesh",
        description="Decentralized-identity sessions for multiparty computation with MPyC.",
    )
    parser.add_argument("--version", action=_Version)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        help="didmesh home directory (default: $DIDMESH_HOME or the user config directory)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "--relay-ca", default=argparse.SUPPRESS, metavar="FILE",
        help="PEM file of CA certificates to trust for https:// relays, besides the system's "
        "(default: $DIDMESH_RELAY_CA)",
    )
    parser.add_argument("--home", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--relay-ca", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES
    for name in modules:
        importlib.import_module(name).register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """stdout's reader closed the pipe (``| head``): stop quietly, like a SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
    except (OSError, ValueError):
        pass
    return 141


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    paused = command in PAUSE_GC_COMMANDS and gc_pause.pause()
    try:
        return _command(argv, command)
    finally:
        if paused:  # the run resumed it already, unless it ended before its set-up
            gc_pause.resume(freeze=False)


def _command(argv: list[str], command: str | None) -> int:
    parser = build_parser(command)
    args = parser.parse_args(argv)
    out = Output(json_mode=bool(getattr(args, "json", False)))
    if getattr(args, "relay_ca", None):  # every relay client (and child process) reads it
        os.environ["DIDMESH_RELAY_CA"] = os.path.abspath(args.relay_ca)
    try:
        rc = args.func(args, out)
        return int(rc or 0)
    except DidmeshError as exc:
        if os.environ.get("DIDMESH_DEBUG"):
            raise
        if out.json_mode:
            out.result({"ok": False, "error": exc.code, "message": exc.message})
        print(f"didmesh: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("didmesh: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
