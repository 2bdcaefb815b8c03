"""Fuzzing the session layer's parsers of untrusted input (issue 6, "Fuzzing").

Signed session messages, manifests, invites, acceptances, rosters, confirmations, session
state files, invite-code rendezvous messages and typed codes, and the state machine fed
authenticated garbage by a party of the session. Property: any input -> a result or a
DidmeshError; never another exception or a hang; and a mutated signed document never
verifies as anything but the original.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from adversary.fuzz import (
    budget,
    byte_mutations,
    dumps,
    fuzz_settings,
    json_values,
    mutate,
    nested,
    only_tree_errors,
    tree_errors_or_known,
)
from adversary.sessions import BOB, CAROL, MALLORY, NOW, ORG, build_session, counter_rng
from didmesh.identity.keys import IdentityKey
from didmesh.session import codes
from didmesh.session.documents import (
    encode_session_key,
    verify_acceptance,
    verify_confirmation,
    verify_invite,
)
from didmesh.session.errors import ManifestInvalid, MessageInvalid, StateCorrupted
from didmesh.session.machine import SessionMachine, x25519_public
from didmesh.session.manifest import Manifest, format_time, validate_relay_url
from didmesh.session.messages import (
    ENDING_REFUSALS,
    KINDS,
    MAX_REFUSAL_REASON,
    REFUSAL_CODES,
    open_message,
    parse_refusal,
    refusal_body,
    seal_message,
)
from didmesh.session.roster import verify_roster
from didmesh.session.state import Role, SessionState, Status
from didmesh.session.words import parse_code
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DOCS = build_session()
SID = DOCS.manifest.session_id
MANIFEST_JSON = DOCS.manifest.to_json()
INVITE = DOCS.invites[BOB.did]
ACCEPTANCE = DOCS.acceptances[BOB.did]
CONFIRMATION = DOCS.confirmations[BOB.did]
_MSG = seal_message(
    BOB, "accept", SID, ORG.did, {"acceptance": ACCEPTANCE}, now_ms=1, rng=counter_rng(b"m")
)


def _sans_proof_context(doc: Any) -> Any:
    if isinstance(doc, dict) and isinstance(doc.get("proof"), dict):
        return {**doc, "proof": {k: v for k, v in doc["proof"].items() if k != "@context"}}
    return doc


# --------------------------------------------------------------------------- messages


@fuzz_settings(200)
@given(raw=st.binary(max_size=400))
def test_fuzz_message_random_bytes(raw: bytes) -> None:
    only_tree_errors("open_message", open_message, raw, me=ORG.did)


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_message_mutations(data: st.DataObject) -> None:
    outer = json.loads(_MSG)
    if data.draw(st.booleans()):
        inner = mutate(json.loads(outer["m"]), data)
        outer["m"] = dumps(inner)
    else:
        outer = mutate(outer, data)
    raw = dumps(outer).encode()
    got = tree_errors_or_known("open_message(mutated)", open_message, raw, me=ORG.did)
    if got is not None:  # the bytes under the signature are the original's
        assert got == open_message(_MSG, me=ORG.did)
    raw2 = byte_mutations(_MSG, data)
    got2 = tree_errors_or_known("open_message(bytes)", open_message, raw2, me=ORG.did)
    if got2 is not None:
        assert got2 == open_message(_MSG, me=ORG.did)


def test_message_with_list_kind() -> None:
    inner = json.loads(json.loads(_MSG)["m"]) | {"kind": ["accept"]}
    raw = json.dumps({"m": json.dumps(inner), "sig": json.loads(_MSG)["sig"]}).encode()
    only_tree_errors("open_message", open_message, raw, me=ORG.did)


def test_message_classic_attacks() -> None:
    for raw in (nested(3000).encode(), b'{"m":"' + nested(3000).encode() + b'","sig":"x"}'):
        assert only_tree_errors("open_message", open_message, raw, me=ORG.did) is None


# --------------------------------------------------------------------------- documents


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_manifest(data: st.DataObject) -> None:
    doc = mutate(MANIFEST_JSON, data, rounds=3)
    got = tree_errors_or_known("Manifest.from_json", Manifest.from_json, doc)
    if got is not None:  # whatever parses re-serializes to a manifest that parses the same
        assert Manifest.from_json(got.to_json()) == got


@pytest.mark.parametrize(
    ("field", "value"),
    [("validFrom", "2025-13-01T00:00:00Z"), ("validUntil", "2025-03-01T25:00:00Z")],
)
def test_manifest_impossible_dates(field: str, value: str) -> None:
    only_tree_errors("Manifest.from_json", Manifest.from_json, {**MANIFEST_JSON, field: value})


def test_manifest_relay_url_with_open_bracket() -> None:
    only_tree_errors("validate_relay_url", validate_relay_url, "http://[::1", ManifestInvalid)


@fuzz_settings(100)
@given(data=st.data())
def test_fuzz_invite(data: st.DataObject) -> None:
    doc = mutate(INVITE, data)
    got = tree_errors_or_known(
        "verify_invite", verify_invite, doc, now=NOW, me=BOB.did, manifest=DOCS.manifest
    )
    if got is not None:
        assert _sans_proof_context(doc) == _sans_proof_context(INVITE)
        assert got.invitee == BOB.did and got.organizer == ORG.did


@settings(max_examples=budget(80), suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_acceptance(data: st.DataObject) -> None:
    doc = mutate(ACCEPTANCE, data, rounds=3)
    got = tree_errors_or_known(
        "verify_acceptance", verify_acceptance, doc, manifest=DOCS.manifest, now=NOW
    )
    if got is not None:
        assert got.holder == BOB.did
        assert _sans_proof_context(doc) == _sans_proof_context(ACCEPTANCE)


@settings(max_examples=budget(40), suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_roster(data: st.DataObject) -> None:
    doc = mutate(DOCS.roster, data, rounds=3)
    got = tree_errors_or_known(
        "verify_roster", verify_roster, doc, manifest=DOCS.manifest, now=NOW, me=BOB.did
    )
    if got is not None:  # never another party list, order or key
        assert DOCS.agreed is not None
        assert got.parties == DOCS.agreed.parties


@fuzz_settings(100)
@given(data=st.data())
def test_fuzz_confirmation(data: st.DataObject) -> None:
    doc = mutate(CONFIRMATION, data)
    got = only_tree_errors(
        "verify_confirmation", verify_confirmation, doc, session_id=SID, party=BOB.did, now=NOW
    )
    if got is not None:
        assert got == DOCS.roster_hash


# --------------------------------------------------------------------------- state files


def _invitee_state() -> SessionState:
    return SessionState(
        session_id=SID, role=Role.INVITEE, me=BOB.did, status=Status.INVITED,
        manifest=MANIFEST_JSON, created=format_time(NOW), invite=INVITE,
    )  # fmt: skip


@fuzz_settings(150)
@given(data=st.data())
def test_fuzz_session_state_file(data: st.DataObject) -> None:
    doc = mutate(_invitee_state().to_json(), data)
    tree_errors_or_known("SessionState.from_json", SessionState.from_json, doc)


def test_session_state_file_with_list_role() -> None:
    doc = {**_invitee_state().to_json(), "role": []}
    only_tree_errors("SessionState.from_json", SessionState.from_json, doc)


@pytest.mark.parametrize("change", [
    {"ended_invites_v9": ["x"]},  # a field a later version added
    {"status": "reticent"},  # a status a later version added
], ids=["unknown field", "unknown status"])
def test_a_state_file_from_a_newer_didmesh_says_so(change: dict[str, Any]) -> None:
    """A state file this version cannot read, in a way a later version may have written
    (a downgrade), says so and what to do, and is not called plain garbage."""
    doc = {**_invitee_state().to_json(), **change}
    with pytest.raises(StateCorrupted, match=r"newer didmesh\? Upgrade didmesh") as err:
        SessionState.from_json(doc, "bob's state")
    assert str(err.value).startswith("bob's state: ")
    assert list(change)[0] in str(err.value) or "reticent" in str(err.value)


# --------------------------------------------------------------------------- invite codes


def _offer() -> codes.CodeOffer:
    return codes.CodeOffer(42, "42-orbit-lantern", SID, expires_ms=10**13)


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_code_rendezvous_messages(data: st.DataObject) -> None:
    """The nameplate mailbox is public: anyone may write anything to it."""
    claim = codes.CodeClaim(42, "42-orbit-lantern", BOB, MALLORY.did, counter_rng(b"c"))
    hello = json.loads(claim.hello())
    payload = data.draw(
        st.one_of(
            st.binary(max_size=300),
            st.just(hello).map(lambda d: json.dumps(d).encode()),
            json_values.map(lambda v: dumps(v).encode()),
        )
    )
    if data.draw(st.booleans()):
        payload = dumps(mutate(hello, data)).encode()
    offer = _offer()
    kw = {"now_ms": 1, "organizer": ORG.did, "name": "x", "rng": counter_rng(b"o")}
    tree_errors_or_known("CodeOffer.handle", offer.handle, payload, **kw)
    assert offer.status in ("open", "claiming", "burned")
    tree_errors_or_known("CodeClaim.handle", claim.handle, payload)


def test_code_message_deep_nesting() -> None:
    offer = _offer()
    only_tree_errors(
        "CodeOffer.handle", offer.handle, nested(5000).encode(),
        now_ms=1, organizer=ORG.did, name="x",
    )  # fmt: skip


def _pake_off_the_curve(pake: str) -> str:
    """``pake`` with one character changed so that its point does not decode."""
    import base64

    from spake2.ed25519_basic import NotOnCurve

    for i in range(2, len(pake)):
        for c in "0123456789ABCDEF":
            text = pake[:i] + c + pake[i + 1 :]
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            probe = codes.SPAKE2_A(b"x", idA=b"a", idB=b"b")
            probe.start()
            try:
                probe.finish(raw)
            except NotOnCurve:
                return text
            except Exception:  # noqa: S112 (another failure: try the next candidate)
                continue
    raise AssertionError("no off-curve variant found")


def test_code_hello_with_a_point_off_the_curve() -> None:
    claim = codes.CodeClaim(42, "42-orbit-lantern", BOB, MALLORY.did, counter_rng(b"c"))
    hello = json.loads(claim.hello())
    hello["pake"] = _pake_off_the_curve(hello["pake"])
    offer = _offer()
    only_tree_errors(
        "CodeOffer.handle", offer.handle, json.dumps(hello).encode(),
        now_ms=1, organizer=ORG.did, name="x", rng=counter_rng(b"o"),
    )  # fmt: skip


@fuzz_settings(300)
@given(text=st.one_of(st.text(max_size=60), st.from_regex(r"\d{1,5}-[a-z]{3,8}-[a-z]{3,8}")))
def test_fuzz_typed_code(text: str) -> None:
    tree_errors_or_known("parse_code", parse_code, text)


def test_typed_code_with_superscript_digit() -> None:
    only_tree_errors("parse_code", parse_code, "²-orbit-lantern")


# --------------------------------------------------------------------------- the machine


def _organizer_machine() -> SessionMachine:
    private = b"\x01" * 32
    state = SessionState(
        session_id=SID, role=Role.ORGANIZER, me=ORG.did, status=Status.COLLECTING,
        manifest=MANIFEST_JSON, created=format_time(NOW),
        session_public=encode_session_key(x25519_public(private)),
    )  # fmt: skip
    machine = SessionMachine(state, ORG, rng=counter_rng(b"org"))
    machine.invite(BOB.did, now=NOW)
    machine.invite(CAROL.did, now=NOW)
    return machine


def _invitee_machine(accepted: bool) -> SessionMachine:
    machine = SessionMachine(_invitee_state(), BOB, rng=counter_rng(b"bob"))
    if accepted:
        machine.accept(now=NOW, session_private=b"\x02" * 32)
    return machine


bodies = st.one_of(
    json_values.filter(lambda v: isinstance(v, dict)),
    st.builds(lambda k, v: {k: v}, st.sampled_from(
        ["acceptance", "invite", "roster", "confirmation", "commitment", "inviteId"]
    ), json_values),
    st.builds(lambda d, v: {"acceptance": v} | d, st.just({}), st.just(copy.deepcopy(ACCEPTANCE))),
    st.builds(lambda v: {"roster": v, "commitment": "x"}, st.just(copy.deepcopy(DOCS.roster))),
    st.builds(lambda v: {"confirmation": v}, st.just(copy.deepcopy(CONFIRMATION))),
)  # fmt: skip


@settings(max_examples=budget(120), suppress_health_check=list(HealthCheck))
@given(
    data=st.data(),
    sender=st.sampled_from([BOB, CAROL, MALLORY, ORG]),
    which=st.sampled_from(["organizer", "invited", "accepted"]),
    kind=st.sampled_from(sorted(KINDS)),
)
def test_fuzz_machine_fed_signed_garbage(
    data: st.DataObject, sender: IdentityKey, which: str, kind: str
) -> None:
    """A party of the session (or an outsider) sends well-signed messages with arbitrary
    bodies: the machine raises only tree errors, never agrees, and its state still saves."""
    machine = _organizer_machine() if which == "organizer" else _invitee_machine(
        which == "accepted"
    )
    me = machine.key.did
    if sender.did == me:
        return
    body = data.draw(bodies)
    if data.draw(st.booleans()):
        body = mutate(body, data)
    if not isinstance(body, dict):
        return
    try:
        json.dumps(body, allow_nan=False)  # an honest sender cannot put Infinity in JSON
        raw = seal_message(sender, kind, SID, me, body, now_ms=1, rng=counter_rng(b"g"))
    except ValueError:  # nor integers json cannot write, nor lone surrogates
        return
    msg = only_tree_errors("open_message", open_message, raw, me=me)
    if msg is None:  # a pathological body (too deep, a 101-digit number) stops here
        return
    tree_errors_or_known(f"SessionMachine.receive({kind})", machine.receive, msg, now=NOW)
    assert machine.state.status != Status.AGREED
    again = SessionState.from_json(json.loads(json.dumps(machine.state.to_json())))
    assert again.status == machine.state.status


# --------------------------------------------------------------------------- refusals


def _refusal(machine: SessionMachine, code: str = "gate_credential_too_large") -> dict[str, Any]:
    state = machine.state
    assert state.invite is not None and state.acceptance is not None
    return refusal_body(state.invite["id"], state.acceptance["id"], code,
                        "your gate credentials would make the roster about 90000 bytes")


CODES = sorted(REFUSAL_CODES)


@fuzz_settings(200)
@given(data=st.data(), code=st.sampled_from(CODES))
def test_fuzz_refusal_body(data: st.DataObject, code: str) -> None:
    """A ``refuse`` body of every code, mutated (its code too): parse_refusal raises only
    tree errors, and what it returns has a known code and a printable reason of bounded
    length."""
    body = mutate(_refusal(_invitee_machine(True), code), data)
    got = tree_errors_or_known("parse_refusal", parse_refusal, body)
    if got is not None:
        assert got.code in REFUSAL_CODES
        assert got.reason.isprintable() and 0 < len(got.reason) <= MAX_REFUSAL_REASON


def test_refusal_codes_outside_the_list_are_refused_by_name() -> None:
    body = _refusal(_invitee_machine(True))
    for code in ("gate_credential_missing ", "GATE_CREDENTIAL_MISSING", "x" * 5000, "", 7, None):
        with pytest.raises(MessageInvalid, match="unknown code"):
            parse_refusal({**body, "code": code})
    with pytest.raises(ValueError):
        refusal_body("a", "b", "no_such_code", "r")


@settings(max_examples=budget(100), suppress_health_check=list(HealthCheck))
@given(data=st.data(), sender=st.sampled_from([ORG, CAROL, MALLORY]),
       code=st.sampled_from(CODES))  # fmt: skip
def test_fuzz_refusal_fed_to_an_accepted_invitee(
    data: st.DataObject, sender: IdentityKey, code: str
) -> None:
    """Well-signed ``refuse`` messages of every code with mutated bodies: only the
    organizer's moves the invitee (to refused, or to revoked for a code that ends the
    invite, with a printable, bounded reason); nothing else changes the state, and every
    state still saves."""
    machine = _invitee_machine(True)
    body = _refusal(machine, code)
    mutated = data.draw(st.booleans())
    if mutated:
        body = mutate(body, data)
    if not isinstance(body, dict):
        return
    try:
        json.dumps(body, allow_nan=False)
        raw = seal_message(sender, "refuse", SID, BOB.did, body, now_ms=1, rng=counter_rng(b"r"))
    except ValueError:
        return
    msg = only_tree_errors("open_message", open_message, raw, me=BOB.did)
    if msg is None:
        return
    tree_errors_or_known("SessionMachine.receive(refuse)", machine.receive, msg, now=NOW)
    state = machine.state
    assert state.status in (Status.ACCEPTED, Status.REFUSED, Status.REVOKED)
    if sender is ORG and not mutated:
        ends = code in ENDING_REFUSALS
        assert state.status == (Status.REVOKED if ends else Status.REFUSED)
        assert state.error is not None and state.error["code"] == code
    if state.status != Status.ACCEPTED:
        assert sender is ORG and state.error is not None
        assert state.error["message"].isprintable()
        assert len(state.error["message"]) < MAX_REFUSAL_REASON + 200
    again = SessionState.from_json(json.loads(json.dumps(state.to_json())))
    assert again.status == state.status
