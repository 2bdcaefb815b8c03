"""Open invites by short code, sans I/O (specs/session-protocol.md, "Invite codes").

A code ``N-word-word`` names a public *nameplate* ``N`` and carries the PAKE password
(the whole normalized code; its entropy is the words'). The rendezvous happens through
ordinary relay mailboxes:

* the organizer listens on the nameplate's mailbox, the inbox of a DID whose key is
  derived from the nameplate alone (:func:`rendezvous_key`) -- anyone can read it,
  which is fine: only PAKE messages and boxes sealed under the PAKE key go there;
* the claimant makes a throw-away reply identity and sends ``hello`` (its SPAKE2 message)
  to the nameplate mailbox; the organizer answers on the reply mailbox with its SPAKE2
  message and a box (key confirmation + who the organizer is); the claimant sends its DID,
  signed over the PAKE transcript, in a box; the organizer issues the addressed invite and
  returns it in a box (and through the claimant's own mailbox).

SPAKE2 (the ``spake2`` package, Ed25519 group) gives a relay that sees everything no
offline test of a guess; an active attacker gets one online guess per code, and the
first claim attempt consumes the code (a second one is rejected as "already claimed").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import DidmeshError, IdentityError
from didmesh.identity.keys import IdentityKey, verify_ed25519
from didmesh.identity.strict_json import loads_strict
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from .errors import CodeAlreadyClaimed, CodeError, CodeExpired, MessageInvalid, WrongCode

RENDEZVOUS_PERSON = b"didmesh-nameplt"
CODE_SESSION = "didmesh-code"  # the envelope ``session`` of rendezvous traffic
CLAIM_TIMEOUT_MS = 120_000  # a started claim that does not finish burns the code
MAX_CODE_MESSAGE = 256 * 1024
#: what the spake2 package raises for a malformed or off-curve peer message
_PAKE_ERRORS = (SPAKEError, NotOnCurve, ValueError, AssertionError)
CLAIM_LABEL = b"didmesh/code-claim/v1\0"
_ID_A = b"didmesh/code/v1/organizer/"
_ID_B = b"didmesh/code/v1/claimant/"

Rng = Callable[[int], bytes]


def rendezvous_key(nameplate: int) -> IdentityKey:
    """The public, nameplate-derived identity whose inbox is the code's mailbox."""
    seed = hashlib.blake2b(
        f"didmesh/code/v1/nameplate/{nameplate}".encode(), digest_size=32, person=RENDEZVOUS_PERSON
    ).digest()
    return IdentityKey.from_seed(seed)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_CODE_MESSAGE:
        raise MessageInvalid(f"code message: {what} is missing")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MessageInvalid(f"code message: {what} is not base64url") from None


def _subkey(key: bytes, label: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=32, person=label).digest()


def _seal(key: bytes, label: bytes, data: dict[str, Any], rng: Rng) -> str:
    box = SecretBox(_subkey(key, label))
    return _b64(bytes(box.encrypt(json.dumps(data).encode(), rng(SecretBox.NONCE_SIZE))))


def _open(key: bytes, label: bytes, text: object) -> dict[str, Any] | None:
    try:
        raw = SecretBox(_subkey(key, label)).decrypt(_unb64(text, "box"))
        data = loads_strict(raw, max_bytes=MAX_CODE_MESSAGE, error=MessageInvalid,
                            what="sealed code message")
    except (CryptoError, ValueError, MessageInvalid):
        return None
    return data if isinstance(data, dict) else None


O2C, C2O = b"didmesh-code-o2c", b"didmesh-code-c2o"


def parse(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_CODE_MESSAGE:
        raise MessageInvalid("code message is too large")
    msg = loads_strict(payload, max_bytes=MAX_CODE_MESSAGE, error=MessageInvalid,
                       what="code message")
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise MessageInvalid("code message has no type")
    if not isinstance(msg.get("n"), str) or not 8 <= len(msg["n"]) <= 64:
        raise MessageInvalid("code message has no nonce")
    return msg


def _transcript(nameplate: int, msg_a: bytes, msg_b: bytes, did: str) -> bytes:
    return b"".join(
        [CLAIM_LABEL, str(nameplate).encode(), b"\0", msg_a, msg_b, did.encode()]
    )


# --------------------------------------------------------------------------- organizer


@dataclass(frozen=True)
class Reply:
    to: str
    payload: bytes


@dataclass(frozen=True)
class Claimed:
    """The code was claimed by ``did``: issue the invite, then call :meth:`CodeOffer.complete`."""

    did: str


@dataclass(frozen=True)
class Burned:
    reason: str


CodeAction = Reply | Claimed | Burned


@dataclass
class CodeOffer:
    """The organizer's side of one code (persisted as JSON in a 0600 file: it holds the
    code and, during a claim, the PAKE key)."""

    nameplate: int
    code: str
    session_id: str
    expires_ms: int
    status: str = "open"  # open | claiming | claimed | burned | expired
    nonce: str | None = None
    reply: str | None = None
    key: str | None = None  # hex PAKE key while claiming
    msg_a: str | None = None
    msg_b: str | None = None
    started_ms: int = 0
    claimant: str | None = None
    log: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CodeOffer:
        return cls(**data)

    @property
    def active(self) -> bool:
        return self.status in ("open", "claiming")

    def _reject(self, msg: dict[str, Any], reason: str) -> list[CodeAction]:
        reply = msg.get("reply") if msg.get("t") == "hello" else None
        if not isinstance(reply, str):
            return []
        out = {"t": "rejected", "n": msg["n"], "reason": reason}
        return [Reply(reply, json.dumps(out).encode())]

    def _burn(self, reason: str) -> list[CodeAction]:
        self.status, self.key = "burned", None
        self.log.append(reason)
        return [Burned(reason)]

    def tick(self, now_ms: int) -> list[CodeAction]:
        if self.status == "open" and now_ms >= self.expires_ms:
            self.status = "expired"
            return [Burned("the code expired unclaimed")]
        if self.status == "claiming" and now_ms - self.started_ms > CLAIM_TIMEOUT_MS:
            return self._burn("a claim was started but not finished in time")
        return []

    def handle(
        self, payload: bytes, *, now_ms: int, organizer: str, name: str, rng: Rng = os.urandom
    ) -> list[CodeAction]:
        msg = parse(payload)
        out = self.tick(now_ms)
        kind = msg["t"]
        if kind == "hello":
            if msg["n"] == self.nonce:
                return out  # duplicate through another relay
            if self.status != "open":
                reason = "expired" if self.status == "expired" else "claimed"
                return out + self._reject(msg, reason)
            reply = msg.get("reply")
            try:
                DidKey.parse(reply) if isinstance(reply, str) else None
            except IdentityError:
                reply = None
            if not isinstance(reply, str):
                raise MessageInvalid("code hello: reply is not a DID")
            msg_b = _unb64(msg.get("pake"), "pake")
            spake = SPAKE2_A(
                self.code.encode(),
                idA=_ID_A + str(self.nameplate).encode(),
                idB=_ID_B + str(self.nameplate).encode(),
                entropy_f=rng,
            )
            msg_a = spake.start()
            self.status, self.nonce, self.reply, self.started_ms = (
                "claiming", msg["n"], reply, now_ms,
            )  # fmt: skip
            try:
                key = spake.finish(msg_b)
            except _PAKE_ERRORS:
                return out + self._burn("a claim sent a malformed PAKE message")
            self.key, self.msg_a, self.msg_b = key.hex(), msg_a.hex(), msg_b.hex()
            box = _seal(
                key, O2C, {"organizer": organizer, "session": self.session_id, "name": name}, rng
            )
            body = {"t": "pake", "n": self.nonce, "pake": _b64(msg_a), "box": box}
            return out + [Reply(reply, json.dumps(body).encode())]
        if msg["n"] != self.nonce or self.status != "claiming" or self.key is None:
            return out  # stray, late or duplicate
        if kind == "abandon":
            return out + self._burn("the claimant's code did not match (wrong code?)")
        if kind != "claim":
            raise MessageInvalid(f"unexpected code message {kind[:20]!r}")
        inner = _open(bytes.fromhex(self.key), C2O, msg.get("box"))
        if inner is None:
            return out + self._burn("a claim did not decrypt under the code (wrong code?)")
        did, sig = inner.get("did"), inner.get("sig")
        try:
            assert self.msg_a is not None and self.msg_b is not None
            if not isinstance(did, str):
                raise MessageInvalid("claim has no DID")
            public = DidKey.parse(did).ed25519_public
            transcript = _transcript(
                self.nameplate, bytes.fromhex(self.msg_a), bytes.fromhex(self.msg_b), did
            )
            verify_ed25519(public, transcript, _unb64(sig, "sig"))
        except (DidmeshError, ValueError):
            return out + self._burn("a claim's DID signature did not verify")
        self.status, self.claimant = "claimed", did
        self.log.append(f"claimed by {did}")
        return out + [Claimed(did)]

    def complete(self, invite: dict[str, Any], rng: Rng = os.urandom) -> Reply:
        """The box with the invite, for the claimant's reply mailbox."""
        assert self.status == "claimed" and self.key and self.reply and self.nonce
        box = _seal(bytes.fromhex(self.key), O2C, {"invite": invite}, rng)
        reply = Reply(self.reply, json.dumps({"t": "done", "n": self.nonce, "box": box}).encode())
        self.key = None  # the PAKE key is not needed any more
        return reply


# --------------------------------------------------------------------------- claimant


class CodeClaim:
    """The claimant's side. ``hello()`` first; feed replies to :meth:`handle`, which
    returns the next payload to send to the nameplate mailbox (or None), and sets
    :attr:`invite` when done. Raises :class:`CodeError` subclasses."""

    def __init__(
        self, nameplate: int, code: str, me: IdentityKey, reply_did: str, rng: Rng = os.urandom
    ) -> None:
        self.nameplate, self.code, self.me, self.reply_did, self.rng = (
            nameplate, code, me, reply_did, rng,
        )  # fmt: skip
        self.nonce = _b64(rng(16))
        self._spake = SPAKE2_B(
            code.encode(),
            idA=_ID_A + str(nameplate).encode(),
            idB=_ID_B + str(nameplate).encode(),
            entropy_f=rng,
        )
        self._msg_b = self._spake.start()
        self._key: bytes | None = None
        self.organizer: str | None = None
        self.session_id: str | None = None
        self.name: str | None = None
        self.invite: dict[str, Any] | None = None

    def hello(self) -> bytes:
        body = {"t": "hello", "n": self.nonce, "reply": self.reply_did, "pake": _b64(self._msg_b)}
        return json.dumps(body).encode()

    def abandon(self) -> bytes:
        return json.dumps({"t": "abandon", "n": self.nonce}).encode()

    def handle(self, payload: bytes) -> bytes | None:
        msg = parse(payload)
        if msg["n"] != self.nonce:
            return None
        kind = msg["t"]
        if kind == "rejected":
            reason = msg.get("reason")
            if reason == "expired":
                raise CodeExpired(f"code {self.code} has expired; ask the organizer for a new one")
            raise CodeAlreadyClaimed(
                f"code {self.code} was already used by someone else, by an earlier claim "
                "that was interrupted, or withdrawn by the organizer (codes are single use); "
                "ask the organizer for a new one"
            )
        if kind == "pake" and self._key is None:
            msg_a = _unb64(msg.get("pake"), "pake")
            try:
                self._key = self._spake.finish(msg_a)
            except _PAKE_ERRORS:
                raise WrongCode(
                    f"code {self.code}: the organizer's PAKE message is malformed"
                ) from None
            info = _open(self._key, O2C, msg.get("box"))
            if info is None:
                raise WrongCode(
                    f"code {self.code} does not match the invite on nameplate {self.nameplate}: "
                    "it was mistyped, or belongs to another invite (the code is now used up)"
                )
            org, sid = info.get("organizer"), info.get("session")
            if not isinstance(org, str) or not isinstance(sid, str):
                raise CodeError("the organizer's code reply is malformed")
            self.organizer, self.session_id = org, sid
            self.name = info.get("name") if isinstance(info.get("name"), str) else None
            transcript = _transcript(self.nameplate, msg_a, self._msg_b, self.me.did)
            signed = {"did": self.me.did, "sig": _b64(self.me.sign(transcript))}
            box = _seal(self._key, C2O, signed, self.rng)
            return json.dumps({"t": "claim", "n": self.nonce, "box": box}).encode()
        if kind == "done" and self._key is not None:
            data = _open(self._key, O2C, msg.get("box"))
            if data is None or not isinstance(data.get("invite"), dict):
                raise CodeError("the organizer's final code message does not decrypt")
            self.invite = data["invite"]
            return None
        return None
