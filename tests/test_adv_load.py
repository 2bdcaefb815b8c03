"""The load test (bench/bench_load.py) as a bounded test: one real relay process, many
concurrent sessions exchanging real invites and acceptances, plus forwarding links.
Zero errors, every count exact. The default run is small (the same code paths); the full
size is a ``soak`` test, run with DIDMESH_SOAK=1 (tests/conftest.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from relay_helpers import start_relay

BENCH = Path(__file__).parent.parent / "bench" / "bench_load.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ARGS = ["--rate-ip-per-s", "0", "--rate-did-per-s", "0", "--no-access-log",
        "--links-total", "8192"]  # fmt: skip


async def _run(tmp_path: Path, sessions: int, parties: int, frames: int, deadline: float) -> None:
    bench = _bench()
    with start_relay("memory", ARGS, home=tmp_path) as relay:
        report = await bench.run_load(
            relay.url, sessions=sessions, parties=parties, frames=frames,
            concurrency=50, deadline_s=deadline, relay_pid=relay.proc.pid,
        )  # fmt: skip
        assert relay.alive()
    print(report.summary())
    assert report.errors == 0, report.error_kinds
    invitees = sessions * (parties - 1)
    assert report.envelopes == 2 * invitees
    assert report.verified_documents == 2 * invitees
    assert report.links == invitees
    assert report.link_frames == 2 * frames * invitees
    assert 0 < report.relay_peak_rss_mb < 1024


async def test_load_small(tmp_path: Path) -> None:
    await _run(tmp_path, sessions=12, parties=5, frames=3, deadline=60)


@pytest.mark.slow
@pytest.mark.soak
async def test_load_200_sessions_of_5(tmp_path: Path) -> None:
    await _run(tmp_path, sessions=200, parties=5, frames=5, deadline=240)
