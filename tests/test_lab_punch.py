"""Relay-coordinated TCP hole punching (session/mesh/punch.py, puncher.py), pure parts and in the
Internet lab (needs root; marked ``netns``).

The lab runs use the runner a ``didmesh run`` spawns, with the plan a session would
produce: each party announces, on one session port, its LAN address and its address as
the public relay observes it (what ``accept`` gathers; behind an endpoint-independent NAT
that is the home's public address and the same port, behind a symmetric NAT a random
port). No option about paths is given: the pair's path follows from the topology.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from didmesh.session.lab import Lab, available
from didmesh.session.lab.procs import feed, finish
from didmesh.session.lab.topology import SYMMETRIC
from didmesh.session.mesh import punch
from didmesh.session.mesh.candidates import port_range
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.plan import MeshPlan, format_endpoint
from didmesh.session.mesh.punch import (
    MAX_TARGETS,
    NAT_EIM,
    NAT_OPEN,
    NAT_SYM,
    NAT_UNKNOWN,
    Offer,
    PunchError,
    encode_sync,
    judge_nat,
    session_port,
    targets,
    why_not,
)
from didmesh.session.mesh.runner import launch_document
from mpyc_helpers import plain_mpyc

_WHY = available()
netns = [pytest.mark.netns, pytest.mark.skipif(_WHY is not None, reason=str(_WHY))]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "secret_santa.py"
ARGS = ["-n", "5", "--seed", "7", "--no-log"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
RELAY_PORT = 8470


# ---------------------------------------------------------------------- pure parts

SIGNED = ["tcp://10.1.0.2:40000", "tcp://198.51.100.12:40000"]


@pytest.mark.parametrize(("seen", "local", "nat", "addrs"), [
    (("198.51.100.12", 40000), ["10.1.0.2"], NAT_EIM, ("tcp://198.51.100.12:40000",)),
    (("198.51.100.12", 51234), ["10.1.0.2"], NAT_SYM, ()),  # the port moved: symmetric
    (("10.1.0.2", 40000), ["10.1.0.2"], NAT_OPEN, ("tcp://10.1.0.2:40000",)),
    (("203.0.113.9", 40000), ["10.1.0.2"], NAT_UNKNOWN, ()),  # not what we signed
    (("198.51.100.12", None), ["10.1.0.2"], NAT_UNKNOWN, ()),  # behind a proxy: no port
    (None, ["10.1.0.2"], NAT_UNKNOWN, ()),  # no relay answered
], ids=["eim", "symmetric", "public", "unsigned", "no-port", "no-answer"])
def test_nat_kind_from_a_fresh_observation(seen: Any, local: list[str], nat: str,
                                           addrs: tuple[str, ...]) -> None:
    assert judge_nat(seen, SIGNED, local) == (nat, addrs)


def test_only_signed_non_loopback_addresses_are_dialled_and_at_most_a_few() -> None:
    offer = Offer(("tcp://198.51.100.12:40000", "tcp://192.0.2.66:80",
                   "tcp://127.0.0.1:40000"), NAT_EIM)
    assert targets(offer, [*SIGNED, "tcp://127.0.0.1:40000"]) == [("198.51.100.12", 40000)]
    many = Offer(tuple(f"tcp://10.0.0.{i}:1" for i in range(MAX_TARGETS)), NAT_EIM)
    assert len(targets(many, list(many.addrs))) == MAX_TARGETS


@pytest.mark.parametrize(("mine", "theirs", "dial", "reason"), [
    (NAT_EIM, NAT_EIM, True, None),
    (NAT_OPEN, NAT_EIM, True, None),
    (NAT_SYM, NAT_EIM, True, "relayed: symmetric NAT at party 1"),
    (NAT_EIM, NAT_SYM, True, "relayed: symmetric NAT at party 2"),
    (NAT_SYM, NAT_SYM, True, "relayed: symmetric NAT at party 1 and party 2"),
    (NAT_UNKNOWN, NAT_EIM, True, "relayed: no observed address at party 1"),
    (NAT_EIM, NAT_EIM, False, "relayed: party 2 offered no address it announced"),
])
def test_why_a_pair_is_not_punched(mine: str, theirs: str, dial: bool,
                                   reason: str | None) -> None:
    def offer(nat: str) -> Offer:
        return Offer(() if nat in (NAT_SYM, NAT_UNKNOWN) else ("tcp://198.51.100.1:1",), nat)

    assert why_not(1, offer(mine), 2, offer(theirs),
                   [("198.51.100.1", 1)] if dial else []) == reason


@pytest.mark.parametrize("msg", [
    b"", b"\x30", b"\x30{}", b"\x30[]", b'\x30{"addrs":[],"nat":"x"}',
    b'\x30{"addrs":[1],"nat":"eim"}', b'\x30{"addrs":["http://x"],"nat":"eim"}',
    b'\x30{"addrs":[],"nat":"eim","more":1}', b"\x30" + b"x" * 5000, b"\x31\x01", b"\x30\xff",
    b'\x30{"addrs":' + json.dumps(["tcp://10.0.0.1:1"] * 5).encode() + b',"nat":"eim"}',
    b"\x30" + b"[" * 2000,  # nested too deeply (no RecursionError escapes)
    b'\x30{"addrs":' + b"[" * 900 + b"]" * 900 + b',"nat":"eim"}',
    b'\x30{"addrs":[],"addrs":[],"nat":"eim"}',  # a repeated key
    b'\x30{"addrs":["tcp://a:99999999999"],"nat":"eim"}', b'\x30{"addrs":[],"nat":[]}',
])
def test_malformed_connect_messages_are_refused(msg: bytes) -> None:
    with pytest.raises(PunchError):
        Offer.decode(msg)


def test_random_and_mutated_connect_messages_only_raise_punch_errors() -> None:
    rng = random.Random(10)
    good = Offer(("tcp://198.51.100.12:40000", "tcp://[2001:db8::1]:5"), NAT_EIM).encode()
    for _ in range(3000):
        if rng.random() < 0.5:
            msg = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            b = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            msg = bytes(b)
        try:
            got = Offer.decode(msg)
        except PunchError:
            continue
        assert got.nat in punch.NATS and len(got.addrs) <= MAX_TARGETS


def test_offer_round_trip_and_session_port() -> None:
    o = Offer(("tcp://198.51.100.12:40000",), NAT_EIM)
    assert Offer.decode(o.encode()) == o
    assert encode_sync(2) == b"\x31\x02"
    assert session_port(SIGNED) == 40000
    assert session_port([]) is None
    assert session_port(["tcp://10.0.0.1:1", "tcp://10.0.0.1:2"]) is None


# ---------------------------------------------------------------------- in the lab


def _plain_loopback(m: int) -> list[str]:
    return plain_mpyc(EXAMPLE, ARGS, m, timeout=120, env=ENV)


def _announced(lab: Lab, node: str, port: int) -> tuple[str, ...]:
    """What ``accept`` would gather for ``node`` (test_lab_candidates checks that it does)."""
    site = lab.topology.site_of(node)
    if not site.is_home:
        return (format_endpoint(lab.address(node), port),)
    seen = port if site.kind != SYMMETRIC else random.Random(port).randint(1024, 65535)
    return (format_endpoint(lab.address(node), port),
            format_endpoint(lab.public_address(node), seen))


def _run(lab: Lab, nodes: Sequence[str], url: str) -> list[tuple[int, str, str]]:
    plans, ids = loopback_plans(len(nodes), relays=[url], endpoints=False)
    lo, hi = port_range()  # below the ephemeral range: no TIME_WAIT holds it
    ports = random.SystemRandom().sample(range(lo, hi + 1), len(nodes))
    parties = tuple(dataclasses.replace(p, endpoints=_announced(lab, nodes[p.party_id],
                                                                ports[p.party_id]))
                    for p in plans[0].parties)
    procs = []
    for i, node in enumerate(nodes):
        plan: MeshPlan = dataclasses.replace(plans[i], parties=parties)
        doc = launch_document(plan, ids[i], str(EXAMPLE), ARGS, timeout=30,
                              connect_timeout=60)
        # the party entry spawn_party uses: it pre-dials the early punch (predial.py)
        proc = lab.spawn(node, sys.executable, "-m", "didmesh.session.mesh.party",
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
        feed(proc, json.dumps(doc).encode())  # the key goes through a pipe only
        procs.append(proc)
    return finish(procs, 120)


_ROW = re.compile(r"^\s+party (\d+) .*<-> party (\d+) .*?\s{2}(direct|punched|relay)\s+"
                  r"[\d.]+ ms\s+via (.*)$")


def _table(err: str) -> dict[tuple[int, int], tuple[str, str]]:
    out = {}
    for line in err.splitlines():
        m = _ROW.match(line)
        if m:
            out[(int(m[1]), int(m[2]))] = (m[3], m[4])
    return out


@contextlib.contextmanager
def _with_relay(tokens: list[str], tmp_path: Path) -> Iterator[tuple[Lab, str]]:
    with Lab(tokens) as lab:
        yield lab, lab.serve_relay(tmp_path / "relayhome", RELAY_PORT, env=ENV)


@netns[0]
@netns[1]
def test_two_parties_behind_two_eim_nats_are_punched(tmp_path: Path) -> None:
    with _with_relay(["relay@2", "eim:h1:p1@2", "eim:h2:p2@3"], tmp_path) as (lab, url):
        res = _run(lab, ["p1", "p2"], url)
    for code, _, err in res:
        assert code == 0, err[-2500:]
    table = _table(res[0][2])
    assert list(table) == [(0, 1)], res[0][2]
    path, via = table[(0, 1)]
    assert path == "punched", res[0][2]
    assert lab.public_address("p2") in via  # through p2's NAT, not its LAN address
    assert [out for _, out, _ in res] == _plain_loopback(2)


@netns[0]
@netns[1]
def test_mixed_topology_gets_the_paths_it_predicts(tmp_path: Path) -> None:
    # party 0, 1: one home's LAN (eim); 2: public; 3: another eim home; 4: a symmetric NAT
    topology = ["relay@2", "eim:h1:a,b@2", "public:q@2", "eim:h2:c@3", "sym:h3:d@2"]
    with _with_relay(topology, tmp_path) as (lab, url):
        res = _run(lab, ["a", "b", "q", "c", "d"], url)
    for code, _, err in res:
        assert code == 0, err[-2500:]
    table = _table(res[0][2])
    sym = "relayed: symmetric NAT at party 4"
    expect = {
        (0, 1): ("direct", lab.address("b")),  # the LAN pair, over the LAN
        (0, 2): ("direct", lab.address("q")),  # a NATed party dials a public one
        (1, 2): ("direct", lab.address("q")),
        (0, 3): ("punched", lab.public_address("c")),
        (1, 3): ("punched", lab.public_address("c")),
        (2, 3): ("punched", lab.public_address("c")),  # public (lower id) and NATed
        (0, 4): ("relay", sym), (1, 4): ("relay", sym), (2, 4): ("relay", sym),
        (3, 4): ("relay", sym),
    }
    assert set(table) == set(expect), res[0][2]
    for pair, (path, where) in expect.items():
        got_path, via = table[pair]
        assert got_path == path and where in via, (pair, table[pair], res[0][2])
    outs = [out for _, out, _ in res]
    assert outs == _plain_loopback(5)


@netns[0]
@netns[1]
def test_symmetric_nats_fall_back_to_the_relay_naming_the_parties(tmp_path: Path) -> None:
    topology = ["relay@2", "sym:h1:s1@2", "sym:h2:s2@3", "eim:h3:e@2"]
    with _with_relay(topology, tmp_path) as (lab, url):
        res = _run(lab, ["s1", "s2", "e"], url)
    for code, _, err in res:
        assert code == 0, err[-2500:]
    table = _table(res[0][2])
    assert table == {
        (0, 1): ("relay", f"relay {url} (relayed: symmetric NAT at party 0 and party 1)"),
        (0, 2): ("relay", f"relay {url} (relayed: symmetric NAT at party 0)"),
        (1, 2): ("relay", f"relay {url} (relayed: symmetric NAT at party 1)"),
    }, res[0][2]
    assert [out for _, out, _ in res] == _plain_loopback(3)
