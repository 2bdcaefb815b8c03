"""The cryptographic functions a Noise protocol name selects (Noise spec rev. 34, sections 4, 12).

* DH: ``25519`` (X25519 from ``cryptography``).
* Cipher: ``ChaChaPoly`` (ChaCha20-Poly1305, nonce = 4 zero bytes || little-endian 64-bit
  counter) and ``AESGCM`` (AES-256-GCM, nonce = 4 zero bytes || big-endian counter).
* Hash: ``BLAKE2s``, ``BLAKE2b``, ``SHA256``, ``SHA512`` (``hashlib``), with HMAC and the
  spec's HKDF (section 4.3).

Only what the spec defines is here; the state machines live in :mod:`.noise`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .errors import HandshakeFailed, NoiseUsageError, UnsupportedProtocol

try:  # X25519 keys straight from cryptography's Rust core (see x25519_private_key)
    from cryptography.hazmat.bindings._rust import openssl as _rust_openssl

    _RUST_X25519: Any = _rust_openssl.x25519
except (ImportError, AttributeError):  # pragma: no cover - another cryptography layout
    _RUST_X25519 = None

#: The largest Noise message (handshake or transport), section 3.
MAX_MESSAGE_LEN: Final = 65535
#: Authentication tag length of both AEAD ciphers.
TAG_LEN: Final = 16
#: Cipher key length.
KEY_LEN: Final = 32
#: The reserved nonce value (section 5.1): never used for a message, only by REKEY.
MAX_NONCE: Final = 2**64 - 1


# --------------------------------------------------------------------------- DH


def x25519_private_key(private: bytes) -> X25519PrivateKey:
    """``X25519PrivateKey.from_private_bytes(private)``, without the import that call
    makes on first use (cryptography's legacy OpenSSL backend, only to ask whether X25519
    is supported: ~4 ms of every party's start-up, specs/mesh.md 11). The Rust core's
    constructor is the one the public method ends in; when this cryptography lays its
    core out otherwise, the public method is used."""
    if _RUST_X25519 is None:  # pragma: no cover
        return X25519PrivateKey.from_private_bytes(private)
    return _RUST_X25519.from_private_bytes(private)


def x25519_public_key(public: bytes) -> X25519PublicKey:
    """``X25519PublicKey.from_public_bytes(public)`` the same way."""
    if _RUST_X25519 is None:  # pragma: no cover
        return X25519PublicKey.from_public_bytes(public)
    return _RUST_X25519.from_public_bytes(public)


def x25519_generate() -> X25519PrivateKey:
    """``X25519PrivateKey.generate()`` the same way."""
    if _RUST_X25519 is None:  # pragma: no cover
        return X25519PrivateKey.generate()
    return _RUST_X25519.generate_key()



@dataclass(frozen=True, repr=False)
class KeyPair:
    """A DH key pair. ``repr`` never shows the private key."""

    private: bytes
    public: bytes
    _key: Any = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()})"


class DH25519:
    """Curve25519 DH (``25519``): DHLEN = 32."""

    name: Final = "25519"
    dhlen: Final = 32

    def keypair(self, private: bytes) -> KeyPair:
        """The key pair with this 32-byte private key (clamping is X25519's job)."""
        if len(private) != self.dhlen:
            raise NoiseUsageError(
                f"an X25519 private key is {self.dhlen} bytes, got {len(private)}"
            )
        key = x25519_private_key(private)
        return KeyPair(private, key.public_key().public_bytes_raw(), key)

    def generate_keypair(self) -> KeyPair:
        """GENERATE_KEYPAIR(): a fresh key pair from the operating system's CSPRNG."""
        key = x25519_generate()
        return KeyPair(key.private_bytes_raw(), key.public_key().public_bytes_raw(), key)

    def dh(self, keypair: KeyPair, public: bytes) -> bytes:
        """DH(key_pair, public_key). A low-order peer key (all-zero result) fails the handshake."""
        key = keypair._key or x25519_private_key(keypair.private)
        try:
            return key.exchange(x25519_public_key(public))
        except ValueError as exc:
            raise HandshakeFailed(
                "the peer sent an invalid (low-order) X25519 public key", reason="invalid_key"
            ) from exc


# --------------------------------------------------------------------------- ciphers


class CipherFunctions:
    """An AEAD cipher of the Noise spec: a constructor and a nonce encoding."""

    name: str
    aead: Callable[[bytes], Any]
    nonce: Callable[[int], bytes]

    def encrypt(self, k: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
        """ENCRYPT(k, n, ad, plaintext) with a one-off cipher object (REKEY, tests)."""
        return bytes(self.aead(k).encrypt(self.nonce(n), plaintext, ad))

    def rekey(self, k: bytes) -> bytes:
        """REKEY(k) = ENCRYPT(k, maxnonce, zerolen, zeros)[:32] (section 4.2)."""
        return self.encrypt(k, MAX_NONCE, b"", bytes(KEY_LEN))[:KEY_LEN]


class ChaChaPoly(CipherFunctions):
    name = "ChaChaPoly"
    aead = ChaCha20Poly1305
    nonce = struct.Struct("<4xQ").pack


class AESGCMCipher(CipherFunctions):
    name = "AESGCM"
    aead = AESGCM
    nonce = struct.Struct(">4xQ").pack


# --------------------------------------------------------------------------- hashes


class HashFunctions:
    """HASH, HMAC-HASH and HKDF for one hash function (section 4.3)."""

    def __init__(self, name: str, constructor: Callable[..., Any]) -> None:
        self.name = name
        self._new = constructor
        probe = constructor()
        self.hashlen: int = probe.digest_size
        self.blocklen: int = probe.block_size

    def hash(self, data: bytes) -> bytes:
        return bytes(self._new(data).digest())

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self._new).digest()

    def hkdf(self, chaining_key: bytes, ikm: bytes, num_outputs: int) -> list[bytes]:
        """HKDF(chaining_key, input_key_material, num_outputs) with 2 or 3 outputs."""
        temp_key = self.hmac(chaining_key, ikm)
        out = [self.hmac(temp_key, b"\x01")]
        for i in range(2, num_outputs + 1):
            out.append(self.hmac(temp_key, out[-1] + bytes([i])))
        return out


DH_FUNCTIONS: Final[dict[str, DH25519]] = {"25519": DH25519()}
CIPHER_FUNCTIONS: Final[dict[str, CipherFunctions]] = {
    "ChaChaPoly": ChaChaPoly(),
    "AESGCM": AESGCMCipher(),
}
HASH_FUNCTIONS: Final[dict[str, HashFunctions]] = {
    "BLAKE2s": HashFunctions("BLAKE2s", hashlib.blake2s),
    "BLAKE2b": HashFunctions("BLAKE2b", hashlib.blake2b),
    "SHA256": HashFunctions("SHA256", hashlib.sha256),
    "SHA512": HashFunctions("SHA512", hashlib.sha512),
}


def lookup(kind: str, table: dict[str, Any], name: str) -> Any:
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise UnsupportedProtocol(
            f"unsupported Noise {kind} {name!r} (supported: {known})"
        ) from None
