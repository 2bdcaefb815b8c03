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
import hashlib
import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from .errors import (
    DidmeshError,
    DocumentTooLarge,
    MalformedCredential,
    UndefinedTerm,
    UnknownContext,
)

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
CREDENTIALS_EXAMPLES_V1 = "https://www.w3.org/2018/credentials/examples/v1"
ODRL = "https://www.w3.org/ns/odrl.jsonld"
STATUS_LIST_2021_V1 = "https://w3id.org/vc/status-list/2021/v1"
BITSTRING_STATUS_LIST_V1 = "https://www.w3.org/ns/credentials/status/v1"

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
    CREDENTIALS_EXAMPLES_V1: "credentials-examples-v1.jsonld",
    ODRL: "odrl.jsonld",
    STATUS_LIST_2021_V1: "status-list-2021-v1.jsonld",
    BITSTRING_STATUS_LIST_V1: "bitstring-status-list-v1.jsonld",
}

#: JSON objects a document may hold before JSON-LD processing. RDFC-1.0 costs quadratic
#: time in the number of alike blank nodes (a "poison graph": 1,325 empty objects took
#: 2.5 s, a 256 KiB document of them would take hours); a credential holds a few dozen.
MAX_JSONLD_OBJECTS = 500
#: array items, likewise: a list is a chain of blank nodes (128,000 numbers took 6 s)
MAX_JSONLD_ITEMS = 2000

_SURROGATE = re.compile("[\ud800-\udfff]")
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
            blank = _count_blank_nodes(out, MAX_BLANK_NODES + 1)
            if blank > MAX_BLANK_NODES:
                raise MalformedCredential(
                    f"document has more than {MAX_BLANK_NODES} blank nodes (objects without "
                    "an id); canonicalizing it would take too long"
                )
            self.expanded = out
            return out

    return _Processor


#: RDFC-1.0 work grows faster than linearly with blank nodes (PyLD on the shared 2-core
#: machine: about 0.4 s for 260, 0.9 s for 500, 11 s for 2,600); RDFC-1.0 asks
#: implementations to bound it ("dataset poisoning").
MAX_BLANK_NODES = 256


def _count_blank_nodes(node: Any, limit: int, seen: int = 0) -> int:
    """Node objects without an IRI id in an expanded document (stops past ``limit``)."""
    if seen > limit:
        return seen
    if isinstance(node, list):
        for item in node:
            seen = _count_blank_nodes(item, limit, seen)
        return seen
    if not isinstance(node, dict) or "@value" in node:
        return seen
    ident = node.get("@id")
    if "@list" not in node and "@set" not in node and (
        not isinstance(ident, str) or ident.startswith("_:")
    ):
        seen += 1
    for key, value in node.items():
        if key != "@id":
            seen = _count_blank_nodes(value, limit, seen)
    return seen


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


def _count(value: Any) -> tuple[int, int]:
    """(JSON objects, array items) in ``value``."""
    objects, items, stack = 0, 0, [value]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            objects += 1
            stack.extend(node.values())
        elif isinstance(node, list):
            items += len(node)
            stack.extend(node)
    return objects, items


def canonize(document: Mapping[str, Any], *, what: str = "document") -> str:
    """Canonical N-Quads (RDFC-1.0) of ``document``.

    Raises :class:`UnknownContext` for a context that is not bundled,
    :class:`UndefinedTerm` for a term or type no context defines and
    :class:`MalformedCredential` when JSON-LD processing fails otherwise.
    ``what`` names the document in messages.
    """
    objects, items = _count(document)
    if objects > MAX_JSONLD_OBJECTS or items > MAX_JSONLD_ITEMS:
        raise DocumentTooLarge(
            f"{what} holds {objects} JSON objects and {items} array items; JSON-LD suites "
            f"accept at most {MAX_JSONLD_OBJECTS} and {MAX_JSONLD_ITEMS} (canonicalizing "
            "more can take minutes to hours)"
        )
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
    except UnicodeError:  # a dict given in Python, not parsed by strict_json
        raise MalformedCredential(f"{what} contains a lone surrogate, which is not JSON") from None
    except (ArithmeticError, ValueError) as exc:  # an integer beyond a double, likewise
        raise MalformedCredential(
            f"{what} holds a number JSON-LD cannot convert ({type(exc).__name__})"
        ) from None
    except _pyld().JsonLdError as exc:
        inner = _cause(exc)
        if inner is not None:
            raise inner from None
        if "protected term redefinition" in _jsonld_code(exc):
            raise MalformedCredential(
                f"{what} redefines a protected term (a context may not change the meaning "
                "of a term an earlier context protects; protected term redefinition)"
            ) from None
        raise MalformedCredential(f"{what} is not valid JSON-LD: {_jsonld_code(exc)}") from None
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        # PyLD fails this way on some contexts the JSON-LD algorithms define as errors or
        # no-ops (e.g. "@vocab": null with no vocabulary set): still the document's fault
        raise MalformedCredential(
            f"{what} is not valid JSON-LD: its contexts could not be processed "
            f"({type(exc).__name__} {exc!s:.80})"
        ) from None
    if proc.dropped:
        term = proc.dropped[0]
        raise UndefinedTerm(
            f"{what} uses the term {term!r}, which none of its contexts define; "
            "it would not be signed (add a context that defines it, or remove it)"
            if term is not None
            else f"{what} uses a term its contexts map to null; it would not be signed"
        )
    if _SURROGATE.search(nquads):  # a dict given in Python, not parsed by strict_json
        raise MalformedCredential(f"{what} contains a lone surrogate, which is not JSON")
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


#: caps on inline context objects (each one, and all of a document's together)
MAX_INLINE_CONTEXTS = 16
MAX_INLINE_CONTEXT_BYTES = 32 * 1024
MAX_INLINE_CONTEXT_DEPTH = 8


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping once past ``limit``."""
    if limit < 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


def check_inline_context(item: Mapping[str, Any], *, what: str = "document") -> None:
    """Caps on an inline context object: size and depth. Its meaning is checked by JSON-LD
    processing itself (protected terms, undefined terms), and any URL it names must be a
    bundled context like every other (the loader never fetches)."""
    try:
        size = len(json.dumps(item, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError, RecursionError):
        raise MalformedCredential(f"{what}: an inline @context is not plain JSON") from None
    if size > MAX_INLINE_CONTEXT_BYTES:
        raise MalformedCredential(
            f"{what}: an inline @context is {size} bytes; the limit is {MAX_INLINE_CONTEXT_BYTES}"
        )
    if _depth(item, MAX_INLINE_CONTEXT_DEPTH) > MAX_INLINE_CONTEXT_DEPTH:
        raise MalformedCredential(
            f"{what}: an inline @context is nested deeper than {MAX_INLINE_CONTEXT_DEPTH} levels"
        )


def check_context_list(
    document: Mapping[str, Any], *, what: str = "document", allow_inline: bool = True
) -> list[str | dict[str, Any]]:
    """The top-level ``@context`` as a list of bundled context URLs and inline objects.

    Inline context objects are processed like bundled contexts (never fetched; capped in
    size, depth and number). ``allow_inline=False`` is the strict profile of the session
    layer: bundled URLs only.
    """
    ctx = document.get("@context")
    if ctx is None:
        raise MalformedCredential(f"{what} has no @context")
    items = ctx if isinstance(ctx, list) else [ctx]
    if not items:
        raise MalformedCredential(f"{what} has an empty @context")
    inline = 0
    for item in items:
        if isinstance(item, dict):
            if not allow_inline:
                raise UnknownContext(
                    f"{what} has an inline @context object; this protocol accepts only the "
                    "URLs of bundled contexts"
                )
            inline += 1
            if inline > MAX_INLINE_CONTEXTS:
                raise MalformedCredential(
                    f"{what} has more than {MAX_INLINE_CONTEXTS} inline @context objects"
                )
            check_inline_context(item, what=what)
            continue
        if not isinstance(item, str):
            raise MalformedCredential(
                f"{what}: each @context item must be a URL or a context object, "
                f"not a JSON {type(item).__name__}"
            )
        if item not in BUNDLED_CONTEXTS:
            raise unknown_context(item)
    return list(items)


def bundled_bytes(url: str) -> bytes | None:
    """The exact bytes of a bundled context file, or None."""
    name = BUNDLED_CONTEXTS.get(url)
    if name is None:
        return None
    return resources.files("didmesh.identity.contexts").joinpath(name).read_bytes()


@cache
def _revisions() -> dict[str, Any]:
    text = resources.files("didmesh.identity.contexts").joinpath("revisions.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def known_digests(url: str, algorithm: str) -> list[bytes]:
    """Digests (``sha256``, ``sha384`` or ``sha512``) of the published revisions of a
    bundled resource that didmesh knows: the bundled file's own, and those recorded in
    ``identity/contexts/revisions.json``. Empty if ``url`` is not bundled."""
    content = bundled_bytes(url)
    if content is None:
        return []
    out = [hashlib.new(algorithm, content).digest()]
    for rev in _revisions().get(url, []):
        if algorithm in rev:
            out.append(bytes.fromhex(rev[algorithm]))
    return out
