"""The rules of W3C VC Data Model 2.0 (sections 4 and 5) that a document must follow
before didmesh signs it, and that a verifier reports (specs/credentials.md, section 1).

Each rule raises :class:`DataModelViolation` with a message that names the rule (and the
section of the data model it comes from). The checks are structural and offline: the
one rule that looks at another resource, ``relatedResource`` digests, is checked against
the resources didmesh bundles (its JSON-LD contexts, byte for byte as published, and the
digests of their other published revisions recorded in ``contexts/revisions.json``); a
digest of any other resource cannot be checked offline: its form is checked, its value
is accepted as written.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping
from typing import Any

from .errors import DataModelViolation, IdentityError
from .jsonld import known_digests
from .multiformats import b58decode

_ABSOLUTE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s]*$")
_SRI = re.compile(r"^(sha256|sha384|sha512)-([A-Za-z0-9+/]+={0,2})$")
# multihash codes of the digests accepted in digestMultibase
_MULTIHASH = {0x12: "sha256", 0x13: "sha512", 0x20: "sha384"}
_LANGUAGE_VALUE_KEYS = {"@value", "@language", "@direction"}


def _fail(rule: str, what: str, detail: str) -> DataModelViolation:
    return DataModelViolation(f"{what}: {detail} (VC Data Model 2.0, {rule})")


def is_url(value: object) -> bool:
    """An absolute URL/IRI: a scheme, then no whitespace."""
    return isinstance(value, str) and bool(_ABSOLUTE_URL.match(value))


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_id(value: object, field: str, rule: str, what: str) -> None:
    if not is_url(value):
        raise _fail(rule, what, f"{field} must be a single URL, not {str(value)[:60]!r}")


def _check_typed(doc: Mapping[str, Any], field: str, rule: str, what: str) -> None:
    """``field``, if present: one or more objects, each with a ``type`` (and ``id`` a URL)."""
    if field not in doc:
        return
    values = _items(doc[field])
    if not values:
        raise _fail(rule, what, f"{field} must not be empty")
    for value in values:
        if not isinstance(value, dict):
            raise _fail(rule, what, f"each {field} must be an object with a type")
        if "type" not in value:
            raise _fail(rule, what, f"each {field} must have a type")
        _check_type_value(value["type"], f"{field}.type", rule, what)
        if "id" in value:
            _check_id(value["id"], f"{field}.id", rule, what)


def _check_type_value(value: object, field: str, rule: str, what: str) -> None:
    types = _items(value)
    if not types or not all(isinstance(t, str) and t for t in types):
        raise _fail(rule, what, f"{field} must be one or more strings")


def _check_language_value(value: object, field: str, what: str) -> None:
    """``name``/``description``: a string, a language value object, or a list of them."""
    rule = "4.6 Names and Descriptions"
    for item in _items(value):
        if isinstance(item, str):
            continue
        if not isinstance(item, dict) or not isinstance(item.get("@value"), str):
            raise _fail(rule, what, f"{field} must be a string or language value objects")
        extra = sorted(set(item) - _LANGUAGE_VALUE_KEYS)
        if extra:
            raise _fail(
                rule,
                what,
                f"{field} has {extra[0]!r}; a language value has only "
                "@value, @language and @direction",
            )
        for key in ("@language", "@direction"):
            if key in item and not isinstance(item[key], str):
                raise _fail(rule, what, f"{field}.{key} must be a string")


def _check_names(node: Mapping[str, Any], where: str, what: str) -> None:
    for field in ("name", "description"):
        if field in node:
            _check_language_value(node[field], f"{where}{field}", what)


# --------------------------------------------------------------------------- digests


def _b64decode(text: str, urlsafe: bool) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    if urlsafe:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded, validate=True)


def _check_sri(sri: object, url: str, what: str) -> None:
    rule = "5.3 Integrity of Related Resources"
    values = sri.split() if isinstance(sri, str) else None
    if not values:
        raise _fail(rule, what, "digestSRI must be an SRI hash expression like sha384-…")
    for value in values:
        m = _SRI.match(value)
        if not m:
            raise _fail(rule, what, f"digestSRI {value[:60]!r} is not an SRI hash expression")
        known = known_digests(url, m.group(1))
        if known:
            try:
                given = _b64decode(m.group(2), urlsafe=False)
            except (binascii.Error, ValueError):
                raise _fail(rule, what, "digestSRI is not base64") from None
            if not any(hmac.compare_digest(k, given) for k in known):
                raise _fail(rule, what, f"digestSRI does not match the resource {url[:80]}")


def _multibase_bytes(value: str) -> bytes:
    if value.startswith("u"):
        return _b64decode(value[1:], urlsafe=True)
    if value.startswith("z"):
        return b58decode(value[1:])
    raise ValueError("unsupported multibase prefix")


def _check_multibase(value: object, url: str, what: str) -> None:
    """A multibase (``u`` base64url or ``z`` base58btc) digest: a multihash, or (as the
    W3C test suite writes it) a bare SHA-256 digest."""
    rule = "5.3 Integrity of Related Resources"
    if not isinstance(value, str) or len(value) > 200:
        raise _fail(rule, what, "digestMultibase must be a multibase string")
    try:
        raw = _multibase_bytes(value)
    except (ValueError, binascii.Error, IdentityError):
        raise _fail(rule, what, "digestMultibase is not multibase (u… or z…)") from None
    algorithm = "sha256"
    if len(raw) >= 2 and raw[0] in _MULTIHASH and raw[1] == len(raw) - 2:
        algorithm, raw = _MULTIHASH[raw[0]], raw[2:]
    known = known_digests(url, algorithm)
    if known and not any(hmac.compare_digest(k, raw) for k in known):
        raise _fail(rule, what, f"digestMultibase does not match the resource {url[:80]}")


def _check_related(doc: Mapping[str, Any], what: str) -> None:
    rule = "5.3 Integrity of Related Resources"
    if "relatedResource" not in doc:
        return
    values = _items(doc["relatedResource"])
    if not values:
        raise _fail(rule, what, "relatedResource must not be empty")
    seen: set[str] = set()
    for value in values:
        if not isinstance(value, dict):
            raise _fail(
                rule, what, "each relatedResource must be an object with an id and a digest"
            )
        ident = value.get("id")
        if not is_url(ident):
            raise _fail(rule, what, "each relatedResource must have an id (a URL)")
        assert isinstance(ident, str)
        if ident in seen:
            raise _fail(rule, what, f"relatedResource lists {ident[:80]} twice")
        seen.add(ident)
        if "digestSRI" not in value and "digestMultibase" not in value:
            raise _fail(
                rule, what, f"relatedResource {ident[:80]} has no digestSRI or digestMultibase"
            )
        if "digestSRI" in value:
            _check_sri(value["digestSRI"], ident, what)
        if "digestMultibase" in value:
            _check_multibase(value["digestMultibase"], ident, what)


# --------------------------------------------------------------------------- documents


def check_credential(doc: Mapping[str, Any], what: str = "credential") -> None:
    """Sections 4.4-4.11 and 5 of VC Data Model 2.0 (apply also to VC 1.1 documents)."""
    if "id" in doc:
        _check_id(doc["id"], "id", "4.4 Identifiers", what)
    _check_names(doc, "", what)
    issuer = doc.get("issuer")
    if isinstance(issuer, dict):
        _check_id(issuer.get("id"), "issuer.id", "4.7 Issuer", what)
        _check_names(issuer, "issuer.", what)
    elif issuer is not None:
        _check_id(issuer, "issuer", "4.7 Issuer", what)
    subjects = _items(doc.get("credentialSubject"))
    for subject in subjects:
        if not isinstance(subject, dict) or not subject:
            raise _fail(
                "4.8 Credential Subject",
                what,
                "credentialSubject must be one or more objects, each with at least one claim",
            )
        if "id" in subject:
            _check_id(subject["id"], "credentialSubject.id", "4.4 Identifiers", what)
    _check_typed(doc, "credentialStatus", "4.10 Status", what)
    _check_typed(doc, "credentialSchema", "4.11 Data Schemas", what)
    for schema in _items(doc.get("credentialSchema", [])):
        if "id" not in schema:
            raise _fail("4.11 Data Schemas", what, "each credentialSchema must have an id (a URL)")
    _check_typed(doc, "refreshService", "5.4 Refreshing", what)
    _check_typed(doc, "termsOfUse", "5.5 Terms of Use", what)
    _check_typed(doc, "evidence", "5.6 Evidence", what)
    _check_related(doc, what)


def check_presentation(doc: Mapping[str, Any], what: str = "presentation") -> None:
    """Section 4.13: an optional ``id`` URL and ``holder`` (URL or object with an id URL)."""
    if "id" in doc:
        _check_id(doc["id"], "id", "4.4 Identifiers", what)
    holder = doc.get("holder")
    if isinstance(holder, dict):
        _check_id(holder.get("id"), "holder.id", "4.13 Verifiable Presentations", what)
    elif holder is not None:
        _check_id(holder, "holder", "4.13 Verifiable Presentations", what)
