"""did:key for Ed25519 and X25519 (specs/identity.md, "DID method").

``did:key:z6Mk...`` is ``"did:key:" + multibase(base58btc, 0xed varint + 32-byte
Ed25519 public key)``. Its DID document has one Ed25519 verification method
(authentication, assertionMethod, capabilityInvocation, capabilityDelegation) and one
X25519 key-agreement method whose public key is the Montgomery form of the Ed25519 key
(did:key spec, "Encryption Method Creation"; libsodium
``crypto_sign_ed25519_pk_to_curve25519``). ``did:key:z6LS...`` (multicodec ``0xec``) is
a bare X25519 key: key agreement only, it can sign nothing.

Resolution is a pure function of the DID string: nothing is fetched. Three document
representations are produced, all describing the same keys: ``multikey`` (the current
did:key spec, the default), ``legacy`` (Ed25519VerificationKey2018 /
X25519KeyAgreementKey2019 with publicKeyBase58, as in the spec's 2022 test vectors and
as didkit resolves) and ``jwk`` (JsonWebKey2020).
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from .errors import InvalidDID, InvalidKey
from .multiformats import (
    ED25519_PUB,
    X25519_PUB,
    b58decode,
    b58encode,
    multibase_encode,
    varint_decode,
)

DID_KEY_PREFIX = "did:key:"
MAX_DID_LENGTH = 256
_DID_KEY_RE = re.compile(r"^did:key:z[1-9A-HJ-NP-Za-km-z]{1,200}$")

DID_CONTEXT = "https://www.w3.org/ns/did/v1"
MULTIKEY_CONTEXT = "https://w3id.org/security/multikey/v1"
ED25519_2018_CONTEXT = "https://w3id.org/security/suites/ed25519-2018/v1"
X25519_2019_CONTEXT = "https://w3id.org/security/suites/x25519-2019/v1"
JWS_2020_CONTEXT = "https://w3id.org/security/suites/jws-2020/v1"

Representation = Literal["multikey", "legacy", "jwk"]

_CODEC_NAMES = {ED25519_PUB: "Ed25519", X25519_PUB: "X25519"}


def ed25519_to_x25519_public(ed_pub: bytes) -> bytes:
    """Birational map Edwards -> Montgomery; rejects points not on the curve. (PyNaCl is
    imported here, when first needed: see :mod:`.keys`.)"""
    from nacl import bindings  # noqa: PLC0415
    from nacl.exceptions import RuntimeError as NaclRuntimeError  # noqa: PLC0415

    try:
        return bindings.crypto_sign_ed25519_pk_to_curve25519(ed_pub)
    except NaclRuntimeError as exc:
        raise InvalidKey("Ed25519 public key is not a valid curve point") from exc


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class DidKey:
    """A parsed did:key: a multicodec (Ed25519 or X25519) and 32 public-key bytes."""

    codec: int
    public: bytes

    def __post_init__(self) -> None:
        if self.codec not in _CODEC_NAMES:
            raise InvalidKey(f"unsupported did:key key type (multicodec 0x{self.codec:x})")
        if len(self.public) != 32:
            raise InvalidKey(f"public key is {len(self.public)} bytes, expected 32")

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_ed25519(cls, public: bytes) -> DidKey:
        key = cls(ED25519_PUB, bytes(public))
        key.x25519_public  # noqa: B018  (must be a curve point; computed once, kept)
        return key

    @classmethod
    def parse(cls, did: str) -> DidKey:
        """Parse ``did:key:z...`` (a trailing ``#fragment`` is ignored). Results are
        memoised: parsing, and the keys derived from a DidKey, are pure and cost ~0.1 ms
        each, and a session handles the same few DIDs many times."""
        if cls is DidKey and isinstance(did, str):
            return _parse_memo(did)
        return cls._parse(did)

    @classmethod
    def _parse(cls, did: str) -> DidKey:
        if not isinstance(did, str):
            raise InvalidDID("a DID must be a string")
        if len(did) > MAX_DID_LENGTH:
            raise InvalidDID(f"DID is longer than {MAX_DID_LENGTH} characters")
        base = did.split("#", 1)[0]
        if not base.startswith(DID_KEY_PREFIX):
            raise InvalidDID(f"not a did:key: {did[:60]!r}")
        if not _DID_KEY_RE.match(base):
            raise InvalidDID(f"malformed did:key {did[:60]!r}: expected did:key:z<base58btc>")
        try:
            data = b58decode(base[len(DID_KEY_PREFIX) + 1 :])
            codec, used = varint_decode(data)
        except InvalidKey as exc:
            raise InvalidDID(f"malformed did:key {did[:60]!r}: {exc.message}") from exc
        if codec not in _CODEC_NAMES:
            raise InvalidDID(
                f"did:key {did[:60]!r} has multicodec 0x{codec:x}; "
                "didmesh supports Ed25519 (0xed) and X25519 (0xec) keys"
            )
        raw = data[used:]
        if len(raw) != 32:
            raise InvalidDID(
                f"did:key {did[:60]!r} holds a {len(raw)}-byte key; "
                f"{_CODEC_NAMES[codec]} keys are 32 bytes"
            )
        key = cls(codec, raw)
        if codec == ED25519_PUB:
            try:
                key.x25519_public  # noqa: B018  (must be a curve point)
            except InvalidKey as exc:
                raise InvalidDID(f"did:key {did[:60]!r}: {exc.message}") from exc
        return key

    # -- printing (derived values are computed once per object) ---------------------
    @cached_property
    def fingerprint(self) -> str:
        return multibase_encode(self.codec, self.public)

    @cached_property
    def did(self) -> str:
        return DID_KEY_PREFIX + self.fingerprint

    def __str__(self) -> str:
        return self.did

    @property
    def can_sign(self) -> bool:
        return self.codec == ED25519_PUB

    @property
    def ed25519_public(self) -> bytes:
        if not self.can_sign:
            raise InvalidKey(f"{self.did} is an X25519 key and cannot sign")
        return self.public

    # -- derived keys and methods -------------------------------------------------
    @cached_property
    def x25519_public(self) -> bytes:
        if self.codec == X25519_PUB:
            return self.public
        return ed25519_to_x25519_public(self.public)

    @cached_property
    def x25519_fingerprint(self) -> str:
        return multibase_encode(X25519_PUB, self.x25519_public)

    @property
    def verification_method_id(self) -> str:
        """The id of the signing method (``did#fingerprint``)."""
        return f"{self.did}#{self.fingerprint}"

    @property
    def key_agreement_id(self) -> str:
        return f"{self.did}#{self.x25519_fingerprint}"

    def _method(self, kid: str, curve: str, raw: bytes, rep: Representation) -> dict[str, Any]:
        method: dict[str, Any] = {"id": kid, "type": "", "controller": self.did}
        if rep == "multikey":
            method["type"] = "Multikey"
            codec = ED25519_PUB if curve == "Ed25519" else X25519_PUB
            method["publicKeyMultibase"] = multibase_encode(codec, raw)
        elif rep == "legacy":
            method["type"] = (
                "Ed25519VerificationKey2018" if curve == "Ed25519" else "X25519KeyAgreementKey2019"
            )
            method["publicKeyBase58"] = b58encode(raw)
        else:
            method["type"] = "JsonWebKey2020"
            method["publicKeyJwk"] = {"kty": "OKP", "crv": curve, "x": _b64url(raw)}
        return method

    def document(self, representation: Representation = "multikey") -> dict[str, Any]:
        """The DID document, resolved locally."""
        contexts = {
            "multikey": [DID_CONTEXT, MULTIKEY_CONTEXT],
            "legacy": [DID_CONTEXT]
            + ([ED25519_2018_CONTEXT] if self.can_sign else [])
            + [X25519_2019_CONTEXT],
            "jwk": [DID_CONTEXT, JWS_2020_CONTEXT],
        }[representation]
        if not self.can_sign:
            kid = self.verification_method_id
            return {
                "@context": contexts,
                "id": self.did,
                "verificationMethod": [self._method(kid, "X25519", self.public, representation)],
                "keyAgreement": [kid],
            }
        vm = self.verification_method_id
        ka = self.key_agreement_id
        return {
            "@context": contexts,
            "id": self.did,
            "verificationMethod": [
                self._method(vm, "Ed25519", self.public, representation),
                self._method(ka, "X25519", self.x25519_public, representation),
            ],
            "assertionMethod": [vm],
            "authentication": [vm],
            "capabilityInvocation": [vm],
            "capabilityDelegation": [vm],
            "keyAgreement": [ka],
        }


@functools.lru_cache(maxsize=4096)
def _parse_memo(did: str) -> DidKey:
    return DidKey._parse(did)
