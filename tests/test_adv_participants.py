"""Malicious participants (issue 6): what an invitee, an organizer or an outsider holding
a did:key can try against the session layer, and what each honest party sees.

Every scenario runs the real session machines (tests/adversary/sessions.MiniNet: no disk,
no relay) or the real verifiers, and checks both the error (class, cause, party) and the
outcome: a seat not taken, nobody agreed on a bad roster, every party bound to its own id.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from typing import Any

import pytest
from adversary.sessions import (
    BOB,
    CAROL,
    MALLORY,
    NOW,
    ORG,
    MiniNet,
    build_session,
    counter_rng,
    make_manifest,
)
from didmesh.identity.credentials import verify_credential
from didmesh.identity.didkey import DidKey
from didmesh.identity.errors import (
    KeyNotAuthorized,
    UnsupportedProof,
    WrongProofPurpose,
)
from didmesh.identity.keys import IdentityKey
from didmesh.identity.multiformats import X25519_PUB, multibase_encode
from didmesh.identity.proofs import suite_named
from didmesh.relay.auth import parse_signing_did
from didmesh.relay.errors import InvalidEnvelope, MalformedRequest
from didmesh.session.documents import (
    SUITE,
    build_acceptance,
    build_invite,
    encode_session_key,
    new_invite_id,
    verify_acceptance,
    verify_invite,
)
from didmesh.session.errors import (
    AcceptanceInvalid,
    AcceptanceReplayed,
    InviteInvalid,
    ManifestInvalid,
    ManifestTampered,
    MessageInvalid,
    NotInvited,
)
from didmesh.session.machine import x25519_public
from didmesh.session.manifest import Manifest
from didmesh.session.messages import open_message, seal_message
from didmesh.session.roster import Seat, build_roster, commit, roster_hash, unpack_roster
from didmesh.session.state import Status
from vc_support import sign_raw

X25519_ONLY = "did:key:" + multibase_encode(X25519_PUB, ORG.x25519_public)


def _net(*invitees: IdentityKey, parties: int | None = None, tag: bytes = b"s1") -> MiniNet:
    manifest = make_manifest(parties=parties or len(invitees) + 1, session_seed=tag)
    net = MiniNet(manifest, tag=tag)
    for key in invitees:
        net.invite(key)
    net.pump()
    return net


def _seat(net: MiniNet, key: IdentityKey) -> Any:
    org = net.machines[ORG.did]
    return next(s for s in org.state.seats if s.did == key.did)


def _finish(net: MiniNet, *keys: IdentityKey) -> None:
    for key in keys:
        net.accept(key)
    net.pump()


def _assert_agreed_as_invited(net: MiniNet, order: list[IdentityKey]) -> None:
    """Everyone agreed, on one roster, with party i bound to the i-th DID and its own key."""
    rosters = [net.agreed_roster(k) for k in order]
    assert all(net.status(k) == Status.AGREED for k in order), [net.status(k) for k in order]
    assert len({r.roster_hash for r in rosters if r}) == 1
    roster = rosters[0]
    assert roster is not None
    assert [p.did for p in roster.parties] == [k.did for k in order]
    for i, key in enumerate(order):
        assert roster.parties[i].party_id == i
        assert roster.parties[i].session_public_key == x25519_public(net.privates[key.did])


# --------------------------------------------------------------------------- stolen invites


def test_stolen_invite_used_from_another_did() -> None:
    """Mallory copies Bob's invite (e.g. from a leaked file) and accepts it as herself."""
    net = _net(BOB, CAROL)
    stolen = net.machines[BOB.did].state.invite
    inv = verify_invite(stolen, now=NOW)  # anyone can verify it: it is public
    forged = build_acceptance(inv, MALLORY, session_public=b"\x09" * 32, endpoints=[], now=NOW)
    net.add(MALLORY)
    net.inject(MALLORY, ORG.did, "accept", {"acceptance": forged})
    (to, err), = net.errors
    assert to == ORG.did and isinstance(err, NotInvited)
    assert err.party == MALLORY.did and MALLORY.did in err.message and BOB.did in err.message
    assert _seat(net, BOB).status == "invited"  # the seat is still Bob's
    _finish(net, BOB, CAROL)
    _assert_agreed_as_invited(net, [ORG, BOB, CAROL])


def test_stolen_invite_code_path_is_single_use() -> None:
    """An invite addressed to Bob is useless in Mallory's hands even via import."""
    docs = build_session()
    with pytest.raises(InviteInvalid) as info:
        verify_invite(docs.invites[BOB.did], now=NOW, me=MALLORY.did)
    assert info.value.code == "invite_not_for_you" and BOB.did in info.value.message


# --------------------------------------------------------------------------- replays


def test_acceptance_replayed_from_an_old_session_by_a_third_party() -> None:
    old = _net(BOB, tag=b"old")
    _finish(old, BOB)
    assert old.status(BOB) == Status.AGREED
    old_acceptance = old.machines[BOB.did].state.acceptance
    new = _net(BOB, tag=b"new")  # same organizer invites Bob again
    new.add(MALLORY)
    new.inject(MALLORY, ORG.did, "accept", {"acceptance": old_acceptance})
    (to, err), = new.errors
    assert isinstance(err, AcceptanceReplayed) and err.party == BOB.did
    assert new.manifest.session_id[:8] in err.message
    assert _seat(new, BOB).status == "invited"  # not accepted on Bob's behalf
    _finish(new, BOB)
    _assert_agreed_as_invited(new, [ORG, BOB])


def test_signed_message_replayed_into_another_session_is_refused() -> None:
    """The relay replays Bob's whole signed 'accept' message of session 1 to session 2."""
    captured: list[bytes] = []

    def tap(sender: str, to: str, payload: bytes) -> list[bytes]:
        if sender == BOB.did:
            captured.append(payload)
        return [payload]

    old = _net(BOB, tag=b"old2")
    old.tap = tap
    _finish(old, BOB)
    new = _net(BOB, tag=b"new2")
    org = new.machines[ORG.did]
    msg = open_message(captured[0], me=ORG.did)
    with pytest.raises(MessageInvalid, match="another session"):
        org.receive(msg, now=NOW)
    assert _seat(new, BOB).status == "invited"


# --------------------------------------------------------------------------- seats, party ids


def test_invitee_cannot_accept_another_invitees_seat() -> None:
    """Carol (invited herself) presents Bob's invite to take his seat as well."""
    net = _net(BOB, CAROL)
    bobs = verify_invite(net.machines[BOB.did].state.invite, now=NOW)
    forged = build_acceptance(bobs, CAROL, session_public=b"\x05" * 32, endpoints=[], now=NOW)
    net.inject(CAROL, ORG.did, "accept", {"acceptance": forged})
    (_, err), = net.errors
    assert isinstance(err, NotInvited) and err.party == CAROL.did
    assert _seat(net, BOB).status == "invited" and _seat(net, CAROL).status == "invited"
    _finish(net, BOB, CAROL)
    _assert_agreed_as_invited(net, [ORG, BOB, CAROL])


def test_invitee_cannot_ask_for_a_party_id() -> None:
    """An acceptance carrying its own 'partyId' (or any extra member) is refused."""
    docs = build_session()
    inv = verify_invite(docs.invites[CAROL.did], now=NOW, me=CAROL.did)
    vp = {
        "@context": docs.acceptances[CAROL.did]["@context"],
        "id": new_invite_id(counter_rng(b"p")),
        "type": ["VerifiablePresentation", "SessionAcceptance"],
        "holder": CAROL.did,
        "sessionId": docs.manifest.session_id,
        "sessionKey": encode_session_key(b"\x07" * 32),
        "endpoints": [],
        "partyId": 0,
        "verifiableCredential": [inv.document],
    }
    options = {
        "created": "2025-03-01T12:00:00Z", "verificationMethod": CAROL.verification_method,
        "proofPurpose": "authentication", "challenge": inv.invite_id,
        "domain": docs.manifest.domain,
    }  # fmt: skip
    doc = {**vp, "proof": suite_named(SUITE).create(vp, options, CAROL.sign)}  # raw JCS
    with pytest.raises(AcceptanceInvalid) as info:
        verify_acceptance(doc, manifest=docs.manifest, now=NOW)
    assert "partyId" in info.value.message and info.value.party == CAROL.did


def _swap_roster_tap(make: Any) -> Any:
    """Replace every roster message by ``make(original roster, commitment)``."""

    def tap(sender: str, to: str, payload: bytes) -> list[bytes]:
        msg = open_message(payload, me=to)
        if msg.kind != "roster":
            return [payload]
        doc = make(unpack_roster(msg.body["roster"]))  # the organizer holds it unpacked
        body = {"roster": doc, "commitment": commit(ORG, msg.session_id, roster_hash(doc))}
        return [seal_message(ORG, "roster", msg.session_id, to, body, now_ms=2,
                             rng=counter_rng(b"swap" + to.encode()))]  # fmt: skip

    return tap


def _reseat(roster: dict[str, Any], manifest: Manifest, swap: bool) -> dict[str, Any]:
    """The organizer's re-signed roster: Bob and Carol's entries swapped (ids/DIDs, keys)."""
    parties = roster["credentialSubject"]["parties"]
    seats = []
    from didmesh.session.documents import decode_session_key

    for entry in parties:
        seats.append(
            Seat(entry["id"], decode_session_key(entry["sessionKey"], "", ValueError),
                 tuple(entry["endpoints"]), entry.get("acceptance"))
        )  # fmt: skip
    if swap:  # Bob's DID with Carol's acceptance and key, and the other way round
        b, c = seats[1], seats[2]
        seats[1] = dataclasses.replace(c, did=b.did)
        seats[2] = dataclasses.replace(b, did=c.did)
    return build_roster(manifest, ORG, seats, now=NOW)


def test_organizer_cannot_bind_a_party_to_anothers_seat() -> None:
    net = _net(BOB, CAROL)
    net.tap = _swap_roster_tap(lambda doc: _reseat(doc, net.manifest, swap=True))
    _finish(net, BOB, CAROL)
    for key in (BOB, CAROL):
        assert net.status(key) == Status.FAILED
        error = net.machines[key.did].state.error
        assert error is not None and error["party"] == ORG.did
        assert error["code"] in ("roster_invalid", "acceptance_invalid")
    assert all(net.status(k) != Status.AGREED for k in (ORG, BOB, CAROL))


async def test_party_claiming_another_party_id_on_the_mesh_is_refused() -> None:
    """Carol listens on Bob's endpoint and answers as party 1: she lacks Bob's session key,
    so party 0's handshake for the pair (0, 1) fails and nobody is bound to id 1."""
    from didmesh.session.mesh.connect import ConnectOptions, MeshConnector
    from didmesh.session.mesh.faults import ConnectFailed
    from didmesh.session.mesh.loopback import loopback_plans
    from didmesh.session.mesh.primitives import DH25519

    plans, ids = loopback_plans(3)
    # Carol's own (attacker's) view: she is party 1 on Bob's endpoint, with her own key
    parties = list(plans[1].parties)
    parties[1] = dataclasses.replace(parties[1], static_public=plans[2].me.static_public)
    parties[2] = dataclasses.replace(parties[2], static_public=DH25519().generate_keypair().public)
    impostor = dataclasses.replace(
        plans[1], my_static_private=plans[2].my_static_private, parties=tuple(parties)
    )
    options = ConnectOptions(connect_timeout=4.0, handshake_timeout=2.0, direct_only=True)
    conns = [
        MeshConnector(plans[0], ids[0], options),
        MeshConnector(impostor, ids[2], options),
        MeshConnector(plans[2], ids[2], options),
    ]
    results = await asyncio.gather(*(c.connect_all() for c in conns), return_exceptions=True)
    try:
        r0 = results[0]
        assert isinstance(r0, ConnectFailed), r0
        assert "party 1" in r0.message
        assert "authenticate" in r0.message or "rejected" in r0.message
    finally:
        for r in results:
            if isinstance(r, dict):
                for p in r.values():
                    p.abort()


# --------------------------------------------------------------------------- organizer swaps


def test_organizer_swaps_the_program_after_acceptance() -> None:
    net = _net(BOB, CAROL)
    swapped = Manifest.from_json(net.manifest.to_json() | {
        "program": net.manifest.to_json()["program"] | {"sha256": "cd" * 32}
    })  # fmt: skip
    net.tap = _swap_roster_tap(
        lambda doc: build_roster(
            swapped, ORG,
            [Seat(e["id"], x25519_public(net.privates[e["id"]]), (), e.get("acceptance"))
             for e in doc["credentialSubject"]["parties"]],
            now=NOW,
        )
    )  # fmt: skip
    _finish(net, BOB, CAROL)
    for key in (BOB, CAROL):
        assert net.status(key) == Status.FAILED
        error = net.machines[key.did].state.error
        assert error is not None
        assert error["code"] == ManifestTampered.code and error["party"] == ORG.did
        assert "program digest" in error["message"]


def test_organizer_reissues_an_invite_with_another_program() -> None:
    net = _net(BOB, CAROL)
    net.accept(BOB)  # Bob accepted the original terms; the acceptance is on its way
    swapped = Manifest.from_json(net.manifest.to_json() | {
        "program": net.manifest.to_json()["program"] | {"sha256": "ef" * 32}
    })  # fmt: skip
    doc = build_invite(swapped, BOB.did, ORG, now=NOW, invite_id=new_invite_id(counter_rng(b"i")))
    net.inject(ORG, BOB.did, "invite", {"invite": doc})
    (to, err), = [(t, e) for t, e in net.errors if t == BOB.did]
    assert isinstance(err, ManifestTampered) and err.party == ORG.did
    bob = net.machines[BOB.did]
    assert bob.status == Status.ACCEPTED
    assert bob.manifest.program.sha256 == net.manifest.program.sha256


# --------------------------------------------------------------------------- downgrades

_DOCS = build_session()
_UNSIGNED_INVITE = {k: v for k, v in _DOCS.invites[BOB.did].items() if k != "proof"}


def _invite_with_proof(proof: Any) -> dict[str, Any]:
    return {**_UNSIGNED_INVITE, "proof": proof}


@pytest.mark.parametrize(
    ("proof", "cause"),
    [
        ({"type": "none"}, "proof type 'none'"),
        ({"type": "DataIntegrityProof", "cryptosuite": "none"}, "cryptosuite 'none'"),
        ({"type": "DataIntegrityProof", "cryptosuite": "eddsa-2022"}, "eddsa-2022"),
        ({"type": "DataIntegrityProof", "cryptosuite": "ecdsa-rdfc-2019"}, "ecdsa-rdfc-2019"),
        ({"type": "JsonWebSignature2020"}, "JsonWebSignature2020"),
        ({"type": "RsaSignature2018"}, "RsaSignature2018"),
        (None, "has no proof"),
    ],
    ids=["none", "cryptosuite-none", "eddsa-2022-draft", "ecdsa", "jws2020", "rsa", "absent"],
)
def test_downgrade_to_unsupported_proof_is_refused(proof: Any, cause: str) -> None:
    base = _DOCS.invites[BOB.did]["proof"]
    doc = _invite_with_proof({**base, **proof}) if proof else dict(_UNSIGNED_INVITE)
    with pytest.raises(InviteInvalid) as info:
        verify_invite(doc, now=NOW, me=BOB.did, manifest=_DOCS.manifest)
    assert cause in info.value.message and info.value.party == ORG.did


def test_downgrade_by_adding_a_second_weaker_proof_is_refused() -> None:
    good = _DOCS.invites[BOB.did]["proof"]
    doc = _invite_with_proof([good, {"type": "none"}])
    with pytest.raises(InviteInvalid, match="exactly one proof"):
        verify_invite(doc, now=NOW, me=BOB.did, manifest=_DOCS.manifest)
    with pytest.raises(UnsupportedProof):
        verify_credential(doc, now=NOW)


@pytest.mark.parametrize(
    ("suite", "context"),
    [
        ("Ed25519Signature2020", "https://w3id.org/security/suites/ed25519-2020/v1"),
        ("Ed25519Signature2018", "https://w3id.org/security/v2"),
    ],
)
def test_downgrade_to_a_legacy_suite_is_refused(suite: str, context: str) -> None:
    doc = copy.deepcopy(_UNSIGNED_INVITE)
    doc["@context"] = [*doc["@context"], context]
    signed = sign_raw(doc, ORG, suite, created="2025-03-01T12:00:00Z")
    assert suite_named(suite).name == signed["proof"]["type"]
    with pytest.raises(InviteInvalid):
        verify_invite(signed, now=NOW, me=BOB.did, manifest=_DOCS.manifest)


# --------------------------------------------------------------------------- key purposes


def test_assertion_proof_presented_as_authentication_is_refused() -> None:
    """Bob's acceptance signed with proofPurpose assertionMethod (a credential-style proof)
    instead of authentication."""
    acc = copy.deepcopy(_DOCS.acceptances[BOB.did])
    options = {k: v for k, v in acc.pop("proof").items() if k not in ("proofValue",)}
    options["proofPurpose"] = "assertionMethod"
    options = {k: v for k, v in options.items() if k not in ("type", "cryptosuite")}
    acc["proof"] = suite_named(SUITE).create(acc, options, BOB.sign)
    with pytest.raises(AcceptanceInvalid) as info:
        verify_acceptance(acc, manifest=_DOCS.manifest, now=NOW)
    assert "proofPurpose" in info.value.message and info.value.party == BOB.did


def test_authentication_proof_presented_as_an_invite_is_refused() -> None:
    doc = sign_raw(_UNSIGNED_INVITE, ORG, SUITE, proofPurpose="authentication",
                   created="2025-03-01T12:00:00Z")  # fmt: skip
    with pytest.raises(InviteInvalid) as info:
        verify_invite(doc, now=NOW, me=BOB.did)
    assert "proofPurpose" in info.value.message
    with pytest.raises(WrongProofPurpose):
        verify_credential(doc, now=NOW)


def test_key_agreement_did_cannot_issue() -> None:
    """A did:key:z6LS... (X25519, key agreement only) named as issuer and signing key."""
    assert X25519_ONLY.startswith("did:key:z6LS")
    vm = f"{X25519_ONLY}#{X25519_ONLY.split(':')[-1]}"
    doc = sign_raw({**_UNSIGNED_INVITE, "issuer": X25519_ONLY}, ORG, SUITE,
                   verificationMethod=vm, created="2025-03-01T12:00:00Z")  # fmt: skip
    with pytest.raises(KeyNotAuthorized) as info:
        verify_credential(doc, now=NOW)
    assert "assertionMethod" in info.value.message or "cannot" in info.value.message
    with pytest.raises(InviteInvalid):
        verify_invite(doc, now=NOW, me=BOB.did)


def test_key_agreement_did_refused_everywhere_a_signer_is_needed() -> None:
    with pytest.raises(ManifestInvalid, match="Ed25519"):
        Manifest.from_json(_DOCS.manifest.to_json() | {"organizer": X25519_ONLY})
    with pytest.raises(MalformedRequest, match="Ed25519"):
        parse_signing_did(X25519_ONLY)
    env = {"v": 1, "id": "A" * 22, "from": X25519_ONLY, "to": BOB.did, "session": "s",
           "ts": 1, "ttl": 60, "body": "A" * 80, "sig": "A" * 86}  # fmt: skip
    from didmesh.relay.envelope import Envelope

    with pytest.raises(InvalidEnvelope):
        Envelope.from_dict(env).verify_signature()
    assert not DidKey.parse(X25519_ONLY).can_sign


def test_anothers_key_cannot_sign_for_the_organizer() -> None:
    """Bob signs an invite that names the organizer as issuer, with his own key."""
    doc = sign_raw(_UNSIGNED_INVITE, BOB, SUITE, created="2025-03-01T12:00:00Z")
    with pytest.raises(InviteInvalid) as info:
        verify_invite(doc, now=NOW, me=BOB.did)
    assert "not controlled by" in info.value.message


def test_message_signed_by_one_party_claiming_another() -> None:
    """Mallory signs a 'withdraw' with her key but names Bob as sender."""
    raw = seal_message(MALLORY, "withdraw", _DOCS.manifest.session_id, ORG.did, {}, now_ms=1)
    outer = json.loads(raw)
    outer["m"] = outer["m"].replace(MALLORY.did, BOB.did)
    with pytest.raises(MessageInvalid, match="bad signature"):
        open_message(json.dumps(outer).encode(), me=ORG.did)
