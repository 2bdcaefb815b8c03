"""The session protocol end to end over the in-memory relay (session.testing.World):
agreement, withdrawals, declines, cancellation, gated seats, and the attacks of the
issue's bad-input list that need a running protocol (equivocation, a confirmation of
another hash, tampering by the relay)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from didmesh.identity.credentials import issue_credential
from didmesh.identity.keys import IdentityKey
from didmesh.session.documents import CONTEXT, Gate
from didmesh.session.errors import UnexpectedEvent, WaitTimeout
from didmesh.session.messages import open_message, seal_message
from didmesh.session.roster import Seat, build_roster, commit, roster_hash, unpack_roster
from didmesh.session.state import Status
from didmesh.session.testing import World
from didmesh.session.waiting import waiting_for
from didmesh.session.words import sas_words


async def agreed_world(tmp_path: Path, m: int) -> World:
    world = World(tmp_path, m)
    world.invite_all()
    await world.deliver_invites()
    world.accept_all()
    await world.settle()
    return world


@pytest.mark.parametrize("m", [2, 3, 10])
async def test_every_party_holds_the_same_confirmed_roster(tmp_path: Path, m: int) -> None:
    world = await agreed_world(tmp_path, m)
    rosters = [p.engine.store.load(world.sid).agreed_roster for p in world.parties]
    assert all(r is not None for r in rosters)
    assert len({r.roster_hash for r in rosters if r}) == 1
    first = rosters[0]
    assert first is not None
    assert [p.did for p in first.parties] == [p.did for p in world.parties]  # invite order
    assert [p.party_id for p in first.parties] == list(range(m))
    assert len({sas_words(r.roster_hash) for r in rosters if r}) == 1
    for party in world.parties:
        stored = party.engine.store.load(world.sid)
        assert stored.session_private_key is not None
        mine = first.party(party.did)
        from nacl.bindings import crypto_scalarmult_base

        assert crypto_scalarmult_base(stored.session_private_key) == mine.session_public_key


async def test_duplicated_and_reordered_delivery_is_harmless(tmp_path: Path) -> None:
    world = World(tmp_path, 4)
    seen: list[tuple[str, str, bytes]] = []

    def duplicate(sender: str, to: str, payload: bytes) -> bytes:
        seen.append((sender, to, payload))
        world.hub.inboxes[to].appendleft((sender, payload))  # an early duplicate
        return payload

    world.hub.tap = duplicate
    world.invite_all()
    await world.deliver_invites()
    world.accept_all()
    await world.settle()
    assert all(world.status(p) == Status.AGREED for p in world.parties)
    assert len(seen) > 10


async def test_relay_tampering_is_dropped_and_named(tmp_path: Path) -> None:
    world = World(tmp_path, 2)
    world.hub.tap = lambda _s, _t, payload: payload.replace(b"SessionInvite", b"SessionInvitX")
    world.invite_all()
    await world.organizer.engine.flush(world.organizer.mailbox)
    item = await world.parties[1].mailbox.receive(1)
    assert item is not None
    notes = world.parties[1].engine.deliver([item])
    assert [n.level for n in notes] == ["warning"]
    assert "bad signature" in notes[0].text and world.organizer.did in notes[0].text
    assert not world.parties[1].engine.store.exists(world.sid)


async def test_organizer_equivocation_stops_every_honest_party(tmp_path: Path) -> None:
    world = World(tmp_path, 3)
    org = world.organizer
    bob, carol = world.parties[1], world.parties[2]

    def split_view(sender: str, to: str, payload: bytes) -> bytes:
        msg = open_message(payload, me=to)
        if msg.kind != "roster" or to != carol.did:
            return payload
        # the organizer shows carol a roster with another order (a second, validly signed one)
        parties = unpack_roster(msg.body["roster"])["credentialSubject"]["parties"]
        seats = [Seat(org.did, bytes(32), (), None)]
        for entry in reversed(parties[1:]):
            acc = entry["acceptance"]
            from didmesh.session.documents import decode_session_key

            seats.append(
                Seat(entry["id"], decode_session_key(acc["sessionKey"], "", ValueError), (), acc)
            )
        from didmesh.session.manifest import Manifest

        manifest = Manifest.from_json(msg.body["roster"]["credentialSubject"]["manifest"])
        other = build_roster(manifest, org.key, seats, now=world.clock())
        body = {"roster": other, "commitment": commit(org.key, world.sid, roster_hash(other))}
        return seal_message(org.key, "roster", world.sid, to, body, now_ms=msg.ts_ms)

    world.hub.tap = split_view
    world.invite_all()
    await world.deliver_invites()
    world.accept_all()
    await world.settle()
    for party in (bob, carol):
        state = party.engine.load(world.sid)
        assert state.status == Status.FAILED
        assert state.error and state.error["code"] == "roster_equivocation"
        message = state.error["message"]
        assert org.did in message and "two different rosters" in message
        assert party.engine.store.load(world.sid).agreed_roster is None


async def test_confirmation_of_another_hash_names_the_party(tmp_path: Path) -> None:
    world = World(tmp_path, 3)
    bob, carol = world.parties[1], world.parties[2]

    def lying_carol(sender: str, to: str, payload: bytes) -> bytes:
        if sender != carol.did:
            return payload
        msg = open_message(payload, me=to)
        if msg.kind != "confirm":
            return payload
        from didmesh.session.documents import build_confirmation

        fake = build_confirmation(world.sid, b"\x11" * 32, carol.key, now=world.clock())
        body = {"confirmation": fake, "commitment": msg.body["commitment"]}
        return seal_message(carol.key, "confirm", world.sid, to, body, now_ms=msg.ts_ms)

    world.hub.tap = lying_carol
    world.invite_all()
    await world.deliver_invites()
    world.accept_all()
    await world.settle()
    for party in (world.organizer, bob):
        state = party.engine.load(world.sid)
        assert state.status == Status.FAILED
        assert state.error and state.error["code"] == "confirmation_mismatch"
        assert state.error["party"] == carol.did and carol.did in state.error["message"]


async def test_withdraw_acceptance_before_roster_frees_the_seat(tmp_path: Path) -> None:
    world = World(tmp_path, 3)
    org, bob, carol = world.parties
    world.invite_all()
    await world.deliver_invites()
    bob.engine.accept(world.sid)
    await bob.engine.flush(bob.mailbox)
    bob.engine.withdraw(world.sid)
    await bob.engine.flush(bob.mailbox)
    carol.engine.accept(world.sid)
    await carol.engine.flush(carol.mailbox)
    with pytest.raises(WaitTimeout):
        await world.pump(org, lambda: False, timeout=0.5)
    seats = {s.did: s.status for s in org.engine.load(world.sid).seats}
    assert seats == {bob.did: "withdrawn", carol.did: "accepted"}
    assert world.status(org) == Status.COLLECTING
    # the organizer fills the seat with someone else and the session completes
    dave_key = IdentityKey.generate()
    from didmesh.session.engine import Engine
    from didmesh.session.store import SessionStore

    dave = Engine(SessionStore(tmp_path / "dave"), dave_key)
    org.engine.invite(world.sid, dave_key.did)
    await org.engine.flush(org.mailbox)
    dave_box = world.hub.mailbox(dave_key)
    await dave.run(dave_box, until=lambda: dave.store.exists(world.sid), timeout=5)
    dave.accept(world.sid)
    await dave.flush(dave_box)
    await asyncio.gather(
        world.pump(org, lambda: world.status(org) == Status.AGREED),
        world.pump(carol, lambda: world.status(carol) == Status.AGREED),
        dave.run(dave_box, until=lambda: dave.status_of(world.sid) == Status.AGREED, timeout=10),
    )
    assert world.status(bob) == Status.WITHDRAWN


async def test_withdraw_after_roster_stops_everyone(tmp_path: Path) -> None:
    world = World(tmp_path, 3)
    org, bob, carol = world.parties
    world.invite_all()
    await world.deliver_invites()
    world.accept_all()
    await world.flush_all()
    # the organizer publishes the roster; bob withdraws before he has confirmed it
    await world.pump(org, lambda: world.status(org) == Status.CONFIRMING)
    bob.engine.withdraw(world.sid)
    await bob.engine.flush(bob.mailbox)
    await world.settle(parties=[org, carol])
    org_state, carol_state = org.engine.load(world.sid), carol.engine.load(world.sid)
    assert org_state.status == Status.FAILED and org_state.error
    assert org_state.error["code"] == "party_withdrew" and bob.did in org_state.error["message"]
    assert carol_state.status == Status.CANCELLED and carol_state.error
    assert bob.did in carol_state.error["message"] and "withdrew" in carol_state.error["message"]
    assert carol.engine.store.load(world.sid).agreed_roster is None


def _take(world: World, party) -> list[tuple[str, bytes]]:
    """Everything waiting in ``party``'s in-memory inbox, in order (one delivery batch)."""
    inbox = world.hub.inboxes[party.did]
    items = list(inbox)
    inbox.clear()
    return items


@pytest.mark.parametrize("order", ["accept-first", "withdraw-first"])
@pytest.mark.parametrize("m", [2, 3])
async def test_acceptance_and_withdrawal_in_one_batch_free_the_seat(
    tmp_path: Path, m: int, order: str
) -> None:
    """The last acceptance and an acceptance's withdrawal reach the organizer in one batch
    (at m = 2, the same invitee's): the batch is one step, so the withdrawal frees the seat
    before the organizer decides on a roster; none is published, nothing fails."""
    world = World(tmp_path, m)
    org, bob = world.parties[0], world.parties[1]
    world.invite_all()
    await world.deliver_invites()
    bob.engine.accept(world.sid)
    await bob.engine.flush(bob.mailbox)
    if m == 3:  # bob's acceptance is in; carol's (the last) comes with bob's withdrawal
        org.engine.deliver(_take(world, org))
        world.parties[2].engine.accept(world.sid)
        await world.parties[2].engine.flush(world.parties[2].mailbox)
    bob.engine.withdraw(world.sid)
    await bob.engine.flush(bob.mailbox)
    batch = _take(world, org)
    kinds = [open_message(p, me=org.did).kind for _s, p in batch]
    assert sorted(kinds) == ["accept", "withdraw"]
    if (order == "withdraw-first") != (kinds[0] == "withdraw"):
        batch.reverse()
    notes = org.engine.deliver(batch)
    state = org.engine.load(world.sid)
    assert state.status == Status.COLLECTING and state.roster is None and not state.error
    assert not [n for n in notes if n.level == "error"]
    seats = {s.did: s.status for s in state.seats}
    assert seats[bob.did] == "withdrawn"
    if m == 3:
        assert seats[world.parties[2].did] == "accepted"
        assert any("the seat is free" in n.text and bob.did in n.text for n in notes)
    await org.engine.flush(org.mailbox)
    sent = [open_message(raw, me=p.did).kind
            for p in world.parties[1:] for _s, raw in world.hub.inboxes[p.did]]  # fmt: skip
    # no roster, no cancel; bob's acceptance, read after his withdrawal, may be refused
    # (invite_not_current), which bob, withdrawn, ignores
    assert set(sent) <= {"refuse"}, sent


async def test_withdrawal_after_agreement_is_reported_and_the_session_stays_agreed(
    tmp_path: Path,
) -> None:
    """The roster is final once every party confirmed it: a late acceptance and withdrawal
    (one batch) and a late cancel are recorded as rejected and reported, never a failure."""
    world = await agreed_world(tmp_path, 3)
    org, bob, carol = world.parties
    invite_id = bob.engine.load(world.sid).invite["id"]
    acceptance = bob.engine.load(world.sid).acceptance
    now_ms = int(world.clock().timestamp() * 1000)

    def sealed(key: IdentityKey, kind: str, to: str, body: dict) -> tuple[str, bytes]:
        return key.did, seal_message(key, kind, world.sid, to, body, now_ms=now_ms)

    notes = org.engine.deliver([
        sealed(bob.key, "accept", org.did, {"acceptance": acceptance}),
        sealed(bob.key, "withdraw", org.did, {"inviteId": invite_id}),
    ])  # fmt: skip
    late = [n for n in notes if n.level == "warning"]
    assert len(late) == 1 and bob.did in late[0].text and "too late" in late[0].text
    assert "stays agreed" in late[0].text
    notes = carol.engine.deliver([
        sealed(bob.key, "withdraw", carol.did, {"inviteId": invite_id}),
        sealed(org.key, "cancel", carol.did, {"reason": "bob withdrew"}),
    ])  # fmt: skip
    late = [n for n in notes if n.level == "warning"]
    assert len(late) == 2 and all("too late" in n.text for n in late)
    assert bob.did in late[0].text and org.did in late[1].text
    for party in (org, carol):
        state = party.engine.load(world.sid)
        assert state.status == Status.AGREED and not state.error
        assert state.rejected[-1]["code"] == "late_message"
        assert party.engine.store.load(world.sid).agreed_roster is not None

async def test_decline_and_organizer_withdraw_and_cancel(tmp_path: Path) -> None:
    world = World(tmp_path, 4)
    org, bob, carol, dave = world.parties
    world.invite_all()
    await world.deliver_invites()
    bob.engine.decline(world.sid)
    await bob.engine.flush(bob.mailbox)
    org.engine.withdraw_invite(world.sid, carol.did)
    await org.engine.flush(org.mailbox)
    await world.pump(carol, lambda: world.status(carol) == Status.REVOKED)
    with pytest.raises(UnexpectedEvent, match="'revoked'.*'accept'|'accept'.*'revoked'"):
        carol.engine.accept(world.sid)
    with contextlib.suppress(WaitTimeout):
        await world.pump(org, lambda: False, timeout=0.3)
    seats = {s.did: s.status for s in org.engine.load(world.sid).seats}
    assert seats[bob.did] == "declined" and seats[carol.did] == "withdrawn"
    org.engine.cancel(world.sid)
    await org.engine.flush(org.mailbox)
    await world.pump(dave, lambda: world.status(dave) == Status.CANCELLED)
    error = dave.engine.load(world.sid).error
    assert error and error["code"] == "session_cancelled" and org.did in error["message"]


async def test_unexpected_local_event_names_state_and_event(tmp_path: Path) -> None:
    world = World(tmp_path, 2)
    world.invite_all()
    await world.deliver_invites()
    bob = world.parties[1]
    bob.engine.accept(world.sid)
    with pytest.raises(UnexpectedEvent) as info:
        bob.engine.accept(world.sid)
    assert info.value.state == "accepted" and info.value.event == "accept"
    assert "'accept'" in info.value.message and "'accepted'" in info.value.message
    world.organizer.engine.cancel(world.sid)
    with pytest.raises(UnexpectedEvent, match="'cancelled'"):
        world.organizer.engine.cancel(world.sid)


def _gate_credential(issuer: IdentityKey, subject: str, typ: str = "ConsortiumMember") -> dict:
    return issue_credential(
        {
            "@context": [*CONTEXT, "https://www.w3.org/ns/credentials/examples/v2"],
            "type": ["VerifiableCredential", typ],
            "issuer": issuer.did,
            "credentialSubject": {"id": subject},
        },
        issuer,
        suite="eddsa-jcs-2022",
    )


async def test_gated_seat_needs_the_named_issuers_credential(tmp_path: Path) -> None:
    consortium = IdentityKey.generate()
    world = World(tmp_path, 3)
    org, bob, carol = world.parties
    gate = Gate(consortium.did, "ConsortiumMember")
    org.engine.invite(world.sid, bob.did, gate)
    org.engine.invite(world.sid, carol.did, gate)
    await world.deliver_invites()
    bob.engine.accept(world.sid, credentials=[_gate_credential(consortium, bob.did)])
    # carol presents a credential from someone else: the organizer rejects, naming her
    stranger = IdentityKey.generate()
    carol.engine.accept(world.sid, credentials=[_gate_credential(stranger, carol.did)])
    await world.flush_all()
    with pytest.raises(WaitTimeout):
        await world.pump(org, lambda: False, timeout=0.5)
    rejected = org.engine.load(world.sid).rejected
    assert rejected[-1]["code"] == "gate_credential_missing"
    assert rejected[-1]["party"] == carol.did and consortium.did in rejected[-1]["message"]
    seats = {s.did: s.status for s in org.engine.load(world.sid).seats}
    assert seats == {bob.did: "accepted", carol.did: "invited"}


async def test_gated_seats_verified_by_every_party(tmp_path: Path) -> None:
    consortium = IdentityKey.generate()
    world = World(tmp_path, 3)
    org, bob, carol = world.parties
    for p in (bob, carol):
        org.engine.invite(world.sid, p.did, Gate(consortium.did))
    await world.deliver_invites()
    for p in (bob, carol):
        p.engine.accept(world.sid, credentials=[_gate_credential(consortium, p.did)])
    await world.settle()
    assert all(world.status(p) == Status.AGREED for p in world.parties)
    roster = json.dumps(bob.engine.load(world.sid).roster)
    assert consortium.did in roster


async def test_each_wait_names_whom_it_waits_for_at_every_step(tmp_path: Path) -> None:
    """waiting_for (what `status --wait` prints): the organizer waits for named invitees,
    an open code and a free seat; an invitee for the organizer's roster; then everyone for
    the parties whose confirmation is missing, each named with its party number."""
    world = World(tmp_path, 4)
    org, bob, carol, dave = world.parties
    labels = {bob.did: "bob", carol.did: "carol", dave.did: "dave"}
    s8 = world.sid[:8]
    try:
        org.engine.invite(world.sid, bob.did)
        org.engine.open_code(world.sid)
        text = waiting_for(org.engine.load(world.sid), labels)
        assert text.startswith(f"'bob' ({bob.did[:28]}…) to accept ('didmesh accept {s8}')")
        assert "claim the open code" in text and "1 seat(s) still to invite" in text, text
        assert text.endswith(f"before session {s8}'s roster can be published"), text
        org.engine.withdraw_code(world.sid, org.engine.active_offers()[0].nameplate)
        for p in (carol, dave):
            org.engine.invite(world.sid, p.did)
        await world.deliver_invites()
        world.accept_all()
        assert waiting_for(bob.engine.load(world.sid)).startswith(
            f"the organizer {org.did[:28]}… to publish the roster of session {s8}")
        await world.flush_all()
        await world.pump(org, lambda: world.status(org) == Status.CONFIRMING)
        await org.engine.flush(org.mailbox)
        await world.pump(bob, lambda: world.status(bob) == Status.CONFIRMING)
        text = waiting_for(bob.engine.load(world.sid), labels)
        assert text.startswith(f"party 2 'carol' ({carol.did[:28]}…) and party 3 'dave' "), text
        assert "party 0" not in text and "party 1" not in text, text
        assert f"'didmesh status {s8}'" in text and "need not stay online" in text, text
    finally:
        await world.close()
