"""The direct path between two parties cut (network namespaces): the pair falls back to
the relay and the run goes on (issue 6, "Faults"). Needs root; marked ``netns``.

Three namespaces (tests/adversary/netns.py): a relay, party 0 and party 1, with a direct
veth between the parties. With the direct link up the pair uses it; with it cut (link
down) the same plans connect through the relay, after the direct grace period, and the
messages arrive. Addresses are only those of these namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from adversary import netns
from didmesh.identity.keys import IdentityKey
from didmesh.session.lab.procs import communicate
from didmesh.session.mesh.plan import MeshPlan, PlanParty
from didmesh.session.mesh.primitives import DH25519

_WHY = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_WHY is not None, reason=str(_WHY))]

PARTY = Path(__file__).parent / "adversary" / "netns_party.py"
RELAY_PORT = 18470
PARTY_PORT = 18471


def _plans(seeds: list[bytes]) -> list[MeshPlan]:
    ids = [IdentityKey.from_seed(s) for s in seeds]
    keys = [DH25519().generate_keypair() for _ in seeds]
    parties = (
        PlanParty(0, ids[0].did, keys[0].public, (f"tcp://{netns.A_DIRECT}:{PARTY_PORT}",)),
        PlanParty(1, ids[1].did, keys[1].public, (f"tcp://{netns.B_DIRECT}:{PARTY_PORT}",)),
    )
    relays = [f"http://{netns.RELAY_FROM_A}:{RELAY_PORT}", f"http://{netns.RELAY_FROM_B}:{RELAY_PORT}"]
    return [
        MeshPlan("netns-session", b"\x33" * 32, i, keys[i].private, parties, (relays[i],), {})
        for i in range(2)
    ]


def _run_pair(ns: netns.Namespaces, tmp: Path) -> list[dict[str, Any]]:
    seeds = [bytes([0x71]) * 32, bytes([0x72]) * 32]
    procs = []
    for i, (plan, where) in enumerate(zip(_plans(seeds), (ns.a, ns.b), strict=True)):
        path = tmp / f"plan{i}.json"
        path.write_text(json.dumps(plan.to_launch_dict()))
        path.chmod(0o600)
        cmd = ns.exec(where, sys.executable, str(PARTY), str(path), seeds[i].hex())
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = []
    for proc in procs:
        stdout, stderr = communicate(proc, 40)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    return out


@pytest.fixture
def namespaces(tmp_path: Path) -> Any:
    home = tmp_path / "relay-home"
    home.mkdir()
    with netns.three_namespaces() as ns:
        cmd = ns.exec(
            ns.relay, sys.executable, "-m", "didmesh.relay", "--host", "0.0.0.0",  # noqa: S104
            "--port", str(RELAY_PORT), "--store", "memory", "--rate-ip-per-s", "0",
        )  # fmt: skip
        relay = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "DIDMESH_HOME": str(home)},
        )  # fmt: skip
        try:
            assert relay.stdout is not None
            line = relay.stdout.readline()  # bounded: the relay prints it or exits
            assert "listening" in line, line
            yield ns
        finally:
            relay.kill()
            relay.wait(10)


def test_direct_path_is_used_when_it_works(namespaces: netns.Namespaces, tmp_path: Path) -> None:
    res = _run_pair(namespaces, tmp_path)
    assert [r["error"] for r in res] == [None, None], res
    assert res[0]["paths"] == {"1": "direct"} and res[1]["paths"] == {"0": "direct"}
    assert res[0]["got"] == {"1": "hello from 1"} and res[1]["got"] == {"0": "hello from 0"}


def test_cut_direct_path_falls_back_to_the_relay(
    namespaces: netns.Namespaces, tmp_path: Path
) -> None:
    namespaces.cut_direct()
    res = _run_pair(namespaces, tmp_path)
    assert [r["error"] for r in res] == [None, None], res
    assert res[0]["paths"] == {"1": "relay"} and res[1]["paths"] == {"0": "relay"}
    assert res[0]["got"] == {"1": "hello from 1"} and res[1]["got"] == {"0": "hello from 0"}
