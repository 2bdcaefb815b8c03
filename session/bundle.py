"""Program bundles: a folder of files agreed as one program
(specs/session-protocol.md, "2.1 Program bundles").

A bundle is a list of files, each a relative POSIX path, a size and the SHA-256 of its
bytes. Its digest is the SHA-256 of the *listing*, a text that standard tools produce::

    didmesh-bundle/v1\\n
    <sha256 hex>  <path>\\n        (one line per file, paths sorted by their UTF-8 bytes)

which is ``sha256sum``'s own output format, so anyone can recompute it::

    { echo didmesh-bundle/v1; find . -type f -printf '%P\\0' | LC_ALL=C sort -z \\
        | xargs -0 sha256sum; } | sha256sum

:func:`listing` and :func:`bundle_digest` are pure; :func:`collect` reads a folder
(selection rules, caps, symlink checks) and :func:`compare` names the first file in
which a local folder differs from an agreed listing.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from .errors import BadSessionParameters, ProgramDigestMismatch

LABEL = "didmesh-bundle/v1"
MAX_FILES = 64
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_PATH_CHARS = 120
MAX_PATTERNS = 16
MAX_PATTERN_CHARS = 64
#: always left out of a bundle: caches and hidden files (they differ between machines)
DEFAULT_EXCLUDES = ("__pycache__", "*.pyc", ".*")

# one path component: printable ASCII without '/', '\\', quotes or shell/glob specials,
# no leading or trailing space; "." and ".." are refused separately
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9._+@=,~-](?:[A-Za-z0-9 ._+@=,~-]*[A-Za-z0-9._+@=,~-])?$")
_PATTERN_RE = re.compile(r"^[A-Za-z0-9 ._+@=,~*?\[\]/!-]{1,64}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class BundleFile:
    path: str  # relative POSIX path, checked by check_path
    size: int
    sha256: str  # lowercase hex


def path_error(path: object) -> str | None:
    """Why ``path`` cannot name a bundle file, or None if it can."""
    if not isinstance(path, str) or not path:
        return "a path must be a non-empty string"
    if len(path) > MAX_PATH_CHARS:
        return f"path {path[:40]!r}... is longer than {MAX_PATH_CHARS} characters"
    if path.startswith("/"):
        return f"path {path!r} is absolute"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"path {path!r} has an empty, '.' or '..' component"
        if not _COMPONENT_RE.match(part):
            return (
                f"path {path[:80]!r} has unusual characters (letters, digits, space and "
                "._+@=,~- only)"
            )
    return None


def pattern_error(pattern: object) -> str | None:
    if not isinstance(pattern, str) or not _PATTERN_RE.match(pattern):
        return f"pattern {str(pattern)[:40]!r} must be 1..{MAX_PATTERN_CHARS} plain glob characters"
    return None


def sort_key(path: str) -> bytes:
    return path.encode("utf-8")


def listing(files: Iterable[BundleFile]) -> bytes:
    """The canonical listing text whose SHA-256 is the bundle digest."""
    lines = [LABEL + "\n"]
    lines += [f"{f.sha256}  {f.path}\n" for f in sorted(files, key=lambda f: sort_key(f.path))]
    return "".join(lines).encode("utf-8")


def bundle_digest(files: Iterable[BundleFile]) -> str:
    return hashlib.sha256(listing(files)).hexdigest()


def selected(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a relative path belongs to the bundle under the selection rules.

    A pattern matches a path if it matches the whole relative path or any of its
    components (fnmatch, case-sensitive; ``*`` also matches ``/``)."""

    if _excluded(path, exclude):
        return False
    parts = path.split("/")
    return not include or any(
        fnmatchcase(path, p) or any(fnmatchcase(part, p) for part in parts) for p in include
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def collect(
    root: str | os.PathLike[str],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    *,
    error: type[Exception] = BadSessionParameters,
) -> list[BundleFile]:
    """The files of folder ``root`` selected by the rules, sorted, with the caps applied.

    Symbolic links are followed only if they stay inside ``root``; one that leads out of
    it, an unreadable file, a path with unusual characters, or too many or too large
    files raise ``error`` naming the file."""
    base = Path(root)
    try:
        real_root = base.resolve(strict=True)
    except OSError as exc:
        raise error(f"cannot read program folder {base}: {exc.strerror}") from None
    if not real_root.is_dir():
        raise error(f"{base} is not a folder")
    for pattern in (*include, *exclude):
        problem = pattern_error(pattern)
        if problem:
            raise error(f"--include/--exclude: {problem}")
    found: list[BundleFile] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(real_root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(real_root).as_posix()

        def rel_of(name: str) -> str:
            return name if rel_dir == "." else f"{rel_dir}/{name}"  # noqa: B023

        keep = []
        for name in sorted(dirnames):
            rel = rel_of(name)
            if _excluded(rel, exclude):
                continue
            if (here / name).is_symlink():
                _inside(here / name, real_root, rel, base, error)
                raise error(f"{rel} in {base} is a symbolic link to a folder; bundles take "
                            "files only (leave it out with --exclude)")
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = rel_of(name)
            if not selected(rel, include, exclude):
                continue
            full = here / name
            if full.is_symlink():
                _inside(full, real_root, rel, base, error)
            problem = path_error(rel)
            if problem:
                raise error(f"cannot bundle {rel!r}: {problem}")
            try:
                if not full.is_file():
                    raise error(f"{rel} in {base} is not a regular file")
                size = full.stat().st_size
                if size > MAX_FILE_BYTES:
                    raise error(f"{rel} is {size} bytes; a bundle file may have at most "
                                f"{MAX_FILE_BYTES}")
                total += size
                if total > MAX_BUNDLE_BYTES:
                    raise error(f"the bundle in {base} exceeds {MAX_BUNDLE_BYTES} bytes "
                                "(leave files out with --exclude)")
                found.append(BundleFile(rel, size, _sha256_file(full)))
            except OSError as exc:
                raise error(f"cannot read {rel} in {base}: {exc.strerror}") from None
            if len(found) > MAX_FILES:
                raise error(f"the bundle in {base} has more than {MAX_FILES} files "
                            "(leave files out with --exclude or --include)")
    return sorted(found, key=lambda f: sort_key(f.path))


def _excluded(rel: str, exclude: Sequence[str]) -> bool:
    parts = rel.split("/")
    return any(
        fnmatchcase(rel, p) or any(fnmatchcase(part, p) for part in parts)
        for p in (*DEFAULT_EXCLUDES, *exclude)
    )


def _inside(link: Path, real_root: Path, rel: str, base: Path,
            error: type[Exception]) -> None:
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        raise error(f"{rel} in {base} is a broken symbolic link") from None
    if not target.is_relative_to(real_root):
        raise error(f"{rel} in {base} is a symbolic link that leads out of the folder")


def compare(
    agreed: Sequence[BundleFile], local: Sequence[BundleFile], *, where: str, session: str
) -> None:
    """Raise :class:`ProgramDigestMismatch` naming the first path (in listing order) at
    which ``local`` differs from ``agreed``: a changed, missing or added file."""
    mine = {f.path: f for f in local}
    theirs = {f.path: f for f in agreed}
    for path in sorted(set(mine) | set(theirs), key=sort_key):
        want, have = theirs.get(path), mine.get(path)
        if want is None:
            exc = ProgramDigestMismatch(
                f"{path} in {where} is not in the bundle agreed for session {session} "
                "(an added file: remove it, or the organizer leaves such files out with "
                "session new --exclude); nothing starts"
            )
            exc.problem = "is not in the agreed bundle (an added file)"
        elif have is None:
            exc = ProgramDigestMismatch(
                f"{path} of the bundle agreed for session {session} is missing in {where}; "
                "nothing starts"
            )
            exc.problem = "of the agreed bundle is missing"
        elif have.size != want.size or have.sha256 != want.sha256:
            exc = ProgramDigestMismatch(
                f"{path} in {where} differs from the agreed bundle of session {session} "
                f"(SHA-256 {have.sha256[:12]}... here, {want.sha256[:12]}... agreed); "
                "nothing starts"
            )
        else:
            continue
        exc.file = path
        raise exc


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and bool(_SHA256_RE.match(value))
