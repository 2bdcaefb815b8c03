"""Helpers shared by command modules: the keystore, the passphrase source, the session
store and contact labels (light imports only: ``didmesh run`` loads this, not the
session engine)."""

from __future__ import annotations

import argparse
from pathlib import Path

from didmesh.identity.keys import IdentityKey
from didmesh.identity.keystore import Keystore, PassphraseSource
from didmesh.session.contacts import Contacts
from didmesh.session.store import SessionStore


def add_identity_args(parser: argparse.ArgumentParser, *, as_option: bool = True) -> None:
    """``--as NAME`` (which identity to act as) and ``--passphrase-file``."""
    if as_option:
        parser.add_argument(
            "--as",
            dest="identity",
            metavar="NAME",
            default=None,
            help="act as this identity (default: the default identity)",
        )
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        default=None,
        help="read the keystore passphrase from FILE (else $DIDMESH_PASSPHRASE[_FILE] or a prompt)",
    )


def keystore(args: argparse.Namespace) -> Keystore:
    return Keystore(getattr(args, "home", None))


def passphrase_source(args: argparse.Namespace) -> PassphraseSource:
    return PassphraseSource(file=getattr(args, "passphrase_file", None))


def load_identity(args: argparse.Namespace, name: str | None = None) -> IdentityKey:
    return keystore(args).load(
        name or getattr(args, "identity", None), passphrase=passphrase_source(args)
    )


def store_of(args: argparse.Namespace) -> SessionStore:
    return SessionStore(getattr(args, "home", None))


def labels_of(args: argparse.Namespace) -> dict[str, str]:
    return Contacts(getattr(args, "home", None)).labels()


def write_out(path: str | Path, data: bytes, *, private: bool = False) -> None:
    """Write what ``--out`` asked for; a path that cannot take it is one line naming it."""
    from didmesh.identity.paths import write_private

    from ..errors import SessionUsageError

    try:
        if private:
            write_private(Path(path), data)
        else:
            Path(path).write_bytes(data)
    except OSError as exc:
        raise SessionUsageError(f"cannot write {path}: {exc.strerror or exc}") from None
