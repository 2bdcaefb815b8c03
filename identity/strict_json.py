"""One strict parser for JSON that came from someone else.

Every layer receives JSON from peers, relays or files an attacker may have written.
:func:`loads_strict` is the single place where such bytes become Python values:

* the size is checked *before* parsing;
* the text must be UTF-8;
* a repeated key, ``NaN``/``Infinity`` (not JSON) and nesting deeper than
  :data:`MAX_DEPTH` are refused;
* pathological values get a decision each (specs/threat-model.md, "Pathological JSON";
  the catalogue tests/data/pathological_json.json runs them against every entry point):

  - a number written with more than :data:`MAX_NUMBER_CHARS` characters is refused
    before it is converted (no document didmesh exchanges needs one; Python's own
    4,300-digit guard would otherwise raise a plain ``ValueError``, and a longer one
    costs quadratic time);
  - a number outside the range of an IEEE 754 double (``1e400``) is refused instead of
    becoming ``inf``; one that underflows (``1e-400``) is the nearest double, 0.0, as in
    every JSON parser that uses doubles;
  - a string or key holding a lone surrogate (``"\\ud800"``, legal JSON text but not
    Unicode) is refused: it could not be encoded, hashed or printed later;
  - a leading byte-order mark is refused (RFC 8259 forbids sending one);
  - a raw NUL or other control character is refused by the JSON grammar; an escaped
    one (``"\\u0000"``) is an ordinary character of a string and accepted;
  - large arrays and objects are accepted up to the caller's byte cap;
* every failure is raised as the caller's error class (a :class:`DidmeshError`), so a
  malformed message can never escape as ``ValueError``, ``RecursionError`` or
  ``TypeError`` and crash a loop that only expects the project's errors.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import DidmeshError

#: deeper than any document didmesh exchanges, far below the interpreter's recursion limit
MAX_DEPTH = 64
#: the longest number literal accepted (characters, sign and exponent included): far more
#: than a 64-bit integer (20) or the longest shortest-round-trip double (24) needs
MAX_NUMBER_CHARS = 100
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in a string or key of ``value``, if any."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            found = _SURROGATE.search(node)
            if found:
                return found.group()
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def loads_strict(
    data: bytes | bytearray | memoryview | str,
    *,
    max_bytes: int,
    error: type[DidmeshError],
    what: str = "message",
    max_depth: int = MAX_DEPTH,
    too_large: type[DidmeshError] | None = None,
) -> Any:
    """Parse untrusted JSON or raise ``error`` with a message naming ``what``
    (``too_large``, if given, for input over ``max_bytes``)."""
    big = too_large or error
    if isinstance(data, str):
        if len(data) > max_bytes:
            raise big(f"{what} is over {max_bytes} bytes (the limit); not parsed")
        raw = data.encode("utf-8", "surrogatepass")
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    else:
        raise error(f"{what}: expected JSON bytes or text, got {type(data).__name__}")
    if len(raw) > max_bytes:
        raise big(f"{what} is {len(raw)} bytes; the limit is {max_bytes} bytes; not parsed")
    if raw.startswith(b"\xef\xbb\xbf"):
        raise error(f"{what} starts with a byte-order mark (U+FEFF); JSON is sent without one")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 (byte {exc.start})") from None

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise error(f"{what} repeats the key {key[:60]!r}")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise error(f"{what} contains {name}, which is not JSON")

    def too_long(literal: str) -> None:
        if len(literal) > MAX_NUMBER_CHARS:
            raise error(
                f"{what} contains a number of {len(literal)} characters; "
                f"the limit is {MAX_NUMBER_CHARS}"
            )

    def integer(literal: str) -> int:
        too_long(literal)
        return int(literal)

    def real(literal: str) -> float:
        too_long(literal)
        value = float(literal)
        if not math.isfinite(value):
            raise error(f"{what} contains the number {literal}, beyond the range of a double")
        return value

    try:
        value = json.loads(
            text,
            object_pairs_hook=pairs,
            parse_constant=constant,
            parse_int=integer,
            parse_float=real,
        )
    except json.JSONDecodeError as exc:
        # Python's own message for a raw control character ends in "at" already
        msg = exc.msg.removesuffix(" at")
        raise error(
            f"{what} is not valid JSON: {msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
    except (ValueError, TypeError, ArithmeticError) as exc:  # none known; never escape
        raise error(f"{what} is not acceptable JSON ({type(exc).__name__}: {exc!s:.80})") from None
    if not _depth_ok(value, max_depth):
        raise error(f"{what} is nested deeper than {max_depth} levels")
    if _ESCAPED_SURROGATE.search(text):
        lone = _lone_surrogate(value)
        if lone is not None:
            raise error(
                f"{what} contains a lone surrogate (U+{ord(lone):04X}) in a string or key; "
                "that is not Unicode text"
            )
    return value
