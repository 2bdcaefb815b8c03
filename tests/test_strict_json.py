"""identity.strict_json: the one parser for untrusted JSON."""

from __future__ import annotations

import pytest
from didmesh.identity.errors import MalformedCredential
from didmesh.identity.strict_json import MAX_DEPTH, loads_strict
from hypothesis import given
from hypothesis import strategies as st


def _load(data: bytes | str, **kw: int) -> object:
    return loads_strict(data, max_bytes=kw.get("max_bytes", 1 << 16),
                        error=MalformedCredential, what="test doc")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"x" * 70_000, "limit is 65536"),
        (b"\xff{}", "not UTF-8"),
        (b'{"a": 1, "a": 2}', "repeats the key 'a'"),
        (b'{"a": NaN}', "NaN"),
        (b"[Infinity]", "Infinity"),
        (b"{", "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}"),
    ],
    ids=["oversize", "not-utf8", "dup-key", "nan", "infinity", "truncated", "deep", "depth"],
)
def test_refused_with_the_callers_error(data: bytes, fragment: str) -> None:
    with pytest.raises(MalformedCredential, match=fragment) as info:
        _load(data)
    assert "test doc" in info.value.message


def test_accepts_plain_json() -> None:
    assert _load('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert _load(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None


@given(st.binary(max_size=300))
def test_any_bytes_give_a_value_or_the_callers_error(data: bytes) -> None:
    try:
        _load(data)
    except MalformedCredential:
        pass


def test_oversize_can_have_its_own_error() -> None:
    from didmesh.identity.errors import DocumentTooLarge

    with pytest.raises(DocumentTooLarge, match="limit is 10"):
        loads_strict(b"[" + b"1," * 20 + b"1]", max_bytes=10, error=MalformedCredential,
                     too_large=DocumentTooLarge)


def test_a_raw_control_character_is_named_once_with_its_place() -> None:
    """A raw NUL byte in a string (seen at a real relay's /v1/auth/challenge): Python's
    message ends in "at" already, which read "Invalid control character at at line 1"."""
    with pytest.raises(MalformedCredential) as got:
        loads_strict(
            b'{"did": "did:key:\x00"}', max_bytes=1000, error=MalformedCredential,
            what="request body",
        )
    assert str(got.value) == (
        "request body is not valid JSON: Invalid control character at line 1 column 18"
    )
