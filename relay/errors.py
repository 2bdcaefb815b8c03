"""Relay errors: the relay layer's branch of the one exception tree (specs/relay.md, "Errors").

Every error the relay sends has a stable ``code`` and an HTTP ``status``; the wire form is
``{"error": {"code": ..., "message": ...}}``. :func:`error_from_wire` maps a code back to
its class on the client, so a caller can ``except InboxFull`` whichever side raised it.
WebSocket links close with the codes in :mod:`didmesh.relay.protocol` instead.

Who is at fault: errors the relay sends about a request are :class:`RemoteError` on the
client (the relay refused) and describe the client's request on the server;
:class:`RelayConfigError` is local misuse (a bad flag or config file).
"""

from __future__ import annotations

from collections.abc import Iterable

from didmesh.identity.errors import DidmeshError, LocalError, RemoteError

from .logtext import inert


class RelayError(DidmeshError):
    """A relay-layer failure."""

    code = "relay_error"
    status: int = 500


class RelayRequestError(RelayError, RemoteError):
    """The relay refused a request (or, on the server, a client sent a bad one)."""

    code = "bad_request"
    status = 400


class MalformedRequest(RelayRequestError):
    """The request body is not well-formed JSON of the expected shape."""

    code = "malformed"
    status = 400


class InvalidEnvelope(RelayRequestError):
    """The envelope is malformed (a field is missing, has the wrong type or length)."""

    code = "invalid_envelope"
    status = 400


class AuthRequired(RelayRequestError):
    """This endpoint needs a bearer token: authenticate with POST /v1/auth/challenge first."""

    code = "auth_required"
    status = 401


class AuthInvalid(RelayRequestError):
    """The bearer token or challenge is not valid for this relay."""

    code = "auth_invalid"
    status = 401


class AuthExpired(RelayRequestError):
    """The bearer token or challenge has expired: authenticate again."""

    code = "auth_expired"
    status = 401


class ForgedSender(RelayRequestError):
    """The envelope's signature does not verify with its sender's DID key."""

    code = "forged_sender"
    status = 403


class DidNotControlled(RelayRequestError):
    """The challenge was not signed by the key of the DID it claims."""

    code = "did_not_controlled"
    status = 403


class Replay(RelayRequestError):
    """This envelope id was already seen (and delivered) within the replay window."""

    code = "replay"
    status = 409


class IdConflict(RelayRequestError):
    """An envelope with this id but different content was already posted."""

    code = "id_conflict"
    status = 409


class StaleEnvelope(RelayRequestError):
    """The envelope timestamp is outside the relay's replay window (check the clock)."""

    code = "stale"
    status = 409


class TooLarge(RelayRequestError):
    """The request or envelope is larger than the relay accepts (see GET /info)."""

    code = "too_large"
    status = 413


class RateLimited(RelayRequestError):
    """Too many requests: slow down and retry later."""

    code = "rate_limited"
    status = 429


class LinkLimit(RelayRequestError):
    """Too many concurrent links (for this DID or on this relay)."""

    code = "link_limit"
    status = 429


class InboxFull(RelayRequestError):
    """The recipient's inbox is full; retry after the recipient reads it."""

    code = "inbox_full"
    status = 507


class NotFound(RelayRequestError):
    """No such endpoint."""

    code = "not_found"
    status = 404


class MethodNotAllowed(RelayRequestError):
    """This endpoint does not accept that HTTP method."""

    code = "method_not_allowed"
    status = 405


class UnsupportedMediaType(RelayRequestError):
    """The request body must be application/json."""

    code = "unsupported_media_type"
    status = 415


class UnsupportedHttpVersion(RelayRequestError):
    """The request is not HTTP/1.1 (or 1.0): this relay speaks HTTP/1.1."""

    code = "unsupported_http_version"
    status = 505


class ShuttingDown(RelayRequestError):
    """The relay is shutting down; retry on another relay or later."""

    code = "shutting_down"
    status = 503


class RequestTimeout(RelayRequestError):
    """The request body did not arrive within the relay's ``body_timeout_s``."""

    code = "request_timeout"
    status = 408


class TooManyConnections(RelayRequestError):
    """The relay refused the connection: too many open from this address or in total."""

    code = "too_many_connections"
    status = 503


class RelayInternalError(RelayError, RemoteError):
    """The relay failed unexpectedly; the operator's log has the details."""

    code = "internal"
    status = 500


class RelayUnreachable(RelayError, RemoteError):
    """The relay cannot be reached (connection refused, reset or timed out)."""

    code = "relay_unreachable"
    status = 503


class RelayUntrusted(RelayUnreachable):
    """The relay's TLS certificate did not verify (not retried: it will not get better)."""

    code = "relay_untrusted"
    status = 503


class RelayProtocolError(RelayError, RemoteError):
    """The relay answered with something that is not the relay protocol."""

    code = "relay_protocol"
    status = 502


class LinkClosed(RelayError, RemoteError):
    """The link was closed (by the peer, the relay or a limit); ``close_code`` says why."""

    code = "link_closed"
    status = 410

    def __init__(self, message: str | None = None, close_code: int = 0) -> None:
        super().__init__(message)
        self.close_code = close_code


class EnvelopeRejected(RelayError, RemoteError):
    """A received envelope failed verification (signature, addressing, freshness or body).

    The detailed message is for the local user; never send it back to the sender.
    """

    code = "envelope_rejected"
    status = 400


class RelayConfigError(RelayError, LocalError):
    """The relay configuration (flags, environment, config file or store URL) is invalid."""

    code = "relay_config"
    status = 500


#: every class the relay may put on the wire, by code
WIRE_ERRORS: dict[str, type[RelayError]] = {
    cls.code: cls
    for cls in (
        MalformedRequest,
        InvalidEnvelope,
        AuthRequired,
        AuthInvalid,
        AuthExpired,
        ForgedSender,
        DidNotControlled,
        Replay,
        IdConflict,
        StaleEnvelope,
        TooLarge,
        RateLimited,
        LinkLimit,
        InboxFull,
        NotFound,
        MethodNotAllowed,
        UnsupportedMediaType,
        UnsupportedHttpVersion,
        ShuttingDown,
        RelayInternalError,
        RequestTimeout,
        TooManyConnections,
    )
}


def client_names(names: Iterable[object], shown: int = 5, width: int = 40) -> str:
    """Names a client sent (unknown JSON fields), for an error message that goes back to
    it: at most ``shown`` of them, each cut to ``width`` characters and made inert
    (:func:`~didmesh.relay.logtext.inert`), then how many more; never an unbounded echo
    of the request (thousands of keys came back whole, control characters and all)."""
    items = [str(n) for n in names]
    out = ", ".join(inert(n, width) for n in items[:shown])
    return out + (f" and {len(items) - shown} more" if len(items) > shown else "")


def error_body(exc: RelayError) -> dict[str, dict[str, str]]:
    """The JSON body the relay sends for ``exc``."""
    return {"error": {"code": exc.code, "message": exc.message}}


def error_from_wire(status: int, body: object, url: str = "") -> RelayError:
    """Rebuild the exception the relay described in an error response."""
    code = message = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = err.get("code") if isinstance(err.get("code"), str) else None
        message = err.get("message") if isinstance(err.get("message"), str) else None
    cls = WIRE_ERRORS.get(code or "")
    where = f" ({url})" if url else ""
    if cls is None:
        if status >= 500:
            return RelayInternalError(f"relay error {status}{where}: {message or 'no details'}")
        return RelayProtocolError(f"unexpected relay response {status}{where}: {message or code}")
    return cls(f"relay refused{where}: {message}" if message else None)
