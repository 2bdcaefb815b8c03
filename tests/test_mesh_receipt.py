"""RunReceipt credentials: signed per party, verified as a set."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from didmesh.identity.errors import CredentialError
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.receipt import sign_receipt, verify_receipts

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _receipts(digest: str = "sha256:" + "ab" * 32) -> tuple[list[dict], list]:
    plans, ids = loopback_plans(3)
    docs = []
    for i in range(3):
        result = SimpleNamespace(
            program_digest=digest, started=1_800_000_000.25, ended=1_800_000_003.5,
            bytes_per_peer={j: {"sent": 10 * j, "received": 5} for j in range(3) if j != i},
        )
        docs.append(sign_receipt(plans[i], ids[i], result))
    return docs, plans


def test_receipts_verify_as_one_run() -> None:
    docs, plans = _receipts()
    got = verify_receipts(docs, now=NOW)
    assert got.session_id == plans[0].session_id
    assert got.roster_hash == plans[0].roster_hash.hex()
    assert len(got.issuers) == 3
    claims = docs[0]["credentialSubject"]["claims"]
    assert claims["started"] == "2027-01-15T08:00:00.250Z"
    assert claims["bytesPerPeer"][plans[0].party(2).did]["sent"] == 20


def test_altered_receipt_fails() -> None:
    docs, _ = _receipts()
    bad = copy.deepcopy(docs[1])
    bad["credentialSubject"]["claims"]["bytesPerPeer"] = {}
    with pytest.raises(CredentialError):
        verify_receipts([docs[0], bad, docs[2]], now=NOW)


def test_receipts_of_different_runs_do_not_form_a_set() -> None:
    a, _ = _receipts()
    b, _ = _receipts()
    with pytest.raises(CredentialError, match="different runs"):
        verify_receipts([a[0], b[1]], now=NOW)
    with pytest.raises(CredentialError, match="two receipts"):
        verify_receipts([a[0], a[0]], now=NOW)
    with pytest.raises(CredentialError, match="no receipts"):
        verify_receipts([], now=NOW)


def test_receipts_are_jcs_and_every_term_is_defined() -> None:
    """Receipts are signed with eddsa-jcs-2022 without a JSON-LD pass at run time, so this
    test does that pass: every term of a receipt expands (none is dropped or undefined)."""
    from didmesh.identity.jsonld import canonize

    docs, _ = _receipts()
    for doc in docs:
        assert doc["proof"]["cryptosuite"] == "eddsa-jcs-2022"
        unsigned = {k: v for k, v in doc.items() if k != "proof"}
        nquads = canonize(unsigned, what="receipt")
        for term in ("sessionId", "rosterHash", "digest", "partyId", "claims"):
            assert term in nquads or f"#{term}" in nquads, term


def test_receipts_signed_with_rdfc_still_verify() -> None:
    """Receipts of earlier versions (eddsa-rdfc-2022) verify as one run, mixed with JCS ones."""
    from didmesh.identity.credentials import issue_credential
    from didmesh.session.mesh.receipt import receipt_credential

    plans, ids = loopback_plans(3)
    jcs, rdfc = [], []
    for i in range(3):
        result = SimpleNamespace(
            program_digest="sha256:" + "cd" * 32, started=1_800_000_000.0,
            ended=1_800_000_002.0, bytes_per_peer={j: {"sent": 1} for j in range(3) if j != i},
        )
        jcs.append(sign_receipt(plans[i], ids[i], result))
        unsigned = receipt_credential(plans[i], ids[i], program_digest=result.program_digest,
                                      started=result.started, ended=result.ended,
                                      bytes_per_peer=result.bytes_per_peer)
        rdfc.append(issue_credential(unsigned, ids[i], created=NOW))
    assert rdfc[0]["proof"]["cryptosuite"] == "eddsa-rdfc-2022"
    assert len(verify_receipts(rdfc, now=NOW).issuers) == 3
    assert len(verify_receipts([rdfc[0], jcs[1], rdfc[2]], now=NOW).issuers) == 3
