"""Offline JSON-LD: a frozen document loader and RDFC-1.0 canonicalization
(specs/credentials.md, "Contexts" and "Canonicalization").

didmesh never fetches a JSON-LD context. :func:`document_loader` serves the context
files bundled in ``identity/contexts/`` under their canonical URLs (listed in
``identity/contexts/README.md``) and raises :class:`UnknownContext` for every other URL.

:func:`canonize` turns a JSON-LD document into canonical N-Quads with RDFC-1.0
(URDNA2015; the two produce identical output). A term the active contexts do not
define would be silently dropped by JSON-LD expansion, and so would be left out of
what is signed; here it is an :class:`UndefinedTerm` error naming the term. PyLD
3.3.0 has no "safe mode", so the check hooks PyLD's ``on_property_dropped`` handler
(undefined properties) and walks the expanded document for relative IRIs (undefined
types, relative ids), which RDF conversion would also drop silently.

Speed: parsed context files are kept in memory, and the loader marks them ``static``
so PyLD's shared resolved-context cache keeps the processed contexts across calls.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from .errors import DidmeshError, MalformedCredential, UndefinedTerm, UnknownContext

# Canonical URL -> file in identity/contexts/.
CREDENTIALS_V1 = "https://www.w3.org/2018/credentials/v1"
CREDENTIALS_V2 = "https://www.w3.org/ns/credentials/v2"
CREDENTIALS_EXAMPLES_V2 = "https://www.w3.org/ns/credentials/examples/v2"
DATA_INTEGRITY_V2 = "https://w3id.org/security/data-integrity/v2"
MULTIKEY_V1 = "https://w3id.org/security/multikey/v1"
DID_V1 = "https://www.w3.org/ns/did/v1"
SECURITY_V1 = "https://w3id.org/security/v1"
SECURITY_V2 = "https://w3id.org/security/v2"
ED25519_2020_V1 = "https://w3id.org/security/suites/ed25519-2020/v1"
DIDMESH_V1 = "https://didmesh.dev/ns/v1"

BUNDLED_CONTEXTS: Mapping[str, str] = {
    CREDENTIALS_V1: "credentials-v1.jsonld",
    CREDENTIALS_V2: "credentials-v2.jsonld",
    CREDENTIALS_EXAMPLES_V2: "credentials-examples-v2.jsonld",
    DATA_INTEGRITY_V2: "data-integrity-v2.jsonld",
    MULTIKEY_V1: "multikey-v1.jsonld",
    DID_V1: "did-v1.jsonld",
    SECURITY_V1: "security-v1.jsonld",
    SECURITY_V2: "security-v2.jsonld",
    ED25519_2020_V1: "ed25519-signature-2020-v1.jsonld",
    DIDMESH_V1: "didmesh-v1.jsonld",
}

_ABSOLUTE_IRI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def is_bundled(url: str) -> bool:
    return url in BUNDLED_CONTEXTS


def unknown_context(url: object) -> UnknownContext:
    shown = url[:120] if isinstance(url, str) else type(url).__name__
    return UnknownContext(
        f"context {shown!r} is not bundled; didmesh never fetches contexts "
        f"(bundled: {', '.join(sorted(BUNDLED_CONTEXTS))})"
    )


@cache
def load_context(url: str) -> dict[str, Any]:
    """The parsed bundled context document for ``url`` (cached; do not mutate)."""
    try:
        name = BUNDLED_CONTEXTS[url]
    except KeyError:
        raise unknown_context(url) from None
    text = resources.files("didmesh.identity.contexts").joinpath(name).read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def document_loader(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """PyLD document loader serving only the bundled contexts."""
    return {
        "contextUrl": None,
        "documentUrl": url,
        # A copy: PyLD may rewrite context URLs in place. Only a cache miss gets here.
        "document": copy.deepcopy(load_context(url)),
        # "static" lets PyLD keep the processed context in its shared cache.
        "tag": "static",
    }


def _cause(exc: BaseException) -> DidmeshError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DidmeshError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _jsonld_code(exc: BaseException) -> str:
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "code", None)
        msg = getattr(seen, "message", None) or str(seen)
        parts.append(f"{msg} ({code})" if code else str(msg))
        seen = seen.__cause__
    return parts[-1] if parts else str(exc)


@cache
def _pyld() -> Any:
    """PyLD, imported on first use (commands which never canonicalize -- JCS, keystore,
    relay -- should not pay for it). At import PyLD builds a default document loader
    from ``requests`` (~0.2 s more); didmesh never uses it (every call passes
    :func:`document_loader`, which fetches nothing), so ``requests`` is kept out of that
    import unless something else loaded it already."""
    import sys

    blocked = [m for m in ("requests", "aiohttp") if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None  # type: ignore[assignment]  # PyLD then takes its dummy loader
    try:
        from pyld import jsonld
    finally:
        for m in blocked:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
    return jsonld


@cache
def _processor_class() -> Any:
    class _Processor(_pyld().JsonLdProcessor):  # type: ignore[misc]
        """A PyLD processor that records dropped terms and keeps the expanded form."""

        def __init__(self) -> None:
            self.dropped: list[str | None] = []
            super().__init__(on_property_dropped=self.dropped.append)
            self.expanded: list[Any] | None = None

        def expand(self, input_: Any, options: Any) -> Any:
            out = super().expand(input_, options)
            self.expanded = out
            return out

    return _Processor


def _relative_iris(node: Any, types: list[str], ids: list[str]) -> None:
    """Collect relative IRIs (undefined types, relative ids) of an expanded document."""
    if isinstance(node, list):
        for item in node:
            _relative_iris(item, types, ids)
        return
    if not isinstance(node, dict):
        return
    if "@value" in node:  # a literal: its datatype is checked, its value is data
        t = node.get("@type")
        if isinstance(t, str) and t != "@json" and not _ABSOLUTE_IRI.match(t):
            types.append(t)
        return
    node_types = node.get("@type", [])
    for t in node_types if isinstance(node_types, list) else [node_types]:
        if isinstance(t, str) and not _ABSOLUTE_IRI.match(t) and not t.startswith("_:"):
            types.append(t)
    ident = node.get("@id")
    if isinstance(ident, str) and not _ABSOLUTE_IRI.match(ident) and not ident.startswith("_:"):
        ids.append(ident)
    for key, value in node.items():
        if key not in ("@type", "@id"):
            _relative_iris(value, types, ids)


def canonize(document: Mapping[str, Any], *, what: str = "document") -> str:
    """Canonical N-Quads (RDFC-1.0) of ``document``.

    Raises :class:`UnknownContext` for a context that is not bundled,
    :class:`UndefinedTerm` for a term or type no context defines and
    :class:`MalformedCredential` when JSON-LD processing fails otherwise.
    ``what`` names the document in messages.
    """
    proc = _processor_class()()
    options = {
        "algorithm": "URDNA2015",
        "format": "application/n-quads",
        "documentLoader": document_loader,
        # No base IRI: PyLD would otherwise resolve an undefined term against
        # http://example.org/base/ and hide it; relative IRIs are caught below.
        "base": None,
    }
    try:
        nquads: str = proc.normalize(dict(document), options)
    except RecursionError:
        raise MalformedCredential(f"{what} is nested too deeply") from None
    except _pyld().JsonLdError as exc:
        inner = _cause(exc)
        if inner is not None:
            raise inner from None
        raise MalformedCredential(f"{what} is not valid JSON-LD: {_jsonld_code(exc)}") from None
    if proc.dropped:
        term = proc.dropped[0]
        raise UndefinedTerm(
            f"{what} uses the term {term!r}, which none of its contexts define; "
            "it would not be signed (add a context that defines it, or remove it)"
            if term is not None
            else f"{what} uses a term its contexts map to null; it would not be signed"
        )
    types: list[str] = []
    ids: list[str] = []
    _relative_iris(proc.expanded, types, ids)
    if types:
        raise UndefinedTerm(
            f"{what} uses the type {types[0]!r}, which none of its contexts define; "
            "it would not be signed"
        )
    if ids:
        raise MalformedCredential(
            f"{what} uses the relative IRI {ids[0]!r} as an id or link; only absolute "
            "IRIs (such as DIDs or URLs) are signed"
        )
    return nquads


def check_context_list(document: Mapping[str, Any], *, what: str = "document") -> list[str]:
    """The top-level ``@context`` as a list of bundled context URLs.

    didmesh accepts only URLs of bundled contexts there (no inline context objects).
    """
    ctx = document.get("@context")
    if ctx is None:
        raise MalformedCredential(f"{what} has no @context")
    items = ctx if isinstance(ctx, list) else [ctx]
    if not items:
        raise MalformedCredential(f"{what} has an empty @context")
    for item in items:
        if not isinstance(item, str):
            raise UnknownContext(
                f"{what} has an inline @context object; didmesh accepts only the URLs of "
                "bundled contexts"
            )
        if item not in BUNDLED_CONTEXTS:
            raise unknown_context(item)
    return list(items)
