"""The local address book: petnames for DIDs (``contacts.json`` in the didmesh home, 0600).

Petnames are local and private: they are never sent, and a DID shown with a petname was
matched exactly. ``resolve`` accepts a DID or a petname.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from didmesh.identity.paths import didmesh_home, write_private

from .documents import did_ok
from .errors import BadSessionParameters, ContactExists, StateCorrupted, UnknownContact

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_BYTES = 1024 * 1024


class Contacts:
    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.path: Path = didmesh_home(home) / "contacts.json"

    def all(self) -> dict[str, str]:
        if not self.path.is_file():
            return {}
        if self.path.stat().st_size > MAX_BYTES:
            raise StateCorrupted(f"{self.path} is too large")
        try:
            data = json.loads(self.path.read_bytes())
        except ValueError:
            raise StateCorrupted(f"{self.path} is not valid JSON") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise StateCorrupted(f"{self.path} is not a name -> DID map")
        return dict(data)

    def _save(self, data: dict[str, str]) -> None:
        write_private(self.path, json.dumps(data, indent=1, sort_keys=True).encode())

    def add(self, name: str, did: str, *, force: bool = False) -> None:
        if not NAME_RE.match(name) or name.startswith("did"):
            raise BadSessionParameters(
                f"contact name {name[:40]!r}: use letters, digits, '.', '_' or '-' "
                "(and not starting with 'did')"
            )
        if not did_ok(did):
            raise BadSessionParameters(
                f"{did[:100]!r} is not an Ed25519 did:key (one looks like did:key:z6Mk...)"
            )
        data = self.all()
        if name in data and not force and data[name] != did:
            raise ContactExists(f"contact {name!r} exists already ({data[name]}); use --force")
        data[name] = did
        self._save(data)

    def remove(self, name: str) -> str:
        data = self.all()
        if name not in data:
            raise UnknownContact(f"no contact named {name!r}")
        did = data.pop(name)
        self._save(data)
        return did

    def resolve(self, text: str) -> str:
        """A DID from a DID or a petname."""
        if text.startswith("did:"):
            if not did_ok(text):
                raise BadSessionParameters(
                    f"{text[:100]!r} is not an Ed25519 did:key (one looks like did:key:z6Mk...)"
                )
            return text
        data = self.all()
        if text not in data:
            raise UnknownContact(
                f"{text[:100]!r} is neither a DID nor a contact (add it: didmesh contacts "
                f"add {text if NAME_RE.match(text) else 'NAME'} DID)"
            )
        return data[text]

    def labels(self) -> dict[str, str]:
        """DID -> petname (the first name, alphabetically, if one DID has several)."""
        out: dict[str, str] = {}
        for name, did in sorted(self.all().items()):
            out.setdefault(did, name)
        return out
