"""DID resolution, local only (specs/identity.md, "Resolution").

``resolve(did)`` dispatches on the DID method to a registered resolver. Only
``did:key`` ships; did:peer or did:web can be added with :func:`register_method`
without touching callers. No resolver here performs network I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .didkey import DidKey
from .errors import InvalidDID, KeyNotAuthorized, UnsupportedDIDMethod

DidDocument = dict[str, Any]
_METHOD_RE = re.compile(r"^did:([a-z0-9]+):.+")
_resolvers: dict[str, Callable[[str], DidDocument]] = {}


def register_method(method: str, resolver: Callable[[str], DidDocument]) -> None:
    _resolvers[method] = resolver


def did_method(did: str) -> str:
    if not isinstance(did, str):
        raise InvalidDID("a DID must be a string")
    m = _METHOD_RE.match(did)
    if not m:
        raise InvalidDID(f"not a DID: {did[:60]!r} (expected did:<method>:<id>)")
    return m.group(1)


def resolve(did: str) -> DidDocument:
    """Resolve ``did`` (a fragment is ignored) to its DID document."""
    base = did.split("#", 1)[0] if isinstance(did, str) else did
    method = did_method(base)
    try:
        resolver = _resolvers[method]
    except KeyError:
        supported = ", ".join(f"did:{m}" for m in sorted(_resolvers))
        raise UnsupportedDIDMethod(
            f"unsupported DID method did:{method} (this didmesh resolves {supported})"
        ) from None
    return resolver(base)


def controller_of(verification_method: str) -> str:
    """The DID part of a verification method URL."""
    did = verification_method.split("#", 1)[0]
    did_method(did)
    return did


def ed25519_key_for(verification_method: str, relationship: str) -> bytes:
    """Resolve a verification method and return its Ed25519 public key bytes, checking that
    the DID document lists it under ``relationship`` (e.g. ``assertionMethod``)."""
    did = controller_of(verification_method)
    doc = resolve(did)
    allowed = doc.get(relationship, [])
    ids = [m if isinstance(m, str) else m.get("id") for m in allowed]
    if verification_method not in ids:
        raise KeyNotAuthorized(
            f"{verification_method} is not an {relationship} method of {did}"
        )
    key = DidKey.parse(did)
    return key.ed25519_public


register_method("key", lambda did: DidKey.parse(did).document())
