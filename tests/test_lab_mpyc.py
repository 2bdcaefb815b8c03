"""Real MPyC runs across the Internet lab (needs root; marked ``netns``): plain MPyC
between two public parties, and didmesh between two parties behind two different home
NATs (one symmetric) through a public relay — the output equals plain MPyC on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from didmesh.session.lab import Lab, available
from didmesh.session.lab.procs import finish
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.runner import launch_document
from mpyc_helpers import plain_mpyc

_WHY = available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_WHY is not None, reason=str(_WHY))]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "secret_santa.py"
ARGS = ["-n", "5", "--seed", "7", "--no-log"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
RELAY_PORT = 8470
MPYC_PORT = 11365


def _plain_loopback() -> list[str]:
    return plain_mpyc(EXAMPLE, ARGS, 2, timeout=60, env=ENV)


@pytest.fixture(scope="module")
def internet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("relay-home")
    with Lab(["relay@2", "public:q0@2", "public:q1@3", "eim:h1:p1@2", "sym:h2:p2@3"]) as lab:
        lab.serve_relay(home, RELAY_PORT, env=ENV)
        yield lab


def test_plain_mpyc_between_public_parties_across_the_lab(internet: Lab) -> None:
    plist = [a for n in ("q0", "q1") for a in ("-P", f"{internet.public_address(n)}:{MPYC_PORT}")]
    procs = [internet.spawn(node, sys.executable, str(EXAMPLE), *ARGS, *plist, "-I", str(i),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
             for i, node in enumerate(("q0", "q1"))]
    res = finish(procs, 60)
    assert [code for code, _, _ in res] == [0, 0], [err[-1500:] for _, _, err in res]
    assert [out for _, out, _ in res] == _plain_loopback()


def test_didmesh_between_two_nated_parties_through_a_public_relay(internet: Lab) -> None:
    url = f"http://{internet.public_address('relay')}:{RELAY_PORT}"
    plans, ids = loopback_plans(2, relays=[url], endpoints=False)
    procs = []
    for i, node in enumerate(("p1", "p2")):
        doc = launch_document(plans[i], ids[i], str(EXAMPLE), ARGS, relay_only=True,
                              timeout=20, connect_timeout=20)
        proc = internet.spawn(node, sys.executable, "-m", "didmesh.session.mesh.runner",
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=ENV)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(doc).encode())  # the key goes through a pipe only
        proc.stdin.close()
        proc.stdin = None
        procs.append(proc)
    res = finish(procs, 60)
    for code, _, err in res:
        assert code == 0, err[-2000:]
        assert " relay " in err  # the connectivity table: the pair is relayed
    assert [out for _, out, _ in res] == _plain_loopback()
