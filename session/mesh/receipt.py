"""Run receipts: each party's signed account of a completed run (specs/mesh.md, "Receipts").

A receipt is a W3C VC (``type: ["VerifiableCredential", "RunReceipt"]``) issued by the
party's DID over the session id, the roster hash, the program digest, this party's id,
and in ``claims`` (a ``@json`` term of the didmesh-v1 context) the start and end of the
run and the bytes exchanged with each peer. ``validFrom`` is the end of the run.
:func:`verify_receipts` checks a set of them (one per party, same session, roster and
program): an audit trail with no central log.

Receipts are signed with eddsa-jcs-2022 (JSON canonicalization: no JSON-LD processor at
the end of every run); receipts signed with eddsa-rdfc-2022 by earlier versions verify
as before. The receipt's terms are all defined by its contexts (a test expands it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
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
SUITE = "eddsa-jcs-2022"


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
    transport: str = "noise",
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
                "transport": transport,
                "bytesPerPeer": {
                    plan.party(pid).did: {"partyId": pid, **dict(counts)}
                    for pid, counts in sorted(bytes_per_peer.items())
                },
            },
        },
    }


def sign_receipt(plan: MeshPlan, identity: IdentityKey, result: Any) -> dict[str, Any]:
    """Sign the receipt for a :class:`~.runner.RunResult` (eddsa-jcs-2022)."""
    doc = receipt_credential(
        plan, identity, program_digest=result.program_digest, started=result.started,
        ended=result.ended, bytes_per_peer=result.bytes_per_peer,
        transport=getattr(result, "transport", "noise"),
    )
    return issue_credential(doc, identity, suite=SUITE, check_terms=False,
                            created=datetime.fromtimestamp(result.ended, UTC))


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


@dataclass(frozen=True)
class TrailReport:
    """Whether a set of (already verified) receipts is one run's complete audit trail."""

    session_id: str
    roster_hash: str
    digest: str
    parties: dict[int, str]  # party id -> DID, as the receipts name them
    present: dict[int, str]  # party id -> label of its receipt
    missing: tuple[int, ...]
    foreign: tuple[tuple[str, str], ...]  # (label, why)
    duplicates: tuple[tuple[str, int], ...]  # (label, party id)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.foreign or self.duplicates)

    def problems(self) -> list[str]:
        out = [f"{label} is not part of this run: {why}" for label, why in self.foreign]
        out += [f"{label} is a second receipt of party {pid}" for label, pid in self.duplicates]
        out += [f"party {pid} ({self.parties.get(pid, '?')}) has no receipt"
                for pid in self.missing]
        return out


def check_trail(receipts: Sequence[tuple[str, str, Mapping[str, Any]]]) -> TrailReport:
    """Check ``(label, issuer, credentialSubject)`` of verified RunReceipts as one run:
    the same session, roster and program, every party of the roster exactly once. The
    run is the one most receipts describe (the first receipt's on a tie); the roster is
    what its receipts name (each names its peers in ``claims.bytesPerPeer``)."""
    if not receipts:
        raise MalformedCredential("no receipts to check")

    def key(subject: Mapping[str, Any]) -> tuple[str, str, str]:
        return (str(subject.get("sessionId")), str(subject.get("rosterHash")),
                str(subject.get("digest")))

    counts = Counter(key(s) for _, _, s in receipts)
    best = max(counts.values())
    run = next(key(s) for _, _, s in receipts if counts[key(s)] == best)
    parties: dict[int, str] = {}
    foreign: list[tuple[str, str]] = []
    mine: list[tuple[str, str, int]] = []
    for label, issuer, subject in receipts:
        k = key(subject)
        if k != run:
            what = ("session " + k[0][:8] if k[0] != run[0] else
                    "roster " + k[1][:12] if k[1] != run[1] else "program " + k[2][:20])
            foreign.append((label, f"it is of another run ({what})"))
            continue
        try:
            pid = int(str(subject.get("partyId")))
            peers = subject["claims"]["bytesPerPeer"]
            named = {int(v["partyId"]): str(d) for d, v in peers.items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            foreign.append((label, "it does not name its party and peers"))
            continue
        named[pid] = issuer
        clash = [p for p, d in named.items() if parties.get(p, d) != d]
        if clash:
            foreign.append((label, f"it names another DID for party {clash[0]}"))
            continue
        parties.update(named)
        mine.append((label, issuer, pid))
    present: dict[int, str] = {}
    duplicates: list[tuple[str, int]] = []
    for label, _, pid in mine:
        if pid in present:
            duplicates.append((label, pid))
        else:
            present[pid] = label
    missing = tuple(sorted(set(parties) - set(present)))
    return TrailReport(run[0], run[1], run[2], dict(sorted(parties.items())), present,
                       missing, tuple(foreign), tuple(duplicates))
