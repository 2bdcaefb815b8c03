"""The keystore: encryption at rest, permissions, corruption, no silent overwrite."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from didmesh.identity.errors import (
    IdentityExists,
    IdentityNotFound,
    InsecurePermissions,
    KeystoreCorrupted,
    PassphraseRequired,
    WrongPassphrase,
)
from didmesh.identity.keys import IdentityKey
from didmesh.identity.keystore import Keystore, PassphraseSource

PW = PassphraseSource(value="correct horse battery staple")


@pytest.fixture
def ks(tmp_path: Path) -> Keystore:
    return Keystore(tmp_path / "home")


def test_encrypted_roundtrip(ks: Keystore) -> None:
    key = IdentityKey.generate()
    entry = ks.create("alice", passphrase=PW, key=key)
    assert entry.encrypted and entry.default and entry.did == key.did
    raw = entry.path.read_bytes()
    assert key.seed_bytes().hex().encode() not in raw
    import base64

    assert base64.b64encode(key.seed_bytes()) not in raw
    assert (entry.path.stat().st_mode & 0o777) == 0o600
    assert (ks.home.stat().st_mode & 0o777) == 0o700
    assert ks.load("alice", passphrase=PW).did == key.did


def test_unencrypted_is_0600(ks: Keystore) -> None:
    entry = ks.create("srv", passphrase=None)
    assert not entry.encrypted
    assert (entry.path.stat().st_mode & 0o777) == 0o600
    assert ks.load("srv").did == entry.did


def test_wrong_passphrase(ks: Keystore) -> None:
    ks.create("alice", passphrase=PW)
    with pytest.raises(WrongPassphrase, match="wrong passphrase for identity 'alice'"):
        ks.load("alice", passphrase=PassphraseSource(value="nope"))


def test_no_terminal_no_passphrase_does_not_hang(
    ks: Keystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks.create("alice", passphrase=PW)
    monkeypatch.delenv("DIDMESH_PASSPHRASE", raising=False)
    monkeypatch.delenv("DIDMESH_PASSPHRASE_FILE", raising=False)
    with pytest.raises(PassphraseRequired, match="DIDMESH_PASSPHRASE"):
        ks.load("alice", passphrase=PassphraseSource(interactive=False))


def test_passphrase_from_env_and_file(
    ks: Keystore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks.create("alice", passphrase=PW)
    monkeypatch.setenv("DIDMESH_PASSPHRASE", PW.value or "")
    assert ks.load("alice").did
    monkeypatch.delenv("DIDMESH_PASSPHRASE")
    f = tmp_path / "pw"
    f.write_text(f"{PW.value}\n")
    assert ks.load("alice", passphrase=PassphraseSource(file=str(f))).did
    monkeypatch.setenv("DIDMESH_PASSPHRASE_FILE", str(f))
    assert ks.load("alice").did


def test_prompt_confirmation(ks: Keystore) -> None:
    answers = iter(["pw1", "pw1"])
    src = PassphraseSource(prompt=lambda _: next(answers), interactive=True)
    ks.create("alice", passphrase=src)
    assert ks.load("alice", passphrase=PassphraseSource(value="pw1")).did


def test_no_overwrite_without_force(ks: Keystore) -> None:
    first = ks.create("alice", passphrase=None)
    with pytest.raises(IdentityExists, match="--force"):
        ks.create("alice", passphrase=None)
    assert ks.entry("alice").did == first.did
    second = ks.create("alice", passphrase=None, force=True)
    assert second.did != first.did


def test_loose_permissions(ks: Keystore) -> None:
    entry = ks.create("alice", passphrase=None)
    os.chmod(entry.path, 0o644)
    with pytest.raises(InsecurePermissions, match="chmod 600"):
        ks.load("alice")
    listed = ks.list()
    assert listed[0].problem and "readable by other users" in listed[0].problem


@pytest.mark.parametrize("cut", [0, 10, 100, -40])
def test_truncated(ks: Keystore, cut: int) -> None:
    entry = ks.create("alice", passphrase=PW)
    raw = entry.path.read_bytes()
    entry.path.write_bytes(raw[:cut])
    with pytest.raises(KeystoreCorrupted):
        ks.load("alice", passphrase=PW)


def test_ciphertext_tampered(ks: Keystore) -> None:
    entry = ks.create("alice", passphrase=PW)
    data = json.loads(entry.path.read_text())
    import base64

    ct = bytearray(base64.b64decode(data["ciphertext"]))
    ct[-1] ^= 1
    data["ciphertext"] = base64.b64encode(bytes(ct)).decode()
    entry.path.write_text(json.dumps(data))
    with pytest.raises(WrongPassphrase, match="altered"):
        ks.load("alice", passphrase=PW)


def test_header_did_swapped(ks: Keystore) -> None:
    entry = ks.create("alice", passphrase=PW)
    data = json.loads(entry.path.read_text())
    data["did"] = IdentityKey.generate().did
    entry.path.write_text(json.dumps(data))
    with pytest.raises(KeystoreCorrupted, match="does not match"):
        ks.load("alice", passphrase=PW)


def test_absurd_kdf_parameters(ks: Keystore) -> None:
    entry = ks.create("alice", passphrase=PW)
    data = json.loads(entry.path.read_text())
    data["kdf"]["memlimit"] = 1 << 40
    entry.path.write_text(json.dumps(data))
    with pytest.raises(KeystoreCorrupted, match="out of range"):
        ks.load("alice", passphrase=PW)


def test_not_found_and_default(ks: Keystore) -> None:
    with pytest.raises(IdentityNotFound, match="didmesh id new"):
        ks.load()
    ks.create("a", passphrase=None)
    ks.create("b", passphrase=None)
    assert ks.entry().name == "a"
    ks.set_default("b")
    assert ks.entry().name == "b"
    with pytest.raises(IdentityNotFound):
        ks.set_default("zzz")


def test_repr_hides_secret() -> None:
    key = IdentityKey.generate()
    assert key.seed_bytes().hex() not in repr(key)
    assert "did:key:" in repr(key)
