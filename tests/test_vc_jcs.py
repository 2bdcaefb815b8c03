"""JCS (RFC 8785): the fast path agrees with the reference implementation."""

from __future__ import annotations

from typing import Any

import pytest
from didmesh.identity import jcs
from didmesh.identity.errors import MalformedCredential
from hypothesis import given, settings
from hypothesis import strategies as st

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def _reference_or_none(value: Any) -> bytes | None:
    try:
        return jcs.canonicalize_reference(value)
    except (ValueError, UnicodeEncodeError):
        return None


@settings(max_examples=400, deadline=None)
@given(_json)
def test_fast_path_equals_rfc8785(value: Any) -> None:
    expected = _reference_or_none(value)
    if expected is None:
        with pytest.raises(MalformedCredential):
            jcs.canonicalize(value)
    else:
        assert jcs.canonicalize(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": [True, None]}, b'{"a":[true,null],"b":1}'),
        ({"\u20ac": 1, "\r": 2, "1": 3}, '{"\\r":2,"1":3,"\u20ac":1}'.encode()),
        ({"\U0001f600": 1, "\ufb33": 2}, '{"\U0001f600":1,"\ufb33":2}'.encode()),  # UTF-16 order
        ({"x": "\x00\x1f\u2028/"}, b'{"x":"\\u0000\\u001f\xe2\x80\xa8/"}'),
        ([1.0, 1e21, 5e-7, -0.0], b"[1,1e+21,5e-7,0]"),
    ],
    ids=["order", "rfc8785-keys", "utf16-order", "escapes", "numbers"],
)
def test_known_answers(value: Any, expected: bytes) -> None:
    assert jcs.canonicalize(value) == expected


@pytest.mark.parametrize(
    "value",
    [2**53, -(2**53), float("nan"), float("inf"), {1: "x"}, {"a": "\ud800"}, {"a": {1, 2}}],
    ids=["int-too-big", "int-too-small", "nan", "inf", "int-key", "lone-surrogate", "set"],
)
def test_values_outside_json_are_refused(value: Any) -> None:
    with pytest.raises(MalformedCredential):
        jcs.canonicalize(value)
