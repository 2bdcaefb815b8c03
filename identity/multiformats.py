"""Multibase (base58btc only) and multicodec prefixes, as did:key needs them.

Specs: https://www.w3.org/TR/cid-1.0/#multibase-0 (base58btc, prefix ``z``) and the
multicodec table (unsigned-varint prefixes ``0xed`` ed25519-pub, ``0xec``
x25519-pub, ``0x1300`` ed25519-priv).
"""

from __future__ import annotations

from .errors import InvalidKey

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(B58_ALPHABET)}

ED25519_PUB = 0xED
X25519_PUB = 0xEC
ED25519_PRIV = 0x1300


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(B58_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise InvalidKey(f"invalid base58btc character {c!r}") from None
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def varint_encode(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint_decode(data: bytes) -> tuple[int, int]:
    """Decode an unsigned varint; return (value, bytes consumed)."""
    n = shift = 0
    for i, b in enumerate(data[:9]):
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            if i and b == 0:
                raise InvalidKey("non-minimal multicodec varint")
            return n, i + 1
        shift += 7
    raise InvalidKey("truncated multicodec varint")


def multibase_encode(codec: int, raw: bytes) -> str:
    """``z`` + base58btc(varint(codec) + raw)."""
    return "z" + b58encode(varint_encode(codec) + raw)


def multibase_decode(text: str, codec: int, length: int) -> bytes:
    """Decode a base58btc multibase key, checking its multicodec and length."""
    if not isinstance(text, str) or not text.startswith("z"):
        raise InvalidKey("multibase value must be base58btc (start with 'z')")
    if len(text) > 2 * length + 16:  # base58 costs O(n^2): cap before decoding
        raise InvalidKey(f"multibase value is {len(text)} characters, too long for the key")
    data = b58decode(text[1:])
    got, used = varint_decode(data)
    if got != codec:
        raise InvalidKey(f"multicodec prefix 0x{got:x} where 0x{codec:x} was expected")
    raw = data[used:]
    if len(raw) != length:
        raise InvalidKey(f"key is {len(raw)} bytes, expected {length}")
    return raw
