"""One strict parser for JSON that came from someone else.

Every layer receives JSON from peers, relays or files an attacker may have written.
:func:`loads_strict` is the single place where such bytes become Python values:

* the size is checked *before* parsing;
* the text must be UTF-8;
* a repeated key, ``NaN``/``Infinity`` (not JSON) and nesting deeper than
  :data:`MAX_DEPTH` are refused;
* every failure is raised as the caller's error class (a :class:`DidmeshError`), so a
  malformed message can never escape as ``ValueError``, ``RecursionError`` or
  ``TypeError`` and crash a loop that only expects the project's errors.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import DidmeshError

#: deeper than any document didmesh exchanges, far below the interpreter's recursion limit
MAX_DEPTH = 64


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

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise error(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
    if not _depth_ok(value, max_depth):
        raise error(f"{what} is nested deeper than {max_depth} levels")
    return value
