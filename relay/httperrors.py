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
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from .conns import log_throttled, throttle_allows
from .errors import MalformedRequest, RelayError, RelayInternalError, TooLarge, error_body

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


class RelayRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol, answering parse failures as the relay does."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        # aiohttp's internals, read defensively: without them the handler still answers,
        # after body_timeout_s (408)
        messages = getattr(self, "_messages", None)
        queued = len(messages) if messages is not None else 0
        super().data_received(data)
        # A framing error in the body of the request being handled (a bad chunk size, a
        # Content-Length next to Transfer-Encoding...) is queued by aiohttp as the next
        # request's error, and the handler would wait for the rest of the body until
        # body_timeout_s: end that body with the error, so the handler answers 400 now.
        request = getattr(self, "_current_request", None)
        if request is None or messages is None or len(messages) <= queued:
            return
        if type(messages[-1][0]).__name__ == "_ErrInfo" and not request.content.is_eof():
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
        status, err = describe(exc, status)
        remote = request.remote or "?"
        if status >= 500:  # a bug: the operator needs the traceback, but not one a request
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


def json_http_errors(server: Any, on_error: Callable[[str], None] | None = None) -> None:
    """Make a set-up runner's ``web.Server`` answer parse failures with JSON errors
    (``on_error(code)`` counts them). aiohttp takes no handler class, so the server's class
    is switched to :class:`RelayServer` (same data, one method more); call it before a
    site starts."""
    if not isinstance(server, web.Server):
        raise TypeError(f"not an aiohttp web.Server: {type(server).__name__}")
    server.__class__ = RelayServer
    assert isinstance(server, RelayServer)
    server.on_error = on_error
