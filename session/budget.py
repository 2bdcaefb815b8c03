"""How large a session's roster will be, before it is built (specs/session-protocol.md,
3.3 and 4, "Size budget").

The roster credential embeds every acceptance, each with its invite (and so the
manifest) and the credentials its holder presented for a gated seat. It must stay within
what a credential may weigh (``MAX_DOCUMENT_BYTES`` of the identity layer), and the
``roster`` message, which carries the manifest once and is compressed, within a relay's
default envelope limit. The estimate is checked where its parts become known: the
session's terms at ``session new`` (no gate credentials yet), an invitee's own gate
credentials when it accepts (before anything is sent), and the organizer's accepted seats
with each new acceptance. So large gate credentials are refused when they are presented,
not after every seat accepted (when the organizer could not issue or send the roster).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from didmesh.identity.credentials import MAX_DOCUMENT_BYTES
from didmesh.identity.errors import DidmeshError
from didmesh.identity.jcs import canonicalize

from .errors import BadSessionParameters

if TYPE_CHECKING:
    from .manifest import Manifest

#: what one party adds to the roster credential besides the manifest its invite repeats:
#: its entry, session key, 8 endpoints and acceptance with proofs (measured ~2.5 KB; this
#: leaves a margin for long IPv6 endpoints)
ROSTER_BYTES_PER_PARTY = 2816
#: the same in the compressed ``roster`` message, which refers to the manifest instead of
#: repeating it (measured ~470 bytes at m = 30 with 8 IPv6 endpoints each)
FRAMED_BYTES_PER_PARTY = 640
#: a relay's default ``max_envelope_bytes`` (specs/relay.md, 5)
RELAY_ENVELOPE_BYTES = 65536
#: the compressed message payload that fits such an envelope: the envelope carries it
#: base64url-encoded (4/3) beside ~420 bytes of header, signature and keys
ROSTER_MESSAGE_BYTES = (RELAY_ENVELOPE_BYTES - 1024) * 3 // 4


@dataclass(frozen=True)
class GateBytes:
    """What one seat's gate credentials add: to the roster credential (canonical JSON)
    and to the compressed roster message."""

    raw: int = 0
    framed: int = 0

    def __add__(self, other: GateBytes) -> GateBytes:
        return GateBytes(self.raw + other.raw, self.framed + other.framed)


def gate_bytes(credentials: Sequence[Any]) -> GateBytes:
    """The size of ``credentials`` (a seat's gate credentials) inside the roster."""
    total = GateBytes()
    for cred in credentials:
        try:
            text = canonicalize(cred)
        except (DidmeshError, ValueError, TypeError, RecursionError):
            continue  # not JSON: the acceptance is refused by its verification anyway
        total += GateBytes(len(text), len(zlib.compress(text, 6)))
    return total


def presented(acceptance: Any) -> list[Any]:
    """The gate credentials in an acceptance (its presentation's credentials after the
    invite)."""
    creds = acceptance.get("verifiableCredential") if isinstance(acceptance, dict) else None
    return list(creds[1:]) if isinstance(creds, list) else []


@dataclass(frozen=True)
class RosterEstimate:
    credential: int  # bytes of the roster credential
    message: int  # bytes of the compressed roster message
    terms: int  # bytes of the manifest, repeated m + 1 times in the credential

    @property
    def credential_over(self) -> bool:
        return self.credential > MAX_DOCUMENT_BYTES

    @property
    def message_over(self) -> bool:
        return self.message > ROSTER_MESSAGE_BYTES


def estimate(manifest: Manifest, gates: Sequence[GateBytes] = ()) -> RosterEstimate:
    """The roster's size for ``manifest`` with ``gates`` (the gate credentials known so
    far, one entry per seat; seats not listed count none)."""
    m = manifest.parties
    terms = manifest.canonical()
    extra = sum(gates, GateBytes())
    credential = (m + 1) * len(terms) + m * ROSTER_BYTES_PER_PARTY + extra.raw
    message = len(zlib.compress(terms, 6)) + m * FRAMED_BYTES_PER_PARTY + extra.framed
    return RosterEstimate(credential, message, len(terms))


def check_terms(manifest: Manifest) -> None:
    """``session new``: the terms alone must leave room for m acceptances."""
    est = estimate(manifest)
    if est.credential_over:
        what = f"the list of {len(manifest.program.files)} bundle files and " if (
            manifest.program.is_bundle) else ""
        raise BadSessionParameters(
            f"the session terms ({what}{len(manifest.program.args)} program arguments) take "
            f"{est.terms} bytes, repeated in each party's acceptance inside the roster: about "
            f"{est.credential} bytes for {manifest.parties} parties, above the "
            f"{MAX_DOCUMENT_BYTES} bytes a credential may have; bundle fewer files "
            "(--include/--exclude, or pack data files into one), shorten the arguments or "
            "invite fewer parties"
        )


def gates_fit(manifest: Manifest, gates: Sequence[GateBytes]) -> str | None:
    """None if the roster with these gate credentials stays within both limits, else
    what it would exceed (a phrase for an error message). Only the gate credentials are
    judged: a session whose terms fit stays as ``session new`` accepted it."""
    if not any(g.raw for g in gates):
        return None
    est = estimate(manifest, gates)
    extra = sum(gates, GateBytes())
    if est.credential_over:
        return (f"the roster credential would be about {est.credential} bytes (gate "
                f"credentials {extra.raw}), above the {MAX_DOCUMENT_BYTES} bytes a credential "
                "may have")
    if est.message_over:
        return (f"the roster message would be about {est.message} bytes compressed (gate "
                f"credentials {extra.framed}), above the {ROSTER_MESSAGE_BYTES} bytes that fit a "
                f"relay's default {RELAY_ENVELOPE_BYTES}-byte envelope")
    return None
