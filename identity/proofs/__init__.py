"""didmesh.identity.proofs: the proof suites didmesh accepts (specs/credentials.md).

Only these four are accepted; a proof of any other type or cryptosuite is an
:class:`UnsupportedProof` (no downgrade to a suite the verifier did not choose):

========================  ======================  ==========  ===========
suite name                proof ``type``          canon       issued
========================  ======================  ==========  ===========
eddsa-rdfc-2022           DataIntegrityProof      RDFC-1.0    yes
eddsa-jcs-2022            DataIntegrityProof      JCS         yes
Ed25519Signature2020      Ed25519Signature2020    RDFC-1.0    yes (v1 VCs)
Ed25519Signature2018      Ed25519Signature2018    RDFC-1.0    verify only
========================  ======================  ==========  ===========
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import UnsupportedProof
from .base import Signer, Suite, decode_proof_value, encode_proof_value
from .ed25519_legacy import Ed25519Signature2018, Ed25519Signature2020
from .eddsa_2022 import DATA_INTEGRITY_PROOF, EddsaJcs2022, EddsaRdfc2022

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (EddsaRdfc2022(), EddsaJcs2022(), Ed25519Signature2020(), Ed25519Signature2018())
}
ISSUABLE = ("eddsa-rdfc-2022", "eddsa-jcs-2022", "Ed25519Signature2020")


def suite_named(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise UnsupportedProof(
            f"unknown proof suite {name!r} (didmesh supports {', '.join(SUITES)})"
        ) from None


def suite_for_proof(proof: Mapping[str, Any]) -> Suite:
    """The suite for a proof, chosen by its ``type`` (and ``cryptosuite``) only."""
    ptype = proof.get("type")
    crypto = proof.get("cryptosuite")
    if ptype == DATA_INTEGRITY_PROOF:
        if isinstance(crypto, str) and crypto in ("eddsa-rdfc-2022", "eddsa-jcs-2022"):
            return SUITES[crypto]
        raise UnsupportedProof(
            f"DataIntegrityProof with cryptosuite {str(crypto)[:60]!r} is not accepted "
            "(didmesh accepts eddsa-rdfc-2022 and eddsa-jcs-2022)"
        )
    if isinstance(ptype, str) and ptype in ("Ed25519Signature2020", "Ed25519Signature2018"):
        if crypto is not None:
            raise UnsupportedProof(f"{ptype} proof must not name a cryptosuite ({crypto!r})")
        return SUITES[ptype]
    raise UnsupportedProof(
        f"proof type {str(ptype)[:60]!r} is not accepted (didmesh accepts DataIntegrityProof "
        "with eddsa-rdfc-2022 or eddsa-jcs-2022, Ed25519Signature2020, Ed25519Signature2018)"
    )


__all__ = [
    "ISSUABLE",
    "SUITES",
    "Signer",
    "Suite",
    "decode_proof_value",
    "encode_proof_value",
    "suite_for_proof",
    "suite_named",
]
