"""Text shown to a user but bounded in length (pure functions; no session knowledge).

A helper of every layer above: a session's refusal reason and a mesh's abort reason are
both cut here, each with its own mark and limit.
"""

from __future__ import annotations

#: the mark of a text cut inside a word
ELLIPSIS = "…"


def cut_at_word(text: str, limit: int, *, mark: str = ELLIPSIS, shortest: int | None = None
                ) -> str:
    """``text`` if it has at most ``limit`` characters; otherwise cut to at most ``limit``.

    The cut is at the last space that leaves room for ``mark`` (which is then appended,
    after trailing spaces are dropped) if at least ``shortest`` characters (default
    ``limit // 2``) come before that space; else the text is cut inside a word, at
    ``limit - 1`` characters, and marked with :data:`ELLIPSIS` whatever ``mark`` is (a
    mark such as ``" …"`` says a word ended)."""
    if len(text) <= limit:
        return text
    if not 0 < len(mark) < limit:
        raise ValueError("the mark must be shorter than the limit")
    shortest = limit // 2 if shortest is None else shortest
    space = text[: limit - len(mark)].rfind(" ")
    if space >= shortest:
        return text[:space].rstrip() + mark
    return text[: limit - 1] + ELLIPSIS


__all__ = ["ELLIPSIS", "cut_at_word"]
