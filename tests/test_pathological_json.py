"""The catalogue of pathological JSON (tests/data/pathological_json.json) against the one
strict parser and against the in-process parsers of untrusted input (issue 13, item 1).

Each case has a decided outcome at the parser (``accept`` or ``refuse`` with a specific
message); every other entry point either accepts what the parser accepted and then
checks it as it checks any value, or refuses it with an error of the DidmeshError tree.
The relay's HTTP endpoints get the same catalogue in tests/test_relay_pathological.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from adversary.pathological import CASES, PLACEHOLDER, VALUES, Case, params
from didmesh.identity.errors import DidmeshError, MalformedCredential
from didmesh.identity.strict_json import MAX_NUMBER_CHARS, loads_strict

CAP = 64 * 1024


def _parse(raw: bytes) -> Any:
    return loads_strict(raw, max_bytes=CAP, error=MalformedCredential, what="test doc")


def test_catalogue_covers_the_pathologies_of_issue_13() -> None:
    ids = {c.id for c in CASES}
    for needed in (
        "int-4301-digits",
        "float-1e400",
        "lone-high-surrogate",
        "utf8-bom",
        "escaped-nul",
        "raw-nul-in-string",
        "max-array-of-ints",
        "arrays-30000-deep",
        "objects-65-deep",
        "mixed-65-deep",
    ):
        assert needed in ids


@pytest.mark.parametrize("case", params())
def test_parser_decision(case: Case) -> None:
    raw = case.splice({"a": [1, PLACEHOLDER]}, room=CAP)
    assert len(raw) <= CAP or not case.fills
    start = time.monotonic()
    if case.parser == "accept":
        value = _parse(raw)
        assert value["a"][0] == 1
    else:
        with pytest.raises(MalformedCredential) as info:
            _parse(raw)
        assert case.fragment in info.value.message, info.value.message
        assert info.value.message.startswith("test doc")
    assert time.monotonic() - start < 2.0


def test_fill_values_use_the_room() -> None:
    for case in (c for c in VALUES if c.fills):
        raw = case.splice({"a": PLACEHOLDER}, room=CAP)
        assert CAP * 0.97 < len(raw) <= CAP, (case.id, len(raw))


def test_number_length_boundary() -> None:
    assert _parse(b"1" * MAX_NUMBER_CHARS) == int("1" * MAX_NUMBER_CHARS)
    assert _parse(b"-" + b"1" * (MAX_NUMBER_CHARS - 1)) < 0
    with pytest.raises(MalformedCredential, match="number of 101 characters"):
        _parse(b"-" + b"1" * MAX_NUMBER_CHARS)


def test_str_input_gets_the_same_decisions() -> None:
    with pytest.raises(MalformedCredential, match="byte-order mark"):
        loads_strict("\ufeff{}", max_bytes=CAP, error=MalformedCredential)
    with pytest.raises(MalformedCredential, match="number of 4301"):
        loads_strict("9" * 4301, max_bytes=CAP, error=MalformedCredential)
    with pytest.raises(MalformedCredential, match="not UTF-8"):
        loads_strict('"\ud800"', max_bytes=CAP, error=MalformedCredential)


def only_tree(fn: Any, *args: Any, **kw: Any) -> Any:
    """Call an entry point: a result or a DidmeshError, never another exception, quickly."""
    start = time.monotonic()
    try:
        return fn(*args, **kw)
    except DidmeshError as exc:
        assert exc.code and exc.message
        return exc
    finally:
        assert time.monotonic() - start < 5.0, f"{fn.__name__} took too long"


# --------------------------------------------------------------------------- credentials

from didmesh.identity.credentials import (  # noqa: E402
    MAX_DOCUMENT_BYTES,
    issue_credential,
    issue_presentation,
    verify_credential,
    verify_presentation,
)
from vc_support import HOLDER, ISSUER, NOW, presentation, v1_credential, v2_credential  # noqa: E402

#: an absolute IRI: a term every suite signs without a context defining it
SCORE = "https://example.org/vocab#score"
SUITES = {
    "jcs": (v2_credential, "eddsa-jcs-2022"),
    "rdfc": (v2_credential, "eddsa-rdfc-2022"),
    "v1": (v1_credential, "Ed25519Signature2020"),
}
_ISSUED = {k: issue_credential(make(), ISSUER, suite=s, created=NOW)
           for k, (make, s) in SUITES.items()}  # fmt: skip


def _with_placeholder(doc: dict[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    out["credentialSubject"] = {**doc["credentialSubject"], SCORE: PLACEHOLDER}
    return out


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("case", params())
def test_credential_verify(case: Case, suite: str) -> None:
    """A signed credential with a pathological member: never verifies, never crashes."""
    raw = case.splice(_with_placeholder(_ISSUED[suite]), room=MAX_DOCUMENT_BYTES)
    got = only_tree(verify_credential, raw, now=NOW)
    if suite == "jcs":  # JCS signs every member
        assert isinstance(got, DidmeshError)
    elif not isinstance(got, DidmeshError):  # RDF suites sign the dataset: a member that
        # adds no triple (nested empty arrays) is unsigned, but cannot change who says what
        assert got.issuer == ISSUER.did and got.subject_ids == (HOLDER.did,)


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("case", params([c for c in VALUES if c.parser == "accept"]))
def test_credential_issue_and_verify_accepted_values(case: Case, suite: str) -> None:
    """What the parser accepts is either signed and then verifies, or refused at issuance
    with a specific error (JCS: integers beyond 2**53, RFC 8785)."""
    make, name = SUITES[suite]
    value = _parse(case.splice({"v": PLACEHOLDER}, room=CAP))["v"]
    doc = make()
    doc["credentialSubject"] = {**doc["credentialSubject"], SCORE: value}
    issued = only_tree(issue_credential, doc, ISSUER, suite=name, created=NOW)
    if isinstance(issued, DidmeshError):
        assert len(issued.message) < 400, "an error message must not echo a huge value"
        # undefined terms only where the value is an object with keys of its own
        assert "define" not in issued.message or isinstance(value, dict), issued.message
        return
    import json

    got = only_tree(verify_credential, json.dumps(issued).encode(), now=NOW)
    assert not isinstance(got, DidmeshError), got.message


@pytest.mark.parametrize("case", params())
def test_presentation_verify(case: Case) -> None:
    vp = issue_presentation(presentation(2, [_ISSUED["jcs"]]), HOLDER, challenge="c-1",
                            domain="d-1", suite="eddsa-jcs-2022", created=NOW)  # fmt: skip
    vp = {**vp, "holderNote": PLACEHOLDER}
    raw = case.splice(vp, room=MAX_DOCUMENT_BYTES)
    got = only_tree(verify_presentation, raw, now=NOW, challenge="c-1", domain="d-1")
    assert isinstance(got, DidmeshError)


def test_rdfc_poison_graph_is_refused_before_canonicalizing() -> None:
    """Alike blank nodes make RDFC-1.0 quadratic: 1,325 empty objects took 2.5 s; a
    256 KiB credential of them would take hours. Refused by count, at once."""
    from didmesh.identity.errors import DocumentTooLarge
    from didmesh.identity.jsonld import MAX_JSONLD_ITEMS, MAX_JSONLD_OBJECTS

    for value in ([{}] * 20_000, [[1]] * 20_000, list(range(20_000))):
        doc = dict(_ISSUED["rdfc"])
        doc["credentialSubject"] = {**doc["credentialSubject"], SCORE: value}
        start = time.monotonic()
        with pytest.raises(
            DocumentTooLarge, match=f"at most {MAX_JSONLD_OBJECTS} and {MAX_JSONLD_ITEMS}"
        ):
            verify_credential(doc, now=NOW)
        assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("case", params())
def test_jws_header(case: Case) -> None:
    """The detached JWS header of an Ed25519Signature2018 proof is untrusted JSON too (its
    400-character cap kept json.loads safe; it now goes through the one strict parser)."""
    import base64

    from didmesh.identity.proofs.ed25519_legacy import MAX_JWS_LENGTH

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = case.splice({"alg": "EdDSA", "b64": False, "crit": [PLACEHOLDER]},
                         room=MAX_JWS_LENGTH * 3 // 4 - 120)  # fmt: skip
    doc = dict(_ISSUED["v1"])
    proof = {k: v for k, v in doc["proof"].items() if k != "proofValue"}
    doc["proof"] = {**proof, "type": "Ed25519Signature2018",
                    "jws": b64(header) + ".." + b64(bytes(64))}  # fmt: skip
    got = only_tree(verify_credential, doc, now=NOW)
    assert isinstance(got, DidmeshError)


# --------------------------------------------------------------------------- envelopes, messages

import base64  # noqa: E402
import json  # noqa: E402

from adversary.sessions import BOB as S_BOB  # noqa: E402
from adversary.sessions import MALLORY, ORG, counter_rng  # noqa: E402
from didmesh.relay.client import RelayClient  # noqa: E402
from didmesh.relay.envelope import Envelope, open_envelope, seal  # noqa: E402
from didmesh.relay.protocol import (  # noqa: E402
    Linked,
    parse_link_request,
    parse_push_client_message,
)
from didmesh.session import codes  # noqa: E402
from didmesh.session.messages import MAX_MESSAGE_BYTES, SIG_LABEL, open_message  # noqa: E402

ENV_NOW = 1_700_000_000_000
ENV_CAP = 64 * 1024
_ENV = seal(MALLORY, S_BOB.did, "s-1", b"x", now_ms=ENV_NOW, ttl=60, rng=lambda n: b"\x07" * n)


def _open_env(raw: bytes) -> bytes:
    env = Envelope.from_json(raw, max_bytes=ENV_CAP)
    env.verify_signature()
    return open_envelope(S_BOB, env, now_ms=ENV_NOW + 1000)


@pytest.mark.parametrize("field", ["ts", "extra"])
@pytest.mark.parametrize("case", params())
def test_envelope_open(case: Case, field: str) -> None:
    doc = _ENV.to_dict() | {field: PLACEHOLDER}
    assert isinstance(only_tree(_open_env, case.splice(doc, room=ENV_CAP)), DidmeshError)


def signed_message(key: Any, inner_text: str) -> bytes:
    """A session message whose signed inner text is whatever the sender wrote: any did:key
    holder can sign pathological JSON (the poisoned-inbox attack of issue 13)."""
    sig = base64.urlsafe_b64encode(key.sign(SIG_LABEL + inner_text.encode())).rstrip(b"=")
    return json.dumps({"m": inner_text, "sig": sig.decode()}).encode()


def message_inner(body_member: Any = PLACEHOLDER, to: str = "") -> dict[str, Any]:
    return {"v": 1, "kind": "invite", "session": "a" * 32, "from": MALLORY.did,
            "to": to or S_BOB.did, "ts": 1, "id": "AAAAAAAAAAAAAAAAAAAAAA",
            "body": {"invite": body_member}}  # fmt: skip


@pytest.mark.parametrize("case", params())
def test_session_message_signed_by_its_sender(case: Case) -> None:
    """Signed, so it passes the signature; then it must be refused or be a message."""
    inner = case.splice(message_inner(), room=MAX_MESSAGE_BYTES // 2).decode("utf-8", "replace")
    got = only_tree(open_message, signed_message(MALLORY, inner), me=S_BOB.did)
    if case.parser == "refuse" and case.kind == "value":
        assert isinstance(got, DidmeshError)


@pytest.mark.parametrize("case", params())
def test_session_message_outer(case: Case) -> None:
    raw = case.splice({"m": "{}", "sig": PLACEHOLDER}, room=MAX_MESSAGE_BYTES)
    assert isinstance(only_tree(open_message, raw, me=S_BOB.did), DidmeshError)


@pytest.mark.parametrize("case", params())
def test_invite_code_messages(case: Case) -> None:
    """The nameplate mailbox is public: anyone may write anything to it."""
    claim = codes.CodeClaim(42, "42-orbit-lantern", S_BOB, MALLORY.did, counter_rng(b"c"))
    hello = json.loads(claim.hello()) | {"pake": PLACEHOLDER}
    raw = case.splice(hello, room=codes.MAX_CODE_MESSAGE)
    offer = codes.CodeOffer(42, "42-orbit-lantern", "a" * 32, expires_ms=10**13)
    only_tree(offer.handle, raw, now_ms=1, organizer=ORG.did, name="x", rng=counter_rng(b"o"))
    assert offer.status in ("open", "claiming", "burned")
    only_tree(claim.handle, raw)


@pytest.mark.parametrize("case", params())
def test_relay_control_messages(case: Case) -> None:
    """What a client sends a relay on a link or push socket, what a relay sends back."""
    link = case.splice({"type": "link", "session": "s-1", "peer": S_BOB.did,
                        "link_id": PLACEHOLDER}, room=4096)  # fmt: skip
    only_tree(parse_link_request, link, MALLORY.did)
    ack = case.splice({"type": "ack", "ids": [PLACEHOLDER]}, room=MAX_MESSAGE_BYTES)
    only_tree(parse_push_client_message, ack)
    linked = case.splice({"type": "linked", "session": "s-1", "peer": S_BOB.did,
                          "link_id": "a", "max_bytes": PLACEHOLDER, "max_duration_s": 60.0,
                          "max_frame": 1024}, room=4096)  # fmt: skip
    only_tree(Linked.parse, linked)


@pytest.mark.parametrize("case", params())
def test_relay_push_batch_at_the_client(case: Case) -> None:
    from didmesh.identity.strict_json import loads_strict
    from didmesh.relay.errors import RelayProtocolError

    items = [{"received_ms": PLACEHOLDER, "envelope": _ENV.to_dict()}]
    raw = case.splice({"type": "envelopes", "items": items}, room=ENV_CAP)

    def client_side() -> Any:
        data = loads_strict(raw, max_bytes=1 << 20, error=RelayProtocolError, what="push")
        return RelayClient._parse_items(data["items"])

    only_tree(client_side)


@pytest.mark.parametrize("case", params())
def test_mesh_abort_notice(case: Case) -> None:
    from didmesh.session.mesh.abort import MAX_ABORT_BYTES, decode_abort, encode_abort, make_abort
    from didmesh.session.mesh.loopback import loopback_plans

    plans, ids = loopback_plans(3, endpoints=False, session_id="patho-session")
    signed = encode_abort(
        make_abort(plans[1], ids[1], culprit=2, code="peer_lost", reason="x", now=1.0), ids[1]
    )
    notice = json.loads(signed)
    notice["body"]["issued"] = PLACEHOLDER
    got = only_tree(decode_abort, case.splice(notice, room=MAX_ABORT_BYTES), plans[0])
    assert isinstance(got, DidmeshError) or got == decode_abort(signed, plans[0])  # 1.0


# ------------------------------------------------------------------- the fuzzers' strategies


def test_fuzz_strategies_generate_the_pathological_values() -> None:
    """The 37 fuzz targets draw their values from adversary.fuzz.json_values (through
    mutate()); they missed the 4,301-digit integer because it never generated one.
    Within the bounded CI budget, mutated documents must hold every pathological kind,
    and :func:`dumps` must write each as an attacker would."""
    from adversary.fuzz import dumps, kinds_of, mutate
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    seen: set[str] = set()
    texts: list[str] = []
    base = {"a": 1, "b": ["x", {"c": None}]}

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck),
              database=None, derandomize=True)  # fmt: skip
    @given(data=st.data())
    def draw(data: st.DataObject) -> None:
        doc = mutate(base, data)
        found = kinds_of(doc)
        seen.update(found)
        if found & {"int-over-4300-digits", "inf-or-nan", "lone-surrogate"}:
            texts.append(dumps(doc))

    draw()
    assert seen >= {"int-over-4300-digits", "inf-or-nan", "lone-surrogate", "nul", "deep",
                    "big-array"}, seen  # fmt: skip
    joined = "\n".join(texts)
    assert "9" * 4301 in joined and "1e400" in joined and "\\ud" in joined


def test_dumps_writes_what_json_dumps_cannot() -> None:
    from adversary.fuzz import dumps

    assert dumps({"n": 10**5000, "f": [float("inf"), -float("inf")], "s": "\ud800"}) == (
        '{"n":1' + "0" * 5000 + ',"f":[1e400,-1e400],"s":"\\ud800"}'
    )
    assert json.loads(dumps({"a": [1, 2.5, None, True, "x"], "b": {}})) == {
        "a": [1, 2.5, None, True, "x"], "b": {}}  # fmt: skip


# --------------------------------------------------------------------------- the VC API


@pytest.mark.parametrize("case", params())
def test_vc_api_requests(case: Case) -> None:
    """``didmesh vc-api serve`` (session/vcapi/service.py) answers every case below 500."""
    from didmesh.session.vcapi.service import MAX_REQUEST_BYTES, VcApiService

    svc = VcApiService(ISSUER, "t" * 43, lambda: NOW)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + "t" * 43}
    unsigned = v2_credential()
    unsigned["credentialSubject"] = {**unsigned["credentialSubject"], SCORE: PLACEHOLDER}
    vp = issue_presentation(presentation(2, [_ISSUED["jcs"]]), HOLDER, challenge="c-1",
                            domain="d-1", suite="eddsa-jcs-2022", created=NOW)  # fmt: skip
    requests = [
        ("/credentials/verify", {"verifiableCredential": _with_placeholder(_ISSUED["rdfc"])}),
        ("/credentials/verify", {"verifiableCredential": _ISSUED["jcs"], "options": PLACEHOLDER}),
        ("/presentations/verify", {"verifiablePresentation": {**vp, "holderNote": PLACEHOLDER}}),
        ("/credentials/issue", {"credential": unsigned}),
    ]
    for path, body in requests:
        raw = case.splice(body, room=MAX_REQUEST_BYTES)
        start = time.monotonic()
        reply = svc.handle("POST", path, headers, raw)
        assert reply.status < 500, (path, reply.status, reply.body[:200])
        assert time.monotonic() - start < 5.0, path


# --------------------------------------------------------------------------- didmesh verify


def test_didmesh_verify_cli_on_pathological_credentials(tmp_path: Any) -> None:
    """``didmesh verify`` printed a traceback (and nothing on stdout with --json) for a
    credential holding a 4,301-digit integer. Now: INVALID with the reason, exit 1."""
    from cli_helpers import run_cli

    picked = ["int-4301-digits", "float-1e400", "lone-high-surrogate", "utf8-bom",
              "arrays-30000-deep"]  # fmt: skip
    files = []
    for case in (c for c in CASES if c.id in picked):
        path = tmp_path / f"{case.id}.json"
        path.write_bytes(case.splice(_with_placeholder(_ISSUED["jcs"]), room=MAX_DOCUMENT_BYTES))
        files.append(str(path))
    res = run_cli(tmp_path, "verify", *files, "--json", timeout=60)
    assert res.rc == 1 and "Traceback" not in res.err, res.err
    results = json.loads(res.out)["results"]
    assert [r["valid"] for r in results] == [False] * len(picked)
    assert all(r["error"] == "malformed_credential" for r in results), results
    text = run_cli(tmp_path, "verify", files[0], timeout=60)
    assert text.rc == 1 and "number of 4301 characters" in text.out + text.err
    assert "Traceback" not in text.err


@pytest.mark.parametrize("case", params())
def test_mesh_ready_message(case: Case) -> None:
    """A roster peer's READY (its connectivity row) over an authenticated channel: stored,
    or the peer fails as misbehaving; never an exception in the mesh."""
    from didmesh.session.mesh.loopback import loopback_plans
    from didmesh.session.mesh.mesh import MAX_READY_BYTES, Mesh

    plans, _ids = loopback_plans(3, endpoints=False, session_id="patho-ready")

    class Peer:
        peer_id, name = 1, "party 1"
        failed: list[DidmeshError] = []

        def _fail(self, exc: DidmeshError) -> None:
            self.failed.append(exc)

    for row in ({"peer": PLACEHOLDER, "path": "direct", "via": "x", "rtt_ms": 1.0},
                {"peer": 2, "path": "direct", "via": "x", "rtt_ms": PLACEHOLDER}):  # fmt: skip
        mesh = Mesh(plans[0], {}, identity=None)
        peer = Peer()
        peer.failed = []
        raw = case.splice({"party": 1, "row": [row]}, room=MAX_READY_BYTES)
        mesh.ready_received(peer, raw)  # type: ignore[arg-type]
        assert peer.failed or 1 in mesh._rows


@pytest.mark.parametrize("raw", [
    b'{"party": 1, "row": [{"peer": 2, "path": "direct", "via": "x", "rtt_ms": 1e400}]}',
    b'{"party": 1, "row": [{"peer": 2, "path": "direct", "via": "x", "rtt_ms": -1}]}',
    b'{"party": 1, "row": [{"peer": true, "path": "direct", "via": "x", "rtt_ms": 1}]}',
    b'{"party": 1, "row": [{"peer": 2, "path": "direct", "via": "\\ud800", "rtt_ms": 1}]}',
    b'{"party": 1, "row": [{"peer": 2, "path": {"a": 1}, "via": "x", "rtt_ms": 1}]}',
    b'{"party": 1, "party": 1, "row": []}',
], ids=["infinite-rtt", "negative-rtt", "bool-peer", "lone-surrogate", "object-path",
        "duplicate-key"])
def test_mesh_ready_refuses_impossible_rows(raw: bytes) -> None:
    """A READY row with a number that is not a round-trip time, a bool for a party id, a
    lone surrogate or a repeated key fails the peer as misbehaving; nothing is stored."""
    from didmesh.session.mesh.loopback import loopback_plans
    from didmesh.session.mesh.mesh import Mesh

    plans, _ids = loopback_plans(3, endpoints=False, session_id="patho-ready-2")

    class Peer:
        peer_id, name = 1, "party 1"

        def __init__(self) -> None:
            self.failed: list[DidmeshError] = []

        def _fail(self, exc: DidmeshError) -> None:
            self.failed.append(exc)

    mesh = Mesh(plans[0], {}, identity=None)
    peer = Peer()
    mesh.ready_received(peer, raw)  # type: ignore[arg-type]
    assert len(peer.failed) == 1 and "malformed READY" in peer.failed[0].message
    assert 1 not in mesh._rows
