"""A relay whose SQLite store cannot be written says so in one line and exits 2 (issue 12),
also as root, where file modes do not stop writes: the store's directory is a read-only
bind mount in a mount namespace of its own (``unshare -m``), so nothing outside changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from relay_helpers import start_relay

ENTRY_POINTS = {
    "python -m didmesh.relay": [sys.executable, "-m", "didmesh.relay"],
    "didmesh relay serve": [sys.executable, "-m", "didmesh.session.cli.main", "relay", "serve"],
}


def _ro_namespace_works(tmp: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount --make-rprivate / && mount --bind {tmp} {tmp} && "
         f"mount -o remount,ro,bind {tmp} {tmp} && ! touch {tmp}/probe 2>/dev/null"],
        capture_output=True, timeout=20, stdin=subprocess.DEVNULL,
    )
    return r.returncode == 0


def _serve_read_only(store_dir: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    relay = " ".join(command + ["--host", "127.0.0.1", "--port", "0", "--store",
                                f"sqlite:{store_dir}/relay.sqlite3"])
    script = (f"mount --make-rprivate / && mount --bind {store_dir} {store_dir} && "
              f"mount -o remount,ro,bind {store_dir} {store_dir} && exec {relay}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_RELAY_")}
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)


@pytest.mark.parametrize("existing", [False, True], ids=["new-database", "existing-database"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_unwritable_store_as_root_is_one_line_and_exit_2(
    tmp_path: Path, entry: str, existing: bool
) -> None:
    if not _ro_namespace_works(tmp_path):
        pytest.skip("needs root and mount namespaces (unshare -m) for a read-only bind mount")
    store = tmp_path / "store"
    store.mkdir()
    if existing:  # a relay ran here before: database and secret file exist
        with start_relay(f"sqlite:{store}/relay.sqlite3"):
            pass
        assert (store / "relay.sqlite3").exists()
    before = sorted((p.name, p.stat().st_size) for p in store.iterdir())
    r = _serve_read_only(store, ENTRY_POINTS[entry])
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("didmesh") and "relay database" in lines[0]
    assert str(store / "relay.sqlite3") in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert sorted((p.name, p.stat().st_size) for p in store.iterdir()) == before
