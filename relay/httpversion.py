"""Which HTTP versions the relay speaks, and how it tells the others (specs/relay.md,
"Errors"). No I/O here: :mod:`.httperrors` wires it into aiohttp.

The relay speaks HTTP/1.1, and answers HTTP/1.0 with an ``HTTP/1.1`` status line in HTTP/1.0's
own framing (:class:`.httperrors.Http11StatusLine`).
Anything else is answered ``505 unsupported_http_version`` in an HTTP/1.1 response, then
the connection is closed:

* ``GET / HTTP/2.0`` and ``GET / HTTP/0.9``, which llhttp parses: aiohttp used to run the
  request and echo the version in its status line (``HTTP/2.0 404 Not Found``);
* ``HTTP/1.2``, ``HTTP/9.9``..., which llhttp refuses ("Invalid HTTP version"; it was a
  ``400 malformed``). RFC 9112 says a server *should* process a higher 1.x minor version as
  1.1; llhttp cannot, so the relay says which versions it speaks instead;
* the HTTP/2 connection preface ``PRI * HTTP/2.0`` (llhttp: "Pause on PRI/Upgrade");
* HTTP/0.9's ``GET /path`` line with no version at all: llhttp reads it as the start of a
  request and waits for headers a 0.9 client never sends (the connection hung until the
  header timeout). :class:`FirstLine` ends such a request at its line at the start of a
  connection; :class:`BareLine` spots one sent later on a keep-alive connection, right after
  a complete request, so the adapter can end it too. Either way it is answered at once.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import http_exceptions
from aiohttp.http import HttpVersion10, HttpVersion11

HTTP_VERSION_NOT_SUPPORTED = 505
SPOKEN = (HttpVersion10, HttpVersion11)
#: the fixed answer (it repeats nothing of the request)
UNSUPPORTED_MESSAGE = (
    "this relay speaks HTTP/1.1 (HTTP/1.0 is answered too), not the HTTP version of this "
    "request (HTTP/2 and HTTP/0.9 are not spoken): send HTTP/1.1"
)
#: llhttp's fixed reasons for a version it refuses
_VERSION_REASONS = frozenset({"Invalid HTTP version", "Pause on PRI/Upgrade"})
#: a request line without a version ("GET /path"): two tokens, no third
_HTTP09_LINE = re.compile(rb"[!-~]+ [!-~]+\r?")


class VersionNotSpoken(http_exceptions.BadStatusLine):
    """A request llhttp parsed whose version is not one in :data:`SPOKEN`."""

    def __init__(self) -> None:
        super().__init__(error="unsupported HTTP version")


def spoken(version: Any) -> bool:
    return version in SPOKEN


def version_refused(exc: BaseException | None) -> bool:
    """Whether aiohttp's parse failure ``exc`` is about the HTTP version.

    aiohttp's message is llhttp's fixed reason, sometimes behind "Bad status line:", then
    the client's bytes in ``repr`` form on later lines: only the first two lines are read,
    so the bytes cannot make the answer a 505."""
    if isinstance(exc, VersionNotSpoken):
        return True
    if not isinstance(exc, http_exceptions.HttpProcessingError):
        return False
    lines = str(exc.message).split("\n", 2)[:2]
    return any(line.strip().rstrip(":") in _VERSION_REASONS for line in lines)


class FirstLine:
    """Watches a connection's bytes up to the end of its first line and, if that line is an
    HTTP/0.9 request (``METHOD target`` with no version), adds the empty line that ends its
    (absent) headers, so the parser has a complete request to refuse with 505.

    Only the first request of a connection is watched: HTTP/0.9 has no keep-alive. At most
    ``limit`` bytes are held; a longer first line is the parser's to refuse."""

    __slots__ = ("_head", "_limit")

    def __init__(self, limit: int) -> None:
        self._head: bytes | None = b""
        self._limit = limit

    @property
    def done(self) -> bool:
        return self._head is None

    def feed(self, data: bytes) -> bytes:
        """The bytes to hand to the parser for ``data``."""
        if self._head is None or not data:
            return data
        held = len(self._head)
        end = data.find(b"\n")
        if end < 0:
            self._head = self._head + data if held + len(data) <= self._limit else None
            return data
        line = self._head + data[:end]
        self._head = None
        if not _HTTP09_LINE.fullmatch(line):
            return data
        return data[: end + 1] + b"\r\n" + data[end + 1 :]  # llhttp: CRLF, even after a LF


class BareLine:
    """Watches the bytes handed to a connection's parser and says when they end with a bare
    request line (``METHOD target``, no version) right after an empty line: what an HTTP/0.9
    request sent later on a keep-alive connection looks like once the request before it has
    ended (its head ends with an empty line).

    Only the adapter knows whether the parser is between requests (the last request and its
    body complete, nothing held back); if it is, the line can only be the start of a new
    request, since inside a head an empty line cannot come before it: the adapter then adds
    the empty line that ends the (absent) headers. If the line is the end of a body instead,
    the parser is between requests and the added empty line is one it skips (RFC 9112
    section 2.2). At most ``limit`` bytes of line are looked at; a longer line, or one after
    a body that does not end with an empty line, waits for the header timeout as before."""

    __slots__ = ("_keep", "_tail")

    def __init__(self, limit: int) -> None:
        self._keep = limit + 6  # the empty line before it, the line, its CRLF
        self._tail = b"\r\n\r\n"  # the start of a connection is between requests

    def feed(self, data: bytes) -> None:
        if data:
            kept = self._tail + data if len(data) < self._keep else data
            self._tail = kept[-self._keep :]

    def ends_with_bare_line(self) -> bool:
        tail = self._tail
        if not tail.endswith(b"\n"):
            return False
        start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
        if start < 4 or tail[start - 4 : start] != b"\r\n\r\n":
            return False
        return _HTTP09_LINE.fullmatch(tail[start:-1]) is not None
