"""Interoperability with didkit 0.3.3 (marker ``didkit``), both directions.

Every didkit call runs in a child process (tests/didkit_helper.py), because didkit can
crash at interpreter exit. Both sides use the same identities: the didmesh seed is
handed to didkit as an Ed25519 JWK.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from didmesh.identity.credentials import (
    issue_credential,
    issue_presentation,
    verify_credential,
    verify_presentation,
)
from didmesh.identity.errors import ChallengeMismatch, InvalidProof
from didmesh.identity.jsonld import CREDENTIALS_V1, DIDMESH_V1, load_context
from didmesh.identity.keys import IdentityKey
from vc_support import CREATED, HOLDER, ISSUER, NOW, presentation, v1_credential

HELPER = Path(__file__).with_name("didkit_helper.py")

pytestmark = [
    pytest.mark.didkit,
    pytest.mark.skipif(
        importlib.util.find_spec("didkit") is None,
        reason="didkit is not installed (pip install -e '.[didkit]'; CI installs it)",
    ),
]


def run_didkit(ops: list[dict[str, Any]]) -> list[Any]:
    proc = subprocess.run(
        [sys.executable, str(HELPER)],
        input=json.dumps(ops),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    if isinstance(out, dict) and "unavailable" in out:
        pytest.skip(f"didkit cannot be imported: {out['unavailable']}")
    assert isinstance(out, list)
    for result in out:
        if isinstance(result, dict) and "error" in result:
            raise AssertionError(f"didkit failed: {result['error']}")
    return out


def jwk(key: IdentityKey) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return json.dumps(
        {"kty": "OKP", "crv": "Ed25519", "x": b64(key.ed25519_public), "d": b64(key.seed_bytes())}
    )


def _now() -> datetime:
    # didkit stamps proofs with the wall clock; verify them at the same clock.
    return datetime.now(UTC)


def test_didkit_derives_the_same_did_and_method() -> None:
    [got] = run_didkit([{"op": "key_to_did", "key": jwk(ISSUER)}])
    assert got == {"did": ISSUER.did, "vm": ISSUER.verification_method}


# --------------------------------------------------------------------------- didkit -> didmesh


@pytest.fixture(scope="module")
def from_didkit() -> dict[str, Any]:
    """Credentials and presentations issued by didkit, once for the module."""
    cred_opts = {
        "proofPurpose": "assertionMethod",
        "verificationMethod": ISSUER.verification_method,
    }
    vp_opts = {
        "proofPurpose": "authentication",
        "verificationMethod": HOLDER.verification_method,
        "challenge": "ch-7",
        "domain": "didmesh.test",
    }
    # Distinct ids: with two credentials sharing one id, didkit 0.3.3 canonicalizes the
    # presentation differently from RDFC-1.0 (PyLD) in about half the runs.
    ops: list[dict[str, Any]] = [
        {
            "op": "issue_credential",
            "credential": v1_credential(id=f"urn:uuid:didkit-{t}"),
            "key": jwk(ISSUER),
            "options": {**cred_opts, "type": t},
        }
        for t in ("Ed25519Signature2018", "Ed25519Signature2020")
    ]
    vc2018, vc2020 = run_didkit(ops)
    vps = run_didkit(
        [
            {
                "op": "issue_presentation",
                "presentation": presentation(1, [vc2018, vc2020]),
                "key": jwk(HOLDER),
                "options": {**vp_opts, "type": t},
            }
            for t in ("Ed25519Signature2018", "Ed25519Signature2020")
        ]
    )
    return {"vc2018": vc2018, "vc2020": vc2020, "vp2018": vps[0], "vp2020": vps[1]}


@pytest.mark.parametrize("name", ["vc2018", "vc2020"])
def test_didkit_credential_verifies_in_didmesh(from_didkit: dict[str, Any], name: str) -> None:
    doc = from_didkit[name]
    got = verify_credential(json.dumps(doc), now=_now(), expected_issuer=ISSUER.did)
    assert got.suite == doc["proof"]["type"]
    assert got.subject_ids == (HOLDER.did,)


@pytest.mark.parametrize("name", ["vc2018", "vc2020"])
def test_tampered_didkit_credential_fails_in_didmesh(
    from_didkit: dict[str, Any], name: str
) -> None:
    doc = copy.deepcopy(from_didkit[name])
    doc["credentialSubject"]["id"] = ISSUER.did
    with pytest.raises(InvalidProof):
        verify_credential(doc, now=_now())


@pytest.mark.parametrize("name", ["vp2018", "vp2020"])
def test_didkit_presentation_verifies_in_didmesh(from_didkit: dict[str, Any], name: str) -> None:
    doc = from_didkit[name]
    got = verify_presentation(doc, now=_now(), challenge="ch-7", domain="didmesh.test")
    assert got.holder == HOLDER.did
    assert got.suite == doc["proof"]["type"]
    assert [c.suite for c in got.credentials] == ["Ed25519Signature2018", "Ed25519Signature2020"]
    with pytest.raises(ChallengeMismatch):
        verify_presentation(doc, now=_now(), challenge="ch-8", domain="didmesh.test")


@pytest.mark.parametrize("name", ["vp2018", "vp2020"])
def test_tampered_didkit_presentation_fails_in_didmesh(
    from_didkit: dict[str, Any], name: str
) -> None:
    doc = copy.deepcopy(from_didkit[name])
    doc["verifiableCredential"] = doc["verifiableCredential"][:1]
    with pytest.raises(InvalidProof):
        verify_presentation(doc, now=_now(), challenge="ch-7", domain="didmesh.test")


def test_json_literals_canonicalize_the_same_in_didkit() -> None:
    """didkit signs a credential whose didmesh terms (including @json manifest and
    parties) come from an inline copy of the didmesh-v1 context; with the inline copy
    replaced by the bundled context's URL, the signed N-Quads must be the same, so the
    proof verifies in didmesh."""
    inline = load_context(DIDMESH_V1)["@context"]
    cred = v1_credential(
        **{"@context": [CREDENTIALS_V1, inline], "type": ["VerifiableCredential", "SessionInvite"]}
    )
    cred["credentialSubject"] = {
        "id": HOLDER.did,
        "sessionId": "s-1",
        "manifest": {"program": "sum.py", "z": [3, 1, {"b": None, "a": 1.5}], "é": "ü"},
        "parties": [HOLDER.did, ISSUER.did],
        "threshold": 1,
    }
    opts = {
        "proofPurpose": "assertionMethod",
        "verificationMethod": ISSUER.verification_method,
        "type": "Ed25519Signature2020",
    }
    [signed] = run_didkit(
        [{"op": "issue_credential", "credential": cred, "key": jwk(ISSUER), "options": opts}]
    )
    assert "@context" in signed["proof"]  # didkit's proof does not sign the document context
    signed["@context"] = [CREDENTIALS_V1, DIDMESH_V1]
    got = verify_credential(signed, now=_now())
    assert got.types == ("VerifiableCredential", "SessionInvite")
    signed["credentialSubject"]["parties"].reverse()
    with pytest.raises(InvalidProof):
        verify_credential(signed, now=_now())


# --------------------------------------------------------------------------- didmesh -> didkit


def test_didmesh_credential_verifies_in_didkit() -> None:
    signed = issue_credential(
        v1_credential(), ISSUER, suite="Ed25519Signature2020", created=CREATED
    )
    tampered = copy.deepcopy(signed)
    tampered["issuanceDate"] = "2025-01-02T00:00:00Z"
    opts = {"proofPurpose": "assertionMethod"}
    good, bad = run_didkit(
        [
            {"op": "verify_credential", "credential": signed, "options": opts},
            {"op": "verify_credential", "credential": tampered, "options": opts},
        ]
    )
    assert good["errors"] == [], good
    assert bad["errors"], bad


def test_didmesh_presentation_verifies_in_didkit() -> None:
    cred = issue_credential(v1_credential(), ISSUER, suite="Ed25519Signature2020", created=CREATED)
    vp = issue_presentation(
        presentation(1, [cred]),
        HOLDER,
        challenge="ch-9",
        domain="didmesh.test",
        suite="Ed25519Signature2020",
        created=CREATED,
    )
    verify_presentation(vp, now=NOW, challenge="ch-9", domain="didmesh.test")
    tampered = copy.deepcopy(vp)
    tampered["verifiableCredential"][0]["credentialSubject"]["id"] = ISSUER.did
    opts = {"proofPurpose": "authentication", "challenge": "ch-9", "domain": "didmesh.test"}
    good, bad, wrong = run_didkit(
        [
            {"op": "verify_presentation", "presentation": vp, "options": opts},
            {"op": "verify_presentation", "presentation": tampered, "options": opts},
            {
                "op": "verify_presentation",
                "presentation": vp,
                "options": {**opts, "challenge": "other"},
            },
        ]
    )
    assert good["errors"] == [], good
    assert bad["errors"], bad
    assert wrong["errors"], wrong


# --------------------------------------------------------------------------- inline contexts

INLINE_TERMS = {
    "ClubCard": "https://vocab.didmesh.test/ns#ClubCard",
    "club": "https://vocab.didmesh.test/ns#club",
    "since": {"@id": "https://vocab.didmesh.test/ns#since", "@type": "xsd:dateTime"},
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}
EXAMPLES_V1 = "https://www.w3.org/2018/credentials/examples/v1"


@pytest.fixture(scope="module")
def inline_from_didkit() -> dict[str, Any]:
    """VC 1.1 credentials whose type and claims come from an inline context (and one
    using the examples v1 vocabulary), issued by didkit with both of its Ed25519 suites."""
    inline = v1_credential(
        **{
            "@context": [CREDENTIALS_V1, INLINE_TERMS],
            "type": ["VerifiableCredential", "ClubCard"],
            "credentialSubject": {
                "id": HOLDER.did,
                "club": "chess",
                "since": "2024-03-01T00:00:00Z",
            },
        }
    )
    examples = v1_credential(
        **{
            "@context": [CREDENTIALS_V1, EXAMPLES_V1],
            "type": ["VerifiableCredential", "UniversityDegreeCredential"],
            "credentialSubject": {
                "id": HOLDER.did,
                "degree": {"type": "BachelorDegree", "name": "Bachelor of Arts"},
            },
        }
    )
    opts = {"proofPurpose": "assertionMethod", "verificationMethod": ISSUER.verification_method}
    names = [(n, t) for n in ("inline", "examples") for t in ("2018", "2020")]
    docs = {"inline": inline, "examples": examples}
    out = run_didkit(
        [
            {
                "op": "issue_credential",
                "credential": {**docs[n], "id": f"urn:uuid:didkit-{n}-{t}"},
                "key": jwk(ISSUER),
                "options": {**opts, "type": f"Ed25519Signature{t}"},
            }
            for n, t in names
        ]
    )
    return {f"{n}-{t}": doc for (n, t), doc in zip(names, out, strict=True)}


@pytest.mark.parametrize("name", ["inline-2018", "inline-2020", "examples-2018", "examples-2020"])
def test_didkit_credential_with_inline_or_example_context_verifies(
    inline_from_didkit: dict[str, Any], name: str
) -> None:
    doc = inline_from_didkit[name]
    got = verify_credential(json.dumps(doc), now=_now(), expected_issuer=ISSUER.did)
    assert got.types[0] == "VerifiableCredential" and len(got.types) == 2


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("inline-2018", lambda d: d["credentialSubject"].update(club="go")),
        ("inline-2020", lambda d: d["credentialSubject"].update(since="2024-03-02T00:00:00Z")),
        ("inline-2020", lambda d: d["@context"][1].update(club="https://vocab.didmesh.test/x")),
        ("examples-2018", lambda d: d["credentialSubject"]["degree"].update(name="PhD")),
        ("examples-2020", lambda d: d.update(type=["VerifiableCredential", "AlumniCredential"])),
    ],
    ids=["claim", "typed-claim", "inline-definition", "nested-claim", "type"],
)
def test_tampered_didkit_credential_with_inline_context_fails(
    inline_from_didkit: dict[str, Any], name: str, change: Any
) -> None:
    doc = copy.deepcopy(inline_from_didkit[name])
    change(doc)
    with pytest.raises(InvalidProof):
        verify_credential(doc, now=_now())


# --------------------------------------------------------------------------- the CLI -> didkit


@pytest.mark.parametrize("types", [[], ["--type", "Membership"]], ids=["plain", "Membership"])
def test_cli_v1_credential_verifies_in_didkit(tmp_path: Path, types: list[str]) -> None:
    """`didmesh credential issue --suite Ed25519Signature2020` (README: "for peers that
    only speak v1") verifies in didkit, which loads no context it does not ship: the
    didmesh terms travel inline, not as the URL https://didmesh.dev/ns/v1."""
    from cli_helpers import run_cli

    home = tmp_path / "home"
    assert run_cli(home, "id", "new", "--name", "me", "--no-passphrase").rc == 0
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"role": "member", "groups": ["a", {"b": None}]}))
    out = tmp_path / "vc.json"
    res = run_cli(home, "credential", "issue", "--subject", HOLDER.did, "--claims", str(claims),
                  "--suite", "Ed25519Signature2020", *types, "--out", str(out))
    assert res.rc == 0, res.err
    signed = json.loads(out.read_text())
    assert DIDMESH_V1 not in signed["@context"]
    assert run_cli(home, "verify", str(out)).rc == 0
    tampered = copy.deepcopy(signed)
    tampered["credentialSubject"]["claims"]["role"] = "admin"
    opts = {"proofPurpose": "assertionMethod"}
    good, bad = run_didkit(
        [
            {"op": "verify_credential", "credential": signed, "options": opts},
            {"op": "verify_credential", "credential": tampered, "options": opts},
        ]
    )
    assert good["errors"] == [], good
    assert bad["errors"], bad
