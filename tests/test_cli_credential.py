"""``didmesh credential issue`` and ``didmesh verify`` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_cli


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    assert run_cli(h, "id", "new", "--no-passphrase", "--name", "issuer").rc == 0
    assert run_cli(h, "id", "new", "--no-passphrase", "--name", "member").rc == 0
    return h


def _did(home: Path, name: str) -> str:
    return str(run_cli(home, "id", "show", name, "--json").json()["did"])


@pytest.mark.parametrize("suite", ["eddsa-rdfc-2022", "eddsa-jcs-2022", "Ed25519Signature2020"])
def test_issue_and_verify(home: Path, tmp_path: Path, suite: str) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"memberOf": "Example Consortium", "since": 2024}))
    out = tmp_path / "vc.json"
    member = _did(home, "member")
    r = run_cli(
        home,
        "credential",
        "issue",
        "--subject",
        member,
        "--claims",
        str(claims),
        "--type",
        "Membership",
        "--suite",
        suite,
        "--valid-until",
        "2099-01-01T00:00:00Z",
        "--out",
        str(out),
    )
    assert r.rc == 0, r.err
    r = run_cli(home, "verify", str(out), "--json")
    assert r.rc == 0, r.err
    res = r.json()["results"][0]
    assert res["valid"] and res["issuer"] == _did(home, "issuer")
    assert res["subjects"] == [member] and "Membership" in res["types"]
    human = run_cli(home, "verify", str(out))
    assert human.rc == 0 and "VALID" in human.out and "valid now" in human.out
    # the same file, one claim changed
    doc = json.loads(out.read_text())
    doc["credentialSubject"]["claims"]["since"] = 2023
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    r = run_cli(home, "verify", str(out), str(bad), "--json")
    assert r.rc == 1
    valid = [x["valid"] for x in r.json()["results"]]
    assert valid == [True, False]
    # expiry checked against --at
    r = run_cli(home, "verify", str(out), "--at", "2100-01-01T00:00:00Z")
    assert r.rc == 1 and "expired" in r.out


def test_require_issuer(home: Path, tmp_path: Path) -> None:
    claims = tmp_path / "c.json"
    claims.write_text("{}")
    out = tmp_path / "vc.json"
    assert (
        run_cli(
            home,
            "credential",
            "issue",
            "--subject",
            _did(home, "member"),
            "--claims",
            str(claims),
            "--out",
            str(out),
        ).rc
        == 0
    )
    r = run_cli(home, "verify", str(out), "--issuer", _did(home, "member"))
    assert r.rc == 1 and "INVALID" in r.out


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("not json", "JSON"),
        ("[]", "JSON list"),
        ("x" * 300_000, "bytes"),
    ],
    ids=["not-json", "list", "oversized"],
)
def test_verify_bad_files(home: Path, tmp_path: Path, content: str, fragment: str) -> None:
    f = tmp_path / "f.json"
    f.write_text(content)
    r = run_cli(home, "verify", str(f))
    assert r.rc == 1 and fragment in r.out and "Traceback" not in r.err


def test_issue_bad_subject_and_missing_file(home: Path, tmp_path: Path) -> None:
    r = run_cli(home, "credential", "issue", "--subject", "bob", "--claims", "x.json")
    assert r.rc == 2 and "--subject" in r.err
    r = run_cli(
        home,
        "credential",
        "issue",
        "--subject",
        _did(home, "member"),
        "--claims",
        str(tmp_path / "missing.json"),
    )
    assert r.rc == 2 and "cannot read" in r.err
    r = run_cli(home, "verify", str(tmp_path / "missing.json"))
    assert r.rc == 2 and "cannot read" in r.err
