"""Every bad input of issue 4, at the document level: each is rejected with a specific
error from the tree that names the cause and the party."""

from __future__ import annotations

import copy
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.session.documents import (
    build_acceptance,
    build_confirmation,
    build_invite,
    new_invite_id,
    verify_acceptance,
    verify_confirmation,
    verify_invite,
)
from didmesh.session.errors import (
    AcceptanceReplayed,
    ConfirmationInvalid,
    InviteExpired,
    InviteInvalid,
    InviteNotForYou,
    ManifestInvalid,
    ManifestTampered,
    MpycVersionMismatch,
    NotInvited,
    ProgramDigestMismatch,
    RosterInvalid,
)
from didmesh.session.manifest import Manifest, check_mpyc, new_manifest, verify_program
from didmesh.session.roster import Seat, build_roster, verify_roster

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ORG, BOB, CAROL, MALLORY = (IdentityKey.from_seed(bytes([i]) * 32) for i in range(1, 5))


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "sum.py"
    path.write_text("print('sum')\n")
    return path


def manifest_for(program: Path, parties: int = 3) -> Manifest:
    return new_manifest(
        organizer=ORG.did, program=program, parties=parties,
        relays=["http://127.0.0.1:9"], now=NOW, valid_for=timedelta(hours=2),
    )  # fmt: skip


def invite(manifest: Manifest, who: IdentityKey) -> dict:
    return build_invite(manifest, who.did, ORG, now=NOW, invite_id=new_invite_id())


def accept(manifest: Manifest, who: IdentityKey, doc: dict | None = None) -> dict:
    inv = verify_invite(doc or invite(manifest, who), now=NOW, me=None)
    return build_acceptance(inv, who, session_public=os.urandom(32), endpoints=[], now=NOW)


def test_expired_invite_names_the_organizer(program: Path) -> None:
    doc = invite(manifest_for(program), BOB)
    with pytest.raises(InviteExpired) as info:
        verify_invite(doc, now=NOW + timedelta(hours=3), me=BOB.did)
    assert info.value.party == ORG.did and ORG.did in info.value.message


def test_invite_addressed_to_another_did(program: Path) -> None:
    doc = invite(manifest_for(program), BOB)
    with pytest.raises(InviteNotForYou) as info:
        verify_invite(doc, now=NOW, me=CAROL.did)
    assert BOB.did in info.value.message and CAROL.did in info.value.message
    assert info.value.party == ORG.did


@pytest.mark.parametrize(
    "path, value",
    [(("parties",), 4), (("program", "sha256"), "0" * 64), (("relays",), ["http://evil:1"])],
    ids=["parties", "digest", "relays"],
)
def test_tampered_manifest_breaks_the_signature(program: Path, path: tuple, value: object) -> None:
    doc = copy.deepcopy(invite(manifest_for(program), BOB))
    target = doc["credentialSubject"]["manifest"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(InviteInvalid) as info:
        verify_invite(doc, now=NOW, me=BOB.did)
    assert "signature" in info.value.message and ORG.did in info.value.message


def test_organizer_giving_parties_different_manifests_is_caught(program: Path) -> None:
    manifest = manifest_for(program)
    other = Manifest.from_json(manifest.to_json() | {"threshold": 0})  # same id, other terms
    bob_acc = accept(manifest, BOB)
    carol_acc = accept(other, CAROL, build_invite(other, CAROL.did, ORG, now=NOW,
                                                 invite_id=new_invite_id()))  # fmt: skip
    seats = [Seat(ORG.did, os.urandom(32), (), None)]
    for who, acc in ((BOB, bob_acc), (CAROL, carol_acc)):
        from didmesh.session.documents import decode_session_key

        seats.append(Seat(who.did, decode_session_key(acc["sessionKey"], "", ValueError), (), acc))
    roster = build_roster(manifest, ORG, seats, now=NOW)
    with pytest.raises(ManifestTampered) as info:
        verify_roster(roster, manifest=manifest, now=NOW)
    assert CAROL.did in info.value.message and info.value.party == ORG.did


def test_acceptance_replayed_from_another_session(program: Path) -> None:
    first, second = manifest_for(program), manifest_for(program)
    assert first.session_id != second.session_id
    replayed = accept(first, BOB)
    with pytest.raises(AcceptanceReplayed) as info:
        verify_acceptance(replayed, manifest=second, now=NOW)
    assert info.value.party == BOB.did and second.session_id[:8] in info.value.message


def test_acceptance_signed_by_someone_not_invited(program: Path) -> None:
    manifest = manifest_for(program)
    stolen = invite(manifest, BOB)
    forged = accept(manifest, MALLORY, stolen)  # mallory presents bob's invite as her own
    with pytest.raises(NotInvited) as info:
        verify_acceptance(forged, manifest=manifest, now=NOW)
    assert info.value.party == MALLORY.did
    assert MALLORY.did in info.value.message and BOB.did in info.value.message


def test_invite_from_someone_else_than_the_organizer(program: Path) -> None:
    manifest = manifest_for(program)
    fake = new_manifest(organizer=MALLORY.did, program=program, parties=3,
                        relays=["http://127.0.0.1:9"], now=NOW)  # fmt: skip
    fake = Manifest.from_json(fake.to_json() | {"sessionId": manifest.session_id})
    doc = build_invite(fake, BOB.did, MALLORY, now=NOW, invite_id=new_invite_id())
    acc = accept(fake, BOB, doc)
    with pytest.raises((NotInvited, ManifestTampered)) as info:
        verify_acceptance(acc, manifest=manifest, now=NOW)
    assert MALLORY.did in info.value.message


def test_roster_signed_by_another_key(program: Path) -> None:
    manifest = manifest_for(program)
    acc = accept(manifest, BOB)
    from didmesh.session.documents import decode_session_key

    seats = [Seat(MALLORY.did, os.urandom(32), (), None),
             Seat(BOB.did, decode_session_key(acc["sessionKey"], "", ValueError), (), acc)]
    fake_manifest = Manifest.from_json(manifest.to_json() | {"parties": 2, "threshold": 0,
                                                             "organizer": MALLORY.did})  # fmt: skip
    roster = build_roster(fake_manifest, MALLORY, seats, now=NOW)
    with pytest.raises(RosterInvalid) as info:
        verify_roster(roster, manifest=manifest, now=NOW)
    assert ORG.did in info.value.message


def test_confirmation_replayed_from_another_session(program: Path) -> None:
    first, second = manifest_for(program), manifest_for(program)
    conf = build_confirmation(first.session_id, b"\x01" * 32, BOB, now=NOW)
    with pytest.raises(ConfirmationInvalid) as info:
        verify_confirmation(conf, session_id=second.session_id, party=BOB.did, now=NOW)
    assert "another session" in info.value.message and BOB.did in info.value.message


def test_confirmation_signed_by_another_party(program: Path) -> None:
    manifest = manifest_for(program)
    conf = build_confirmation(manifest.session_id, b"\x01" * 32, MALLORY, now=NOW)
    with pytest.raises(ConfirmationInvalid) as info:
        verify_confirmation(conf, session_id=manifest.session_id, party=BOB.did, now=NOW)
    assert BOB.did in info.value.message


def test_program_whose_digest_differs(program: Path, tmp_path: Path) -> None:
    manifest = manifest_for(program)
    verify_program(manifest, program)
    evil = tmp_path / "sum.py.evil"
    evil.write_text("print('steal')\n")
    with pytest.raises(ProgramDigestMismatch) as info:
        verify_program(manifest, evil)
    assert manifest.program.sha256[:16] in info.value.message and ORG.did[:32] in info.value.message


def test_mpyc_outside_the_range(program: Path) -> None:
    manifest = manifest_for(program)
    check_mpyc(manifest, "0.11")
    with pytest.raises(MpycVersionMismatch, match="0.9"):
        check_mpyc(manifest, "0.9")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"extra": 1}, "extra"),
        ({"threshold": 2}, "threshold"),
        ({"sessionId": "ABC"}, "sessionId"),
        ({"relays": []}, "relays"),
        ({"validUntil": "2025-01-01T00:00:00Z"}, "validUntil"),
        ({"organizer": "did:web:example.com"}, "organizer"),
    ],
    ids=["unknown-key", "threshold", "session-id", "no-relays", "window", "organizer"],
)
def test_manifest_is_parsed_strictly(program: Path, change: dict, field: str) -> None:
    data = manifest_for(program).to_json() | change
    with pytest.raises(ManifestInvalid, match=field):
        Manifest.from_json(data)
