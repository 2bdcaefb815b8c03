"""The VC API's request handling without I/O (session/vcapi/service.py): one request in,
one reply out, with an injected clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openapi_schema_validator
import pytest
import yaml
from didmesh.identity.credentials import issue_presentation
from didmesh.identity.jsonld import CREDENTIALS_V2
from didmesh.session.vcapi.service import MAX_REQUEST_BYTES, Reply, VcApiService
from vc_support import HOLDER, ISSUER, NOW

SPEC: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent.parent / "specs" / "vc-api.yaml").read_text()
)
TOKEN = "t" * 43
JSON = {"Content-Type": "application/json"}
AUTH = {**JSON, "Authorization": f"Bearer {TOKEN}"}


def service(**kw: Any) -> VcApiService:
    return VcApiService(ISSUER, TOKEN, lambda: NOW, **kw)


def conforms(method: str, path: str, reply: Reply) -> Reply:
    """Fail unless specs/vc-api.yaml documents this reply (status and body schema)."""
    if path not in SPEC["paths"]:
        assert reply.status == 404
        return reply
    op = SPEC["paths"][path]["post"]
    assert str(reply.status) in op["responses"], f"{path} -> {reply.status} is not documented"
    resp = op["responses"][str(reply.status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    schema = {**resp["content"]["application/json"]["schema"], "components": SPEC["components"]}
    openapi_schema_validator.validate(
        reply.body, schema, cls=openapi_schema_validator.OAS31Validator
    )
    return reply


def post(svc: VcApiService, path: str, body: Any, headers: dict[str, str] = AUTH) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return conforms("POST", path, svc.handle("POST", path, headers, data))


def test_spec_is_valid_openapi_31_and_names_the_service_routes() -> None:
    assert SPEC["openapi"].startswith("3.1")
    for schema in SPEC["components"]["schemas"].values():
        openapi_schema_validator.OAS31Validator.check_schema(schema)
    assert set(SPEC["paths"]) == set(service().routes)


def unsigned(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "@context": [CREDENTIALS_V2, {"Pass": "https://vocab.didmesh.test/ns#Pass"}],
        "type": ["VerifiableCredential", "Pass"],
        "validFrom": "2025-01-01T00:00:00Z",
        "credentialSubject": {"id": HOLDER.did},
    }
    doc.update(changes)
    return doc


def issued(suite: str = "eddsa-rdfc-2022") -> dict[str, Any]:
    reply = post(service(), "/credentials/issue", {"credential": unsigned(),
                                                    "options": {"cryptosuite": suite}})
    assert reply.status == 201, reply.body
    vc: dict[str, Any] = reply.body["verifiableCredential"]
    return vc


@pytest.mark.parametrize("suite", ["eddsa-rdfc-2022", "eddsa-jcs-2022"])
def test_issue_then_verify(suite: str) -> None:
    vc = issued(suite)
    assert vc["issuer"] == ISSUER.did and vc["proof"]["cryptosuite"] == suite
    reply = post(service(), "/credentials/verify", {"verifiableCredential": vc}, JSON)
    assert reply.status == 200
    assert reply.body == {"verified": True, "checks": ["proof"], "warnings": [], "errors": []}


def test_tampered_credential_is_reported_as_a_proof_verification_error() -> None:
    vc = issued()
    vc["credentialSubject"]["id"] = ISSUER.did
    reply = post(service(), "/credentials/verify", {"verifiableCredential": vc}, JSON)
    assert reply.status == 400 and reply.body["verified"] is False
    [error] = reply.body["errors"]
    assert error["type"] == "https://w3id.org/security#PROOF_VERIFICATION_ERROR"
    assert error["title"] == "invalid_proof"


def test_issuer_rule_violation_is_a_400_naming_the_rule() -> None:
    body = {"credential": unsigned(credentialSubject={})}
    reply = post(service(), "/credentials/issue", body)
    assert reply.status == 400
    assert reply.body["title"] == "data_model_violation"
    assert "4.8 Credential Subject" in reply.body["detail"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (JSON, 401),
        ({**JSON, "Authorization": "Bearer wrong"}, 401),
        ({**JSON, "Authorization": f"Basic {TOKEN}"}, 401),
        ({**JSON, "Authorization": f"bearer {TOKEN}"}, 201),
    ],
    ids=["none", "wrong", "not-bearer", "scheme-case-insensitive"],
)
def test_issuing_needs_the_bearer_token(headers: dict[str, str], status: int) -> None:
    reply = post(service(), "/credentials/issue", {"credential": unsigned()}, headers)
    assert reply.status == status
    if status == 401:
        assert "WWW-Authenticate" in reply.headers


def test_verify_only_service_refuses_to_issue() -> None:
    svc = VcApiService(None, None, lambda: NOW)
    reply = post(svc, "/credentials/issue", {"credential": unsigned()})
    assert reply.status == 403


def test_issuing_for_another_issuer_is_refused() -> None:
    reply = post(service(), "/credentials/issue", {"credential": unsigned(issuer=HOLDER.did)})
    assert reply.status == 400 and reply.body["title"] == "key_not_authorized"


def _vp(**changes: Any) -> dict[str, Any]:
    doc = {"@context": [CREDENTIALS_V2], "type": ["VerifiablePresentation"],
           "verifiableCredential": [issued()]}
    doc.update(changes)
    return issue_presentation(doc, HOLDER, challenge="c-9", domain="vc.test")


@pytest.mark.parametrize(
    ("options", "status", "error"),
    [
        ({"challenge": "c-9", "domain": "vc.test"}, 200, None),
        ({"challenge": "c-9"}, 200, None),
        ({}, 200, None),
        ({"challenge": "c-8"}, 400, "https://w3id.org/security#INVALID_CHALLENGE_ERROR"),
        ({"challenge": "c-9", "domain": "other.test"}, 400,
         "https://w3id.org/security#INVALID_DOMAIN_ERROR"),
    ],
    ids=["both", "challenge-only", "none", "wrong-challenge", "wrong-domain"],
)
def test_presentation_verify(options: dict[str, Any], status: int, error: str | None) -> None:
    body = {"verifiablePresentation": _vp(), "options": options}
    reply = post(service(), "/presentations/verify", body, JSON)
    assert reply.status == status, reply.body
    if error:
        assert reply.body["errors"][0]["type"] == error


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "title"),
    [
        ("GET", "/credentials/verify", JSON, b"", 405, "method_not_allowed"),
        ("POST", "/credentials/other", JSON, b"{}", 404, "not_found"),
        ("POST", "/credentials/verify", {"Content-Type": "text/plain"}, b"{}", 415,
         "unsupported_media_type"),
        ("POST", "/credentials/verify", JSON, b"{not json", 400, "malformed_credential"),
        ("POST", "/credentials/verify", JSON, b'{"a":1,"a":2}', 400, "malformed_credential"),
        ("POST", "/credentials/verify", JSON, b"[]", 400, "malformed_request"),
        ("POST", "/credentials/verify", JSON, b'{"verifiableCredential": "x"}', 400,
         "malformed_request"),
        ("POST", "/credentials/verify", JSON, b'{"verifiableCredential": {}, "extra": 1}', 400,
         "malformed_request"),
        ("POST", "/credentials/verify", JSON,
         b'{"verifiableCredential": {}, "options": {"fetch": true}}', 400, "unsupported_option"),
        ("POST", "/credentials/verify", JSON,
         b'{"verifiableCredential": {}, "options": {"checks": ["revocation"]}}', 400,
         "unsupported_option"),
        ("POST", "/credentials/verify", JSON, b" " * (MAX_REQUEST_BYTES + 1), 413,
         "request_too_large"),
        ("POST", "/credentials/issue", AUTH, b'{"credential": {}, "options": {"type": 5}}', 400,
         "malformed_request"),
    ],
    ids=["get", "unknown-path", "content-type", "not-json", "duplicate-key", "array",
         "vc-not-object", "extra-member", "unknown-option", "unknown-check", "too-large",
         "bad-suite-option"],
)
def test_bad_requests_get_problem_details(
    method: str, path: str, headers: dict[str, str], body: bytes, status: int, title: str
) -> None:
    reply = conforms(method, path, service().handle(method, path, headers, body))
    assert reply.status == status, reply.body
    assert reply.body["title"] == title
    assert reply.body["detail"]
