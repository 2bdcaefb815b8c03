"""The relay's WebSocket protocols, sans-IO (specs/relay.md, "Links" and "Push").

Nothing here imports aiohttp: the session layer's client and the server both use these
parsers and constants.

**Link** (``GET /v1/link`` with a bearer token): the client's first message is a text frame
``{"type": "link", "session": S, "peer": DID, "link_id": optional}``. When the peer sends
the mirror request (same session and link id, each naming the other), the relay answers both
with ``{"type": "linked", ...limits}`` and from then on forwards *binary* frames verbatim,
in order. Any text frame after ``linked`` or binary frame before it closes the socket with
a :class:`CloseCode`.

**Push** (``GET /v1/inbox/ws``): the relay sends ``{"type": "envelopes", "items": [...]}``
text frames; the client may send ``{"type": "ack", "ids": [...]}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from didmesh.identity.errors import IdentityError
from didmesh.identity.strict_json import loads_strict

from .auth import parse_signing_did
from .envelope import _SESSION_RE, MAX_SESSION_CHARS
from .errors import MalformedRequest, client_names

MAX_CONTROL_BYTES = 4096
_LINK_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class CloseCode(IntEnum):
    """WebSocket close codes the relay uses (stable; part of the protocol)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # relay shutting down
    ABNORMAL = 1006  # local only, never sent: the connection ended without a close frame
    MESSAGE_TOO_BIG = 1009  # frame larger than max_frame
    PEER_CLOSED = 4000  # the other end closed its side cleanly
    MALFORMED = 4400  # control message not understood
    AUTH = 4401  # token expired during the connection
    NOT_LINKED = 4403  # binary frame before the link was established
    PAIR_TIMEOUT = 4408  # the peer never asked for this link
    DUPLICATE = 4409  # an identical link request is already waiting
    PEER_GONE = 4410  # the other end vanished (reset, crash)
    PEER_RELAY_GONE = 4411  # the relay process holding the other end died (link resumable)
    LINK_LIMIT = 4429  # concurrent link limit reached
    BYTES_EXCEEDED = 4451  # link byte budget used up
    DURATION_EXCEEDED = 4452  # link lifetime used up
    IDLE_TIMEOUT = 4453  # no traffic for the idle timeout
    INTERNAL = 4500


CLOSE_REASONS: dict[int, str] = {
    CloseCode.NORMAL: "closed",
    CloseCode.GOING_AWAY: "relay shutting down",
    CloseCode.MESSAGE_TOO_BIG: "frame too large",
    CloseCode.PEER_CLOSED: "peer closed the link",
    CloseCode.MALFORMED: "malformed link request",
    CloseCode.AUTH: "authentication expired",
    CloseCode.NOT_LINKED: "frame on a link that is not established",
    CloseCode.PAIR_TIMEOUT: "peer did not join in time",
    CloseCode.DUPLICATE: "an identical link request is already waiting",
    CloseCode.ABNORMAL: "connection to the relay lost",
    CloseCode.PEER_GONE: "peer disconnected",
    CloseCode.PEER_RELAY_GONE: "the relay process holding the peer's end is gone",
    CloseCode.LINK_LIMIT: "too many concurrent links",
    CloseCode.BYTES_EXCEEDED: "link byte budget exhausted",
    CloseCode.DURATION_EXCEEDED: "link duration limit reached",
    CloseCode.IDLE_TIMEOUT: "link idle for too long",
    CloseCode.INTERNAL: "relay internal error",
}


#: codes after which a mesh link may be resumed on a new link (the relay lost it, not the
#: peer): a connection cut without a close frame, a relay shutting down, the other end's
#: relay process gone, a relay failure (specs/mesh.md, "Link resumption")
RESUMABLE_CLOSE_CODES: frozenset[int] = frozenset({
    CloseCode.GOING_AWAY, CloseCode.ABNORMAL, CloseCode.PEER_RELAY_GONE, CloseCode.INTERNAL,
})


def close_reason(code: int) -> str:
    return CLOSE_REASONS.get(code, f"closed with code {code}")


@dataclass(frozen=True)
class LinkRequest:
    session: str
    peer: str
    link_id: str = ""

    def key(self, me: str) -> tuple[str, str, str, str]:
        """Pairing key of the end ``me``; the peer's end has :meth:`mirror_key`."""
        return (self.session, me, self.peer, self.link_id)

    def mirror_key(self, me: str) -> tuple[str, str, str, str]:
        return (self.session, self.peer, me, self.link_id)

    def route(self, me: str) -> str:
        """The same 16 hex digits at both ends of a link: sent as ``/v1/link?route=`` so
        a proxy in front of several relay processes can send both ends to one process
        (``hash $arg_route`` in relay/deploy/nginx-relay.conf), which then forwards the
        link in-process instead of through Redis. The relay itself ignores it."""
        a, b = sorted((me, self.peer))
        data = "\x00".join(("didmesh/relay/link-route/v1", self.session, a, b, self.link_id))
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        msg: dict[str, Any] = {"type": "link", "session": self.session, "peer": self.peer}
        if self.link_id:
            msg["link_id"] = self.link_id
        return json.dumps(msg)


def _json_object(text: str | bytes) -> dict[str, Any]:
    msg = loads_strict(
        text, max_bytes=MAX_CONTROL_BYTES, error=MalformedRequest, what="control message"
    )
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise MalformedRequest("control message must be an object with a string 'type'")
    return msg


def parse_link_request(text: str | bytes, me: str) -> LinkRequest:
    msg = _json_object(text)
    if msg["type"] != "link":
        raise MalformedRequest(f"expected a 'link' message, got {msg['type'][:32]!r}")
    unknown = sorted(set(msg) - {"type", "session", "peer", "link_id"})
    if unknown:
        raise MalformedRequest(f"unknown field(s) in link request: {client_names(unknown)}")
    session = msg.get("session")
    if not isinstance(session, str) or not _SESSION_RE.match(session):
        raise MalformedRequest(
            f"session must be 1..{MAX_SESSION_CHARS} printable ASCII characters"
        )
    try:
        peer = parse_signing_did(msg.get("peer"))
    except (MalformedRequest, IdentityError) as exc:
        raise MalformedRequest(f"peer: {exc.message}") from None
    if peer == me:
        raise MalformedRequest("a link needs two different DIDs (peer is yourself)")
    link_id = msg.get("link_id", "")
    if not isinstance(link_id, str) or (link_id and not _LINK_ID_RE.match(link_id)):
        raise MalformedRequest("link_id must be 1..64 characters of [A-Za-z0-9._-]")
    return LinkRequest(session, peer, link_id)


@dataclass(frozen=True)
class Linked:
    session: str
    peer: str
    link_id: str
    max_bytes: int
    max_duration_s: float
    max_frame: int

    def to_json(self) -> str:
        return json.dumps({"type": "linked", **self.__dict__})

    @classmethod
    def parse(cls, text: str | bytes) -> Linked:
        msg = _json_object(text)
        if msg.get("type") != "linked":
            raise MalformedRequest(f"expected 'linked', got {str(msg.get('type'))[:32]!r}")
        try:
            return cls(
                str(msg["session"]),
                str(msg["peer"]),
                str(msg["link_id"]),
                int(msg["max_bytes"]),
                float(msg["max_duration_s"]),
                int(msg["max_frame"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            raise MalformedRequest("malformed 'linked' message") from None


def parse_push_client_message(text: str | bytes) -> list[str]:
    """A client's message on the push socket: returns the ids to acknowledge."""
    msg = _json_object(text)
    if msg["type"] != "ack":
        raise MalformedRequest(f"expected an 'ack' message, got {msg['type'][:32]!r}")
    return parse_ack_ids(msg.get("ids"))


MAX_ACK_IDS = 1000


def parse_ack_ids(ids: Any) -> list[str]:
    if not isinstance(ids, list) or not all(isinstance(i, str) and len(i) <= 64 for i in ids):
        raise MalformedRequest("ids must be a list of envelope id strings")
    if len(ids) > MAX_ACK_IDS:
        raise MalformedRequest(f"at most {MAX_ACK_IDS} ids per acknowledgement")
    return ids


# -- frames between relay processes for links whose ends are on different processes ----------
# One byte of type, then the payload. Internal to the Redis store, listed here so the wire
# format of everything the relay speaks is in one module.
XP_DATA = 0  # payload: one link frame
XP_CREDIT = 1  # payload: u32 bytes the receiver delivered (flow control)
XP_CLOSE = 2  # payload: u16 close code
XP_READY = 3  # the claiming side is subscribed; frames may flow


def xp_data(frame: bytes) -> bytes:
    return b"\x00" + frame


def xp_credit(n: int) -> bytes:
    return b"\x01" + n.to_bytes(4, "big")


def xp_close(code: int) -> bytes:
    return b"\x02" + int(code).to_bytes(2, "big")


XP_READY_MSG = b"\x03"
