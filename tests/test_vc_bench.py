"""bench/bench_credentials.py runs, and its credentials verify (targets are reported by
the script itself, not asserted here: timing on a shared CI machine is not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_credentials.py"


def test_bench_runs_and_reports_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--n", "10", "--no-didkit", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    assert set(rows) == {
        "didmesh eddsa-rdfc-2022 (VC 2.0)",
        "didmesh eddsa-jcs-2022 (VC 2.0)",
        "didmesh Ed25519Signature2020 (VC 1.1)",
    }
    for row in rows.values():
        assert row["verify"]["median"] > 0
        assert 2000 < row["bytes"] < 4000  # session-invite sized
