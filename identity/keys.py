"""Long-term identity keys (specs/identity.md, "Keys and derivations").

An identity is one 32-byte Ed25519 seed. Everything else follows from it:

* the Ed25519 signing key and its did:key;
* the X25519 key-agreement key of the did:key document (libsodium
  ``crypto_sign_ed25519_sk_to_curve25519``), used only to receive envelopes encrypted
  to this DID;
* purpose-labelled subkeys via :meth:`IdentityKey.derive` (BLAKE2b keyed by the seed,
  personalised with a purpose label), so one secret never serves two purposes.

The seed never leaves this object except through :meth:`seed_bytes`, used by the keystore.

Signing uses ``cryptography`` (Ed25519 signatures are deterministic, RFC 8032: the same
bytes as libsodium's); verifying and the X25519 conversions use libsodium (PyNaCl) for its
strict checks, imported when first needed: a party's run process signs but seldom
verifies, and PyNaCl's import (~5 ms) would otherwise be on every party's start-up path
(specs/mesh.md, 11).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .didkey import DidKey
from .errors import InvalidKey, InvalidProof
from .multiformats import ED25519_PUB

SEED_BYTES = 32


def verify_ed25519(public: bytes, message: bytes, signature: bytes) -> None:
    """Raise :class:`InvalidProof` unless ``signature`` is valid over ``message``."""
    if len(signature) != 64:
        raise InvalidProof(f"Ed25519 signature is {len(signature)} bytes, expected 64")
    from nacl.exceptions import BadSignatureError  # noqa: PLC0415  (see the module's note)
    from nacl.signing import VerifyKey  # noqa: PLC0415

    try:
        VerifyKey(public).verify(message, signature)
    except BadSignatureError:
        raise InvalidProof("signature does not verify") from None
    except (ValueError, TypeError) as exc:  # malformed key
        raise InvalidKey(str(exc)) from exc


@dataclass(frozen=True, repr=False)
class IdentityKey:
    """An Ed25519 identity (private). ``repr`` never shows the secret."""

    _seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self._seed) != SEED_BYTES:
            raise InvalidKey(f"identity seed is {len(self._seed)} bytes, expected {SEED_BYTES}")

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(os.urandom(SEED_BYTES))

    @classmethod
    def from_seed(cls, seed: bytes) -> IdentityKey:
        return cls(bytes(seed))

    def seed_bytes(self) -> bytes:
        return self._seed

    def __repr__(self) -> str:
        return f"IdentityKey({self.did})"

    # -- Ed25519 ----------------------------------------------------------------
    @cached_property  # derived once per object: a did:key costs ~0.1 ms to rebuild
    def _signing(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self._seed)

    @cached_property
    def ed25519_public(self) -> bytes:
        return self._signing.public_key().public_bytes_raw()

    @cached_property
    def did_key(self) -> DidKey:
        # derived from the seed, so a curve point: no check (it would import PyNaCl)
        return DidKey(ED25519_PUB, self.ed25519_public)

    @cached_property
    def did(self) -> str:
        return self.did_key.did

    @property
    def verification_method(self) -> str:
        return self.did_key.verification_method_id

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)

    # -- X25519 key agreement (did:key derivation) ---------------------------------
    @property
    def x25519_private(self) -> bytes:
        from nacl import bindings  # noqa: PLC0415  (see the module's note)

        sk = bindings.crypto_sign_seed_keypair(self._seed)[1]
        return bindings.crypto_sign_ed25519_sk_to_curve25519(sk)

    @property
    def x25519_public(self) -> bytes:
        return self.did_key.x25519_public

    # -- purpose-labelled derivations ------------------------------------------------
    def derive(self, purpose: str, length: int = 32) -> bytes:
        """A subkey for one purpose. ``purpose`` must be a registered label (<= 16 bytes)."""
        label = purpose.encode()
        if not 0 < len(label) <= 16:
            raise ValueError("purpose label must be 1..16 bytes")
        return hashlib.blake2b(b"", digest_size=length, key=self._seed, person=label).digest()
