"""The catalogue of pathological JSON (tests/data/pathological_json.json) against the one
strict parser and against the in-process parsers of untrusted input (issue 13, item 1).

Each case has a decided outcome at the parser (``accept`` or ``refuse`` with a specific
message); every other entry point either accepts what the parser accepted and then
checks it as it checks any value, or refuses it with an error of the DidmeshError tree.
The relay's HTTP endpoints get the same catalogue in tests/test_relay_pathological.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from adversary.pathological import CASES, PLACEHOLDER, VALUES, Case, params
from didmesh.identity.errors import DidmeshError, MalformedCredential
from didmesh.identity.strict_json import MAX_NUMBER_CHARS, loads_strict

CAP = 64 * 1024


def _parse(raw: bytes) -> Any:
    return loads_strict(raw, max_bytes=CAP, error=MalformedCredential, what="test doc")


def test_catalogue_covers_the_pathologies_of_issue_13() -> None:
    ids = {c.id for c in CASES}
    for needed in ("int-4301-digits", "float-1e400", "lone-high-surrogate", "utf8-bom",
                   "escaped-nul", "raw-nul-in-string", "max-array-of-ints",
                   "arrays-30000-deep", "objects-65-deep", "mixed-65-deep"):
        assert needed in ids


@pytest.mark.parametrize("case", params())
def test_parser_decision(case: Case) -> None:
    raw = case.splice({"a": [1, PLACEHOLDER]}, room=CAP)
    assert len(raw) <= CAP or not case.fills
    start = time.monotonic()
    if case.parser == "accept":
        value = _parse(raw)
        assert value["a"][0] == 1
    else:
        with pytest.raises(MalformedCredential) as info:
            _parse(raw)
        assert case.fragment in info.value.message, info.value.message
        assert info.value.message.startswith("test doc")
    assert time.monotonic() - start < 2.0


def test_fill_values_use_the_room() -> None:
    for case in (c for c in VALUES if c.fills):
        raw = case.splice({"a": PLACEHOLDER}, room=CAP)
        assert CAP * 0.97 < len(raw) <= CAP, (case.id, len(raw))


def test_number_length_boundary() -> None:
    assert _parse(b"1" * MAX_NUMBER_CHARS) == int("1" * MAX_NUMBER_CHARS)
    assert _parse(b"-" + b"1" * (MAX_NUMBER_CHARS - 1)) < 0
    with pytest.raises(MalformedCredential, match="number of 101 characters"):
        _parse(b"-" + b"1" * MAX_NUMBER_CHARS)


def test_str_input_gets_the_same_decisions() -> None:
    with pytest.raises(MalformedCredential, match="byte-order mark"):
        loads_strict("\ufeff{}", max_bytes=CAP, error=MalformedCredential)
    with pytest.raises(MalformedCredential, match="number of 4301"):
        loads_strict("9" * 4301, max_bytes=CAP, error=MalformedCredential)
    with pytest.raises(MalformedCredential, match="not UTF-8"):
        loads_strict('"\ud800"', max_bytes=CAP, error=MalformedCredential)


def only_tree(fn: Any, *args: Any, **kw: Any) -> Any:
    """Call an entry point: a result or a DidmeshError, never another exception, quickly."""
    start = time.monotonic()
    try:
        return fn(*args, **kw)
    except DidmeshError as exc:
        assert exc.code and exc.message
        return exc
    finally:
        assert time.monotonic() - start < 5.0, f"{fn.__name__} took too long"
