"""An invitee whose acceptance the organizer refuses is told why (a signed ``refuse``),
and a party invited again after a withdrawal or a decline gets a fresh invite it can
accept (specs/session-protocol.md, 4 and 7). Engines over the in-memory relay
(session.testing.World)."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Any

import pytest
from didmesh.identity.credentials import issue_credential
from didmesh.identity.keys import IdentityKey
from didmesh.session.budget import ROSTER_MESSAGE_BYTES
from didmesh.session.documents import CONTEXT, Gate
from didmesh.session.errors import WaitTimeout
from didmesh.session.messages import refusal_body, seal_message
from didmesh.session.state import Status
from didmesh.session.testing import Party, World


def gate_credential(issuer: IdentityKey, subject: str, random_bytes: int = 16) -> dict[str, Any]:
    """A valid gate credential carrying ``random_bytes`` of incompressible data."""
    return issue_credential({
        "@context": [*CONTEXT, "https://www.w3.org/ns/credentials/examples/v2"],
        "type": ["VerifiableCredential", "ConsortiumMember"],
        "issuer": issuer.did,
        "credentialSubject": {"id": subject,
                              "name": base64.b64encode(os.urandom(random_bytes)).decode()},
    }, issuer, suite="eddsa-jcs-2022")  # fmt: skip


async def gated_world(tmp_path: Path, issuer: IdentityKey) -> World:
    world = World(tmp_path, 3)
    for party in world.parties[1:]:
        world.organizer.engine.invite(world.sid, party.did, Gate(issuer.did))
    await world.deliver_invites()
    return world


async def refused_world(tmp_path: Path) -> tuple[World, IdentityKey, Party, Party]:
    """Both invitees present a 30 KB gate credential: each fits alone, the two together
    do not; the organizer refuses the second it sees. Returns (world, issuer, refused,
    accepted)."""
    consortium = IdentityKey.generate()
    world = await gated_world(tmp_path, consortium)
    org = world.organizer
    for party in world.parties[1:]:
        party.engine.accept(world.sid, credentials=[
            gate_credential(consortium, party.did, 30_000)])  # fmt: skip
        await party.engine.flush(party.mailbox)
    await world.pump(org, lambda: bool(org.engine.load(world.sid).rejected))
    await org.engine.flush(org.mailbox)
    refused_did = org.engine.load(world.sid).rejected[-1]["party"]
    refused = next(p for p in world.parties if p.did == refused_did)
    accepted = next(p for p in world.parties[1:] if p is not refused)
    return world, consortium, refused, accepted


async def test_a_refused_invitee_is_told_why_and_may_accept_again(tmp_path: Path) -> None:
    world, consortium, refused, accepted = await refused_world(tmp_path)
    org = world.organizer
    try:
        notes: list[str] = []
        await refused.engine.run(
            refused.mailbox, until=lambda: world.status(refused) != Status.ACCEPTED,
            timeout=10, on_note=lambda n: notes.append(n.text),
        )  # fmt: skip
        state = refused.engine.load(world.sid)
        assert state.status == Status.REFUSED and state.acceptance is None
        assert state.error is not None
        assert state.error["code"] == "gate_credential_too_large"
        assert state.error["party"] == org.did
        text = state.error["message"]
        assert text.startswith(f"organizer {org.did} refused your acceptance: "), text
        assert re.search(r"your gate credentials take \d+ bytes", text), text
        assert re.search(rf"about \d+ bytes .*above the {ROSTER_MESSAGE_BYTES}", text), text
        assert "present smaller credentials" in text and "accept again" in text, text
        assert any("accepted -> refused" in n for n in notes), notes
        # the organizer's side is unchanged: the seat stays invited, nothing published
        org_state = org.engine.load(world.sid)
        assert sorted(s.status for s in org_state.seats) == ["accepted", "invited"]
        # a smaller credential: accepted again, and the session agrees
        refused.engine.accept(world.sid, credentials=[gate_credential(consortium, refused.did)])
        assert refused.engine.load(world.sid).error is None
        await world.settle(timeout=20)
        assert [world.status(p) for p in world.parties] == [Status.AGREED] * 3
        assert accepted.engine.store.load(world.sid).agreed_roster is not None
    finally:
        await world.close()


def _refusal_of(world: World, victim: Party, signer: IdentityKey) -> bytes:
    state = victim.engine.load(world.sid)
    assert state.acceptance is not None and state.invite is not None
    body = refusal_body(state.invite["id"], state.acceptance["id"], "gate_credential_too_large",
                        "your gate credentials would make the roster about 99999 bytes")
    return seal_message(signer, "refuse", world.sid, victim.did, body, now_ms=1)


@pytest.mark.parametrize("forger", ["another party", "an outsider", "organizer's DID"])
async def test_a_refusal_not_from_the_organizer_is_reported_and_ends_no_wait(
    tmp_path: Path, forger: str
) -> None:
    world = World(tmp_path, 3)
    world.invite_all()
    await world.deliver_invites()
    bob, carol = world.parties[1], world.parties[2]
    bob.engine.accept(world.sid)
    try:
        mallory = IdentityKey.generate()
        if forger == "organizer's DID":  # signed by another key in the organizer's name
            raw = _refusal_of(world, bob, mallory).replace(
                mallory.did.encode(), world.organizer.did.encode())
            sender = world.organizer.did
        else:
            key = carol.key if forger == "another party" else mallory
            raw = _refusal_of(world, bob, key)
            sender = key.did
        notes = bob.engine.deliver([(sender, raw)])
        assert [n.level for n in notes] == ["warning"], notes
        assert sender in notes[0].text, notes[0].text
        assert ("not the organizer" in notes[0].text or "bad signature" in notes[0].text)
        state = bob.engine.load(world.sid)
        assert state.status == Status.ACCEPTED and state.error is None
        # the message goes through the mailbox too: the wait does not end on it
        world.hub.inboxes[bob.did].append((sender, raw))
        with pytest.raises(WaitTimeout):
            await bob.engine.run(bob.mailbox, timeout=1.5,
                                 until=lambda: world.status(bob) != Status.ACCEPTED)
        assert world.status(bob) == Status.ACCEPTED
    finally:
        await world.close()


async def test_a_refusal_of_an_earlier_acceptance_changes_nothing(tmp_path: Path) -> None:
    world = World(tmp_path, 2)
    world.invite_all()
    await world.deliver_invites()
    bob = world.parties[1]
    bob.engine.accept(world.sid)
    try:
        state = bob.engine.load(world.sid)
        assert state.invite is not None
        body = refusal_body(state.invite["id"], "urn:uuid:not-this-acceptance",
                            "gate_credential_too_large", "too large")  # fmt: skip
        raw = seal_message(world.organizer.key, "refuse", world.sid, bob.did, body, now_ms=1)
        assert bob.engine.deliver([(world.organizer.did, raw)]) == []
        state = bob.engine.load(world.sid)
        assert state.status == Status.ACCEPTED
        assert state.events[-1]["what"] == "ignored a refusal of an earlier acceptance"
    finally:
        await world.close()


# --------------------------------------------------------------------------- invited again


async def _end_bobs_invite(world: World, how: str) -> None:
    org, bob = world.organizer, world.parties[1]
    if how == "organizer withdrew the invite":
        org.engine.withdraw_invite(world.sid, bob.did)
        await org.engine.flush(org.mailbox)
        await world.pump(bob, lambda: world.status(bob) == Status.REVOKED)
        return
    if how == "invitee declined":
        bob.engine.decline(world.sid)
    else:  # the invitee accepted, then withdrew its acceptance
        bob.engine.accept(world.sid)
        await bob.engine.flush(bob.mailbox)
        await world.pump(org, lambda: any(
            s.status == "accepted" for s in org.engine.load(world.sid).seats))
        bob.engine.withdraw(world.sid)
    await bob.engine.flush(bob.mailbox)
    await world.pump(org, lambda: all(
        s.status not in ("invited", "accepted")
        for s in org.engine.load(world.sid).seats if s.did == bob.did))


@pytest.mark.parametrize(
    "how", ["organizer withdrew the invite", "invitee declined", "invitee withdrew"]
)
async def test_a_party_invited_again_gets_the_fresh_invite_and_can_accept(
    tmp_path: Path, how: str
) -> None:
    world = World(tmp_path, 3)
    world.invite_all()
    await world.deliver_invites()
    org, bob, carol = world.parties
    try:
        await _end_bobs_invite(world, how)
        first = bob.engine.load(world.sid).invite
        assert first is not None
        assert world.status(bob) in (Status.REVOKED, Status.DECLINED, Status.WITHDRAWN)
        org.engine.invite(world.sid, bob.did)  # the same person again: a fresh invite
        await org.engine.flush(org.mailbox)
        notes: list[str] = []
        await bob.engine.run(bob.mailbox, timeout=10, on_note=lambda n: notes.append(n.text),
                             until=lambda: world.status(bob) == Status.INVITED)  # fmt: skip
        state = bob.engine.load(world.sid)
        assert state.invite is not None and state.invite["id"] != first["id"]
        assert state.error is None and state.acceptance is None
        assert "invited again by" in state.events[-1]["what"]
        assert any("-> invited" in n for n in notes), notes
        world.accept_all([bob, carol])
        await world.settle(timeout=20)
        assert [world.status(p) for p in world.parties] == [Status.AGREED] * 3
        roster = carol.engine.store.load(world.sid).agreed_roster
        assert roster is not None and bob.did in [p.did for p in roster.parties]
        # the ended invite never reopens anything, even when imported as a file later
        assert first["id"] in state.ended_invites
    finally:
        await world.close()


async def test_an_ended_invite_imported_again_does_not_reopen(tmp_path: Path) -> None:
    world = World(tmp_path, 2)
    world.invite_all()
    await world.deliver_invites()
    org, bob = world.parties
    try:
        old = bob.engine.load(world.sid).invite
        await _end_bobs_invite(world, "organizer withdrew the invite")
        assert bob.engine.import_invite(old).status == Status.REVOKED
        org.engine.invite(world.sid, bob.did)
        await org.engine.flush(org.mailbox)
        await world.pump(bob, lambda: world.status(bob) == Status.INVITED)
        fresh = bob.engine.load(world.sid).invite
        bob.engine.decline(world.sid)
        for doc in (old, fresh):  # neither ended invite brings the session back
            assert bob.engine.import_invite(doc).status == Status.DECLINED
    finally:
        await world.close()


@pytest.mark.parametrize("order", ["withdrawal first", "fresh invite first"])
async def test_an_accepted_party_invited_again_takes_the_fresh_invite_in_any_order(
    tmp_path: Path, order: str
) -> None:
    """The organizer withdraws the invite bob accepted and invites him again; the two
    notices reach bob together (one batch) in either order (two relays): bob is invited
    with the fresh invite, never left revoked or holding the dead acceptance."""
    world = World(tmp_path, 3)
    world.invite_all()
    await world.deliver_invites()
    org, bob, carol = world.parties
    try:
        bob.engine.accept(world.sid)
        await bob.engine.flush(bob.mailbox)
        await world.pump(org, lambda: org.engine.load(world.sid).seats[0].status == "accepted")
        first = bob.engine.load(world.sid).invite
        assert first is not None
        org.engine.withdraw_invite(world.sid, bob.did)
        org.engine.invite(world.sid, bob.did)
        await org.engine.flush(org.mailbox)
        inbox = world.hub.inboxes[bob.did]
        batch = list(inbox)
        inbox.clear()
        assert len(batch) == 2
        if order == "fresh invite first":
            batch.reverse()
        notes = bob.engine.deliver(batch)
        state = bob.engine.load(world.sid)
        assert state.status == Status.INVITED, (state.status, notes)
        assert state.invite is not None and state.invite["id"] != first["id"]
        assert state.acceptance is None and first["id"] in state.ended_invites
        if order == "fresh invite first":  # the late notice names the dead invite: ignored
            assert [n.level for n in notes if "withdraw-invite" in n.text] == ["warning"]
        world.accept_all([bob, carol])
        await world.settle(timeout=20)
        assert [world.status(p) for p in world.parties] == [Status.AGREED] * 3
    finally:
        await world.close()


async def test_a_refused_invitee_who_withdraws_declines_and_frees_the_seat(
    tmp_path: Path,
) -> None:
    world, _consortium, refused, _accepted = await refused_world(tmp_path)
    org = world.organizer
    try:
        await world.pump(refused, lambda: world.status(refused) == Status.REFUSED)
        refused.engine.withdraw(world.sid)
        assert world.status(refused) == Status.DECLINED
        await refused.engine.flush(refused.mailbox)
        await world.pump(org, lambda: "declined" in [
            s.status for s in org.engine.load(world.sid).seats])  # fmt: skip
    finally:
        await world.close()
