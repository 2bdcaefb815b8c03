"""Requests that fail before a handler runs get the relay's JSON error too
(specs/relay.md, "Errors").

aiohttp parses the request line and headers itself; a line or header over its limit, too
many headers, or bytes that are not HTTP/1.1 make it answer with its own plain-text 400,
whose body repeats up to 8 KiB of the client's bytes, and log a traceback at error level
for each. aiohttp has no parameter for that answer: it comes from
``RequestHandler.handle_error``, and ``web.Server`` builds the ``RequestHandler``. So
:func:`json_http_errors` makes the relay's server build :class:`RelayRequestHandler`,
whose ``handle_error`` answers ``{"error": {"code", "message"}}`` with the code in
``X-Didmesh-Error`` (``431 too_large`` for sizes, ``400 malformed`` otherwise, ``500
internal``), names the limit or the kind of fault but never echoes a byte of the request,
closes the connection, and logs one throttled warning line instead of a traceback.

The limits are aiohttp's defaults, set explicitly (:data:`HTTP_LIMITS`) so they are ours
and documented: a request line or a header line (name and value) of at most 8190 bytes,
at most 128 headers.

Two more things aiohttp's connection gets wrong with hostile or odd bytes:

* **Pipelined requests before garbage.** llhttp parses everything a read brought; when the
  bytes after a complete request are garbage, aiohttp's parser raises and the requests it
  had parsed from that read are dropped: a valid request followed in the same write by
  garbage got only the 400. :class:`RelayRequestHandler` lets its parser take one request
  at a time (aiohttp's own message-queue bound, set to 1), so each request is queued before
  the bytes after it are parsed: the valid request is answered, then the garbage gets its
  400 and the connection closes.
* **HTTP versions** (:mod:`.httpversion`): every answer's status line is HTTP/1.1 (to an
  HTTP/1.0 request too, in HTTP/1.0's framing), never a version the client made up, and a
  request in a version the relay does not speak gets ``505 unsupported_http_version``.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, http_exceptions, web, web_protocol
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage, StreamWriter
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from .conns import log_throttled, throttle_allows
from .errors import (
    MalformedRequest,
    RelayError,
    RelayInternalError,
    TooLarge,
    UnsupportedHttpVersion,
    error_body,
)
from .httpversion import (
    HTTP_VERSION_NOT_SUPPORTED,
    UNSUPPORTED_MESSAGE,
    BareLine,
    FirstLine,
    VersionNotSpoken,
    spoken,
    version_refused,
)

MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128
#: keyword arguments for ``web.AppRunner`` (passed on to every ``RequestHandler``)
HTTP_LIMITS: dict[str, Any] = {
    "max_line_size": MAX_LINE_BYTES,
    "max_field_size": MAX_FIELD_BYTES,
    "max_headers": MAX_HEADERS,
}
HEADERS_TOO_LARGE = 431  # RFC 6585
#: the access log's status for a request whose client closed the connection before it was
#: answered (nginx's "client closed request"; never sent: nobody is left to read it)
CLIENT_CLOSED = 499

if TYPE_CHECKING:  # aiohttp's own dependency; only its type is named here
    from multidict import CIMultiDict

log = logging.getLogger("didmesh.relay")
#: llhttp's own reasons ("Invalid header value char", "Invalid method encountered", ...) are
#: fixed text; what follows them in aiohttp's message is the client's bytes
_REASON = re.compile(r"[A-Za-z][A-Za-z_ '-]{2,79}")
_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.BadHttpMethod, "an unknown or malformed method"),
    (http_exceptions.BadStatusLine, "a malformed request line"),
    (http_exceptions.InvalidURLError, "a malformed URL"),
    (http_exceptions.InvalidHeader, "a malformed header"),
    (http_exceptions.TransferEncodingError, "a malformed chunked body"),
    (http_exceptions.ContentLengthError, "a body that does not match its Content-Length"),
    (http_exceptions.ContentEncodingError, "a body that does not decode"),
)


BODY_ERRORS = (RequestPayloadError, http_exceptions.HttpProcessingError)


def body_error() -> MalformedRequest:
    """What a request body that aiohttp could not decode or frame is told (the bytes are not
    repeated)."""
    return MalformedRequest(
        "the request body is not well-formed: its chunked framing, Content-Length or "
        "Content-Encoding does not match what was sent"
    )


def describe(exc: BaseException | None, status: int) -> tuple[int, RelayError]:
    """The status and relay error for a request aiohttp could not parse (or handle)."""
    if version_refused(exc):
        return HTTP_VERSION_NOT_SUPPORTED, UnsupportedHttpVersion(UNSUPPORTED_MESSAGE)
    if status >= 500 or not isinstance(exc, http_exceptions.HttpProcessingError):
        return 500, RelayInternalError("the relay failed unexpectedly; retry later")
    if isinstance(exc, http_exceptions.LineTooLong) or (
        isinstance(exc, http_exceptions.BadHttpMessage)
        and exc.message == "Too many headers received"
    ):
        return HEADERS_TOO_LARGE, TooLarge(
            f"the request line or a header is longer than this relay accepts "
            f"({MAX_LINE_BYTES} bytes per line and per header), or has more than "
            f"{MAX_HEADERS} headers"
        )
    kind = next((k for cls, k in _KINDS if isinstance(exc, cls)), None)
    if kind is None:
        head = str(exc.message).split(":\n", 1)
        found = _REASON.fullmatch(head[0]) if len(head) == 2 else None
        kind = f"an HTTP framing error ({found.group(0)})" if found else "a framing error"
    return 400, MalformedRequest(f"the request is not well-formed HTTP/1.1: {kind}")


# aiohttp's internals the relay reads, all from ``aiohttp.web_protocol`` (tested with
# aiohttp 3.14.5; pyproject.toml pins >=3.14.1,<4). Each is read defensively: where one is
# missing or differs (another aiohttp), the relay falls back to aiohttp's own behaviour for
# that part only, and tests/test_relay_hostile_http.py runs a relay that way.
#
# * ``ERROR`` and ``_ErrInfo``: its stand-in for a request it could not parse and its
#   queued parse failure. Without them: no 505 for a version llhttp parsed (HTTP/2.0 is
#   answered like HTTP/1.1), and aiohttp's stand-in is not told apart;
# * ``RequestHandler._messages``, its queue of ``(message, payload)``: the same, and a body
#   that fails to frame is answered after ``body_timeout_s`` (408), not at once;
# * ``_max_msg_queue_size``, ``_msg_queue_resume_size``, ``_parser`` and the parser's
#   ``max_msg_queue_size`` (3.14.1): :func:`one_request_at_a_time`. Without them: requests
#   before garbage in one read are lost, and a bare HTTP/0.9 line after a request waits for
#   the keep-alive timeout;
# * ``_current_request``, ``_force_close``, ``_close``, ``_upgraded``: read with a default
#   that turns the fix that needs them off.
_ERROR_MESSAGE = getattr(web_protocol, "ERROR", None)
_ErrInfo: Any = getattr(web_protocol, "_ErrInfo", None)
#: how many held-back requests :meth:`RelayRequestHandler._between_requests` parses at most
_HELD_MAX = 4
_warned_fallback = False


def one_request_at_a_time(handler: Any, loop: Any, auto_decompress: bool) -> bool:
    """Give ``handler`` (a ``RequestHandler``) a parser that stops after each request, so
    garbage after a request cannot drop it. aiohttp has no public parameter for its bound on
    queued requests (3.14.1 and later: ``MAX_MSG_QUEUE_SIZE``, 32), so this sets aiohttp's
    private attributes for it, and only if they are all there and the parser takes the
    bound: otherwise (another aiohttp) the handler keeps aiohttp's own parser and queue,
    every request is still answered, and only requests before garbage in one read are lost
    again. Whether it did is returned."""
    if not all(hasattr(handler, a) for a in ("_max_msg_queue_size", "_msg_queue_resume_size",
                                             "_parser", "max_line_size", "max_field_size",
                                             "max_headers")):
        return False
    try:
        parser = HttpRequestParser(
            handler, loop, getattr(handler, "_read_bufsize", 2**16),
            max_line_size=handler.max_line_size, max_field_size=handler.max_field_size,
            max_headers=handler.max_headers, payload_exception=RequestPayloadError,
            auto_decompress=auto_decompress, max_msg_queue_size=1,
        )
    except TypeError:  # a parser without the bound
        return False
    handler._max_msg_queue_size = 1
    handler._msg_queue_resume_size = 0
    handler._parser = parser
    return True


def request_queue(handler: Any) -> deque[Any] | None:
    """aiohttp's queue of parsed ``(message, payload)`` of a connection, if it has one."""
    queue = getattr(handler, "_messages", None)
    return queue if isinstance(queue, deque) else None


def _parsed(entry: Any) -> bool:
    """Whether a queued ``(message, payload)`` is a parsed request (not a parse failure)."""
    return isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], RawRequestMessage)


def _failed(entry: Any) -> bool:
    """Whether a queued entry is aiohttp's parse failure."""
    return _ErrInfo is not None and isinstance(entry, tuple) and isinstance(entry[0], _ErrInfo)


def _ended(entry: Any) -> bool:
    """Whether the body of a queued parsed request has all come (so has the request)."""
    is_eof = getattr(entry[1], "is_eof", None)
    return bool(is_eof()) if callable(is_eof) else False


def _refusal() -> Any:
    """A queued parse failure answered ``505``, or None if aiohttp has none to give."""
    exc = VersionNotSpoken()
    try:
        return (_ErrInfo(status=HTTP_VERSION_NOT_SUPPORTED, exc=exc, message=exc.message),
                EMPTY_PAYLOAD)
    except TypeError:  # another _ErrInfo (or none)
        return None


class RelayRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol, answering parse failures as the relay does."""

    __slots__ = ("_bare_line", "_first_line", "_last_entry", "one_at_a_time")

    def __init__(self, manager: Any, *, loop: Any, **kw: Any) -> None:
        super().__init__(manager, loop=loop, **kw)
        limit = getattr(self, "max_line_size", MAX_LINE_BYTES) + 2
        self._first_line = FirstLine(limit)
        self._bare_line = BareLine(limit)
        self._last_entry: Any = None  # the last (message, payload) the parser gave
        self.one_at_a_time = one_request_at_a_time(self, loop, kw.get("auto_decompress", True))
        global _warned_fallback
        if not self.one_at_a_time and not _warned_fallback:
            _warned_fallback = True
            log.warning("this aiohttp has no bound on queued requests the relay can set "
                        "(3.14.1 and later): requests before garbage in one read may go "
                        "unanswered")

    def _feed(self, data: bytes, messages: Any) -> None:
        """Hand ``data`` to aiohttp's parser, then refuse with 505 each request it parsed in
        a version the relay does not speak (HTTP/2.0, HTTP/0.9), like one llhttp refused."""
        queued = len(messages)
        self._bare_line.feed(data)
        super().data_received(data)
        for i in range(queued, len(messages)):
            if _parsed(messages[i]) and not spoken(messages[i][0].version):
                refusal = _refusal()
                if refusal is not None:
                    messages[i] = refusal
        if len(messages) > queued:
            self._last_entry = messages[-1]

    def _between_requests(self, messages: Any) -> bool:
        """Whether the parser has ended the last request it gave (body and all), holds no
        bytes back, and is not past an upgrade or a failure. A parser that stops after each
        request holds back the bytes after it: they are parsed first (at most
        :data:`_HELD_MAX` requests; past that, no)."""
        if not self.one_at_a_time or any(
            getattr(self, a, True) for a in ("_force_close", "_close", "_upgraded")
        ):
            return False
        for _ in range(_HELD_MAX):
            count, entry = len(messages), self._last_entry
            ended = entry is None or _ended(entry)
            self._feed(b"", messages)
            if len(messages) == count and self._last_entry is entry and (
                entry is None or _ended(entry) == ended
            ):
                break  # the parser stopped nowhere: it holds nothing back
        else:
            return False
        entry = self._last_entry
        return entry is None or (_parsed(entry) and _ended(entry))

    def data_received(self, data: bytes) -> None:
        if getattr(self, "_payload_parser", None) is not None or getattr(self, "_upgraded", True):
            super().data_received(data)  # past an upgrade (WebSocket frames): no HTTP here
            return
        data = self._first_line.feed(data)
        messages = request_queue(self)  # None: aiohttp's own handling (see above)
        if messages is None:
            super().data_received(data)
            return
        queued = len(messages)
        self._feed(data, messages)
        # HTTP/0.9's bare "GET /path" line after a complete request on a keep-alive
        # connection: llhttp waits for headers a 0.9 client never sends; end it, so it is
        # refused with 505 now instead of after the keep-alive timeout
        if self._bare_line.ends_with_bare_line() and self._between_requests(messages):
            self._feed(b"\r\n", messages)
        # A framing error in the body of the request being handled (a bad chunk size, a
        # Content-Length next to Transfer-Encoding...) is queued by aiohttp as the next
        # request's error, and the handler would wait for the rest of the body until
        # body_timeout_s: end that body with the error, so the handler answers 400 now.
        request = getattr(self, "_current_request", None)
        if request is None or len(messages) <= queued:
            return
        if _failed(messages[-1]) and not request.content.is_eof():
            request.content.set_exception(RequestPayloadError("malformed request body"))

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # a body that failed to decode or frame was answered 400 by the handler; aiohttp
        # meets the same error again when it drains the rest of that body
        if isinstance(kw.get("exc_info"), BODY_ERRORS):
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: a response is on its way already
            raise ConnectionError("a response was sent already; closing the connection")
        if isinstance(exc, ConnectionResetError):
            # the client left while its request was read or handled (aiohttp's "Connection
            # lost"): no fault of the relay, no traceback, no rejection; the access line
            # records it
            request["error_code"] = "client_closed"
            gone = web.Response(status=CLIENT_CLOSED)
            gone.force_close()
            return gone
        status, err = describe(exc, status)
        remote = request.remote or "?"
        if isinstance(err, RelayInternalError):  # a bug: the operator needs the traceback
            if throttle_allows("handler:" + type(exc).__name__):
                self.log_exception("Error handling request from %s", remote, exc_info=exc)
        else:
            log_throttled("bad-http:" + remote, logging.WARNING, "bad HTTP request",
                          {"remote": remote, "status": status, "error": err.message})
        on_error = getattr(self._manager, "on_error", None)
        if on_error is not None:
            on_error(err.code)
        request["error_code"] = err.code  # for the access log
        resp = web.json_response(
            error_body(err), status=status, headers={"X-Didmesh-Error": err.code}
        )
        resp.force_close()
        return resp


class RelayServer(web.Server):
    """``web.Server`` building :class:`RelayRequestHandler` connections."""

    on_error: Callable[[str], None] | None = None

    def __call__(self) -> RequestHandler:
        return RelayRequestHandler(self, loop=self._loop, **self._kwargs)


class Http11StatusLine(StreamWriter):
    """aiohttp's writer, writing an answer to an HTTP/1.0 request with an ``HTTP/1.1``
    status line. RFC 9110 section 6.2: a server SHOULD send the highest version it conforms
    to whose major version is at most the request's, so ``HTTP/1.1`` (aiohttp wrote
    ``HTTP/1.0``). Only the status line changes: the framing stays what aiohttp chose for an
    HTTP/1.0 request (RFC 9112 sections 6.1 and 9.3: no chunked encoding, a persistent
    connection only if the client asked with ``Connection: keep-alive``, which aiohttp then
    confirms). When aiohttp writes no ``Connection`` header it closes after the answer, which
    an HTTP/1.0 status line said by itself; an HTTP/1.1 one needs ``Connection: close``."""

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        if status_line.startswith("HTTP/1.0 "):
            status_line = "HTTP/1.1 " + status_line[len("HTTP/1.0 "):]
            headers.setdefault(hdrs.CONNECTION, "close")
        await super().write_headers(status_line, headers)


def _http11_writer(writer: Any, protocol: Any) -> Any:
    """An :class:`Http11StatusLine` in place of aiohttp's fresh ``writer`` (``writer`` itself
    if it is not a plain ``StreamWriter``: then HTTP/1.0 is answered in HTTP/1.0, as
    aiohttp does, which an HTTP/1.0 client reads too)."""
    if type(writer) is not StreamWriter:
        return writer
    try:
        return Http11StatusLine(protocol, writer.loop)
    except (TypeError, AttributeError):
        return writer


def answered_in_http11(factory: Callable[..., web.BaseRequest]) -> Callable[..., web.BaseRequest]:
    """A request factory for ``web.Server`` whose requests are all answered with an
    ``HTTP/1.1`` status line: aiohttp writes a response's status line in the request's
    version, so its stand-in for an unparseable request (HTTP/1.0), a request in a version
    the relay does not speak (``HTTP/2.0 404``) and an HTTP/1.0 request were answered in
    those. The client's version is never written back; an HTTP/1.0 request keeps its
    framing (:class:`Http11StatusLine`)."""

    def make(message: Any, payload: Any, protocol: Any, writer: Any, *rest: Any) -> web.BaseRequest:
        if message is _ERROR_MESSAGE or not spoken(message.version):
            message = message._replace(version=HttpVersion11)
        elif message.version == HttpVersion10:
            writer = _http11_writer(writer, protocol)
        return factory(message, payload, protocol, writer, *rest)

    return make


def json_http_errors(server: Any, on_error: Callable[[str], None] | None = None) -> None:
    """Make a set-up runner's ``web.Server`` answer parse failures with JSON errors
    (``on_error(code)`` counts them) in HTTP/1.1. aiohttp takes no handler class, so the
    server's class is switched to :class:`RelayServer` (same data, one method more); call
    it before a site starts."""
    if not isinstance(server, web.Server):
        raise TypeError(f"not an aiohttp web.Server: {type(server).__name__}")
    server.__class__ = RelayServer
    assert isinstance(server, RelayServer)
    server.on_error = on_error
    server.request_factory = answered_in_http11(server.request_factory)
