"""The session manifest: what is computed, by whom, until when
(specs/session-protocol.md, "Manifest").

A manifest is plain JSON, parsed strictly (unknown keys are rejected by name)::

    {"v": 1, "sessionId": "<32 hex>", "name": "...", "organizer": "did:key:...",
     "program": {"name": "sum.py", "sha256": "<64 hex>", "mpyc": ">=0.11,<0.12",
                 "args": []},
     "parties": 3, "threshold": 1, "relays": ["http://127.0.0.1:8400"],
     "validFrom": "2025-01-01T00:00:00Z", "validUntil": "2025-01-02T00:00:00Z"}

A program made of several files (a *bundle*, :mod:`.bundle`) adds
``"bundle": {"files": [{"path", "size", "sha256"}...], "include": [...], "exclude": [...]}``
to ``program``; its ``name`` is then the entry file's path in the bundle and its
``sha256`` the bundle digest. The session id is 128 random bits. The manifest is carried
inside every invite and the roster, so its bytes are covered by the organizer's
signatures; its :meth:`Manifest.digest` (SHA-256 over the RFC 8785 form) is what parties
compare.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import IdentityError
from didmesh.identity.jcs import canonicalize

from . import bundle as bundles
from .bundle import BundleFile
from .errors import (
    BadSessionParameters,
    ManifestInvalid,
    MpycVersionMismatch,
    ProgramArgsMismatch,
    ProgramDigestMismatch,
)

VERSION = 1
SESSION_ID_BYTES = 16
MIN_PARTIES, MAX_PARTIES = 2, 64
MAX_RELAYS = 8
MAX_ARGS = 32
MAX_ARG_CHARS = 256
MAX_NAME_CHARS = 80
MAX_PROGRAM_BYTES = 16 * 1024 * 1024
MAX_VALIDITY = timedelta(days=30)
DEFAULT_VALIDITY = timedelta(hours=24)

SESSION_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PROGRAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_VERSION_CLAUSE_RE = re.compile(r"^(>=|<=|==|!=|<|>)\s*(\d+(?:\.\d+){0,2})$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_DURATION_RE = re.compile(r"^(\d+)\s*([smhd])$")
_KEYS = {
    "v", "sessionId", "name", "organizer", "program", "parties", "threshold", "relays",
    "validFrom", "validUntil",
}  # fmt: skip
_PROGRAM_KEYS = {"name", "sha256", "mpyc", "args"}
_PROGRAM_OPTIONAL = {"bundle", "inputs"}
#: names of private inputs (``run --input NAME=VALUE``): the program reads DIDMESH_INPUT_NAME
INPUT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_INPUTS = 16
_BUNDLE_KEYS = {"files", "include", "exclude"}
_FILE_KEYS = {"path", "size", "sha256"}
#: MPyC options a party may add on its own: they change only what it prints
LOCAL_MPYC_FLAGS = ("--no-log",)


_MEMO: dict[str, Manifest] = {}


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, field: str) -> datetime:
    if not isinstance(value, str) or not _DATETIME_RE.match(value):
        raise ManifestInvalid(f"manifest: {field} must be a UTC time like 2025-01-01T00:00:00Z")
    try:  # the fields by position (strptime's first call costs ~4 ms of every `didmesh run`)
        if len(value) != 20:  # "$" also matches before a final newline
            raise ValueError(value)
        return datetime(int(value[0:4]), int(value[5:7]), int(value[8:10]), int(value[11:13]),
                        int(value[14:16]), int(value[17:19]), tzinfo=UTC)
    except ValueError:
        raise ManifestInvalid(f"manifest: {field} {value!r} is not a real date and time") from None


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``2h``, ``7d`` -> timedelta (BadSessionParameters otherwise)."""
    match = _DURATION_RE.match(text.strip().lower())
    if not match:
        raise BadSessionParameters(f"duration {text!r} should look like 30m, 2h or 7d")
    n, unit = int(match.group(1)), match.group(2)
    return timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


def default_mpyc_range() -> str:
    """``>=X.Y,<X.(Y+1)`` for the installed MPyC."""
    import mpyc

    major, minor = (int(p) for p in str(mpyc.__version__).split(".")[:2])
    return f">={major}.{minor},<{major}.{minor + 1}"


def _version_tuple(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def parse_version_range(text: str) -> list[tuple[str, tuple[int, int, int]]]:
    clauses = []
    for raw in text.split(","):
        match = _VERSION_CLAUSE_RE.match(raw.strip())
        if not match:
            raise ValueError(f"version clause {raw.strip()[:30]!r} is not like >=0.10 or <0.12")
        clauses.append((match.group(1), _version_tuple(match.group(2))))
    return clauses


def version_in_range(version: str, text: str) -> bool:
    have = _version_tuple(version)
    ops = {
        ">=": have.__ge__, "<=": have.__le__, "==": have.__eq__,
        "!=": have.__ne__, "<": have.__lt__, ">": have.__gt__,
    }  # fmt: skip
    return all(ops[op](want) for op, want in parse_version_range(text))


def validate_relay_url(url: str, error: type[Exception] = BadSessionParameters) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[::1" (an unclosed IPv6 literal)
        raise error(f"relay URL {url[:80]!r} must be http(s)://host[:port][/path]") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
        or len(url) > 200
    ):
        raise error(f"relay URL {url[:80]!r} must be http(s)://host[:port][/path]")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise error(f"relay URL {url[:80]!r} has an invalid port") from None
    if not _URL_CHARS.fullmatch(url):
        raise error(f"relay URL {url[:80]!r} has a space or a control character")
    if not (_HOSTNAME.fullmatch(parts.hostname) or _is_ip(parts.hostname)):
        raise error(
            f"relay URL {url[:80]!r}: {parts.hostname[:80]!r} is not a host name or address"
        )
    return url.rstrip("/")


#: a relay URL is printable ASCII without spaces (RFC 3986 characters)
_URL_CHARS = re.compile(r"[!-~]+")
#: DNS labels (underscores too, as some internal names have them), dot-separated
_HOSTNAME = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ProgramRef:
    name: str
    sha256: str  # lowercase hex
    mpyc: str  # version range, e.g. ">=0.11,<0.12"
    args: tuple[str, ...] = ()
    files: tuple[BundleFile, ...] = ()  # empty: a single-file program
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # declared private input names (upper case); () = any

    @property
    def is_bundle(self) -> bool:
        return bool(self.files)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name, "sha256": self.sha256, "mpyc": self.mpyc,
            "args": list(self.args),
        }
        if self.files:
            data["bundle"] = {
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256}
                          for f in self.files],
                "include": list(self.include),
                "exclude": list(self.exclude),
            }
        if self.inputs:
            data["inputs"] = list(self.inputs)
        return data


@dataclass(frozen=True)
class Manifest:
    session_id: str
    name: str
    organizer: str
    program: ProgramRef
    parties: int
    threshold: int
    relays: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime

    # -- JSON -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "sessionId": self.session_id,
            "name": self.name,
            "organizer": self.organizer,
            "program": self.program.to_json(),
            "parties": self.parties,
            "threshold": self.threshold,
            "relays": list(self.relays),
            "validFrom": format_time(self.valid_from),
            "validUntil": format_time(self.valid_until),
        }

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        """Parse strictly; raises :class:`ManifestInvalid` naming the offending field.
        (Parsed manifests are memoized by content: rosters carry one per acceptance.)"""
        try:
            memo_key = json.dumps(data, sort_keys=True)
        except (TypeError, ValueError):
            raise ManifestInvalid("manifest is not plain JSON") from None
        hit = _MEMO.get(memo_key)
        if hit is not None:
            return hit
        parsed = cls._parse(data)
        if len(_MEMO) > 256:
            _MEMO.clear()
        _MEMO[memo_key] = parsed
        return parsed

    @classmethod
    def _parse(cls, data: object) -> Manifest:
        if not isinstance(data, Mapping):
            raise ManifestInvalid("manifest is not a JSON object")
        _exact_keys(data, _KEYS, "manifest")
        if data["v"] != VERSION:
            raise ManifestInvalid(f"manifest version {data['v']!r} is not supported (want 1)")
        sid = data["sessionId"]
        if not isinstance(sid, str) or not SESSION_ID_RE.match(sid):
            raise ManifestInvalid("manifest: sessionId must be 32 lowercase hex digits")
        name = data["name"]
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= MAX_NAME_CHARS
            or not name.isprintable()
        ):
            raise ManifestInvalid(f"manifest: name must be 1..{MAX_NAME_CHARS} printable chars")
        organizer = _did(data["organizer"], "manifest: organizer")
        prog = data["program"]
        if not isinstance(prog, Mapping):
            raise ManifestInvalid("manifest: program must be an object")
        _exact_keys(prog, _PROGRAM_KEYS, "manifest.program", optional=_PROGRAM_OPTIONAL)
        pname, digest, mrange, args = prog["name"], prog["sha256"], prog["mpyc"], prog["args"]
        files, include, exclude = _parse_bundle(prog.get("bundle"))
        inputs = prog.get("inputs", [])
        if (
            not isinstance(inputs, list)
            or ("inputs" in prog and not 0 < len(inputs) <= MAX_INPUTS)
            or not all(isinstance(n, str) and INPUT_NAME_RE.match(n) and n == n.upper()
                       for n in inputs)
            or len(set(inputs)) != len(inputs)
        ):
            raise ManifestInvalid(
                f"manifest: program.inputs must list 1..{MAX_INPUTS} distinct upper-case names"
            )
        if files:
            if bundles.path_error(pname) or pname not in {f.path for f in files}:
                raise ManifestInvalid("manifest: program.name must be a file of the bundle")
            if digest != bundles.bundle_digest(files):
                raise ManifestInvalid(
                    "manifest: program.sha256 is not the digest of program.bundle.files"
                )
        elif not isinstance(pname, str) or not _PROGRAM_NAME_RE.match(pname):
            raise ManifestInvalid("manifest: program.name must be a plain file name")
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise ManifestInvalid("manifest: program.sha256 must be 64 lowercase hex digits")
        if not isinstance(mrange, str) or len(mrange) > 64:
            raise ManifestInvalid("manifest: program.mpyc must be a version range string")
        try:
            parse_version_range(mrange)
        except ValueError as exc:
            raise ManifestInvalid(f"manifest: program.mpyc: {exc}") from None
        if (
            not isinstance(args, list)
            or len(args) > MAX_ARGS
            or not all(isinstance(a, str) and len(a) <= MAX_ARG_CHARS for a in args)
        ):
            raise ManifestInvalid(f"manifest: program.args must be <= {MAX_ARGS} short strings")
        m, t = data["parties"], data["threshold"]
        if type(m) is not int or not MIN_PARTIES <= m <= MAX_PARTIES:
            raise ManifestInvalid(f"manifest: parties must be {MIN_PARTIES}..{MAX_PARTIES}")
        if type(t) is not int or not 0 <= t <= (m - 1) // 2:
            raise ManifestInvalid(f"manifest: threshold must be 0..{(m - 1) // 2} for {m} parties")
        relays = data["relays"]
        if not isinstance(relays, list) or not 1 <= len(relays) <= MAX_RELAYS:
            raise ManifestInvalid(f"manifest: relays must list 1..{MAX_RELAYS} URLs")
        for url in relays:
            if not isinstance(url, str) or validate_relay_url(url, ManifestInvalid) != url:
                raise ManifestInvalid(f"manifest: relay URL {str(url)[:80]!r} is not canonical")
        if len(set(relays)) != len(relays):
            raise ManifestInvalid("manifest: relays repeats a URL")
        start = parse_time(data["validFrom"], "validFrom")
        end = parse_time(data["validUntil"], "validUntil")
        if not start < end <= start + MAX_VALIDITY:
            raise ManifestInvalid("manifest: validUntil must be after validFrom, within 30 days")
        return cls(
            session_id=sid,
            name=name,
            organizer=organizer,
            program=ProgramRef(pname, digest, mrange, tuple(args), files, include, exclude,
                               tuple(inputs)),
            parties=m,
            threshold=t,
            relays=tuple(relays),
            valid_from=start,
            valid_until=end,
        )

    # -- identity -------------------------------------------------------------------
    @functools.cached_property
    def _canonical(self) -> bytes:
        return canonicalize(self.to_json(), what="manifest")

    def canonical(self) -> bytes:
        return self._canonical

    def digest(self) -> bytes:
        return hashlib.sha256(b"didmesh/manifest/v1\0" + self.canonical()).digest()

    def same_as(self, other: Manifest) -> bool:
        return hmac.compare_digest(self.canonical(), other.canonical())

    @property
    def domain(self) -> str:
        """The presentation domain every acceptance of this session is bound to."""
        return session_domain(self.session_id)


def session_domain(session_id: str) -> str:
    return f"urn:didmesh:session:{session_id}"


def _parse_bundle(
    data: object,
) -> tuple[tuple[BundleFile, ...], tuple[str, ...], tuple[str, ...]]:
    if data is None:
        return (), (), ()
    if not isinstance(data, Mapping):
        raise ManifestInvalid("manifest: program.bundle must be an object")
    _exact_keys(data, _BUNDLE_KEYS, "manifest.program.bundle")
    raw, include, exclude = data["files"], data["include"], data["exclude"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= bundles.MAX_FILES:
        raise ManifestInvalid(
            f"manifest: program.bundle.files must list 1..{bundles.MAX_FILES} files"
        )
    files = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise ManifestInvalid("manifest: program.bundle.files holds a non-object")
        _exact_keys(item, _FILE_KEYS, "manifest.program.bundle.files[]")
        path, size, sha = item["path"], item["size"], item["sha256"]
        problem = bundles.path_error(path)
        if problem:
            raise ManifestInvalid(f"manifest: program.bundle.files: {problem}")
        if type(size) is not int or not 0 <= size <= bundles.MAX_FILE_BYTES:
            raise ManifestInvalid(f"manifest: program.bundle.files: bad size for {path!r}")
        if not bundles.is_sha256(sha):
            raise ManifestInvalid(f"manifest: program.bundle.files: bad sha256 for {path!r}")
        files.append(BundleFile(path, size, sha))
    keys = [bundles.sort_key(f.path) for f in files]
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        raise ManifestInvalid(
            "manifest: program.bundle.files must be sorted by path, without repeats"
        )
    if sum(f.size for f in files) > bundles.MAX_BUNDLE_BYTES:
        raise ManifestInvalid(f"manifest: the bundle exceeds {bundles.MAX_BUNDLE_BYTES} bytes")
    for patterns, what in ((include, "include"), (exclude, "exclude")):
        if not isinstance(patterns, list) or len(patterns) > bundles.MAX_PATTERNS or any(
            bundles.pattern_error(p) for p in patterns
        ):
            raise ManifestInvalid(
                f"manifest: program.bundle.{what} must be <= {bundles.MAX_PATTERNS} glob patterns"
            )
    return tuple(files), tuple(include), tuple(exclude)


def _exact_keys(
    data: Mapping[str, Any], keys: set[str], what: str, optional: Collection[str] = ()
) -> None:
    unknown = sorted(set(data) - keys - set(optional))
    if unknown:
        raise ManifestInvalid(f"{what} has unknown field {str(unknown[0])[:40]!r}")
    missing = sorted(keys - set(data))
    if missing:
        raise ManifestInvalid(f"{what} lacks field {missing[0]!r}")


def _did(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ManifestInvalid(f"{what} must be a DID string")
    try:
        key = DidKey.parse(value)
    except IdentityError as exc:
        raise ManifestInvalid(f"{what}: {exc.message}") from None
    if not key.can_sign or key.did != value:
        raise ManifestInvalid(f"{what} must be an Ed25519 did:key in canonical form")
    return value


def program_digest(
    path: str | os.PathLike[str], *, error: type[Exception] = BadSessionParameters
) -> str:
    """SHA-256 (hex) of a single-file program."""
    p = Path(path)
    try:
        if not p.is_file():
            raise error(f"program {p} is not a file")
        size = p.stat().st_size
        if size > MAX_PROGRAM_BYTES:
            raise error(f"program {p} is {size} bytes; the limit is {MAX_PROGRAM_BYTES}")
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as exc:
        raise error(f"cannot read program {p}: {exc.strerror}") from None


@dataclass(frozen=True)
class LocalProgram:
    """Where this party's checked copy of the agreed program is."""

    root: Path  # the folder the program runs in (working directory, on sys.path)
    entry: Path  # the file run as __main__


def verify_program(manifest: Manifest, path: str | os.PathLike[str]) -> LocalProgram:
    """Check this party's copy of the program against the manifest, file by file.

    A single-file program must have the agreed SHA-256. For a bundle, ``path`` is its
    folder (or the entry file in it): every agreed file must be there with the agreed
    bytes, and no other file the selection rules take in. Raises
    :class:`ProgramDigestMismatch` naming the first file that differs."""
    prog = manifest.program
    p = Path(path)
    sid = manifest.session_id[:8]
    if not prog.is_bundle:
        if p.is_dir():
            p = p / prog.name
        got = program_digest(p, error=ProgramDigestMismatch)
        if not hmac.compare_digest(got, prog.sha256):
            exc = ProgramDigestMismatch(
                f"program {os.fspath(path)} has SHA-256 {got[:16]}..., but session "
                f"{sid} (organizer {manifest.organizer[:32]}...) agreed on "
                f"{prog.name} with SHA-256 {prog.sha256[:16]}...; nothing starts"
            )
            exc.file = prog.name
            raise exc
        return LocalProgram(p.resolve().parent, p.resolve())
    root = _bundle_root(prog, p, sid)
    local = bundles.collect(root, prog.include, prog.exclude, error=ProgramDigestMismatch)
    bundles.compare(prog.files, local, where=os.fspath(root), session=sid)
    if not hmac.compare_digest(bundles.bundle_digest(local), prog.sha256):  # belt and braces
        raise ProgramDigestMismatch(f"the bundle in {root} differs from session {sid}'s")
    real = root.resolve()
    return LocalProgram(real, real.joinpath(*prog.name.split("/")))


def _bundle_root(prog: ProgramRef, p: Path, sid: str) -> Path:
    if p.is_dir():
        return p
    parts = prog.name.split("/")
    if p.is_file() and p.parts[-len(parts):] == tuple(parts):
        root = p
        for _ in parts:
            root = root.parent
        return root
    raise ProgramDigestMismatch(
        f"session {sid} agreed on a bundle of {len(prog.files)} files with entry "
        f"{prog.name}: give its folder (not {os.fspath(p)}); nothing starts"
    )


def check_args(manifest: Manifest, given: Sequence[str]) -> list[str]:
    """The arguments to run the program with: the agreed ones, plus MPyC's local-only
    :data:`LOCAL_MPYC_FLAGS`. ``given`` (what this party typed; empty means "the
    agreed ones") must otherwise equal them; else :class:`ProgramArgsMismatch` names
    the first argument that differs."""
    agreed = list(manifest.program.args)
    local = [a for a in given if a in LOCAL_MPYC_FLAGS and a not in agreed]
    typed = [a for a in given if not (a in LOCAL_MPYC_FLAGS and a not in agreed)]
    if typed and typed != agreed:
        sid = manifest.session_id[:8]
        agreed_text = " ".join(agreed) if agreed else "no arguments"
        for i in range(max(len(typed), len(agreed))):
            have = typed[i] if i < len(typed) else None
            want = agreed[i] if i < len(agreed) else None
            if have == want:
                continue
            if have is None:
                what = neutral = f"argument {i + 1} {want!r} is missing"
            elif want is None:
                what = neutral = f"argument {i + 1} {have!r} was not agreed"
            else:
                what = f"argument {i + 1} is {have!r} here but {want!r} was agreed"
                neutral = f"argument {i + 1} is {have!r}, not the agreed {want!r}"
            exc = ProgramArgsMismatch(
                f"{what}: session {sid} agreed on {agreed_text} (leave the arguments out "
                "to use them; private inputs go in --input NAME=VALUE); nothing starts"
            )
            exc.argument = neutral
            raise exc
    return agreed + local


def check_mpyc(manifest: Manifest, version: str | None = None) -> None:
    """Raise :class:`MpycVersionMismatch` unless ``version`` (default: installed) fits."""
    if version is None:
        import mpyc

        version = str(mpyc.__version__)
    if not version_in_range(version, manifest.program.mpyc):
        raise MpycVersionMismatch(
            f"session {manifest.session_id[:8]} needs MPyC {manifest.program.mpyc}, "
            f"but MPyC {version} is installed"
        )


def new_manifest(
    *,
    organizer: str,
    program: str | os.PathLike[str],
    parties: int,
    relays: Sequence[str],
    now: datetime,
    threshold: int | None = None,
    name: str | None = None,
    valid_for: timedelta = DEFAULT_VALIDITY,
    mpyc_range: str | None = None,
    args: Sequence[str] = (),
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    entry: str | None = None,
    inputs: Sequence[str] = (),
    rng: Callable[[int], bytes] = os.urandom,
) -> Manifest:
    """A new manifest with a fresh 128-bit session id (BadSessionParameters on bad input)."""
    if not MIN_PARTIES <= parties <= MAX_PARTIES:
        raise BadSessionParameters(
            f"--parties must be {MIN_PARTIES}..{MAX_PARTIES} (got {parties})"
        )
    t = (parties - 1) // 2 if threshold is None else threshold
    if not 0 <= t <= (parties - 1) // 2:
        raise BadSessionParameters(
            f"--threshold must be 0..{(parties - 1) // 2} for {parties} parties (got {t}): "
            "MPyC needs 2t+1 <= m"
        )
    if not relays:
        raise BadSessionParameters("give at least one --relay URL")
    urls = [validate_relay_url(u) for u in relays]
    if len(set(urls)) != len(urls) or len(urls) > MAX_RELAYS:
        raise BadSessionParameters(f"--relay: give 1..{MAX_RELAYS} distinct URLs")
    if not timedelta(minutes=1) <= valid_for <= MAX_VALIDITY:
        raise BadSessionParameters("--valid-for must be between 1m and 30d")
    path = Path(program)
    ref = program_ref(path, include=include, exclude=exclude, entry=entry)
    mrange = mpyc_range or default_mpyc_range()
    try:
        parse_version_range(mrange)
    except ValueError as exc:
        raise BadSessionParameters(f"--mpyc: {exc}") from None
    if len(args) > MAX_ARGS or any(len(a) > MAX_ARG_CHARS for a in args):
        raise BadSessionParameters(f"at most {MAX_ARGS} program arguments of <= 256 chars")
    label = name or (path.resolve().name if ref.is_bundle else Path(ref.name).stem)
    if not 0 < len(label) <= MAX_NAME_CHARS or not label.isprintable():
        raise BadSessionParameters(f"--name must be 1..{MAX_NAME_CHARS} printable characters")
    start = now.astimezone(UTC).replace(microsecond=0)
    manifest = Manifest(
        session_id=rng(SESSION_ID_BYTES).hex(),
        name=label,
        organizer=organizer,
        program=ProgramRef(ref.name, ref.sha256, mrange, tuple(args), ref.files, ref.include,
                           ref.exclude, _input_names(inputs)),
        parties=parties,
        threshold=t,
        relays=tuple(urls),
        valid_from=start,
        valid_until=start + valid_for,
    )
    from .budget import check_terms  # (budget reads manifests: imported here, not above)

    check_terms(manifest)
    return Manifest.from_json(manifest.to_json())  # one validation path


def _input_names(names: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        if not INPUT_NAME_RE.match(name):
            raise BadSessionParameters(
                f"--input-name {name[:40]!r}: letters, digits and _, at most 64, not a digit first"
            )
        if name.upper() in out:
            raise BadSessionParameters(f"--input-name {name} is given twice")
        out.append(name.upper())
    if len(out) > MAX_INPUTS:
        raise BadSessionParameters(f"at most {MAX_INPUTS} --input-name")
    return tuple(out)


def check_inputs(manifest: Manifest, names: Sequence[str]) -> None:
    """If the manifest declares its private inputs, every name given must be one of them
    (a typo would otherwise leave the program on its default): BadSessionParameters."""
    declared = manifest.program.inputs
    if not declared:
        return
    for name in names:
        if name.upper() not in declared:
            raise BadSessionParameters(
                f"{name} is not a private input of session {manifest.session_id[:8]}; it "
                f"takes {', '.join(declared)}; nothing starts"
            )


def program_ref(
    path: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = (),
    entry: str | None = None,
) -> ProgramRef:
    """The program part of a new manifest (MPyC range and arguments left empty): a
    single file as before, or a folder as a bundle (BadSessionParameters on bad input)."""
    if not path.is_dir():
        if include or exclude or entry:
            raise BadSessionParameters(
                "--include, --exclude and --entry apply to a program folder, not a file"
            )
        digest = program_digest(path)
        if not _PROGRAM_NAME_RE.match(path.name):
            raise BadSessionParameters(f"program file name {path.name!r} has unusual characters")
        return ProgramRef(path.name, digest, "")
    if len(include) + len(exclude) > bundles.MAX_PATTERNS:
        raise BadSessionParameters(f"at most {bundles.MAX_PATTERNS} --include/--exclude patterns")
    files = tuple(bundles.collect(path, include, exclude))
    if not files:
        raise BadSessionParameters(f"the folder {path} holds no file to bundle")
    names = [f.path for f in files]
    if entry is not None:
        entry = Path(entry).as_posix().removeprefix("./")
        if entry not in names:
            raise BadSessionParameters(f"--entry {entry} is not a file of the bundle in {path}")
    else:
        top = [n for n in names if "/" not in n and n.endswith(".py")]
        for candidate in ("__main__.py", "main.py"):
            if candidate in names:
                entry = candidate
                break
        else:
            if len(top) != 1:
                raise BadSessionParameters(
                    f"which file of {path} is the program? name it with --entry FILE "
                    "(or call it main.py)"
                )
            entry = top[0]
    return ProgramRef(entry, bundles.bundle_digest(files), "", (), files, tuple(include),
                      tuple(exclude))
