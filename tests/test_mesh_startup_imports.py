"""What a party's run process imports (specs/mesh.md, 11): its start-up is on every run's
critical path, so two imports it does not need stay out of it.

* PyNaCl (~5 ms): a party signs (``cryptography``'s Ed25519, identity/keys.py) and seldom
  verifies; libsodium's strict verification and the Ed25519-to-X25519 conversions import
  it when first called.
* ``cryptography``'s legacy OpenSSL backend (~4 ms): ``X25519PrivateKey.from_private_bytes``
  imports it to ask whether X25519 is supported; the mesh builds its X25519 keys through
  the Rust core (session/mesh/primitives.py).

Checked on two real party processes on loopback: an import hook (a ``sitecustomize``
on ``PYTHONPATH``) writes the stack of any such import to a log, which must stay empty.
The helpers' results are checked against the public API's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from didmesh.identity.didkey import DidKey, ed25519_to_x25519_public
from didmesh.identity.errors import InvalidKey, InvalidProof
from didmesh.identity.keys import IdentityKey, verify_ed25519
from didmesh.session.lab.procs import finish
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.primitives import (
    DH25519,
    x25519_generate,
    x25519_private_key,
    x25519_public_key,
)
from didmesh.session.mesh.runner import launch_document, spawn_party
from nacl.signing import SigningKey

LOG_ENV = "DIDMESH_TEST_IMPORT_LOG"
NOT_IMPORTED = ("nacl", "cryptography.hazmat.backends")

HOOK = f"""
import os, sys, traceback

class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name.startswith({NOT_IMPORTED!r}):
            with open(os.environ[{LOG_ENV!r}], "a") as log:
                log.write("import " + name + "\\n" + "".join(traceback.format_stack(limit=15)))
        return None

if os.environ.get({LOG_ENV!r}):
    sys.meta_path.insert(0, _Watch())
"""

HELLO = """from mpyc.runtime import mpc
mpc.run(mpc.start())
print("hello from party", mpc.pid)
mpc.run(mpc.shutdown())
"""


def test_a_party_run_imports_neither_pynacl_nor_the_openssl_backend(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    program = tmp_path / "hello.py"
    program.write_text(HELLO)
    log = tmp_path / "imports.log"
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, LOG_ENV: str(log)}
    plans, ids = loopback_plans(2)
    procs = [spawn_party(launch_document(plan, ident, str(program)), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for plan, ident in zip(plans, ids, strict=True)]
    results = finish(procs, 90)
    assert [code for code, _, _ in results] == [0, 0], [err[-1500:] for _, _, err in results]
    assert all("hello from party" in out for _, out, _ in results)
    assert not log.exists(), log.read_text()[:4000]


def test_the_hook_sees_what_it_watches(tmp_path: Path) -> None:
    """The check above could pass by seeing nothing: the same hook logs a real import."""
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "imports.log"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), LOG_ENV: str(log)}
    subprocess.run(["python3", "-c", "import nacl.signing"], env=env, check=True, timeout=60)
    assert "import nacl" in log.read_text()


# -- the helpers give what the public API gives -----------------------------------------

def test_x25519_helpers_match_the_public_constructors() -> None:
    for _ in range(8):
        key = x25519_generate()
        raw = key.private_bytes_raw()
        assert isinstance(key, X25519PrivateKey)
        public = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
        assert x25519_private_key(raw).public_key().public_bytes_raw() == public
        other = x25519_generate()
        peer = other.public_key().public_bytes_raw()
        assert isinstance(x25519_public_key(peer), X25519PublicKey)
        assert (x25519_private_key(raw).exchange(x25519_public_key(peer))
                == other.exchange(X25519PublicKey.from_public_bytes(public)))


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_x25519_helpers_refuse_wrong_lengths(length: int) -> None:
    with pytest.raises(ValueError):
        x25519_private_key(bytes(length))
    with pytest.raises(ValueError):
        x25519_public_key(bytes(length))


def test_noise_dh_still_refuses_a_low_order_key() -> None:
    from didmesh.session.mesh.errors import HandshakeFailed

    dh = DH25519()
    with pytest.raises(HandshakeFailed, match="low-order"):
        dh.dh(dh.generate_keypair(), bytes(32))


def test_identity_signatures_are_libsodiums() -> None:
    """Ed25519 is deterministic (RFC 8032): cryptography's signatures are byte for byte
    PyNaCl's, and the public key and did:key are the same."""
    for i in range(8):
        seed = bytes([i]) * 32
        ident = IdentityKey.from_seed(seed)
        nacl_key = SigningKey(seed)
        assert ident.ed25519_public == bytes(nacl_key.verify_key)
        assert ident.did == DidKey.from_ed25519(bytes(nacl_key.verify_key)).did
        message = b"didmesh %d" % i
        assert ident.sign(message) == nacl_key.sign(message).signature
        verify_ed25519(ident.ed25519_public, message, ident.sign(message))
        with pytest.raises(InvalidProof):
            verify_ed25519(ident.ed25519_public, message + b"!", ident.sign(message))
        assert ident.x25519_public == ed25519_to_x25519_public(ident.ed25519_public)
        ours = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        assert ours == ident.ed25519_public


def test_a_non_point_is_still_refused_from_outside() -> None:
    """Our own key skips the curve check (it is derived); a key from outside does not."""
    bad = bytes.fromhex("02") + bytes(31)  # y = 2 is not on edwards25519
    with pytest.raises(InvalidKey):
        DidKey.from_ed25519(bad)
