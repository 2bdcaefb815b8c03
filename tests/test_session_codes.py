"""Invite codes (sans-IO SPAKE2 rendezvous), the word list and the SAS."""

from __future__ import annotations

import json

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.session.codes import (
    CLAIM_TIMEOUT_MS,
    Burned,
    Claimed,
    CodeClaim,
    CodeOffer,
    Reply,
    rendezvous_key,
)
from didmesh.session.errors import (
    CodeAlreadyClaimed,
    CodeExpired,
    InvalidCode,
    MessageInvalid,
    WrongCode,
)
from didmesh.session.words import WORDS, new_code, parse_code, sas_digits, sas_words

ORG = IdentityKey.from_seed(b"\x01" * 32)
BOB = IdentityKey.from_seed(b"\x02" * 32)
EVE = IdentityKey.from_seed(b"\x03" * 32)
SID = "ab" * 16
T0 = 1_700_000_000_000


def offer(code: str = "42-orbit-lantern") -> CodeOffer:
    return CodeOffer(42, code, SID, T0 + 600_000)


def run_claim(o: CodeOffer, claimant: IdentityKey, typed: str, reply: str = "") -> CodeClaim:
    reply = reply or IdentityKey.generate().did
    claim = CodeClaim(42, typed, claimant, reply)
    out = o.handle(claim.hello(), now_ms=T0, organizer=ORG.did, name="sum")
    assert len(out) == 1 and isinstance(out[0], Reply) and out[0].to == reply
    nxt = claim.handle(out[0].payload)
    assert nxt is not None
    actions = o.handle(nxt, now_ms=T0 + 1, organizer=ORG.did, name="sum")
    assert actions == [Claimed(claimant.did)]
    done = o.complete({"id": "urn:uuid:x", "invite": True})
    assert claim.handle(done.payload) is None
    return claim


def test_claim_binds_the_seat_to_the_claimants_did() -> None:
    o = offer()
    claim = run_claim(o, BOB, "42-orbit-lantern")
    assert claim.invite == {"id": "urn:uuid:x", "invite": True}
    assert claim.organizer == ORG.did and claim.session_id == SID
    assert o.status == "claimed" and o.claimant == BOB.did and o.key is None


def test_wrong_code_fails_on_both_sides_and_burns_the_code() -> None:
    o = offer()
    claim = CodeClaim(42, "42-orbit-lagoon", EVE, IdentityKey.generate().did)
    [reply] = o.handle(claim.hello(), now_ms=T0, organizer=ORG.did, name="sum")
    assert isinstance(reply, Reply)
    with pytest.raises(WrongCode, match="does not match"):
        claim.handle(reply.payload)
    assert o.handle(claim.abandon(), now_ms=T0, organizer=ORG.did, name="s") == [
        Burned("the claimant's code did not match (wrong code?)")
    ]
    assert o.status == "burned" and o.key is None
    # the right code no longer works: one guess per code
    late = CodeClaim(42, "42-orbit-lantern", BOB, IdentityKey.generate().did)
    [rej] = o.handle(late.hello(), now_ms=T0, organizer=ORG.did, name="s")
    assert isinstance(rej, Reply)
    with pytest.raises(CodeAlreadyClaimed):
        late.handle(rej.payload)


def test_a_claim_box_under_another_key_burns_the_code() -> None:
    o = offer()
    claim = CodeClaim(42, "42-orbit-lantern", BOB, IdentityKey.generate().did)
    [reply] = o.handle(claim.hello(), now_ms=T0, organizer=ORG.did, name="sum")
    assert isinstance(reply, Reply)
    nxt = claim.handle(reply.payload)
    assert nxt is not None
    msg = json.loads(nxt)
    msg["box"] = msg["box"][:-4] + ("AAAA" if msg["box"][-4:] != "AAAA" else "BBBB")
    out = o.handle(json.dumps(msg).encode(), now_ms=T0, organizer=ORG.did, name="s")
    assert len(out) == 1 and isinstance(out[0], Burned) and o.status == "burned"


def test_two_people_claiming_one_code_second_fails_clearly() -> None:
    o = offer()
    first = CodeClaim(42, "42-orbit-lantern", BOB, IdentityKey.generate().did)
    second = CodeClaim(42, "42-orbit-lantern", EVE, IdentityKey.generate().did)
    o.handle(first.hello(), now_ms=T0, organizer=ORG.did, name="sum")
    [rej] = o.handle(second.hello(), now_ms=T0, organizer=ORG.did, name="sum")
    assert isinstance(rej, Reply) and rej.to == second.reply_did
    with pytest.raises(CodeAlreadyClaimed, match="already used by someone else"):
        second.handle(rej.payload)
    assert o.status == "claiming"  # the first claim goes on


def test_expired_code() -> None:
    o = offer()
    claim = CodeClaim(42, "42-orbit-lantern", BOB, IdentityKey.generate().did)
    out = o.handle(claim.hello(), now_ms=T0 + 600_001, organizer=ORG.did, name="s")
    assert isinstance(out[0], Burned) and o.status == "expired"
    with pytest.raises(CodeExpired):
        claim.handle(next(a for a in out if isinstance(a, Reply)).payload)


def test_unfinished_claim_burns_after_the_timeout() -> None:
    o = offer()
    claim = CodeClaim(42, "42-orbit-lantern", BOB, IdentityKey.generate().did)
    o.handle(claim.hello(), now_ms=T0, organizer=ORG.did, name="s")
    assert o.tick(T0 + CLAIM_TIMEOUT_MS + 1) and o.status == "burned"


def test_duplicate_hello_through_a_second_relay_is_ignored() -> None:
    o = offer()
    claim = CodeClaim(42, "42-orbit-lantern", BOB, IdentityKey.generate().did)
    assert len(o.handle(claim.hello(), now_ms=T0, organizer=ORG.did, name="s")) == 1
    assert o.handle(claim.hello(), now_ms=T0, organizer=ORG.did, name="s") == []


def test_transcript_shows_nothing_that_tests_a_guess_offline() -> None:
    """A relay sees the PAKE messages and the boxes; the words never appear, and the box
    does not open under a key derived from the relay-visible data alone."""
    o = offer()
    claim = CodeClaim(42, "42-orbit-lantern", BOB, IdentityKey.generate().did)
    hello = claim.hello()
    [reply] = o.handle(hello, now_ms=T0, organizer=ORG.did, name="s")
    assert isinstance(reply, Reply)
    for wire in (hello, reply.payload):
        assert b"orbit" not in wire and b"lantern" not in wire


@pytest.mark.parametrize("payload", [b"{", b"[]", b'{"t": "hello"}', b"x" * 300_000])
def test_malformed_code_messages(payload: bytes) -> None:
    with pytest.raises(MessageInvalid):
        offer().handle(payload, now_ms=T0, organizer=ORG.did, name="s")


def test_rendezvous_identity_depends_on_the_nameplate_only() -> None:
    assert rendezvous_key(4).did == rendezvous_key(4).did != rendezvous_key(5).did


def test_words_and_codes() -> None:
    assert len(WORDS) == len(set(WORDS)) == 256
    nameplate, code = new_code(rng=lambda n: bytes(range(n)))
    assert nameplate == 2 and code == f"2-{WORDS[2]}-{WORDS[3]}"
    assert parse_code("  42 Orbit  LANTERN ") == (42, "42-orbit-lantern")
    for bad in ("orbit-lantern", "0-orbit-lantern", "42-orbit", "42-orbit-lanturn", "a-b-c"):
        with pytest.raises(InvalidCode):
            parse_code(bad)
    with pytest.raises(InvalidCode, match="lantern"):
        parse_code("42-orbit-lanturn")


def test_sas_is_deterministic_and_separates_hashes() -> None:
    h1, h2 = b"\x00" * 32, b"\x00" * 31 + b"\x01"
    assert sas_words(h1) == sas_words(h1) and len(sas_words(h1).split()) == 5
    assert sas_words(h1) != sas_words(h2) and sas_digits(h1) != sas_digits(h2)
    assert len(sas_digits(h1).replace(" ", "")) == 12
