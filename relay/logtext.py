"""Client text in the relay's logs, made inert (specs/relay.md, "Observability").

The relay logs JSON lines, whose encoder escapes control characters and non-ASCII; but an
operator reading a field with ``jq -r`` or ``grep`` gets them back raw, so a request path
carrying a newline or an ANSI escape could forge a log line or drive the terminal. Every
field the relay logs that a client chose (the method and path of a request) goes through
:func:`inert` first. No I/O here.
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


def request_target_path(raw_target: str) -> str:
    """The path of a request target as the client sent it (still percent-encoded, so a
    ``%0A`` stays three characters), without its query string, made inert."""
    return inert(raw_target.split("?", 1)[0].split("#", 1)[0])
