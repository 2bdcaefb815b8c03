"""Session state on disk (specs/session-protocol.md, "State on disk").

Layout under the didmesh home, every file mode 0600 and written atomically::

    sessions/<session-id>/state.json        the SessionState (public data)
    sessions/<session-id>/session-key.json  the per-session X25519 private key
    sessions/<session-id>/codes.json        open invite codes (organizer; secret)
    sessions/.lock                          serializes writers (fcntl)
    quarantine/<sha256>.msg                 received messages set aside (Engine.deliver):
                                            at most QUARANTINE_MAX_FILES of at most
                                            QUARANTINE_MAX_BYTES, none older than
                                            QUARANTINE_MAX_AGE_S (pruned at each set-aside)
    relays.json                             relay URLs this home has used

:meth:`SessionStore.load` gives a :class:`StoredSession` with ``.state``,
``.session_private_key`` and ``.agreed_roster`` -- what the mesh consumes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import functools
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from didmesh.identity.paths import didmesh_home, write_private

from .errors import AmbiguousSession, SessionNotFound, StateCorrupted, StoreBusy
from .manifest import SESSION_ID_RE, Manifest
from .roster import AgreedRoster, verify_roster
from .state import SessionState, Status

if TYPE_CHECKING:  # .codes brings in spake2 (~25 ms): only the organizer's code paths need it
    from .codes import CodeOffer

MAX_STATE_BYTES = 8 * 1024 * 1024
MIN_PREFIX = 4
#: bounds of quarantine/ (messages set aside by Engine.deliver): count, age, and size of one
#: message (the rest of a longer one is not kept): at most 64 MiB in all
QUARANTINE_MAX_FILES = 64
QUARANTINE_MAX_AGE_S = 30 * 24 * 3600
QUARANTINE_MAX_BYTES = 1 << 20


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except OSError:
        return 0
    return 1


@dataclass(frozen=True)
class StoredSession:
    state: SessionState
    session_private_key: bytes | None
    path: Path

    @functools.cached_property
    def manifest(self) -> Manifest:
        return Manifest.from_json(self.state.manifest)  # parsed once (run and roster use it)

    @property
    def agreed_roster(self) -> AgreedRoster | None:
        """The roster, verified again, if every party confirmed it (status ``agreed``)."""
        if self.state.status != Status.AGREED or self.state.roster is None:
            return None
        manifest = self.manifest
        return verify_roster(self.state.roster, manifest=manifest, now=_roster_time(self.state))


def _roster_time(state: SessionState) -> datetime:
    from .manifest import parse_time

    assert state.roster is not None
    return parse_time(state.roster["validFrom"], "roster validFrom")


def _read_json(path: Path) -> Any:
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StateCorrupted(f"{path} is readable by other users (chmod 600 it)")
        if st.st_size > MAX_STATE_BYTES:
            raise StateCorrupted(f"{path} is {st.st_size} bytes; the limit is {MAX_STATE_BYTES}")
        return json.loads(path.read_bytes())
    except ValueError:
        raise StateCorrupted(f"{path} is not valid JSON") from None


class SessionStore:
    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = didmesh_home(home)
        self.root = self.home / "sessions"

    # -- locking ------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout: float = 30.0) -> Iterator[None]:
        """An exclusive lock over this home's sessions (held briefly by each writer)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise StoreBusy() from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)

    # -- sessions ------------------------------------------------------------------------
    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and SESSION_ID_RE.match(p.name)
        )

    def set_aside(self, payload: bytes, *, now: float | None = None) -> Path:
        """Keep a received message that could not be processed (for a bug report); its
        name is its SHA-256, so the same message is kept once. Then prunes the folder
        (:meth:`prune_quarantine`): anyone can post such messages, so what they take on
        disk is bounded."""
        import hashlib

        now = time.time() if now is None else now
        path = self.home / "quarantine" / f"{hashlib.sha256(payload).hexdigest()[:32]}.msg"
        write_private(path, payload[:QUARANTINE_MAX_BYTES])
        os.utime(path, (now, now))
        self.prune_quarantine(now=now)
        return path

    def prune_quarantine(self, *, now: float | None = None) -> int:
        """Delete set-aside messages older than :data:`QUARANTINE_MAX_AGE_S` and, beyond
        the newest :data:`QUARANTINE_MAX_FILES`, the oldest; returns how many went."""
        now = time.time() if now is None else now
        folder = self.home / "quarantine"
        kept: list[tuple[float, str, Path]] = []
        removed = 0
        try:
            entries = list(folder.iterdir())
        except OSError:
            return 0
        for entry in entries:
            if entry.suffix != ".msg":
                continue  # not ours: left alone
            try:
                mtime = entry.lstat().st_mtime
            except OSError:
                continue
            if now - mtime > QUARANTINE_MAX_AGE_S:
                removed += _unlink(entry)
            else:
                kept.append((mtime, entry.name, entry))
        kept.sort(reverse=True)  # newest first
        for _mtime, _name, entry in kept[QUARANTINE_MAX_FILES:]:
            removed += _unlink(entry)
        return removed

    def exists(self, session_id: str) -> bool:
        return SESSION_ID_RE.match(session_id) is not None and (
            self.root / session_id / "state.json"
        ).is_file()

    def resolve(self, prefix: str) -> str:
        """A full session id from a unique prefix of at least 4 hex digits."""
        text = prefix.strip().lower()
        if len(text) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in text):
            raise SessionNotFound(
                f"{prefix!r} is not a session id (give at least {MIN_PREFIX} hex digits; "
                "see 'didmesh sessions')"
            )
        matches = [sid for sid in self.ids() if sid.startswith(text)]
        if not matches:
            raise SessionNotFound(f"no session {prefix!r} in {self.home} (see 'didmesh sessions')")
        if len(matches) > 1:
            raise AmbiguousSession(f"{prefix!r} matches {len(matches)} sessions; give more digits")
        return matches[0]

    def load_state(self, session_id: str) -> SessionState:
        path = self.root / session_id / "state.json"
        if not path.is_file():
            raise SessionNotFound(f"no session {session_id[:8]} in {self.home}")
        state = SessionState.from_json(_read_json(path), str(path))
        if state.session_id != session_id:
            raise StateCorrupted(f"{path} holds session {state.session_id[:8]}")
        return state

    def save_state(self, state: SessionState) -> None:
        data = json.dumps(state.to_json(), separators=(",", ":")).encode()
        write_private(self.root / state.session_id / "state.json", data)

    def load(self, session_id: str) -> StoredSession:
        state = self.load_state(session_id)
        return StoredSession(state, self.load_session_key(session_id), self.root / session_id)

    def all_states(self) -> list[SessionState]:
        out = []
        for sid in self.ids():
            with contextlib.suppress(StateCorrupted, SessionNotFound):
                out.append(self.load_state(sid))
        return out

    # -- secrets ------------------------------------------------------------------------
    def save_session_key(self, session_id: str, private: bytes) -> None:
        body = {"x25519_private": base64.b64encode(private).decode()}
        write_private(self.root / session_id / "session-key.json", json.dumps(body).encode())

    def load_session_key(self, session_id: str) -> bytes | None:
        path = self.root / session_id / "session-key.json"
        if not path.is_file():
            return None
        data = _read_json(path)
        try:
            raw = base64.b64decode(data["x25519_private"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise StateCorrupted(f"{path} is malformed") from None
        if len(raw) != 32:
            raise StateCorrupted(f"{path} holds a key of {len(raw)} bytes")
        return raw

    def load_codes(self, session_id: str) -> list[CodeOffer]:
        path = self.root / session_id / "codes.json"
        if not path.is_file():
            return []
        from .codes import CodeOffer
        try:
            return [CodeOffer.from_json(c) for c in _read_json(path)]
        except (TypeError, AttributeError):
            raise StateCorrupted(f"{path} is malformed") from None

    def save_codes(self, session_id: str, offers: list[CodeOffer]) -> None:
        data = json.dumps([o.to_json() for o in offers]).encode()
        write_private(self.root / session_id / "codes.json", data)

    # -- relays this home knows ------------------------------------------------------------
    def known_relays(self) -> list[str]:
        path = self.home / "relays.json"
        if not path.is_file():
            return []
        data = _read_json(path)
        return [u for u in data if isinstance(u, str)] if isinstance(data, list) else []

    def forget_relay(self, url: str) -> bool:
        """Drop ``url`` from the relays this home remembers; False if it was not there."""
        known = self.known_relays()
        if url not in known:
            return False
        write_private(self.home / "relays.json",
                      json.dumps([u for u in known if u != url]).encode())
        return True

    def remember_relays(self, urls: list[str]) -> None:
        known = self.known_relays()
        merged = known + [u for u in urls if u not in known]
        if merged != known:
            write_private(self.home / "relays.json", json.dumps(merged[-32:]).encode())
