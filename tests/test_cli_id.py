"""``didmesh id`` end to end through the real console entry point."""

from __future__ import annotations

import os
from pathlib import Path

from cli_helpers import run_cli
from didmesh.identity.didkey import DidKey


def test_id_workflow(tmp_path: Path) -> None:
    home = tmp_path / "h"
    r = run_cli(home, "id", "new", "--name", "alice", "--no-passphrase", "--json")
    assert r.rc == 0, r.err
    alice = r.json()
    assert alice["default"] and not alice["encrypted"]
    r = run_cli(home, "id", "new", "--name", "bob", "--json", env={"DIDMESH_PASSPHRASE": "s3cret"})
    assert r.rc == 0, r.err
    assert r.json()["encrypted"]
    listed = run_cli(home, "id", "list", "--json").json()
    assert [e["name"] for e in listed] == ["alice", "bob"]
    shown = run_cli(home, "id", "show", "bob", "--json").json()
    assert shown["did"] == DidKey.parse(shown["did"]).did
    doc = run_cli(home, "id", "export", "bob").json()
    assert doc["id"] == shown["did"]
    assert "s3cret" not in str(doc) and "seed" not in str(doc)
    human = run_cli(home, "id", "list")
    assert "* alice" in human.out


def test_id_new_twice_is_refused(tmp_path: Path) -> None:
    run_cli(tmp_path, "id", "new", "--no-passphrase")
    r = run_cli(tmp_path, "id", "new", "--no-passphrase")
    assert r.rc == 2
    assert r.err.startswith("didmesh: an identity named 'default' exists already")
    assert "Traceback" not in r.err


def test_encrypted_identity_without_passphrase_fails_fast(tmp_path: Path) -> None:
    r = run_cli(tmp_path, "id", "new")
    assert r.rc == 2
    assert "DIDMESH_PASSPHRASE" in r.err and "Traceback" not in r.err


def test_loose_permissions_message(tmp_path: Path) -> None:
    run_cli(tmp_path, "id", "new", "--no-passphrase", "--name", "a")
    os.chmod(tmp_path / "identities" / "a.json", 0o640)
    r = run_cli(tmp_path, "id", "list")
    assert r.rc == 0 and "readable by other users" in r.out
