"""The relay's token-signing secret on disk (specs/relay.md, "Secrets").

The secret MACs every challenge and bearer token: whoever reads it can mint a token for any
DID. It lives in a file of its own, 64 hex digits, mode 0600 in a 0700 directory, created
atomically (written to a temporary file, fsynced, then hard-linked into place, so two
processes starting at once end up with the same secret). At start the file is checked like
the keystore checks keys: a file other users can read, or one that is not ours, is refused.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from .errors import RelayConfigError

SECRET_BYTES = 32
FILE_NAME = "relay.secret"


def fingerprint(secret: bytes) -> str:
    """A public name for a secret (to compare processes' secrets without showing them)."""
    return hashlib.sha256(b"didmesh/relay/secret-fingerprint/v1" + secret).hexdigest()[:16]


def read_secret(path: Path) -> bytes:
    try:
        st = path.stat()
    except OSError as exc:
        raise RelayConfigError(f"cannot read the relay secret {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RelayConfigError(f"the relay secret {path} is not a regular file")
    if st.st_mode & 0o077:
        raise RelayConfigError(
            f"the relay secret {path} is readable by other users (mode "
            f"{stat.filemode(st.st_mode)}): anyone who reads it can mint tokens. Run "
            f"'chmod 600 {path}', or rotate it (specs/relay.md, \"Secrets\") if others read it"
        )
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise RelayConfigError(
            f"the relay secret {path} belongs to another user (uid {st.st_uid}): "
            "run the relay as its owner"
        )
    try:
        text = path.read_bytes()[:4096].decode("ascii").strip()
        secret = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError):
        raise RelayConfigError(
            f"the relay secret {path} must hold 64 hexadecimal digits "
            "(e.g. made by 'openssl rand -hex 32')"
        ) from None
    if len(secret) < SECRET_BYTES:
        raise RelayConfigError(
            f"the relay secret {path} is {len(secret)} bytes; it needs at least {SECRET_BYTES}"
        )
    return secret


def load_or_create(path: Path, legacy: bytes | None = None) -> bytes:
    """The secret in ``path``, made (from ``legacy`` if given, else random) if missing."""
    if path.exists() or path.is_symlink():
        return read_secret(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (legacy or os.urandom(SECRET_BYTES)).hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process was first: then use theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise RelayConfigError(
            f"cannot create the relay secret {path}: {exc.strerror or exc}"
        ) from None
    return read_secret(path)
