"""``didmesh demo``, the README's main job: a whole session on loopback, cleaned up after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


def _demo(*extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    return subprocess.run(
        [sys.executable, "-m", "didmesh.session.cli.main", "demo", *extra],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=env,
    )


def _demo_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("didmesh-demo-*"))


def test_demo_runs_a_whole_session_and_cleans_up() -> None:
    before = _demo_dirs()
    proc = _demo()
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for step in ("1. A community relay", "4. alice invited bob", "carol claims the code",
                 "6. every party verified", "8. the three signed run receipts verify"):
        assert step in out
    # 52000 + 61000 + 58500, computed by MPyC over the mesh
    assert "result: sum: 171500" in out and "result: average: 57166.6667" in out
    sas = [ln.split("reads out:")[1].strip() for ln in out.splitlines() if "reads out:" in ln]
    assert len(sas) == 3 and len(set(sas)) == 1 and len(sas[0].split()) == 5
    assert _demo_dirs() == before  # the temporary homes are gone


@pytest.mark.slow
def test_demo_relay_only_json() -> None:
    proc = _demo("--relay-only", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert "sum: 171500" in result["result"]
    assert set(result["dids"]) == {"alice", "bob", "carol"}
