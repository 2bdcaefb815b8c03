"""Session messages: what parties send each other through the relay mailboxes
(specs/session-protocol.md, "Messages").

Every message is one JSON object signed by its sender's DID key::

    {"v": 1, "kind": "accept", "session": "<id>", "from": "did:key:...",
     "to": "did:key:...", "ts": <ms>, "id": "<random>", "body": {...}, "sig": "<b64url>"}

It travels as ``{"m": "<that object as a JSON string>", "sig": "<b64url>"}`` where ``sig``
is Ed25519 over ``"didmesh/session/msg/v1" || 0x00 || UTF-8(m)``: the exact bytes are
signed, so no canonicalization is needed on either side.
The relay envelope authenticates the sender too, but signing here keeps the protocol
independent of the transport (the in-memory mailbox, files, any relay) and binds the
recipient, the session and the kind: a relay cannot redirect a message to another
party, session or meaning. Parsing is strict and size-capped before anything else.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import DidmeshError, IdentityError
from didmesh.identity.keys import IdentityKey, verify_ed25519
from didmesh.identity.strict_json import loads_strict
from didmesh.identity.text import cut_at_word

from .errors import MessageInvalid
from .manifest import SESSION_ID_RE

VERSION = 1
SIG_LABEL = b"didmesh/session/msg/v1\0"
MAX_MESSAGE_BYTES = 512 * 1024
KINDS = frozenset(
    {"invite", "accept", "decline", "withdraw", "withdraw-invite", "roster", "confirm", "cancel",
     "refuse"}
)
_FIELDS = {"v", "kind", "session", "from", "to", "ts", "id", "body"}
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,32}$")
#: why an organizer may refuse an acceptance (``refuse``, specs/session-protocol.md, 4)
REFUSAL_CODES = frozenset({
    "gate_credential_too_large", "gate_credential_missing", "gate_credential_invalid",
    "gate_credential_expired", "invite_not_current", "terms_mismatch", "presentation_expired",
    "acceptance_invalid",
})  # fmt: skip
#: refusals after which the invite the acceptance named has ended (the invitee: revoked)
ENDING_REFUSALS = frozenset({"invite_not_current"})
MAX_REFUSAL_REASON = 600
_REFUSAL_FIELDS = frozenset({"inviteId", "acceptanceId", "code", "reason"})
_DOC_ID_MAX = 200


@dataclass(frozen=True)
class Message:
    kind: str
    session_id: str
    sender: str
    to: str
    ts_ms: int
    msg_id: str
    body: dict[str, Any]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal_message(
    key: IdentityKey,
    kind: str,
    session_id: str,
    to: str,
    body: dict[str, Any],
    *,
    now_ms: int,
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    msg: dict[str, Any] = {
        "v": VERSION,
        "kind": kind,
        "session": session_id,
        "from": key.did,
        "to": to,
        "ts": now_ms,
        "id": _b64(rng(16)),
        "body": body,
    }
    inner = json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
    sig = _b64(key.sign(SIG_LABEL + inner.encode()))
    return json.dumps({"m": inner, "sig": sig}, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=1024)
def _signer_key(did: str) -> bytes:
    """The Ed25519 key of a did:key, memoised (raises :class:`IdentityError`)."""
    return DidKey.parse(did).ed25519_public


def _loads(text: bytes | str) -> Any:
    return loads_strict(text, max_bytes=MAX_MESSAGE_BYTES, error=MessageInvalid, what="message")


def open_message(payload: bytes, *, me: str) -> Message:
    """Parse and authenticate a message addressed to ``me``; raises :class:`MessageInvalid`."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageInvalid(f"message is {len(payload)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    outer = _loads(payload)
    if not isinstance(outer, dict) or set(outer) != {"m", "sig"}:
        raise MessageInvalid("message is not a signed session message")
    inner, sig = outer["m"], outer["sig"]
    if not isinstance(inner, str) or not isinstance(sig, str) or len(sig) != 86:
        raise MessageInvalid("message is not a signed session message")
    msg = _loads(inner)
    if not isinstance(msg, dict) or set(msg) != _FIELDS:
        raise MessageInvalid("message does not have exactly the fields of a session message")
    if msg["v"] != VERSION:
        raise MessageInvalid(f"message version {str(msg['v'])[:10]} is not supported")
    kind, sid, sender, to, ts, mid, body = (
        msg[k] for k in ("kind", "session", "from", "to", "ts", "id", "body")
    )
    if not isinstance(kind, str) or kind not in KINDS:
        raise MessageInvalid(f"unknown message kind {str(kind)[:30]!r}")
    if not isinstance(sid, str) or not SESSION_ID_RE.match(sid):
        raise MessageInvalid("message: session is not a session id")
    if type(ts) is not int or not 0 <= ts < 2**53:
        raise MessageInvalid("message: ts is not a time in milliseconds")
    if not isinstance(mid, str) or not _ID_RE.match(mid):
        raise MessageInvalid("message: id is malformed")
    if not isinstance(body, dict):
        raise MessageInvalid("message: body is not an object")
    if to != me:
        raise MessageInvalid(
            f"{kind} message from {str(sender)[:100]} is addressed to someone else"
        )
    try:
        public = _signer_key(sender) if isinstance(sender, str) else None
    except IdentityError:
        public = None
    if public is None:
        raise MessageInvalid("message: from is not an Ed25519 did:key")
    try:
        verify_ed25519(public, SIG_LABEL + inner.encode(), _unb64(sig))
    except (binascii.Error, ValueError, DidmeshError):
        raise MessageInvalid(
            f"{kind} message claiming to be from {sender}: bad signature"
        ) from None
    return Message(kind, sid, sender, to, ts, mid, body)


@dataclass(frozen=True)
class Refusal:
    """The body of a ``refuse`` message: the organizer refused one acceptance."""

    invite_id: str
    acceptance_id: str
    code: str
    reason: str


def refusal_body(invite_id: str, acceptance_id: str, code: str, reason: str) -> dict[str, Any]:
    """The body of a ``refuse`` message (the reason cut to :data:`MAX_REFUSAL_REASON`)."""
    if code not in REFUSAL_CODES:
        raise ValueError(f"unknown refusal code {code!r}")
    return {"inviteId": invite_id, "acceptanceId": acceptance_id, "code": code,
            "reason": _cut(reason)}  # fmt: skip


def doc_id(value: object) -> str | None:
    """``value`` if it can be a document's id here (a non-empty text of a bounded length)."""
    return value if isinstance(value, str) and 0 < len(value) <= _DOC_ID_MAX else None


def parse_refusal(body: Any) -> Refusal:
    """Check the shape of a ``refuse`` body (from an authenticated message; who sent it
    is the caller's check); raises :class:`MessageInvalid`. The reason is made printable
    and cut, never trusted as markup."""
    if not isinstance(body, dict) or set(body) != _REFUSAL_FIELDS:
        raise MessageInvalid(
            "refuse message: the body must have exactly inviteId, acceptanceId, code and reason"
        )
    for name in ("inviteId", "acceptanceId"):
        if doc_id(body[name]) is None:
            raise MessageInvalid(f"refuse message: {name} is not a document id")
    code, reason = body["code"], body["reason"]
    if not isinstance(code, str) or code not in REFUSAL_CODES:
        shown = repr(code[:40]) if isinstance(code, str) else f"of type {type(code).__name__}"
        raise MessageInvalid(f"refuse message: unknown code {shown}")
    if not isinstance(reason, str) or len(reason) > 4 * MAX_REFUSAL_REASON:
        raise MessageInvalid("refuse message: reason is not a text of reasonable length")
    clean = "".join(c if c.isprintable() else " " for c in reason).strip()
    return Refusal(body["inviteId"], body["acceptanceId"], code, _cut(clean) or "(no reason)")


def _cut(text: str) -> str:
    """At most :data:`MAX_REFUSAL_REASON` characters, cut at a word ending past the half
    (else inside a word), marked "…"."""
    return cut_at_word(text, MAX_REFUSAL_REASON, shortest=MAX_REFUSAL_REASON // 2 + 1)
