"""Signed, encrypted mailbox envelopes (specs/relay.md, "Envelopes").

An envelope is a JSON object ``{v, id, from, to, session, ts, ttl, body, sig}``:

* ``from`` signs every other field with its did:key Ed25519 key over a domain-separated,
  length-prefixed encoding (:func:`signing_input`, label ``didmesh/relay/envelope/v1``);
* ``body`` is ``eph_pub || XChaCha20-Poly1305(key, nonce, plaintext, ad=header)`` where
  ``key || nonce = BLAKE2b-448(label || eph_pub || sender_x || recipient_x || DH(eph, R)
  || DH(S, R))``: the ephemeral DH gives forward secrecy against a later sender-key
  compromise, the static-static DH binds the sender (only S or R could have computed it),
  and the header as associated data stops a relay from re-addressing the body or splicing it
  into another envelope, session or id.

Everything here is pure: time and randomness are parameters (``now_ms``, ``rng``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import IdentityError
from didmesh.identity.keys import IdentityKey, verify_ed25519
from didmesh.identity.strict_json import loads_strict
from nacl import bindings
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaclRuntimeError

from .errors import EnvelopeRejected, ForgedSender, InvalidEnvelope, TooLarge, client_names

VERSION = 1
SIG_LABEL = b"didmesh/relay/envelope/v1"
AD_LABEL = b"didmesh/relay/envelope-ad/v1"
KDF_LABEL = b"didmesh/relay/body/v1"

ID_BYTES = 16
MAX_SESSION_CHARS = 128
MAX_TTL_S = 30 * 24 * 3600
DEFAULT_TTL_S = 24 * 3600
DEFAULT_MAX_SKEW_MS = 60_000
#: a hard ceiling on the JSON form; relays configure a (smaller) limit of their own
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024
_MAX_TS = 2**53 - 1

_FIELDS = ("v", "id", "from", "to", "session", "ts", "ttl", "body", "sig")
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")
_SESSION_RE = re.compile(r"^[\x21-\x7e]{1,128}$")

_EPH = 32
_TAG = bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str, what: str = "value") -> bytes:
    """Strict unpadded base64url; raises :class:`InvalidEnvelope`."""
    if not isinstance(text, str) or not _B64URL_RE.match(text) or len(text) % 4 == 1:
        raise InvalidEnvelope(f"{what} is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidEnvelope(f"{what} is not unpadded base64url") from None
    if b64url(raw) != text:  # non-canonical trailing bits
        raise InvalidEnvelope(f"{what} is not canonical base64url")
    return raw


def new_id(rng: Callable[[int], bytes] = os.urandom) -> str:
    return b64url(rng(ID_BYTES))


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _header(v: int, id_: str, frm: str, to: str, session: str, ts: int, ttl: int) -> bytes:
    return b"".join(
        (
            _lp(v.to_bytes(2, "big")),
            _lp(id_.encode()),
            _lp(frm.encode()),
            _lp(to.encode()),
            _lp(session.encode()),
            _lp(ts.to_bytes(8, "big")),
            _lp(ttl.to_bytes(4, "big")),
        )
    )


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope. Construct with :func:`seal` or :meth:`from_json`."""

    id: str
    sender: str
    to: str
    session: str
    ts: int
    ttl: int
    body: bytes
    sig: bytes
    v: int = VERSION

    # -- encodings ------------------------------------------------------------------
    def header(self) -> bytes:
        return _header(self.v, self.id, self.sender, self.to, self.session, self.ts, self.ttl)

    def associated_data(self) -> bytes:
        return AD_LABEL + self.header()

    def signing_input(self) -> bytes:
        return signing_input(self.header(), self.body)

    @property
    def digest(self) -> str:
        """Content hash (hex): two envelopes with one id are duplicates iff digests match."""
        return hashlib.sha256(self.signing_input() + _lp(self.sig)).hexdigest()

    @property
    def expires_ms(self) -> int:
        return self.ts + self.ttl * 1000

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "id": self.id,
            "from": self.sender,
            "to": self.to,
            "session": self.session,
            "ts": self.ts,
            "ttl": self.ttl,
            "body": b64url(self.body),
            "sig": b64url(self.sig),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
        """Parse strictly (:func:`loads_strict`), with the size cap applied first."""
        data = loads_strict(
            raw, max_bytes=max_bytes, error=InvalidEnvelope, what="envelope", too_large=TooLarge
        )
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Envelope:
        if not isinstance(data, dict):
            raise InvalidEnvelope("an envelope must be a JSON object")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise InvalidEnvelope(f"unknown envelope field(s): {client_names(unknown)}")
        missing = [f for f in _FIELDS if f not in data]
        if missing:
            raise InvalidEnvelope(f"envelope field(s) missing: {', '.join(missing)}")
        v = _int(data["v"], "v", 0, 65535)
        if v != VERSION:
            raise InvalidEnvelope(f"envelope version {v} is not supported (expected {VERSION})")
        id_ = data["id"]
        if len(b64url_decode(id_, "id")) != ID_BYTES:
            raise InvalidEnvelope(f"id must encode {ID_BYTES} random bytes")
        sender = _did(data["from"], "from")
        to = _did(data["to"], "to")
        session = data["session"]
        if not isinstance(session, str) or not _SESSION_RE.match(session):
            raise InvalidEnvelope(
                f"session must be 1..{MAX_SESSION_CHARS} printable ASCII characters"
            )
        ts = _int(data["ts"], "ts", 0, _MAX_TS)
        ttl = _int(data["ttl"], "ttl", 1, MAX_TTL_S)
        body = b64url_decode(data["body"], "body")
        if len(body) < _EPH + _TAG:
            raise InvalidEnvelope("body is too short to be a sealed body")
        sig = b64url_decode(data["sig"], "sig")
        if len(sig) != 64:
            raise InvalidEnvelope("sig must be a 64-byte Ed25519 signature")
        return cls(id_, sender, to, session, ts, ttl, body, sig, v)

    # -- checks ---------------------------------------------------------------------
    def verify_signature(self) -> None:
        """Raise :class:`ForgedSender` unless ``from`` signed this envelope."""
        key = parse_did(self.sender)
        if not key.can_sign:
            raise InvalidEnvelope("from must be an Ed25519 did:key (it signs the envelope)")
        try:
            verify_ed25519(key.ed25519_public, self.signing_input(), self.sig)
        except IdentityError:
            raise ForgedSender(
                f"envelope {self.id} is not signed by its sender {self.sender[:40]}..."
            ) from None


def signing_input(header: bytes, body: bytes) -> bytes:
    return SIG_LABEL + _lp(header) + _lp(body)


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise InvalidEnvelope(f"{name} must be an integer in [{lo}, {hi}]")
    return value


@functools.lru_cache(maxsize=4096)
def parse_did(did: str) -> DidKey:
    """:meth:`DidKey.parse`, memoised (a relay sees the same few DIDs over and over)."""
    return DidKey.parse(did)


@functools.lru_cache(maxsize=4096)
def x25519_of(did: str) -> bytes:
    """The X25519 key-agreement key of a did:key, memoised (raises like :func:`parse_did`)."""
    return parse_did(did).x25519_public


@functools.lru_cache(maxsize=64)
def _own(identity: IdentityKey) -> tuple[str, bytes, bytes]:
    """``(did, x25519_public, x25519_private)`` of an identity, memoised: deriving them
    costs ~0.3 ms per envelope otherwise (the cache holds nothing the identity does not)."""
    return identity.did, identity.x25519_public, identity.x25519_private


@functools.lru_cache(maxsize=4096)
def _is_bare(did: str) -> bool:
    """True if ``did`` is a did:key exactly as it prints (raises like :func:`parse_did`)."""
    return parse_did(did).did == did


def _did(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidEnvelope(f"{name} must be a did:key string")
    try:
        bare = _is_bare(value)
    except IdentityError as exc:
        raise InvalidEnvelope(f"{name}: {exc.message}") from None
    if not bare:
        raise InvalidEnvelope(f"{name} must be a bare did:key without fragment")
    return value


def _kdf(eph_pub: bytes, sender_x: bytes, recipient_x: bytes, dh1: bytes, dh2: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=56)
    for part in (KDF_LABEL, eph_pub, sender_x, recipient_x, dh1, dh2):
        h.update(_lp(part))
    return h.digest()


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return bindings.crypto_scalarmult(private, public)
    except NaclRuntimeError:  # libsodium refuses an all-zero result (low-order point)
        raise EnvelopeRejected("key agreement failed: low-order public key") from None


def seal(
    sender: IdentityKey,
    to: str,
    session: str,
    plaintext: bytes,
    *,
    now_ms: int,
    ttl: int = DEFAULT_TTL_S,
    rng: Callable[[int], bytes] = os.urandom,
) -> Envelope:
    """Encrypt ``plaintext`` to ``to``'s key-agreement key and sign as ``sender``."""
    recipient_x = x25519_of(to)
    if not _is_bare(to):
        to = parse_did(to).did
    sender_did, sender_x, sender_x_private = _own(sender)
    id_ = new_id(rng)
    header = _header(VERSION, id_, sender_did, to, session, now_ms, ttl)
    eph_sk = rng(32)
    eph_pub = bindings.crypto_scalarmult_base(eph_sk)
    okm = _kdf(
        eph_pub,
        sender_x,
        recipient_x,
        _dh(eph_sk, recipient_x),
        _dh(sender_x_private, recipient_x),
    )
    ct = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, AD_LABEL + header, okm[32:], okm[:32]
    )
    body = eph_pub + ct
    sig = sender.sign(signing_input(header, body))
    env = Envelope(id_, sender_did, to, session, now_ms, ttl, body, sig)
    Envelope.from_dict(env.to_dict())  # validates session, ttl and ts ranges
    return env


def open_envelope(
    recipient: IdentityKey,
    env: Envelope,
    *,
    now_ms: int,
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
) -> bytes:
    """Verify and decrypt an envelope addressed to ``recipient``.

    Raises :class:`EnvelopeRejected` (detailed message for the local user) if it is
    addressed to someone else, not signed by its sender, not fresh, or the body was altered.
    """
    recipient_did, recipient_x, x_priv = _own(recipient)
    if env.to != recipient_did:
        raise EnvelopeRejected(f"envelope {env.id} is addressed to {env.to[:40]}..., not to us")
    try:
        env.verify_signature()
    except (ForgedSender, InvalidEnvelope, IdentityError) as exc:
        raise EnvelopeRejected(f"envelope {env.id}: {exc.message}") from None
    if env.ts > now_ms + max_skew_ms:
        raise EnvelopeRejected(f"envelope {env.id} is dated in the future (check clocks)")
    if now_ms > env.expires_ms:
        raise EnvelopeRejected(f"envelope {env.id} expired {now_ms - env.expires_ms} ms ago")
    sender_x = x25519_of(env.sender)  # parsed by verify_signature already
    eph_pub, ct = env.body[:_EPH], env.body[_EPH:]
    dh1, dh2 = _dh(x_priv, eph_pub), _dh(x_priv, sender_x)
    okm = _kdf(eph_pub, sender_x, recipient_x, dh1, dh2)
    try:
        return bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ct, env.associated_data(), okm[32:], okm[:32]
        )
    except CryptoError:
        raise EnvelopeRejected(
            f"envelope {env.id}: body does not decrypt (altered, spliced or not for us)"
        ) from None
