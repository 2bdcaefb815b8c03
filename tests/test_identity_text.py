"""identity/text.py: a text cut at a word to a length limit, with a caller's mark (the
mesh's abort reasons use " …", the session's refusal reasons "…")."""

from __future__ import annotations

from typing import Any

import pytest
from didmesh.identity.text import ELLIPSIS, cut_at_word


def _spaced(n: int, at: int) -> str:
    """``n`` characters of "x" with one space at index ``at``."""
    return "x" * at + " " + "x" * (n - at - 1)


CASES = {
    # id: (text, limit, keyword arguments, expected)
    "short": ("a b c", 10, {}, "a b c"),
    "exactly the limit": ("x" * 10, 10, {}, "x" * 10),
    "one long word": ("x" * 11, 10, {}, "x" * 9 + ELLIPSIS),
    "at the last word": ("aaaa bbbb cccc", 10, {}, "aaaa bbbb" + ELLIPSIS),
    "spaces before the cut are dropped": ("aaaa   bbbbbbbbb", 10, {}, "aaaa" + ELLIPSIS),
    "the mark's room is kept": ("aaaaa bbbb cc", 10, {"mark": " …"}, "aaaaa …"),
    "a word ending before half: inside a word": (
        "aa bbbbbbbbbbbb", 10, {}, "aa bbbbbb" + ELLIPSIS),
    "space exactly at half: at the word": (_spaced(12, 5), 10, {}, "xxxxx" + ELLIPSIS),
    "space at half, shortest above it: inside a word": (
        _spaced(12, 5), 10, {"shortest": 6}, "xxxxx xxx" + ELLIPSIS),
    "inside a word the mark is always the ellipsis": (
        "x" * 20, 10, {"mark": " …"}, "x" * 9 + ELLIPSIS),
}  # fmt: skip


@pytest.mark.parametrize(("text", "limit", "kwargs", "expected"), CASES.values(), ids=CASES)
def test_cut_at_word(text: str, limit: int, kwargs: dict[str, Any], expected: str) -> None:
    got = cut_at_word(text, limit, **kwargs)
    assert got == expected
    assert len(got) <= limit
    assert cut_at_word(got, limit, **kwargs) == got  # a cut text is cut again unchanged


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 300, 600])
@pytest.mark.parametrize("mark", ["…", " …"])
def test_a_cut_text_never_exceeds_its_limit(limit: int, mark: str) -> None:
    if len(mark) >= limit:
        with pytest.raises(ValueError, match="mark"):
            cut_at_word("x " * limit, limit, mark=mark)
        return
    for n in range(2 * limit + 3):
        for text in ("x" * n, ("ab " * n)[:n], (" " * n)):
            got = cut_at_word(text, limit, mark=mark)
            assert len(got) <= limit
            assert got == text if n <= limit else got.endswith(ELLIPSIS)
