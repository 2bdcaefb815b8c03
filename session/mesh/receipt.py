"""Run receipts: each party's signed account of a completed run (specs/mesh.md, "Receipts").

A receipt is a W3C VC (``type: ["VerifiableCredential", "RunReceipt"]``) issued by the
party's DID over the session id, the roster hash, the program digest, this party's id,
and in ``claims`` (a ``@json`` term of the didmesh-v1 context) the start and end of the
run and the bytes exchanged with each peer. ``validFrom`` is the end of the run.
:func:`verify_receipts` checks a set of them (one per party, same session, roster and
program): an audit trail with no central log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from didmesh.identity.credentials import (
    format_datetime,
    issue_credential,
    verify_credential,
)
from didmesh.identity.errors import MalformedCredential
from didmesh.identity.keys import IdentityKey

from .plan import MeshPlan

CONTEXTS = ["https://www.w3.org/ns/credentials/v2", "https://didmesh.dev/ns/v1"]


def _iso(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC))


def _iso_ms(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def receipt_credential(
    plan: MeshPlan,
    identity: IdentityKey,
    *,
    program_digest: str,
    started: float,
    ended: float,
    bytes_per_peer: Mapping[int, Mapping[str, int]],
) -> dict[str, Any]:
    """The unsigned RunReceipt credential of this party."""
    return {
        "@context": list(CONTEXTS),
        "type": ["VerifiableCredential", "RunReceipt"],
        "issuer": identity.did,
        "validFrom": _iso(ended),
        "credentialSubject": {
            "id": identity.did,
            "sessionId": plan.session_id,
            "rosterHash": plan.roster_hash.hex(),
            "digest": program_digest,
            "partyId": str(plan.my_party_id),
            "claims": {
                "started": _iso_ms(started),
                "ended": _iso_ms(ended),
                "bytesPerPeer": {
                    plan.party(pid).did: {"partyId": pid, **dict(counts)}
                    for pid, counts in sorted(bytes_per_peer.items())
                },
            },
        },
    }


def sign_receipt(plan: MeshPlan, identity: IdentityKey, result: Any) -> dict[str, Any]:
    """Sign the receipt for a :class:`~.runner.RunResult`."""
    doc = receipt_credential(
        plan, identity, program_digest=result.program_digest, started=result.started,
        ended=result.ended, bytes_per_peer=result.bytes_per_peer,
    )
    return issue_credential(doc, identity, created=datetime.fromtimestamp(result.ended, UTC))


@dataclass(frozen=True)
class ReceiptSet:
    session_id: str
    roster_hash: str
    program_digest: str
    issuers: tuple[str, ...]


def verify_receipts(docs: Iterable[Mapping[str, Any]], *, now: datetime) -> ReceiptSet:
    """Verify every receipt and that they describe one run (same session, roster, program)."""
    seen: dict[str, str] = {}
    keys: set[tuple[str, str, str]] = set()
    for doc in docs:
        vc = verify_credential(dict(doc), now=now, strict=True)  # didmesh's own documents
        if "RunReceipt" not in vc.types:
            raise MalformedCredential(f"credential from {vc.issuer} is not a RunReceipt")
        subject = vc.document["credentialSubject"]
        if subject.get("id") != vc.issuer:
            raise MalformedCredential(f"receipt from {vc.issuer} is about another party")
        key = (str(subject.get("sessionId")), str(subject.get("rosterHash")),
               str(subject.get("digest")))
        keys.add(key)
        if vc.issuer in seen:
            raise MalformedCredential(f"two receipts from {vc.issuer}")
        seen[vc.issuer] = key[0]
    if not seen:
        raise MalformedCredential("no receipts to verify")
    if len(keys) != 1:
        raise MalformedCredential(
            "the receipts describe different runs (session, roster hash or program differ)"
        )
    (sid, rh, dg), = keys
    return ReceiptSet(sid, rh, dg, tuple(sorted(seen)))
