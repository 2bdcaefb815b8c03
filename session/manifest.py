"""The session manifest: what is computed, by whom, until when
(specs/session-protocol.md, "Manifest").

A manifest is plain JSON, parsed strictly (unknown keys are rejected by name)::

    {"v": 1, "sessionId": "<32 hex>", "name": "...", "organizer": "did:key:...",
     "program": {"name": "sum.py", "sha256": "<64 hex>", "mpyc": ">=0.11,<0.12",
                 "args": []},
     "parties": 3, "threshold": 1, "relays": ["http://127.0.0.1:8400"],
     "validFrom": "2025-01-01T00:00:00Z", "validUntil": "2025-01-02T00:00:00Z"}

The session id is 128 random bits. The manifest is carried inside every invite and the
roster, so its bytes are covered by the organizer's signatures; its :meth:`Manifest.digest`
(SHA-256 over the RFC 8785 form) is what parties compare.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import IdentityError
from didmesh.identity.jcs import canonicalize

from .errors import (
    BadSessionParameters,
    ManifestInvalid,
    MpycVersionMismatch,
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


_MEMO: dict[str, Manifest] = {}


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, field: str) -> datetime:
    if not isinstance(value, str) or not _DATETIME_RE.match(value):
        raise ManifestInvalid(f"manifest: {field} must be a UTC time like 2025-01-01T00:00:00Z")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
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
    return url.rstrip("/")


@dataclass(frozen=True)
class ProgramRef:
    name: str
    sha256: str  # lowercase hex
    mpyc: str  # version range, e.g. ">=0.11,<0.12"
    args: tuple[str, ...] = ()


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
            "program": {
                "name": self.program.name,
                "sha256": self.program.sha256,
                "mpyc": self.program.mpyc,
                "args": list(self.program.args),
            },
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
        _exact_keys(prog, _PROGRAM_KEYS, "manifest.program")
        pname, digest, mrange, args = prog["name"], prog["sha256"], prog["mpyc"], prog["args"]
        if not isinstance(pname, str) or not _PROGRAM_NAME_RE.match(pname):
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
            program=ProgramRef(pname, digest, mrange, tuple(args)),
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


def _exact_keys(data: Mapping[str, Any], keys: set[str], what: str) -> None:
    unknown = sorted(set(data) - keys)
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


def program_digest(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_PROGRAM_BYTES:
            raise BadSessionParameters(
                f"program {p} is {size} bytes; the limit is {MAX_PROGRAM_BYTES}"
            )
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as exc:
        raise BadSessionParameters(f"cannot read program {p}: {exc.strerror}") from None


def verify_program(manifest: Manifest, path: str | os.PathLike[str]) -> None:
    """Raise :class:`ProgramDigestMismatch` unless the file's SHA-256 is the manifest's."""
    got = program_digest(path)
    if not hmac.compare_digest(got, manifest.program.sha256):
        raise ProgramDigestMismatch(
            f"program {os.fspath(path)} has SHA-256 {got[:16]}..., but session "
            f"{manifest.session_id[:8]} (organizer {manifest.organizer[:32]}...) agreed on "
            f"{manifest.program.name} with SHA-256 {manifest.program.sha256[:16]}...; "
            "nothing starts"
        )


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
    digest = program_digest(path)
    if not _PROGRAM_NAME_RE.match(path.name):
        raise BadSessionParameters(f"program file name {path.name!r} has unusual characters")
    mrange = mpyc_range or default_mpyc_range()
    try:
        parse_version_range(mrange)
    except ValueError as exc:
        raise BadSessionParameters(f"--mpyc: {exc}") from None
    if len(args) > MAX_ARGS or any(len(a) > MAX_ARG_CHARS for a in args):
        raise BadSessionParameters(f"at most {MAX_ARGS} program arguments of <= 256 chars")
    label = name or path.stem
    if not 0 < len(label) <= MAX_NAME_CHARS or not label.isprintable():
        raise BadSessionParameters(f"--name must be 1..{MAX_NAME_CHARS} printable characters")
    start = now.astimezone(UTC).replace(microsecond=0)
    manifest = Manifest(
        session_id=rng(SESSION_ID_BYTES).hex(),
        name=label,
        organizer=organizer,
        program=ProgramRef(path.name, digest, mrange, tuple(args)),
        parties=parties,
        threshold=t,
        relays=tuple(urls),
        valid_from=start,
        valid_until=start + valid_for,
    )
    return Manifest.from_json(manifest.to_json())  # one validation path
