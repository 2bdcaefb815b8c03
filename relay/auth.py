"""Proof of DID control: challenge -> signature -> bearer token (specs/relay.md, "Authentication").

1. ``POST /v1/auth/challenge {"did"}``: the relay returns a challenge string
   ``c1.<payload>.<mac>`` whose payload names the relay id, the DID, a random nonce and an
   expiry. The relay keeps no state: the HMAC (relay secret) makes it unforgeable.
2. The client signs :func:`challenge_signing_input` (label ``didmesh/relay/auth/v1``, the
   relay id, the DID and the challenge) with the DID's Ed25519 key and posts it to
   ``POST /v1/auth/token``. The relay checks the MAC (constant time), the expiry, that the
   DID matches and the signature; the nonce is single-use (claimed in the store).
3. The relay answers with a bearer token ``t1.<payload>.<mac>`` (DID, relay id, expiry),
   sent as ``Authorization: Bearer ...`` on inbox, ack, push and link requests.

No I/O here: time (``now_ms``) and randomness (``rng``) are parameters.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import IdentityError
from didmesh.identity.keys import IdentityKey, verify_ed25519

from .envelope import b64url, b64url_decode
from .errors import (
    AuthExpired,
    AuthInvalid,
    DidNotControlled,
    InvalidEnvelope,
    MalformedRequest,
    RelayProtocolError,
)

AUTH_LABEL = b"didmesh/relay/auth/v1"
_CHALLENGE_MAC = b"didmesh/relay/challenge-mac/v1"
_TOKEN_MAC = b"didmesh/relay/token-mac/v1"
NONCE_BYTES = 16
MAX_TOKEN_CHARS = 1024
_RELAY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def valid_relay_id(relay_id: str) -> bool:
    return bool(_RELAY_ID_RE.match(relay_id))


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def challenge_signing_input(relay_id: str, did: str, challenge: str) -> bytes:
    return AUTH_LABEL + _lp(relay_id.encode()) + _lp(did.encode()) + _lp(challenge.encode())


def sign_challenge(identity: IdentityKey, relay_id: str, challenge: str) -> str:
    """The client's half: base64url Ed25519 signature over the challenge."""
    return b64url(identity.sign(challenge_signing_input(relay_id, identity.did, challenge)))


def answer_challenge(identity: IdentityKey, reply: Any) -> tuple[str, dict[str, str]]:
    """The client's step 2: from the relay's ``/v1/auth/challenge`` reply, the relay id it
    names and the signed ``/v1/auth/token`` request body."""
    try:
        challenge, relay_id = str(reply["challenge"]), str(reply["relay_id"])
    except (KeyError, TypeError):
        raise RelayProtocolError("malformed challenge from the relay") from None
    sig = sign_challenge(identity, relay_id, challenge)
    return relay_id, {"did": identity.did, "challenge": challenge, "signature": sig}


def parse_signing_did(did: object) -> str:
    """A bare Ed25519 did:key (one that can sign), or :class:`MalformedRequest`."""
    if not isinstance(did, str):
        raise MalformedRequest("did must be a did:key string")
    try:
        key = DidKey.parse(did)
    except IdentityError as exc:
        raise MalformedRequest(f"did: {exc.message}") from None
    if not key.can_sign or key.did != did:
        raise MalformedRequest("did must be a bare Ed25519 did:key (it has to sign)")
    return did


@dataclass(frozen=True)
class Challenge:
    encoded: str
    did: str
    nonce: str
    expires_ms: int


@dataclass(frozen=True)
class Token:
    encoded: str
    did: str
    expires_ms: int


class Authenticator:
    """Issues and checks challenges and tokens for one relay (all processes share ``secret``)."""

    def __init__(
        self,
        secret: bytes,
        relay_id: str,
        *,
        challenge_ttl_ms: int = 60_000,
        token_ttl_ms: int = 600_000,
    ) -> None:
        if len(secret) < 32:
            raise ValueError("relay secret must be at least 32 bytes")
        if not valid_relay_id(relay_id):
            raise ValueError("relay id must be 1..64 characters of [A-Za-z0-9._-]")
        self.relay_id = relay_id
        self._cmac = hmac.new(secret, _CHALLENGE_MAC, hashlib.sha256).digest()
        self._tmac = hmac.new(secret, _TOKEN_MAC, hashlib.sha256).digest()
        self.challenge_ttl_ms = challenge_ttl_ms
        self.token_ttl_ms = token_ttl_ms

    # -- helpers ----------------------------------------------------------------------
    def _seal(self, prefix: str, key: bytes, fields: list[str]) -> str:
        payload = "|".join(fields).encode()
        mac = hmac.new(key, prefix.encode() + _lp(payload), hashlib.sha256).digest()
        return f"{prefix}.{b64url(payload)}.{b64url(mac)}"

    def _open(self, prefix: str, key: bytes, text: object, n: int) -> list[str]:
        what = "challenge" if prefix == "c1" else "token"
        if not isinstance(text, str) or len(text) > MAX_TOKEN_CHARS:
            raise AuthInvalid(f"{what} is not a string of at most {MAX_TOKEN_CHARS} characters")
        parts = text.split(".")
        if len(parts) != 3 or parts[0] != prefix:
            raise AuthInvalid(f"{what} is malformed")
        try:
            payload, mac = b64url_decode(parts[1]), b64url_decode(parts[2])
        except InvalidEnvelope:
            raise AuthInvalid(f"{what} is malformed") from None
        want = hmac.new(key, prefix.encode() + _lp(payload), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, want):
            raise AuthInvalid(f"{what} was not issued by this relay (or was altered)")
        fields = payload.decode().split("|")
        if len(fields) != n or fields[0] != self.relay_id:
            raise AuthInvalid(f"{what} was issued for another relay")
        return fields

    # -- challenges ---------------------------------------------------------------------
    def issue_challenge(
        self, did: str, *, now_ms: int, rng: Callable[[int], bytes] = os.urandom
    ) -> Challenge:
        did = parse_signing_did(did)
        nonce = b64url(rng(NONCE_BYTES))
        expires = now_ms + self.challenge_ttl_ms
        enc = self._seal("c1", self._cmac, [self.relay_id, did, nonce, str(expires)])
        return Challenge(enc, did, nonce, expires)

    def redeem(
        self, did: object, challenge: object, signature: object, *, now_ms: int
    ) -> Challenge:
        """Check a signed challenge; the caller must then claim ``nonce`` (single use)."""
        did = parse_signing_did(did)
        _, cdid, nonce, exp = self._open("c1", self._cmac, challenge, 4)
        if cdid != did:
            raise AuthInvalid("the challenge was issued for another DID")
        if now_ms > int(exp):
            raise AuthExpired("the challenge has expired: request a new one")
        if not isinstance(signature, str):
            raise MalformedRequest("signature must be a base64url string")
        try:
            sig = b64url_decode(signature, "signature")
        except InvalidEnvelope as exc:
            raise MalformedRequest(exc.message) from None
        assert isinstance(challenge, str)
        try:
            verify_ed25519(
                DidKey.parse(did).ed25519_public,
                challenge_signing_input(self.relay_id, did, challenge),
                sig,
            )
        except IdentityError:
            raise DidNotControlled(
                f"the challenge signature does not verify with the key of {did[:40]}...: "
                "sign with the identity that owns this DID"
            ) from None
        return Challenge(challenge, did, nonce, int(exp))

    # -- tokens ---------------------------------------------------------------------------
    def issue_token(self, did: str, *, now_ms: int) -> Token:
        expires = now_ms + self.token_ttl_ms
        return Token(self._seal("t1", self._tmac, [self.relay_id, did, str(expires)]), did, expires)

    def verify_token(self, token: object, *, now_ms: int) -> Token:
        _, did, exp = self._open("t1", self._tmac, token, 3)
        if now_ms > int(exp):
            raise AuthExpired("the bearer token has expired: authenticate again")
        assert isinstance(token, str)
        return Token(token, did, int(exp))
