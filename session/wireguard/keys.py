"""WireGuard keys from the per-session X25519 keys (specs/wireguard.md, sections 2 and 3).

WireGuard keys are raw Curve25519 keys, 32 bytes, written in standard base64 (44
characters). This party's WireGuard private key *is* its per-session X25519 private key
(the one whose public half its acceptance bound to its DID), clamped as X25519 clamps it
anyway, so ``wg pubkey`` gives exactly the roster's session key.

Every pair also shares a PresharedKey that only the two parties can compute and that
binds the agreed roster::

    dh   = X25519(my_private, their_public)                  # 32 bytes, never all zero
    psk  = HKDF-SHA256(salt = roster_hash,                    # 32 bytes
                       ikm  = dh,
                       info = "didmesh/wireguard/psk/v1" || 0x00
                              || uint32_be(lo_id) || uint32_be(hi_id)
                              || public(lo_id) || public(hi_id),
                       L    = 32)

``lo_id < hi_id`` are the two party ids; ``public(i)`` is party i's session key. Both
sides compute the same bytes; a party holding another roster (another hash) computes
another PSK, and WireGuard's handshake then fails.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from didmesh.session.mesh.primitives import x25519_private_key, x25519_public_key

from .errors import WgConfigInvalid, WgPeerKeyInvalid, WgUsageError

KEY_LEN = 32
PSK_LABEL = b"didmesh/wireguard/psk/v1"
_MAX_ID = 2**32 - 1


def encode_key(raw: bytes) -> str:
    """32 raw bytes -> WireGuard's base64 form (44 characters, one '=')."""
    if len(raw) != KEY_LEN:
        raise WgUsageError(f"a WireGuard key is {KEY_LEN} bytes, got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def decode_key(text: str, what: str = "key") -> bytes:
    """WireGuard's base64 form -> 32 raw bytes; anything else is :class:`WgConfigInvalid`."""
    if len(text) != 44 or not text.endswith("="):
        raise WgConfigInvalid(f"{what}: not a base64 WireGuard key (44 characters)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WgConfigInvalid(f"{what}: not a base64 WireGuard key") from None
    if len(raw) != KEY_LEN or base64.b64encode(raw).decode("ascii") != text:
        raise WgConfigInvalid(f"{what}: not a canonical base64 WireGuard key")
    return raw


def clamp(private: bytes) -> bytes:
    """Curve25519 clamping (RFC 7748, section 5); X25519 applies it to every scalar."""
    if len(private) != KEY_LEN:
        raise WgUsageError(f"a private key is {KEY_LEN} bytes, got {len(private)}")
    k = bytearray(private)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return bytes(k)


def wg_private_key(session_private: bytes) -> bytes:
    """This party's WireGuard private key: its per-session X25519 key, clamped (the same
    scalar for X25519; ``wg showconf`` shows keys clamped, so rendering them clamped keeps
    configs byte-comparable)."""
    return clamp(session_private)


def wg_public_key(private: bytes) -> bytes:
    return x25519_private_key(private).public_key().public_bytes_raw()


def _dh(my_private: bytes, their_public: bytes, their_id: int) -> bytes:
    try:
        shared = x25519_private_key(my_private).exchange(x25519_public_key(their_public))
    except ValueError:  # cryptography refuses an all-zero (low-order) result
        shared = bytes(KEY_LEN)
    if hmac.compare_digest(shared, bytes(KEY_LEN)):
        raise WgPeerKeyInvalid(
            f"party {their_id}'s session key is a low-order point; no key can be agreed with it"
        )
    return shared


def psk_info(roster_hash: bytes, id_a: int, pub_a: bytes, id_b: int, pub_b: bytes) -> bytes:
    """The HKDF ``info`` for the pair (a, b); symmetric in its two parties."""
    if id_a == id_b or not (0 <= id_a <= _MAX_ID and 0 <= id_b <= _MAX_ID):
        raise WgUsageError(f"party ids {id_a} and {id_b} must differ and fit in 32 bits")
    if len(pub_a) != KEY_LEN or len(pub_b) != KEY_LEN:
        raise WgUsageError("session public keys are 32 bytes")
    (lo, pub_lo), (hi, pub_hi) = sorted(((id_a, pub_a), (id_b, pub_b)))
    return (
        PSK_LABEL + b"\0" + lo.to_bytes(4, "big") + hi.to_bytes(4, "big") + pub_lo + pub_hi
    )


def derive_psk(
    my_private: bytes, their_public: bytes, roster_hash: bytes, my_id: int, their_id: int
) -> bytes:
    """The pair's 32-byte WireGuard PresharedKey (module docstring for the layout)."""
    if len(roster_hash) != 32:
        raise WgUsageError(f"a roster hash is 32 bytes, got {len(roster_hash)}")
    mine = wg_public_key(clamp(my_private))
    info = psk_info(roster_hash, my_id, mine, their_id, their_public)
    ikm = _dh(my_private, their_public, their_id)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=roster_hash, info=info).derive(ikm)
