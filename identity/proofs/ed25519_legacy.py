"""The pre-Data-Integrity Linked Data suites Ed25519Signature2020 and
Ed25519Signature2018 (W3C CCG "Ed25519 Signature 2020"; "Ed25519 Signature 2018").

Both canonicalize with RDFC-1.0 and sign ``sha256(proof config) || sha256(document)``.
The proof configuration is the proof without its value under the document's
``@context``, unless the proof carries its own ``@context`` (as didkit writes
Ed25519Signature2020 proofs), which then takes its place.

* Ed25519Signature2020 writes the signature as a multibase ``proofValue``. It needs
  the ed25519-2020 context, either in the document's ``@context`` or the proof's.
* Ed25519Signature2018 writes a detached JWS (RFC 7515 with RFC 7797 ``b64: false``):
  ``base64url(header) + ".." + base64url(signature)``, where the signature is over
  ``ASCII(base64url(header)) + "." + hash``. The header must be exactly
  ``{"alg": "EdDSA", "b64": false, "crit": ["b64"]}``. didmesh verifies these and
  never issues them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidProof, MalformedCredential
from ..jsonld import canonize
from ..strict_json import loads_strict
from .base import SIGNATURE_BYTES, Json, Suite

JWS_HEADER = {"alg": "EdDSA", "b64": False, "crit": ["b64"]}
MAX_JWS_LENGTH = 400


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str, what: str) -> bytes:
    if not text or any(c in text for c in "=+/") or text.strip() != text:
        raise InvalidProof(f"JWS {what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidProof(f"JWS {what} is not base64url") from None


class _LinkedDataSuite(Suite):
    def proof_config(self, unsecured: Mapping[str, Any], options: Mapping[str, Any]) -> Json:
        config: Json = {}
        if "@context" in unsecured:
            config["@context"] = unsecured["@context"]
        config.update({k: v for k, v in options.items() if k != self.value_field})
        return config

    def canonical_document(self, unsecured: Mapping[str, Any]) -> bytes:
        return canonize(unsecured, what="document").encode()

    def canonical_proof_config(self, proof_config: Mapping[str, Any]) -> bytes:
        return canonize(proof_config, what="proof").encode()


class Ed25519Signature2020(_LinkedDataSuite):
    name = "Ed25519Signature2020"
    proof_type = "Ed25519Signature2020"


class Ed25519Signature2018(_LinkedDataSuite):
    name = "Ed25519Signature2018"
    proof_type = "Ed25519Signature2018"
    value_field = "jws"

    def _header_b64(self, proof: Mapping[str, Any]) -> str:
        jws = proof.get("jws")
        if jws is None:  # creating: the fixed header
            return _b64url(json.dumps(JWS_HEADER, separators=(",", ":")).encode())
        return self._split(jws)[0]

    @staticmethod
    def _split(jws: object) -> tuple[str, str]:
        if not isinstance(jws, str) or len(jws) > MAX_JWS_LENGTH:
            raise InvalidProof("Ed25519Signature2018 proof has no usable jws string")
        parts = jws.split(".")
        if len(parts) != 3 or parts[1] != "":
            raise InvalidProof("jws must be a detached JWS: '<header>..<signature>'")
        header_b64, _, sig_b64 = parts
        header = loads_strict(
            _b64url_decode(header_b64, "header"),
            max_bytes=MAX_JWS_LENGTH,
            error=InvalidProof,
            what="JWS header",
        )
        if header != JWS_HEADER:
            raise InvalidProof(
                f"JWS header {header!r} is not the one accepted "
                '({"alg": "EdDSA", "b64": false, "crit": ["b64"]})'
            )
        return header_b64, sig_b64

    def signing_input(self, unsecured: Mapping[str, Any], options: Mapping[str, Any]) -> bytes:
        header_b64 = self._header_b64(options)
        return header_b64.encode("ascii") + b"." + self.hash_data(unsecured, options)

    def encode_signature(
        self, unsecured: Mapping[str, Any], proof: Mapping[str, Any], signature: bytes
    ) -> str:
        return f"{self._header_b64(proof)}..{_b64url(signature)}"

    def decode_signature(self, proof: Mapping[str, Any]) -> bytes:
        _, sig_b64 = self._split(proof.get("jws"))
        signature = _b64url_decode(sig_b64, "signature")
        if len(signature) != SIGNATURE_BYTES:
            raise InvalidProof(f"JWS signature is {len(signature)} bytes, expected 64")
        return signature

    def check_options(self, unsecured: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        super().check_options(unsecured, options)
        if "proofValue" in options:
            raise MalformedCredential("Ed25519Signature2018 proof has a proofValue; it uses jws")
