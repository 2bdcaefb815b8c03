"""Gate credentials for tests: a valid credential of the examples' ``ConsortiumMember``
type, issued by ``issuer`` to ``subject``, carrying ``random_bytes`` of incompressible data
(a photo, say: it compresses no better in the roster message than alone)."""

from __future__ import annotations

import base64
import os
from typing import Any

from didmesh.identity.credentials import issue_credential
from didmesh.identity.keys import IdentityKey
from didmesh.session.documents import CONTEXT


def gate_credential(issuer: IdentityKey, subject: str, random_bytes: int = 16) -> dict[str, Any]:
    return issue_credential({
        "@context": [*CONTEXT, "https://www.w3.org/ns/credentials/examples/v2"],
        "type": ["VerifiableCredential", "ConsortiumMember"],
        "issuer": issuer.did,
        "credentialSubject": {"id": subject,
                              "name": base64.b64encode(os.urandom(random_bytes)).decode()},
    }, issuer, suite="eddsa-jcs-2022")  # fmt: skip
