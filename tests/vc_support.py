"""Shared data for the credential tests (test_vc_*.py, test_didkit_interop.py)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from didmesh.identity.jsonld import CREDENTIALS_V1, CREDENTIALS_V2, DIDMESH_V1
from didmesh.identity.keys import IdentityKey
from didmesh.identity.proofs import suite_named

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CREATED = datetime(2025, 6, 1, 11, 0, tzinfo=UTC)
ISSUER = IdentityKey.from_seed(b"\x11" * 32)
HOLDER = IdentityKey.from_seed(b"\x22" * 32)
OTHER = IdentityKey.from_seed(b"\x33" * 32)

V2_SUITES = ("eddsa-rdfc-2022", "eddsa-jcs-2022")
V1_SUITES = ("eddsa-rdfc-2022", "eddsa-jcs-2022", "Ed25519Signature2020")


def v2_credential(**changes: Any) -> dict[str, Any]:
    """A session-invite-like VC 2.0 credential issued by ISSUER to HOLDER."""
    doc: dict[str, Any] = {
        "@context": [CREDENTIALS_V2, DIDMESH_V1],
        "id": "urn:uuid:0b5c7a52-6f1e-4c3a-9d55-2d1f8e4b7a10",
        "type": ["VerifiableCredential", "SessionInvite"],
        "issuer": ISSUER.did,
        "validFrom": "2025-01-01T00:00:00Z",
        "validUntil": "2026-01-01T00:00:00Z",
        "credentialSubject": {
            "id": HOLDER.did,
            "sessionId": "s-42",
            "manifest": {"program": "sum.py", "args": ["--n", 3], "bits": 64},
            "parties": [ISSUER.did, HOLDER.did, OTHER.did],
            "threshold": 1,
        },
    }
    doc.update(changes)
    return doc


def v1_credential(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "@context": [CREDENTIALS_V1],
        "id": "urn:uuid:5e0e4a34-3c2d-4a53-8b3f-1f7f0c8a9b21",
        "type": ["VerifiableCredential"],
        "issuer": ISSUER.did,
        "issuanceDate": "2025-01-01T00:00:00Z",
        "credentialSubject": {"id": HOLDER.did},
    }
    doc.update(changes)
    return doc


def presentation(version: int, credentials: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "@context": [CREDENTIALS_V2 if version == 2 else CREDENTIALS_V1],
        "type": ["VerifiablePresentation"],
        "holder": HOLDER.did,
        "verifiableCredential": credentials,
    }


def sign_raw(
    doc: dict[str, Any], key: IdentityKey, suite: str = "eddsa-jcs-2022", **options: Any
) -> dict[str, Any]:
    """Sign anything, bypassing issue_*()'s checks (to build documents that are
    wrong in exactly one way)."""
    out = copy.deepcopy(doc)
    opts = {
        "created": "2025-06-01T11:00:00Z",
        "verificationMethod": key.verification_method,
        "proofPurpose": "assertionMethod",
        **options,
    }
    out["proof"] = suite_named(suite).create(out, opts, key.sign)
    return out
