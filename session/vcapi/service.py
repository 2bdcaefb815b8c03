"""The VC API's request handling, without I/O (specs/vc-api.yaml).

:class:`VcApiService` turns one request (method, path, headers, body bytes) into one
:class:`Reply` (status and JSON body). The aiohttp adapter in :mod:`.server` only moves
bytes. Three endpoints, as the W3C VC API defines them:

* ``POST /credentials/issue`` — ``{"credential", "options"}`` → 201 ``{"verifiableCredential"}``;
  needs ``Authorization: Bearer <token>`` (compared in constant time).
* ``POST /credentials/verify`` — ``{"verifiableCredential", "options"}`` → 200
  ``{"verified": true, "checks", "warnings", "errors": []}``, or 400 with ``verified:
  false`` and the error.
* ``POST /presentations/verify`` — ``{"verifiablePresentation", "options"}`` (``challenge``
  and ``domain`` checked when given) → as above.

Errors are problem details (``type``, ``title``, ``detail``). A request body is capped
before parsing and parsed strictly (identity/strict_json.py).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from didmesh.identity.credentials import (
    MAX_DOCUMENT_BYTES,
    issue_credential,
    parse_datetime,
    verify_credential,
    verify_presentation,
)
from didmesh.identity.errors import (
    ChallengeMismatch,
    CredentialError,
    DomainMismatch,
    InvalidProof,
    KeyNotAuthorized,
    MalformedCredential,
    UnsupportedProof,
    WrongProofPurpose,
)
from didmesh.identity.keys import IdentityKey
from didmesh.identity.strict_json import loads_strict

#: a request body: one document plus options
MAX_REQUEST_BYTES = MAX_DOCUMENT_BYTES + 16 * 1024
ISSUE_OPTIONS = frozenset({"created", "cryptosuite", "type"})
VERIFY_OPTIONS = frozenset({"checks", "challenge", "domain", "expectedProofPurpose"})
KNOWN_CHECKS = frozenset({"proof", "expiration", "validity"})
SECURITY = "https://w3id.org/security#"
ERRORS = "https://didmesh.dev/errors#"

# Data Integrity error types (W3C vc-data-integrity, "Processing Errors")
_DI_TYPES: tuple[tuple[type[CredentialError], str], ...] = (
    (InvalidProof, "PROOF_VERIFICATION_ERROR"),
    (KeyNotAuthorized, "PROOF_VERIFICATION_ERROR"),
    (UnsupportedProof, "PROOF_VERIFICATION_ERROR"),
    (WrongProofPurpose, "PROOF_VERIFICATION_ERROR"),
    (ChallengeMismatch, "INVALID_CHALLENGE_ERROR"),
    (DomainMismatch, "INVALID_DOMAIN_ERROR"),
    (MalformedCredential, "MALFORMED_PROOF_ERROR"),
)


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class RequestError(Exception):
    """A request the service refuses (status, title, detail)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def problem(status: int, title: str, detail: str, kind: str | None = None) -> Reply:
    body = {"type": kind or ERRORS + title, "title": title, "detail": detail}
    headers = {"WWW-Authenticate": 'Bearer realm="didmesh vc-api"'} if status == 401 else {}
    return Reply(status, body, headers)


def _error_type(exc: CredentialError) -> str:
    for cls, name in _DI_TYPES:
        if isinstance(exc, cls):
            return SECURITY + name
    return ERRORS + exc.code


def _failed(exc: CredentialError) -> Reply:
    error = {"type": _error_type(exc), "title": exc.code, "detail": exc.message}
    return Reply(400, {"verified": False, "checks": [], "warnings": [], "errors": [error]})


class VcApiService:
    """Issue with ``key`` (when a ``token`` is set) and verify anything, at ``clock()``."""

    def __init__(
        self,
        key: IdentityKey | None,
        token: str | None,
        clock: Callable[[], datetime],
        *,
        suite: str = "eddsa-rdfc-2022",
    ) -> None:
        if key is not None and not token:
            raise ValueError("issuing needs a bearer token")
        self.key = key
        self._token = token.encode() if token else None
        self.clock = clock
        self.suite = suite
        self.routes: dict[str, Callable[[dict[str, Any]], Reply]] = {
            "/credentials/issue": self._issue,
            "/credentials/verify": self._verify_credential,
            "/presentations/verify": self._verify_presentation,
        }

    # -- entry point --------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        handler = self.routes.get(path)
        if handler is None:
            return problem(404, "not_found", f"no endpoint {path[:80]!r} (see specs/vc-api.yaml)")
        if method != "POST":
            reply = problem(405, "method_not_allowed", f"{path} accepts POST only")
            return Reply(reply.status, reply.body, {"Allow": "POST"})
        if path == "/credentials/issue":
            denied = self._authorize(headers)
            if denied is not None:
                return denied
        ctype = headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype not in ("application/json", "application/ld+json"):
            return problem(415, "unsupported_media_type", "send the request as application/json")
        try:
            request = loads_strict(
                body, max_bytes=MAX_REQUEST_BYTES, error=MalformedCredential, what="request"
            )
            if not isinstance(request, dict):
                raise RequestError(400, "malformed_request", "the request must be a JSON object")
            return handler(request)
        except RequestError as exc:
            return problem(exc.status, exc.title, exc.detail)
        except CredentialError as exc:
            if len(body) > MAX_REQUEST_BYTES:
                return problem(413, "request_too_large", exc.message)
            return problem(400, exc.code, exc.message, _error_type(exc))

    def _authorize(self, headers: Mapping[str, str]) -> Reply | None:
        if self.key is None or self._token is None:
            return problem(403, "issuing_disabled", "this server only verifies (no issuer key)")
        given = headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._token
        ):
            return problem(401, "unauthorized", "issuing needs 'Authorization: Bearer <token>'")
        return None

    # -- endpoints ----------------------------------------------------------------------
    @staticmethod
    def _options(request: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
        options = request.get("options", {})
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise RequestError(400, "malformed_request", "options must be a JSON object")
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise RequestError(
                400,
                "unsupported_option",
                f"option {unknown[0][:40]!r} is not supported "
                f"(supported: {', '.join(sorted(allowed))})",
            )
        return options

    @staticmethod
    def _document(request: Mapping[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
        extra = sorted(set(request) - allowed)
        if extra:
            raise RequestError(400, "malformed_request", f"unexpected member {extra[0][:40]!r}")
        doc = request.get(name)
        if not isinstance(doc, dict):
            raise RequestError(400, "malformed_request", f"the request needs {name} (an object)")
        return doc

    def _issue(self, request: dict[str, Any]) -> Reply:
        assert self.key is not None
        credential = self._document(request, "credential", {"credential", "options"})
        options = self._options(request, ISSUE_OPTIONS)
        suite = options.get("cryptosuite", options.get("type", self.suite))
        if not isinstance(suite, str):
            raise RequestError(400, "malformed_request", "options.cryptosuite must be a string")
        credential.setdefault("issuer", self.key.did)
        created = None
        if "created" in options:
            created = parse_datetime(options["created"], "options.created", "request")
        signed = issue_credential(credential, self.key, suite=suite, created=created)
        return Reply(201, {"verifiableCredential": signed})

    def _checks(self, options: Mapping[str, Any]) -> list[str]:
        checks = options.get("checks", ["proof"])
        if not isinstance(checks, list) or not all(isinstance(c, str) for c in checks):
            raise RequestError(400, "malformed_request", "options.checks must be a list of names")
        unknown = sorted(set(checks) - KNOWN_CHECKS)
        if unknown:
            raise RequestError(400, "unsupported_option", f"check {unknown[0][:40]!r} is unknown")
        return checks

    def _verify_credential(self, request: dict[str, Any]) -> Reply:
        doc = self._document(request, "verifiableCredential", {"verifiableCredential", "options"})
        options = self._options(request, VERIFY_OPTIONS)
        checks = self._checks(options)
        purpose = options.get("expectedProofPurpose", "assertionMethod")
        if purpose != "assertionMethod":
            raise RequestError(
                400, "unsupported_option", "credentials are verified for assertionMethod"
            )
        try:
            verify_credential(doc, now=self.clock())
        except CredentialError as exc:
            return _failed(exc)
        return Reply(200, {"verified": True, "checks": checks, "warnings": [], "errors": []})

    def _verify_presentation(self, request: dict[str, Any]) -> Reply:
        doc = self._document(
            request, "verifiablePresentation", {"verifiablePresentation", "options"}
        )
        options = self._options(request, VERIFY_OPTIONS)
        checks = self._checks(options)
        challenge, domain = options.get("challenge"), options.get("domain")
        for name, value in (("challenge", challenge), ("domain", domain)):
            if value is not None and (not isinstance(value, str) or not value):
                raise RequestError(400, "malformed_request", f"options.{name} must be a string")
        purpose = options.get("expectedProofPurpose", "authentication")
        if purpose != "authentication":
            raise RequestError(
                400, "unsupported_option", "presentations are verified for authentication"
            )
        try:
            verify_presentation(doc, now=self.clock(), challenge=challenge, domain=domain)
        except CredentialError as exc:
            return _failed(exc)
        return Reply(200, {"verified": True, "checks": checks, "warnings": [], "errors": []})
