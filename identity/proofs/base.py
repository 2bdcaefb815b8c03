"""What every proof suite shares (specs/credentials.md, "Proof suites").

A suite turns an unsecured document plus proof options into a proof, and checks a
proof against a public key. Suites know nothing of issuers, purposes or validity
windows: :mod:`didmesh.identity.credentials` checks those.

All four suites hash the same way: ``sha256(canonical proof configuration) ||
sha256(canonical document)`` (64 bytes), and sign that with Ed25519. They differ in
how they canonicalize (RDFC-1.0 or JCS), in which ``@context`` the proof configuration
carries, and in how the signature is written (multibase ``proofValue`` or a detached
JWS).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ..errors import InvalidKey, InvalidProof, MalformedCredential
from ..keys import verify_ed25519
from ..multiformats import b58decode, b58encode

Signer = Callable[[bytes], bytes]
Json = dict[str, Any]

SIGNATURE_BYTES = 64


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def encode_proof_value(signature: bytes) -> str:
    """Multibase base58btc (``z`` prefix), no multicodec: the ``proofValue`` form."""
    return "z" + b58encode(signature)


def decode_proof_value(value: object) -> bytes:
    if not isinstance(value, str) or not value.startswith("z"):
        raise InvalidProof("proofValue must be a multibase base58btc string (starting with 'z')")
    if len(value) > 100:
        raise InvalidProof(f"proofValue is {len(value)} characters, too long for a signature")
    try:
        raw = b58decode(value[1:])
    except InvalidKey as exc:
        raise InvalidProof(f"proofValue is not base58btc: {exc.message}") from None
    if len(raw) != SIGNATURE_BYTES:
        raise InvalidProof(f"proofValue holds {len(raw)} bytes, an Ed25519 signature is 64")
    return raw


class Suite:
    """Base class of the proof suites. Subclasses set the class attributes and the two
    canonicalization methods."""

    name: ClassVar[str]  # how didmesh names the suite (the cryptosuite or the proof type)
    proof_type: ClassVar[str]
    cryptosuite: ClassVar[str | None] = None
    value_field: ClassVar[str] = "proofValue"

    # -- canonicalization (suite-specific) --------------------------------------------
    def canonical_document(self, unsecured: Mapping[str, Any]) -> bytes:
        raise NotImplementedError

    def canonical_proof_config(self, proof_config: Mapping[str, Any]) -> bytes:
        raise NotImplementedError

    def proof_config(self, unsecured: Mapping[str, Any], options: Mapping[str, Any]) -> Json:
        """The proof configuration that is canonicalized: the proof without its value,
        with the document's ``@context``."""
        config = {k: v for k, v in options.items() if k != self.value_field}
        if "@context" in unsecured:
            config["@context"] = unsecured["@context"]
        return config

    def check_options(self, unsecured: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        """Suite-level checks of the proof (type, cryptosuite, @context)."""
        if options.get("type") != self.proof_type:
            raise MalformedCredential(f"proof type is not {self.proof_type}")
        if options.get("cryptosuite") != self.cryptosuite:
            raise MalformedCredential(
                f"{self.proof_type} proof has cryptosuite {options.get('cryptosuite')!r}, "
                f"expected {self.cryptosuite!r}"
            )
        if not isinstance(options.get("verificationMethod"), str):
            raise MalformedCredential("proof has no verificationMethod (a DID URL string)")
        if not isinstance(options.get("proofPurpose"), str):
            raise MalformedCredential("proof has no proofPurpose string")

    # -- hashing --------------------------------------------------------------------
    def hash_data(self, unsecured: Mapping[str, Any], options: Mapping[str, Any]) -> bytes:
        """``sha256(canonical proof config) || sha256(canonical document)``."""
        config = self.proof_config(unsecured, options)
        return sha256(self.canonical_proof_config(config)) + sha256(
            self.canonical_document(unsecured)
        )

    def signing_input(self, unsecured: Mapping[str, Any], options: Mapping[str, Any]) -> bytes:
        return self.hash_data(unsecured, options)

    # -- create / verify --------------------------------------------------------------
    def proof_options(self, unsecured: Mapping[str, Any], options: Mapping[str, Any]) -> Json:
        """The proof as it will appear in the document, minus its value."""
        return {"type": self.proof_type, **dict(options)}

    def create(
        self, unsecured: Mapping[str, Any], options: Mapping[str, Any], sign: Signer
    ) -> Json:
        """A proof over ``unsecured`` (which must have no ``proof``)."""
        if "proof" in unsecured and "previousProof" not in options:
            raise MalformedCredential("the document already has a proof")
        proof = self.proof_options(unsecured, options)
        self.check_options(unsecured, proof)
        signature = sign(self.signing_input(unsecured, proof))
        proof[self.value_field] = self.encode_signature(unsecured, proof, signature)
        return proof

    def encode_signature(
        self, unsecured: Mapping[str, Any], proof: Mapping[str, Any], signature: bytes
    ) -> str:
        return encode_proof_value(signature)

    def decode_signature(self, proof: Mapping[str, Any]) -> bytes:
        return decode_proof_value(proof.get(self.value_field))

    def verify(self, unsecured: Mapping[str, Any], proof: Mapping[str, Any], public: bytes) -> None:
        """Raise unless ``proof`` is a valid signature by ``public`` over ``unsecured``."""
        if "proof" in unsecured and "previousProof" not in proof:
            raise MalformedCredential("verify the document without its proof")
        self.check_options(unsecured, proof)
        signature = self.decode_signature(proof)
        verify_ed25519(public, self.signing_input(unsecured, proof), signature)
