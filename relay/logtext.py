"""Client text in the relay's logs, made inert (specs/relay.md, section 1).

The relay logs JSON lines, whose encoder escapes control characters and non-ASCII; but an
operator reading a field with ``jq -r`` gets them back raw, so a request path carrying a
newline or an ANSI escape could forge a line or drive the terminal. Every field the relay
logs that a client chose (the method and path of a request) goes through :func:`inert`
first; and the JSON formatter passes every string it writes through :func:`scrub`, for
text whose origin nobody checked (an exception's message may quote client input). No I/O
here.
"""

from __future__ import annotations

import re

#: what may stay as it is: printable ASCII without the space (a request target has none)
_UNSAFE = re.compile(r"[^\x21-\x7e]")


def _escape(found: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in found.group(0).encode("utf-8", "surrogatepass"))


def inert(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, with every character outside printable ASCII
    (controls, DEL, spaces, anything non-ASCII such as bidi overrides or C1 controls)
    percent-encoded as its UTF-8 bytes, as in a URL."""
    return _UNSAFE.sub(_escape, text[:limit])


#: what a terminal acts on: C0 controls, DEL, C1 controls, bidi overrides and isolates
_TERMINAL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_TERMINAL_KEEP_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group(0)):04x}"


def scrub(text: str, *, keep_lines: bool = False) -> str:
    """``text`` with every character a terminal acts on written out as ``\\uXXXX`` (visible
    text, not the character): the JSON log formatter's last line of defence for any string
    it logs, whatever its origin (an exception's message may quote client input). A
    traceback (``keep_lines``) keeps its newlines and tabs."""
    return (_TERMINAL_KEEP_LINES if keep_lines else _TERMINAL).sub(_visible, text)


def request_target_path(raw_target: str) -> str:
    """The path of a request target as the client sent it (still percent-encoded, so a
    ``%0A`` stays three characters), without its query string, made inert."""
    return inert(raw_target.split("?", 1)[0].split("#", 1)[0])
