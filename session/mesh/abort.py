"""Signed abort notices (specs/mesh.md, "Abort"). Sans-IO.

When a party must stop a run (its program failed, it lost a peer, a pair could not
connect) it tells every peer at once with an abort notice, sent inside the Noise
channels. The channel already authenticates the sender to the roster; the notice is in
addition signed with the origin's DID key (Ed25519), so a peer can *forward* it: a party
cut off from the origin still learns, verifiably, who aborted and why.

Wire form: ``{"body": {...}, "sig": base64url}`` as UTF-8 JSON, at most
:data:`MAX_ABORT_BYTES`. The signature is over ``ABORT_LABEL || canonical JSON(body)``
(sorted keys, no spaces). ``body``: ``type`` (= ``didmesh-abort/v1``), ``session``,
``roster_hash`` (hex), ``origin`` and ``culprit`` (party ids; ``culprit`` may be null),
``code`` (an error code of the tree), ``reason`` (human text, at most 300 characters)
and ``issued`` (POSIX seconds, for logs and de-duplication).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey, verify_ed25519
from didmesh.identity.strict_json import loads_strict
from didmesh.identity.text import cut_at_word

from .faults import InvalidAbort
from .plan import MeshPlan

ABORT_TYPE: Final = "didmesh-abort/v1"
ABORT_LABEL: Final = b"didmesh/abort/v1\x00"
MAX_ABORT_BYTES: Final = 4096
MAX_REASON: Final = 300
_CODE_RE = re.compile(r"^[a-z0-9_]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class AbortNotice:
    session_id: str
    roster_hash: bytes
    origin: int
    culprit: int | None
    code: str
    reason: str
    issued: float

    @property
    def key(self) -> tuple[int, str, float]:
        """De-duplication key for forwarding."""
        return (self.origin, self.code, self.issued)

    def body(self) -> dict[str, Any]:
        return {
            "type": ABORT_TYPE,
            "session": self.session_id,
            "roster_hash": self.roster_hash.hex(),
            "origin": self.origin,
            "culprit": self.culprit,
            "code": self.code,
            "reason": self.reason,
            "issued": self.issued,
        }


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def clean_reason(text: str) -> str:
    """One line, no control characters, at most :data:`MAX_REASON` characters; a longer
    text is cut at a word (if one ends in its second half) and marked with " …"
    (inside a word: "…")."""
    return cut_at_word(_CONTROL.sub(" ", text), MAX_REASON, mark=" …")


def make_abort(
    plan: MeshPlan, key: IdentityKey, *, culprit: int | None, code: str, reason: str, now: float
) -> AbortNotice:
    if key.did != plan.me.did:
        raise ValueError("the abort must be signed by this party's DID key")
    if not _CODE_RE.match(code):
        code = "error"
    return AbortNotice(
        plan.session_id, plan.roster_hash, plan.my_party_id, culprit, code,
        clean_reason(reason), float(now),
    )


def encode_abort(notice: AbortNotice, key: IdentityKey) -> bytes:
    body = notice.body()
    sig = key.sign(ABORT_LABEL + _canonical(body))
    data = json.dumps(
        {"body": body, "sig": base64.urlsafe_b64encode(sig).rstrip(b"=").decode()},
        separators=(",", ":"),
    ).encode()
    if len(data) > MAX_ABORT_BYTES:  # cannot happen with the caps above
        raise ValueError("abort notice too large")
    return data


def decode_abort(data: bytes, plan: MeshPlan) -> AbortNotice:
    """Parse and verify an abort notice for this session; :class:`InvalidAbort` otherwise."""
    if len(data) > MAX_ABORT_BYTES:
        raise InvalidAbort(f"abort notice of {len(data)} bytes exceeds {MAX_ABORT_BYTES}")
    doc = loads_strict(
        data, max_bytes=MAX_ABORT_BYTES, error=InvalidAbort, what="malformed abort notice"
    )
    try:
        body = doc["body"]
        sig_txt = doc["sig"]
        if not isinstance(body, dict) or not isinstance(sig_txt, str):
            raise TypeError("body must be an object and sig a string")
        sig = base64.urlsafe_b64decode(sig_txt + "=" * (-len(sig_txt) % 4))
        origin = body["origin"]
        culprit = body["culprit"]
        if not isinstance(origin, int) or not (culprit is None or isinstance(culprit, int)):
            raise TypeError("origin and culprit must be party ids")
        notice = AbortNotice(
            session_id=str(body["session"]),
            roster_hash=bytes.fromhex(body["roster_hash"]),
            origin=origin,
            culprit=culprit,
            code=str(body["code"]),
            reason=clean_reason(str(body["reason"])),
            issued=float(body["issued"]),
        )
        if body.get("type") != ABORT_TYPE or set(body) != set(notice.body()):
            raise ValueError("unknown type or fields")
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidAbort(f"malformed abort notice: {exc}") from None
    if notice.session_id != plan.session_id or notice.roster_hash != plan.roster_hash:
        raise InvalidAbort("abort notice is for another session or roster", party=origin)
    if not 0 <= origin < plan.m or (culprit is not None and not 0 <= culprit < plan.m):
        raise InvalidAbort("abort notice names a party outside the roster")
    try:
        pub = DidKey.parse(plan.party(origin).did).ed25519_public
        verify_ed25519(pub, ABORT_LABEL + _canonical(body), sig)
    except DidmeshError as exc:
        raise InvalidAbort(
            f"abort notice claiming to come from {plan.describe(origin)} is not signed by "
            f"its DID key ({exc.message})",
            party=origin,
        ) from None
    return notice
