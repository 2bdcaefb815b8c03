"""Pieces of the WireGuard run's teardown that need no root (session/wireguard/tunnel.py,
run.py): per-session-and-party interface names, the control plan inside the tunnel, and
the runner's hard exit running the registered teardown before ``os._exit``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from didmesh.session.mesh.plan import MeshPlan, PlanParty, parse_endpoint
from didmesh.session.wireguard import tunnel_addresses
from didmesh.session.wireguard.errors import WgTunnelFailed
from didmesh.session.wireguard.run import control_plan
from didmesh.session.wireguard.tunnel import find_leftover, run_interface


@pytest.mark.parametrize(("sid", "pid", "name"), [
    ("3fa2c1d04e5f", 0, "dm3fa2c1d0p0"),
    ("3fa2c1d04e5f", 63, "dm3fa2c1d0p63"),
    ("3fa2c1d04e5f", 9999, "dm3fa2c1d0p9999"),
    ("3fa2c1d14e5f", 0, "dm3fa2c1d1p0"),
])
def test_interface_names_differ_per_session_and_party_and_fit_15(sid: str, pid: int,
                                                                 name: str) -> None:
    assert run_interface(sid, pid) == name
    assert len(name) <= 15


@pytest.mark.parametrize(("sid", "pid"), [("3fa2c1d04e5f", 10000), ("3fa2/1d04e5f", 0)])
def test_impossible_interface_names_are_refused(sid: str, pid: int) -> None:
    with pytest.raises(WgTunnelFailed):
        run_interface(sid, pid)


def test_nothing_is_a_leftover_of_a_name_never_used() -> None:
    assert not find_leftover("dmffffffffp77")


def test_the_control_plan_has_tunnel_endpoints_only_and_no_relay() -> None:
    keys = [X25519PrivateKey.generate() for _ in range(3)]
    plan = MeshPlan(
        session_id="ab" * 16, roster_hash=bytes(32), my_party_id=1,
        my_static_private=keys[1].private_bytes_raw(),
        parties=tuple(PlanParty(i, f"did:key:z6Mk{i}", k.public_key().public_bytes_raw(),
                                (f"tcp://198.51.100.{i}:5182{i}", "tcp://10.0.0.1:9"))
                      for i, k in enumerate(keys)),
        relays=("https://relay.example",),
    )
    ctrl = control_plan(plan, 11366)
    assert ctrl.relays == ()
    for p in ctrl.parties:
        assert [parse_endpoint(e) for e in p.endpoints] == [
            (str(tunnel_addresses(plan.roster_hash, p.party_id).ipv4), 11366)]
    assert [p.static_public for p in ctrl.parties] == [p.static_public for p in plan.parties]


HARD_EXIT = """
import sys
from didmesh.session.mesh import runner
from didmesh.session.mesh.faults import ProgramFailed
runner.EXIT_HOOKS.append(lambda: open(sys.argv[1], "w").write("torn down"))
runner._hard_exit(ProgramFailed("the program hangs"), [])
print("not reached")
"""


def test_the_runners_hard_exit_runs_the_registered_teardown_first(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    res = subprocess.run([sys.executable, "-c", HARD_EXIT, str(marker)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 2, res.stderr
    assert marker.read_text() == "torn down"
    assert "not reached" not in res.stdout
    assert res.stderr.strip() == "didmesh: the program hangs"
