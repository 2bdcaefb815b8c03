"""Noise handshake patterns as data (Noise spec rev. 34, sections 7 and 9).

A pattern is a table: pre-message tokens for each side, then the message patterns in
order (the initiator writes messages 0, 2, 4, ... and the responder 1, 3, 5, ...).
``psk`` modifiers (section 9) are applied to the table by :func:`parse_pattern`:
``psk0`` puts a ``psk`` token at the start of the first message, ``pskN`` at the end
of message N.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import UnsupportedProtocol

Tokens = tuple[str, ...]

TOKENS: Final = frozenset({"e", "s", "ee", "es", "se", "ss", "psk"})


@dataclass(frozen=True)
class HandshakePattern:
    """One handshake pattern, with its modifiers already applied."""

    name: str
    initiator_pre: Tokens
    responder_pre: Tokens
    messages: tuple[Tokens, ...]

    @property
    def one_way(self) -> bool:
        """True for N, K, X: only the initiator sends, also after the handshake."""
        return len(self.messages) == 1

    @property
    def has_psk(self) -> bool:
        return any("psk" in m for m in self.messages)

    @property
    def psk_count(self) -> int:
        return sum(m.count("psk") for m in self.messages)


def _p(text: str) -> tuple[Tokens, Tokens, tuple[Tokens, ...]]:
    """Parse the spec's notation: ``"-> s | <- s | -> e, es, ss | <- e, ee, se"``.

    Pre-messages come before the ``...`` marker, written ``-> s ...`` here as a
    leading ``pre->``/``pre<-`` line.
    """
    ipre: Tokens = ()
    rpre: Tokens = ()
    msgs: list[Tokens] = []
    for line in text.split("|"):
        line = line.strip()
        arrow, _, rest = line.partition(" ")
        toks = tuple(t.strip() for t in rest.split(",") if t.strip())
        if arrow == "pre->":
            ipre = toks
        elif arrow == "pre<-":
            rpre = toks
        else:
            expected = "->" if len(msgs) % 2 == 0 else "<-"
            assert arrow == expected, (text, line)
            msgs.append(toks)
    return ipre, rpre, tuple(msgs)


# Section 7.4 (one-way), 7.5 (interactive fundamental), 18 / 7.6 (deferred).
_TABLE: Final[dict[str, str]] = {
    # one-way
    "N": "pre<- s | -> e, es",
    "K": "pre-> s | pre<- s | -> e, es, ss",
    "X": "pre<- s | -> e, es, s, ss",
    # interactive, fundamental
    "NN": "-> e | <- e, ee",
    "NK": "pre<- s | -> e, es | <- e, ee",
    "NX": "-> e | <- e, ee, s, es",
    "XN": "-> e | <- e, ee | -> s, se",
    "XK": "pre<- s | -> e, es | <- e, ee | -> s, se",
    "XX": "-> e | <- e, ee, s, es | -> s, se",
    "KN": "pre-> s | -> e | <- e, ee, se",
    "KK": "pre-> s | pre<- s | -> e, es, ss | <- e, ee, se",
    "KX": "pre-> s | -> e | <- e, ee, se, s, es",
    "IN": "-> e, s | <- e, ee, se",
    "IK": "pre<- s | -> e, es, s, ss | <- e, ee, se",
    "IX": "-> e, s | <- e, ee, se, s, es",
    # interactive, deferred
    "NK1": "pre<- s | -> e | <- e, ee, es",
    "NX1": "-> e | <- e, ee, s | -> es",
    "X1N": "-> e | <- e, ee | -> s | <- se",
    "X1K": "pre<- s | -> e, es | <- e, ee | -> s | <- se",
    "XK1": "pre<- s | -> e | <- e, ee, es | -> s, se",
    "X1K1": "pre<- s | -> e | <- e, ee, es | -> s | <- se",
    "X1X": "-> e | <- e, ee, s, es | -> s | <- se",
    "XX1": "-> e | <- e, ee, s | -> es, s, se",
    "X1X1": "-> e | <- e, ee, s | -> es, s | <- se",
    "K1N": "pre-> s | -> e | <- e, ee | -> se",
    "K1K": "pre-> s | pre<- s | -> e, es | <- e, ee | -> se",
    "KK1": "pre-> s | pre<- s | -> e | <- e, ee, se, es",
    "K1K1": "pre-> s | pre<- s | -> e | <- e, ee, es | -> se",
    "K1X": "pre-> s | -> e | <- e, ee, s, es | -> se",
    "KX1": "pre-> s | -> e | <- e, ee, se, s | -> es",
    "K1X1": "pre-> s | -> e | <- e, ee, s | -> se, es",
    "I1N": "-> e, s | <- e, ee | -> se",
    "I1K": "pre<- s | -> e, es, s | <- e, ee | -> se",
    "IK1": "pre<- s | -> e, s | <- e, ee, se, es",
    "I1K1": "pre<- s | -> e, s | <- e, ee, es | -> se",
    "I1X": "-> e, s | <- e, ee, s, es | -> se",
    "IX1": "-> e, s | <- e, ee, se, s | -> es",
    "I1X1": "-> e, s | <- e, ee, s | -> se, es",
}

BASE_PATTERNS: Final[dict[str, HandshakePattern]] = {
    name: HandshakePattern(name, *_p(text)) for name, text in _TABLE.items()
}

_NAME = re.compile(r"^(?P<base>[NKXI]1?[NKX]?1?)(?P<mods>(?:psk\d+)(?:\+psk\d+)*)?$")


def parse_pattern(name: str) -> HandshakePattern:
    """The pattern named ``name`` (e.g. ``"KK"``, ``"IKpsk2"``, ``"NNpsk0+psk2"``)."""
    m = _NAME.match(name)
    base = BASE_PATTERNS.get(m.group("base")) if m else None
    if m is None or base is None:
        raise UnsupportedProtocol(
            f"unsupported Noise handshake pattern {name!r} (supported: the one-way, "
            "fundamental and deferred patterns of Noise rev. 34, with pskN modifiers)"
        )
    msgs = [list(t) for t in base.messages]
    for mod in (m.group("mods") or "").split("+"):
        if not mod:
            continue
        n = int(mod[3:])
        if n == 0:
            msgs[0].insert(0, "psk")
        elif n <= len(msgs):
            msgs[n - 1].append("psk")
        else:
            raise UnsupportedProtocol(
                f"Noise pattern {name!r}: modifier {mod} names message {n}, "
                f"but {base.name} has only {len(msgs)}"
            )
    return HandshakePattern(
        name, base.initiator_pre, base.responder_pre, tuple(tuple(t) for t in msgs)
    )
