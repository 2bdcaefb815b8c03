"""An invitee whose acceptance the organizer refuses is told why (a signed ``refuse``),
and a party invited again after a withdrawal or a decline gets a fresh invite it can
accept (specs/session-protocol.md, 4 and 7). Engines over the in-memory relay
(session.testing.World)."""

from __future__ import annotations

import copy
import os
import re
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from didmesh.identity.credentials import issue_credential, issue_presentation
from didmesh.identity.keys import IdentityKey
from didmesh.session.budget import ROSTER_MESSAGE_BYTES
from didmesh.session.documents import CONTEXT, Gate, encode_session_key, new_invite_id
from didmesh.session.errors import WaitTimeout
from didmesh.session.messages import refusal_body, seal_message
from didmesh.session.refusals import MAX_REFUSALS_PER_INVITE
from didmesh.session.state import Status
from didmesh.session.testing import Party, World
from gate_helpers import gate_credential


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


# --------------------------------------------------------------------------- other refusals


def _crafted_acceptance(world: World, party: Party, *, challenge: str | None = None,
                        domain: str | None = None, extra: dict[str, Any] | None = None,
                        created: datetime | None = None, expires: datetime | None = None,
                        ) -> dict[str, Any]:  # fmt: skip
    """An acceptance ``party`` signs itself, as a client other than didmesh's might (its
    proof may carry its own ``expires``)."""
    state = party.engine.load(world.sid)
    assert state.invite is not None
    vp = {"@context": list(CONTEXT), "id": new_invite_id(),
          "type": ["VerifiablePresentation", "SessionAcceptance"], "holder": party.did,
          "sessionId": world.sid, "sessionKey": encode_session_key(os.urandom(32)),
          "endpoints": [], "verifiableCredential": [state.invite], **(extra or {})}  # fmt: skip
    return issue_presentation(vp, party.key, challenge=challenge or state.invite["id"],
                              domain=domain or world.manifest.domain,
                              suite="eddsa-jcs-2022", created=created,
                              expires=expires)  # fmt: skip


def _post_acceptance(world: World, party: Party, doc: dict[str, Any],
                     sender: IdentityKey | None = None) -> None:  # fmt: skip
    """``party`` holds ``doc`` as its current acceptance; ``sender`` (default: the party)
    posts it to the organizer."""
    with party.engine.store.lock():
        state = party.engine.load(world.sid)
        state.acceptance, state.status = doc, Status.ACCEPTED
        state.session_public = doc.get("sessionKey")
        party.engine.save(state)
    key = sender or party.key
    raw = seal_message(key, "accept", world.sid, world.organizer.did, {"acceptance": doc},
                       now_ms=1)  # fmt: skip
    world.hub.post(key.did, world.organizer.did, raw)


async def _refusal_reaches(world: World, party: Party) -> tuple[Any, list[str]]:
    """The organizer takes the acceptance and answers; ``party``'s wait ends (or times out)."""
    org = world.organizer
    await party.engine.flush(party.mailbox)
    await world.pump(org, lambda: bool(org.engine.load(world.sid).rejected))
    await org.engine.flush(org.mailbox)
    notes: list[str] = []
    await party.engine.run(party.mailbox, until=lambda: world.status(party) != Status.ACCEPTED,
                           timeout=10, on_note=lambda n: notes.append(n.text))  # fmt: skip
    return party.engine.load(world.sid), notes


def _expired_credential(issuer: IdentityKey, subject: str) -> dict[str, Any]:
    return issue_credential({
        "@context": [*CONTEXT, "https://www.w3.org/ns/credentials/examples/v2"],
        "type": ["VerifiableCredential", "ConsortiumMember"], "issuer": issuer.did,
        "validFrom": "2020-01-01T00:00:00Z", "validUntil": "2021-01-01T00:00:00Z",
        "credentialSubject": {"id": subject, "name": "Bob"},
    }, issuer, suite="eddsa-jcs-2022")  # fmt: skip


def _tampered_credential(issuer: IdentityKey, subject: str) -> dict[str, Any]:
    cred = gate_credential(issuer, subject)
    cred["credentialSubject"]["name"] = "someone else"
    return cred


GATE_CASES = {
    # case: (credentials bob presents, code, words the reason must hold)
    "no credential": (lambda i, s: [], "gate_credential_missing",
                      ["the seat requires a credential from", "--credential FILE"]),
    "a credential of another issuer": (
        lambda i, s: [gate_credential(IdentityKey.generate(), s)], "gate_credential_missing",
        ["presents none", "--credential FILE"]),
    "a tampered credential": (lambda i, s: [_tampered_credential(i, s)],
                              "gate_credential_invalid", ["is not valid", "a valid one"]),
    "an expired credential": (lambda i, s: [_expired_credential(i, s)],
                              "gate_credential_expired", ["expired", "a current one"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(GATE_CASES))
async def test_an_invitee_refused_for_its_gate_credential_is_told_which_and_why(
    tmp_path: Path, case: str
) -> None:
    make, code, words = GATE_CASES[case]
    consortium = IdentityKey.generate()
    world = await gated_world(tmp_path, consortium)
    org, bob = world.organizer, world.parties[1]
    try:
        bob.engine.accept(world.sid, credentials=make(consortium, bob.did))
        state, notes = await _refusal_reaches(world, bob)
        assert state.status == Status.REFUSED and state.error is not None, state.status
        assert state.error["code"] == code
        text = state.error["message"]
        assert text.startswith(f"organizer {org.did} refused your acceptance: "), text
        assert f"didmesh accept {world.sid[:8]}" in text, text
        for word in words:
            assert word in text, (word, text)
        assert text.isprintable() and "\n" not in text
        assert any("accepted -> refused" in n for n in notes), notes
        org_state = org.engine.load(world.sid)
        assert org_state.rejected[-1]["code"] == code
        assert org_state.seats[0].refusals == 1
        # the invitee fixes it: accepted again, and taken
        bob.engine.accept(world.sid, credentials=[gate_credential(consortium, bob.did)])
        await bob.engine.flush(bob.mailbox)
        await world.pump(org, lambda: org.engine.load(world.sid).seats[0].status == "accepted")
    finally:
        await world.close()


async def test_an_acceptance_of_a_withdrawn_invite_is_refused_and_the_wait_ends(
    tmp_path: Path,
) -> None:
    """The organizer withdrew bob's invite, but that notice was lost (a relay dropped it);
    bob accepts the dead invite: he is told it ended (revoked), not left waiting, and a
    fresh invite reopens his session."""
    world = World(tmp_path, 3)
    world.invite_all()
    await world.deliver_invites()
    org, bob, carol = world.parties
    try:
        org.engine.withdraw_invite(world.sid, bob.did)
        await org.engine.flush(org.mailbox)
        world.hub.inboxes[bob.did].clear()  # the withdraw-invite is lost
        bob.engine.accept(world.sid)
        state, _notes = await _refusal_reaches(world, bob)
        assert state.status == Status.REVOKED and state.error is not None
        assert state.error["code"] == "invite_not_current"
        assert "has ended" in state.error["message"], state.error
        assert "ask the organizer for a fresh invite" in state.error["message"]
        org.engine.invite(world.sid, bob.did)
        await org.engine.flush(org.mailbox)
        await world.pump(bob, lambda: world.status(bob) == Status.INVITED)
        world.accept_all([bob, carol])
        await world.settle(timeout=20)
        assert [world.status(p) for p in world.parties] == [Status.AGREED] * 3
    finally:
        await world.close()


BAD_KEY = {"sessionKey": "z6LSbad"}
CRAFTED = {
    # case: (how the acceptance is made, code)
    "made for another invite (challenge)": (
        lambda w, p: _crafted_acceptance(w, p, challenge="urn:uuid:" + "0" * 36),
        "terms_mismatch"),
    "made for another session (domain)": (
        lambda w, p: _crafted_acceptance(w, p, domain="urn:didmesh:session:" + "ab" * 16),
        "terms_mismatch"),
    "a malformed session key": (lambda w, p: _crafted_acceptance(w, p, extra=BAD_KEY),
                         "acceptance_invalid"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CRAFTED))
async def test_an_acceptance_not_matching_the_terms_is_refused_with_its_code(
    tmp_path: Path, case: str
) -> None:
    make, code = CRAFTED[case]
    world = World(tmp_path, 2)
    world.invite_all()
    await world.deliver_invites()
    bob = world.parties[1]
    try:
        _post_acceptance(world, bob, make(world, bob))
        state, _notes = await _refusal_reaches(world, bob)
        assert state.status == Status.REFUSED and state.error is not None
        assert state.error["code"] == code
        assert f"accept the invite again (didmesh accept {world.sid[:8]})" in state.error[
            "message"] or f"accept again (didmesh accept {world.sid[:8]})" in state.error[
            "message"], state.error  # fmt: skip
    finally:
        await world.close()


async def test_an_acceptance_whose_proof_expired_is_refused_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    """The acceptance's own proof carries an ``expires`` that passed before it reached the
    organizer (held back by a relay, say): the organizer refuses it as
    ``presentation_expired``, its session is unchanged (the seat stays invited, nothing
    published), and the invitee is told to accept again, which it can."""
    world = World(tmp_path, 2)
    world.invite_all()
    await world.deliver_invites()
    org, bob = world.parties
    try:
        before = [asdict(seat) for seat in org.engine.load(world.sid).seats]
        now = datetime.now(UTC)
        doc = _crafted_acceptance(world, bob, created=now - timedelta(hours=2),
                                  expires=now - timedelta(hours=1))  # fmt: skip
        _post_acceptance(world, bob, doc)
        state, notes = await _refusal_reaches(world, bob)
        org_state = org.engine.load(world.sid)
        # the organizer: rejected with its code, told bob once, changed nothing else
        assert org_state.rejected[-1]["code"] == "presentation_expired", org_state.rejected
        assert "its proof expired at" in org_state.rejected[-1]["message"]
        assert org_state.rejected[-1]["party"] == bob.did
        assert org_state.status == Status.COLLECTING and org_state.roster is None
        after = [asdict(seat) for seat in org_state.seats]
        assert after[0].pop("refusals") == 1 and before[0].pop("refusals") == 0
        assert after == before  # still invited, same invite, no acceptance taken
        # bob: refused with that code, told why and what to do; his invite is kept
        assert state.status == Status.REFUSED and state.error is not None, state.status
        assert state.error["code"] == "presentation_expired"
        assert state.error["party"] == org.did
        text = state.error["message"]
        assert "your acceptance had expired when it arrived (" in text, text
        assert "its proof expired at" in text, text
        assert text.endswith(f"accept again: didmesh accept {world.sid[:8]}"), text
        assert state.invite is not None and state.invite["id"] == before[0]["invite_id"]
        assert any("accepted -> refused" in n for n in notes), notes
        # accepting again (didmesh's own acceptance, no expiry) agrees the session
        bob.engine.accept(world.sid)
        await world.settle(timeout=20)
        assert [world.status(p) for p in world.parties] == [Status.AGREED] * 2
    finally:
        await world.close()


async def test_an_acceptance_whose_proof_expires_later_is_taken(tmp_path: Path) -> None:
    """The same acceptance with an ``expires`` still ahead is valid: the expiry alone
    decides the refusal above."""
    world = World(tmp_path, 2)
    world.invite_all()
    await world.deliver_invites()
    org, bob = world.parties
    try:
        now = datetime.now(UTC)
        doc = _crafted_acceptance(world, bob, created=now - timedelta(minutes=1),
                                  expires=now + timedelta(hours=1))  # fmt: skip
        _post_acceptance(world, bob, doc)
        await bob.engine.flush(bob.mailbox)
        await world.pump(org, lambda: org.engine.load(world.sid).status != Status.COLLECTING)
        org_state = org.engine.load(world.sid)
        assert org_state.rejected == [] and org_state.seats[0].acceptance == doc
    finally:
        await world.close()


def _forged_proof(doc: dict[str, Any]) -> dict[str, Any]:
    forged = copy.deepcopy(doc)
    forged["endpoints"] = ["tcp://127.0.0.1:9"]  # after signing: the holder's proof breaks
    return forged


NOT_AUTHENTIC = ["the holder's proof is broken", "passed on by another party",
                 "by a stranger holding no invite"]  # fmt: skip


@pytest.mark.parametrize("case", NOT_AUTHENTIC)
async def test_an_acceptance_that_is_not_authentic_gets_no_answer(
    tmp_path: Path, case: str
) -> None:
    """No refusal (no oracle, nothing sent to an address an attacker chose) unless the
    acceptance is signed by its holder, who is someone the organizer invited."""
    world = World(tmp_path, 3)
    world.invite_all()
    await world.deliver_invites()
    org, bob, carol = world.parties
    mallory = IdentityKey.generate()
    try:
        bad = _crafted_acceptance(world, bob, challenge="urn:uuid:" + "0" * 36)
        if case == "the holder's proof is broken":
            _post_acceptance(world, bob, _forged_proof(bad))
        elif case == "passed on by another party":
            _post_acceptance(world, bob, bad, sender=carol.key)
        else:  # mallory signs an acceptance of bob's invite as its holder
            stranger = Party("mallory", mallory, bob.engine, bob.mailbox)
            doc = bad | {"holder": mallory.did}
            del doc["proof"]
            doc = issue_presentation(doc, mallory, challenge=doc["verifiableCredential"][0]["id"],
                                     domain=world.manifest.domain, suite="eddsa-jcs-2022")
            raw = seal_message(mallory, "accept", world.sid, org.did, {"acceptance": doc},
                               now_ms=1)  # fmt: skip
            world.hub.post(stranger.did, org.did, raw)
        notes = org.engine.deliver(list(world.hub.inboxes[org.did]))
        world.hub.inboxes[org.did].clear()
        assert [n.level for n in notes] == ["warning"], notes
        state = org.engine.load(world.sid)
        assert state.rejected, "the acceptance was not rejected"
        assert state.outbox == [], [e["to"] for e in state.outbox]
        assert all(s.refusals == 0 for s in state.seats)
    finally:
        await world.close()


async def test_refusals_per_invite_are_bounded(tmp_path: Path) -> None:
    """An invitee re-sending bad acceptances gets at most MAX_REFUSALS_PER_INVITE refusals
    for its invite; the organizer notes once that it stops answering."""
    world = World(tmp_path, 2)
    world.invite_all()
    await world.deliver_invites()
    org, bob = world.parties
    try:
        for _ in range(MAX_REFUSALS_PER_INVITE + 7):
            _post_acceptance(world, bob, _crafted_acceptance(world, bob, extra=BAD_KEY))
        batch = list(world.hub.inboxes[org.did])
        world.hub.inboxes[org.did].clear()
        org.engine.deliver(batch)
        state = org.engine.load(world.sid)
        refusals = [e for e in state.outbox if e["to"] == bob.did]
        assert len(refusals) == MAX_REFUSALS_PER_INVITE
        assert sum("not answered" in e["what"] for e in state.events) == 1
        assert len(state.rejected) == MAX_REFUSALS_PER_INVITE + 7
        # a fresh invite (a new seat record) has its own count
        org.engine.withdraw_invite(world.sid, bob.did)
        org.engine.invite(world.sid, bob.did)
        assert [s.refusals for s in org.engine.load(world.sid).seats] == [
            MAX_REFUSALS_PER_INVITE + 1, 0]  # fmt: skip
    finally:
        await world.close()
