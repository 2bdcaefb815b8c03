"""The keystore: named identities on disk, encrypted at rest (specs/identity.md, "Keystore").

Layout under the didmesh home::

    identities/<name>.json   one file per identity, mode 0600
    identities/default       the name of the default identity

An identity file holds the public DID in clear (so ``id list``/``show`` need no
passphrase) and the 32-byte Ed25519 seed either encrypted (Argon2id -> 32-byte key,
XSalsa20-Poly1305 SecretBox; the plaintext also carries the DID, checked on unlock so a
file whose header was swapped is caught) or, with ``--no-passphrase``, in clear. Every
file, encrypted or not, must be mode 0600 or stricter: a looser file is refused, not
silently used.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nacl.exceptions
from nacl import pwhash, secret, utils

from .errors import (
    IdentityExists,
    IdentityNotFound,
    InsecurePermissions,
    KeystoreCorrupted,
    KeystoreError,
    PassphraseRequired,
    WrongPassphrase,
)
from .keys import IdentityKey
from .paths import didmesh_home, write_private

FORMAT = "didmesh-keystore/v1"
PASSPHRASE_ENV = "DIDMESH_PASSPHRASE"  # noqa: S105 (a variable name)
PASSPHRASE_FILE_ENV = "DIDMESH_PASSPHRASE_FILE"  # noqa: S105
MAX_FILE_BYTES = 16 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: Argon2id cost levels; the chosen one is stored in each file.
KDF_LEVELS: dict[str, tuple[int, int]] = {
    "interactive": (pwhash.argon2id.OPSLIMIT_INTERACTIVE, pwhash.argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (pwhash.argon2id.OPSLIMIT_MODERATE, pwhash.argon2id.MEMLIMIT_MODERATE),
    "sensitive": (pwhash.argon2id.OPSLIMIT_SENSITIVE, pwhash.argon2id.MEMLIMIT_SENSITIVE),
}
# Bounds a stored file may ask for, so a tampered file cannot make unlocking take forever.
_MAX_OPSLIMIT = pwhash.argon2id.OPSLIMIT_SENSITIVE
_MAX_MEMLIMIT = pwhash.argon2id.MEMLIMIT_SENSITIVE
_MIN_OPSLIMIT = pwhash.argon2id.OPSLIMIT_MIN
_MIN_MEMLIMIT = pwhash.argon2id.MEMLIMIT_MIN


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _box_key(passphrase: bytes, salt: bytes, ops: int, mem: int) -> bytes:
    return pwhash.argon2id.kdf(
        secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=ops, memlimit=mem
    )


def _unb64(text: Any, what: str, path: Path) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise KeystoreCorrupted(f"{path}: field {what!r} is not valid base64") from None


# ------------------------------------------------------------------ passphrases


@dataclass(frozen=True)
class PassphraseSource:
    """Where a passphrase comes from, in order: an explicit value, a file, the
    ``DIDMESH_PASSPHRASE`` / ``DIDMESH_PASSPHRASE_FILE`` environment variables, and last
    a prompt on the terminal. Without a terminal and without any of these the keystore
    raises :class:`PassphraseRequired` instead of hanging."""

    value: str | None = None
    file: str | None = None
    prompt: Callable[[str], str] | None = None
    interactive: bool | None = None

    def get(self, what: str, *, confirm: bool = False) -> bytes:
        if self.value is not None:
            return self._check(self.value)
        path = self.file or os.environ.get(PASSPHRASE_FILE_ENV)
        if path:
            try:
                text = Path(path).read_text().rstrip("\r\n")
            except OSError as exc:
                raise KeystoreError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
            return self._check(text)
        if os.environ.get(PASSPHRASE_ENV) is not None:
            return self._check(os.environ[PASSPHRASE_ENV])
        interactive = self.interactive if self.interactive is not None else sys.stdin.isatty()
        if not interactive:
            raise PassphraseRequired(
                f"a passphrase is needed to {what}; set {PASSPHRASE_ENV} or "
                f"{PASSPHRASE_FILE_ENV}, pass --passphrase-file, or run on a terminal"
            )
        ask: Callable[[str], str]
        if self.prompt is None:
            import getpass  # only to prompt (with termios: ~6 ms of every `didmesh run`)

            ask = getpass.getpass
        else:
            ask = self.prompt
        first = ask(f"Passphrase to {what}: ")
        if confirm and ask("Repeat passphrase: ") != first:
            raise KeystoreError("the two passphrases differ; nothing was written")
        return self._check(first)

    @staticmethod
    def _check(text: str) -> bytes:
        if not text:
            raise KeystoreError(
                "the passphrase is empty (use --no-passphrase for an unencrypted key)"
            )
        return text.encode()


# ------------------------------------------------------------------ entries


@dataclass(frozen=True)
class IdentityEntry:
    """Public facts about a stored identity (no secret material)."""

    name: str
    did: str
    created: str
    encrypted: bool
    path: Path
    default: bool = False
    problem: str | None = None  # set by list() for a file that cannot be used as it is


class Keystore:
    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = didmesh_home(home)
        self.dir = self.home / "identities"

    # -- paths and names ---------------------------------------------------------
    def _path(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise KeystoreError(
                f"invalid identity name {name!r}: use letters, digits, '.', '_' or '-' (max 64)"
            )
        return self.dir / f"{name}.json"

    def _default_file(self) -> Path:
        return self.dir / "default"

    def default_name(self) -> str | None:
        try:
            name = self._default_file().read_text().strip()
        except FileNotFoundError:
            return None
        return name or None

    def set_default(self, name: str) -> None:
        if not self._path(name).exists():
            raise IdentityNotFound(f"no identity named {name!r} (see 'didmesh id list')")
        write_private(self._default_file(), name.encode())

    # -- reading -------------------------------------------------------------------
    def _read(self, path: Path) -> dict[str, Any]:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise IdentityNotFound(
                f"no identity named {path.stem!r} (see 'didmesh id list')"
            ) from None
        if st.st_mode & 0o077:
            raise InsecurePermissions(
                f"{path} is readable by other users (mode {stat.filemode(st.st_mode)}); "
                f"run 'chmod 600 {path}' if you trust its contents"
            )
        if st.st_size > MAX_FILE_BYTES:
            raise KeystoreCorrupted(f"{path} is {st.st_size} bytes: not a keystore file")
        raw = path.read_bytes()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise KeystoreCorrupted(
                f"{path} is not valid JSON (truncated or damaged); restore it from a backup"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise KeystoreCorrupted(f"{path} is not a {FORMAT} file")
        for fld in ("name", "did", "created"):
            if not isinstance(data.get(fld), str):
                raise KeystoreCorrupted(f"{path}: missing or invalid field {fld!r}")
        return data

    def entry(self, name: str | None = None) -> IdentityEntry:
        name = name or self.default_name()
        if name is None:
            raise IdentityNotFound("no default identity yet; create one with 'didmesh id new'")
        path = self._path(name)
        data = self._read(path)
        return IdentityEntry(
            name=data["name"],
            did=data["did"],
            created=data["created"],
            encrypted=data.get("kdf") is not None,
            path=path,
            default=(name == self.default_name()),
        )

    def list(self) -> list[IdentityEntry]:
        if not self.dir.exists():
            return []
        entries = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                entries.append(self.entry(p.stem))
            except KeystoreError as exc:
                entries.append(IdentityEntry(p.stem, "?", "?", False, p, False, exc.message))
        return entries

    # -- writing -------------------------------------------------------------------
    def create(
        self,
        name: str = "default",
        *,
        passphrase: PassphraseSource | None,
        key: IdentityKey | None = None,
        force: bool = False,
        kdf_level: str = "interactive",
        now: datetime | None = None,
    ) -> IdentityEntry:
        """Create identity ``name``. ``passphrase=None`` stores the seed unencrypted (0600)."""
        path = self._path(name)
        if path.exists() and not force:
            raise IdentityExists(
                f"an identity named {name!r} exists already ({path}); "
                "choose another --name or pass --force to replace it"
            )
        key = key or IdentityKey.generate()
        created = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        doc: dict[str, Any] = {"format": FORMAT, "name": name, "did": key.did, "created": created}
        inner = json.dumps({"did": key.did, "seed": _b64(key.seed_bytes())}).encode()
        if passphrase is None:
            doc["kdf"] = None
            doc["secret"] = json.loads(inner)
        else:
            if kdf_level not in KDF_LEVELS:
                raise KeystoreError(f"unknown KDF level {kdf_level!r}: {', '.join(KDF_LEVELS)}")
            ops, mem = KDF_LEVELS[kdf_level]
            pw = passphrase.get(f"protect identity {name!r}", confirm=True)
            salt = utils.random(pwhash.argon2id.SALTBYTES)
            box_key = _box_key(pw, salt, ops, mem)
            doc["kdf"] = {"alg": "argon2id", "salt": _b64(salt), "opslimit": ops, "memlimit": mem}
            doc["cipher"] = "xsalsa20poly1305"
            doc["ciphertext"] = _b64(bytes(secret.SecretBox(box_key).encrypt(inner)))
        write_private(path, json.dumps(doc, indent=2).encode() + b"\n")
        if self.default_name() is None or not self._path(self.default_name() or name).exists():
            self.set_default(name)
        return self.entry(name)

    # -- unlocking -----------------------------------------------------------------
    def load(
        self, name: str | None = None, *, passphrase: PassphraseSource | None = None
    ) -> IdentityKey:
        entry = self.entry(name)
        data = self._read(entry.path)
        path = entry.path
        kdf = data.get("kdf")
        if kdf is None:
            inner = data.get("secret")
        else:
            if not isinstance(kdf, dict) or kdf.get("alg") != "argon2id":
                raise KeystoreCorrupted(f"{path}: unsupported key derivation {kdf!r}")
            ops, mem = kdf.get("opslimit"), kdf.get("memlimit")
            if not (isinstance(ops, int) and isinstance(mem, int)) or not (
                _MIN_OPSLIMIT <= ops <= _MAX_OPSLIMIT and _MIN_MEMLIMIT <= mem <= _MAX_MEMLIMIT
            ):
                raise KeystoreCorrupted(f"{path}: Argon2id parameters out of range")
            salt = _unb64(kdf.get("salt"), "kdf.salt", path)
            if len(salt) != pwhash.argon2id.SALTBYTES:
                raise KeystoreCorrupted(f"{path}: salt has the wrong length")
            ciphertext = _unb64(data.get("ciphertext"), "ciphertext", path)
            pw = (passphrase or PassphraseSource()).get(f"unlock identity {entry.name!r}")
            box_key = _box_key(pw, salt, ops, mem)
            try:
                plain = secret.SecretBox(box_key).decrypt(ciphertext)
            except nacl.exceptions.CryptoError:
                raise WrongPassphrase(
                    f"wrong passphrase for identity {entry.name!r} (or {path} was altered)"
                ) from None
            except (ValueError, TypeError):
                raise KeystoreCorrupted(f"{path}: ciphertext is truncated") from None
            try:
                inner = json.loads(plain)
            except ValueError:
                raise KeystoreCorrupted(f"{path}: decrypted secret is not valid") from None
        if not isinstance(inner, dict):
            raise KeystoreCorrupted(f"{path}: missing secret")
        seed = _unb64(inner.get("seed"), "seed", path)
        if len(seed) != 32:
            raise KeystoreCorrupted(f"{path}: secret key has the wrong length")
        key = IdentityKey.from_seed(seed)
        if key.did != inner.get("did") or key.did != data["did"]:
            raise KeystoreCorrupted(
                f"{path}: the stored DID does not match the stored key (file was altered)"
            )
        return key
