"""Hypothesis helpers shared by the fuzzers (tests/test_fuzz_*.py).

The property every parser of untrusted input holds: for any input it either returns or
raises an error from the :class:`~didmesh.identity.errors.DidmeshError` tree -- never
another exception type, and never takes long (:data:`MAX_SECONDS` per call).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from didmesh.identity.errors import DidmeshError
from hypothesis import settings
from hypothesis import strategies as st

T = TypeVar("T")

#: one call on one input may take at most this long ("never a hang")
MAX_SECONDS = 5.0
#: how many inputs each fuzz target was fed in this process (for the report)
CASES: Counter[str] = Counter()


def budget(n: int) -> int:
    """``n`` examples in the bounded "ci" profile; the profile's count when it asks for more
    (``DIDMESH_FUZZ=long`` or ``--hypothesis-profile=long``)."""
    return max(n, settings().max_examples) if settings().max_examples > 100 else n


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=budget(n))


#: known bugs in others' code, each pinned by a strict xfail test that names it:
#: ``(exception type, text in its message)``. A fuzzer that trips over one of these counts
#: it in KNOWN_HITS instead of failing, so that the fuzzers keep hunting for new ones.
#: Remove an entry when its xfail test starts passing (XPASS fails the run).
KNOWN_BUGS: list[tuple[type[BaseException], str]] = [
    # empty: the 16 bugs these fuzzers found are fixed (see specs/threat-model.md)
]
KNOWN_HITS: Counter[str] = Counter()


def only_tree_errors(target: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Call ``fn``; return its result, or None if it raised a DidmeshError. Any other
    exception (or a call slower than MAX_SECONDS) fails the test, naming ``target``."""
    return _call(target, False, fn, args, kwargs)


def tree_errors_or_known(
    target: str, fn: Callable[..., T], *args: Any, **kwargs: Any
) -> T | None:
    """:func:`only_tree_errors`, but a bug listed in :data:`KNOWN_BUGS` is counted, not
    raised (for fuzzers over code with a known, separately pinned bug)."""
    return _call(target, True, fn, args, kwargs)


def _call(
    target: str, tolerant: bool, fn: Callable[..., T], args: Any, kwargs: Any
) -> T | None:
    CASES[target] += 1
    start = time.monotonic()
    try:
        return fn(*args, **kwargs)
    except DidmeshError as exc:
        assert exc.code and isinstance(exc.message, str) and exc.message, (target, exc)
        return None
    except Exception as exc:  # the bug this property hunts
        for typ, text in KNOWN_BUGS if tolerant else []:
            if type(exc) is typ and text in str(exc):
                KNOWN_HITS[f"{target}: {typ.__name__}"] += 1
                return None
        raise AssertionError(
            f"{target} raised {type(exc).__name__} (not a DidmeshError): {exc!s:.200}"
        ) from exc
    finally:
        took = time.monotonic() - start
        assert took < MAX_SECONDS, f"{target} took {took:.1f} s on one input"


# --------------------------------------------------------------------------- JSON values

plain_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=24)
)

# Pathological values (issue 13; the same kinds as tests/data/pathological_json.json).
# Serialize documents holding them with :func:`dumps`, not json.dumps: it writes
# integers of any length, and inf as ``1e400``, as an attacker's bytes would.
huge_ints = st.one_of(
    st.integers(4290, 4400).map(lambda d: 10**d - 1),  # around Python's 4,300-digit guard
    st.integers(90, 20_000).map(lambda d: -(10**d) + 7),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**63, 2**64, -(2**63) - 1, 10**100]),
)
non_finite = st.sampled_from([math.inf, -math.inf, math.nan])
odd_floats = st.sampled_from([1.7976931348623157e308, 5e-324, -0.0, 1e-300, 2.0**-1074])
surrogate_text = st.one_of(
    st.sampled_from(["\ud800", "a\udfffb", "\udc00\ud800"]),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
)
nul_text = st.sampled_from(["\x00", "a\x00b", "\x00" * 40])
odd_text = st.one_of(
    surrogate_text,
    nul_text,
    st.sampled_from(["\ufeff", "\ufeffx", "\u202e\u200b", "\uffff", "\U0001f600"]),
    st.integers(1000, 60_000).map(lambda n: "x" * n),
)
deep_values = st.builds(
    lambda depth, inner, obj: _deep(depth, inner, obj),
    st.integers(60, 400), st.sampled_from([[], {}, 1, "x"]), st.booleans(),
)  # fmt: skip
big_arrays = st.builds(
    lambda n, item: [item] * n, st.integers(500, 20_000), st.sampled_from([0, [], {}, "a"])
)
pathological = st.one_of(
    huge_ints, non_finite, odd_floats, surrogate_text, nul_text, odd_text, deep_values, big_arrays
)
scalars = st.one_of(plain_scalars, pathological)
keys = st.one_of(st.text(max_size=12), odd_text.filter(lambda t: len(t) < 100))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def _deep(depth: int, inner: Any, obj: bool) -> Any:
    value: Any = copy.deepcopy(inner)
    for _ in range(depth):
        value = {"a": value} if obj else [value]
    return value


def dumps(value: Any) -> str:
    """JSON text of ``value`` as an attacker may write it: integers of any length, inf and
    nan as ``1e400``, ``-1e400`` and ``NaN``, lone surrogates as ``\\udxxx`` escapes.
    (json.dumps refuses the first and writes ``Infinity``.)"""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, _Text):
            out.append(node)
        elif node is None or isinstance(node, bool | str):
            out.append(json.dumps(node))
        elif isinstance(node, int):
            limit = sys.get_int_max_str_digits()
            sys.set_int_max_str_digits(0)
            try:
                out.append(str(node))
            finally:
                sys.set_int_max_str_digits(limit)
        elif isinstance(node, float):
            out.append("NaN" if node != node else "1e400" if node == math.inf
                       else "-1e400" if node == -math.inf else repr(node))  # fmt: skip
        elif isinstance(node, list):
            parts: list[Any] = [_Text("[")]
            for i, item in enumerate(node):
                parts += [_Text(",")] if i else []
                parts.append(item)
            stack.extend(reversed([*parts, _Text("]")]))
        elif isinstance(node, dict):
            parts = [_Text("{")]
            for i, (k, item) in enumerate(node.items()):
                parts += [_Text(("," if i else "") + json.dumps(str(k)) + ":"), item]
            stack.extend(reversed([*parts, _Text("}")]))
        else:
            raise TypeError(f"not a JSON value: {type(node).__name__}")
    return "".join(out)


class _Text(str):
    """Literal JSON text inside :func:`dumps`."""


def kinds_of(value: Any) -> set[str]:
    """Which pathological kinds ``value`` holds (for the test that the strategies make them)."""
    found: set[str] = set()
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > 64:
            found.add("deep")
        if isinstance(node, bool):
            continue
        if isinstance(node, int) and abs(node) >= 10**4300:
            found.add("int-over-4300-digits")
        elif isinstance(node, float) and (node != node or node in (math.inf, -math.inf)):
            found.add("inf-or-nan")
        elif isinstance(node, str) and any("\ud800" <= c <= "\udfff" for c in node):
            found.add("lone-surrogate")
        elif isinstance(node, str) and "\x00" in node:
            found.add("nul")
        elif isinstance(node, list):
            if len(node) >= 500:
                found.add("big-array")
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, dict):
            if any(any("\ud800" <= c <= "\udfff" for c in k) for k in node):
                found.add("lone-surrogate")
            stack.extend((v, depth + 1) for v in node.values())
    return found


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


def mutate(doc: Any, data: st.DataObject, rounds: int = 2) -> Any:
    """A copy of ``doc`` with 1..rounds structural mutations drawn from ``data``:
    replace a value, delete a member, add a member, change one character, swap a type,
    poison (replace a value by a :data:`pathological` one)."""
    out = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, rounds), label="rounds")):
        paths = _paths(out)
        path = data.draw(st.sampled_from(paths), label="path")
        op = data.draw(
            st.sampled_from(["replace", "delete", "add", "char", "wrap", "poison"]), label="op"
        )
        if not path:
            if op in ("replace", "poison"):
                out = data.draw(json_values if op == "replace" else pathological, label="root")
            continue
        parent, key = _get(out, path[:-1]), path[-1]
        if op == "poison":
            parent[key] = data.draw(pathological, label="poison")
        elif op == "replace":
            parent[key] = data.draw(json_values, label="value")
        elif op == "delete":
            del parent[key]
        elif op == "add":
            if isinstance(parent, dict):
                parent[data.draw(st.text(max_size=12), label="key")] = data.draw(json_values)
            else:
                parent.insert(key, data.draw(json_values, label="item"))
        elif op == "char":
            value = parent[key]
            if isinstance(value, str) and value:
                i = data.draw(st.integers(0, len(value) - 1), label="at")
                c = data.draw(st.characters(), label="char")
                parent[key] = value[:i] + c + value[i + 1 :]
            elif isinstance(value, int) and not isinstance(value, bool):
                parent[key] = value + data.draw(st.integers(-3, 3).filter(bool))
        else:  # wrap: the same value in another JSON type
            value = parent[key]
            parent[key] = data.draw(st.sampled_from([[value], {"id": value}, dumps(value)]))
    return out


def byte_mutations(raw: bytes, data: st.DataObject) -> bytes:
    """``raw`` with a truncation, an insertion or a few flipped bytes."""
    buf = bytearray(raw)
    op = data.draw(st.sampled_from(["flip", "truncate", "insert", "splice"]), label="bop")
    if op == "flip" and buf:
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    elif op == "insert":
        i = data.draw(st.integers(0, len(buf)))
        buf[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        i = data.draw(st.integers(0, len(buf)))
        j = data.draw(st.integers(i, len(buf)))
        buf[i:j] = buf[i:j][::-1]
    return bytes(buf)


def nested(depth: int, opener: str = "[") -> str:
    """A deeply nested JSON text (the classic parser-recursion attack)."""
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return '{"a":' * depth + "1" + closer * depth
    return opener * depth + closer * depth
