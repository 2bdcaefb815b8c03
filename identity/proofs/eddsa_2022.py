"""DataIntegrityProof with the eddsa-rdfc-2022 and eddsa-jcs-2022 cryptosuites
(W3C "Data Integrity EdDSA Cryptosuites v1.0", sections 3.2 and 3.3).

* eddsa-rdfc-2022: document and proof configuration canonicalized with RDFC-1.0.
  The proof is written without ``@context`` (it inherits the document's).
* eddsa-jcs-2022: both canonicalized with JCS (RFC 8785). The proof carries the
  document's ``@context`` (as the specification's Proof Serialization step sets it).

If a proof carries ``@context``, didmesh requires it to equal the document's
``@context`` (the specification only requires it to be a prefix and then hashes the
document with the proof's context; requiring equality accepts no document the
specification rejects and leaves no unsigned context behind).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import jcs
from ..errors import InvalidProof, MalformedCredential
from ..jsonld import canonize
from .base import Json, Suite

DATA_INTEGRITY_PROOF = "DataIntegrityProof"


class _DataIntegrity(Suite):
    proof_type = DATA_INTEGRITY_PROOF

    def check_options(self, unsecured: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        super().check_options(unsecured, options)
        if "@context" in options and options["@context"] != unsecured.get("@context"):
            raise InvalidProof(
                f"{self.name} proof has an @context that differs from the document's"
            )


class EddsaRdfc2022(_DataIntegrity):
    name = "eddsa-rdfc-2022"
    cryptosuite = "eddsa-rdfc-2022"

    def canonical_document(self, unsecured: Mapping[str, Any]) -> bytes:
        return canonize(unsecured, what="document").encode()

    def canonical_proof_config(self, proof_config: Mapping[str, Any]) -> bytes:
        return canonize(proof_config, what="proof").encode()

    def proof_options(self, unsecured: Mapping[str, Any], options: Mapping[str, Any]) -> Json:
        proof = {"type": self.proof_type, "cryptosuite": self.cryptosuite, **dict(options)}
        proof.pop("@context", None)
        return proof


class EddsaJcs2022(_DataIntegrity):
    name = "eddsa-jcs-2022"
    cryptosuite = "eddsa-jcs-2022"

    def canonical_document(self, unsecured: Mapping[str, Any]) -> bytes:
        return jcs.canonicalize(unsecured, what="document")

    def canonical_proof_config(self, proof_config: Mapping[str, Any]) -> bytes:
        return jcs.canonicalize(proof_config, what="proof")

    def proof_options(self, unsecured: Mapping[str, Any], options: Mapping[str, Any]) -> Json:
        proof = {"type": self.proof_type, "cryptosuite": self.cryptosuite, **dict(options)}
        if "@context" in unsecured:
            proof["@context"] = unsecured["@context"]
        if not isinstance(unsecured.get("@context"), list | str):
            raise MalformedCredential("document has no @context")
        return proof
