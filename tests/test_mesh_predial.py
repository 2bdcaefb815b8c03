"""Pre-dialing the early punch (session/mesh/predial.py, endpoints.py, party.py) and its
adoption by :func:`~didmesh.session.mesh.puncher.dial_from` (specs/mesh.md 6.1).

The decision is checked against the run's own (the connector's and the puncher's) for the
lab's topologies, without a lab: the topology module gives the addresses. The adoption
cases run against real sockets on loopback: a connect still under way (a listener whose
accept queue is full drops the SYN; the kernel resends it a second later), one already
done, one refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import socket
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest
from didmesh.session.lab.topology import SYMMETRIC, Topology
from didmesh.session.mesh import predial
from didmesh.session.mesh.connect import ConnectOptions, MeshConnector
from didmesh.session.mesh.endpoints import format_endpoint, signed_targets
from didmesh.session.mesh.loopback import free_ports, loopback_plans
from didmesh.session.mesh.paths import Pair
from didmesh.session.mesh.plan import MeshPlan
from didmesh.session.mesh.punch import RESYN_INTERVAL
from didmesh.session.mesh.puncher import Puncher, dial_from
from didmesh.session.mesh.runner import launch_document

# the lab's topologies (tests/test_lab_punch.py, bench/bench_punch.py)
TOPOLOGIES = {
    "two-eim-homes": (["relay@2", "eim:h1:p1@2", "eim:h2:p2@3"], ["p1", "p2"]),
    "mixed": (["relay@2", "eim:h1:a,b@2", "public:q@2", "eim:h2:c@3", "sym:h3:d@2"],
              ["a", "b", "q", "c", "d"]),
    "symmetric": (["relay@2", "sym:h1:s1@2", "sym:h2:s2@3", "eim:h3:e@2"], ["s1", "s2", "e"]),
    "bench": (["relay@20", "eim:h1:p1@20", "eim:h2:p2@20", "public:q0@20", "public:q1@20"],
              ["p1", "p2", "q0", "q1"]),
}
OPTIONS = {
    "auto": {},
    "relay-only": {"relay_only": True},
    "direct-only": {"direct_only": True},
    "no-relay": None,
}


def _announced(topo: Topology, node: str, port: int) -> tuple[str, ...]:
    """What ``accept`` gathers for ``node`` (as tests/test_lab_punch.py)."""
    site = topo.site_of(node)
    if not site.is_home:
        return (format_endpoint(topo.address(node), port),)
    seen = port if site.kind != SYMMETRIC else random.Random(port).randint(1024, 65535)
    return (format_endpoint(topo.address(node), port),
            format_endpoint(topo.public_address(node), seen))


def _lab_plans(topo: Topology, nodes: list[str], relays: list[str]
               ) -> tuple[list[MeshPlan], list[Any]]:
    plans, ids = loopback_plans(len(nodes), relays=relays, endpoints=False)
    parties = tuple(dataclasses.replace(p, endpoints=_announced(topo, nodes[p.party_id],
                                                                30000 + 7 * p.party_id))
                    for p in plans[0].parties)
    return [dataclasses.replace(p, parties=parties) for p in plans], ids


async def _connector_decision(plan: MeshPlan, identity: Any, options: dict[str, Any]
                              ) -> tuple[int | None, list[tuple[str, int]]]:
    """What the run's connector punches early: its pairs as connect_all makes them."""
    async def opener(url: str, did: str) -> Any:
        raise AssertionError("no link is opened here")

    connector = MeshConnector(plan, identity, ConnectOptions(**options), relay_opener=opener)
    loop = asyncio.get_running_loop()
    dials: list[tuple[str, int]] = []
    for p in plan.peers():
        pair = Pair(plan, p.party_id, loop.create_future(), connector._kinds(p.party_id))
        if connector._punches_early(pair):
            dials += signed_targets(plan.party(p.party_id).endpoints)  # early_punch's dial
    assert connector.puncher is not None or not dials
    return (connector.puncher.port if dials and connector.puncher else None), dials


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", list(TOPOLOGIES))
async def test_the_pre_dial_decides_as_the_run_does(name: str, option: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, nodes = TOPOLOGIES[name]
    topo = Topology.parse(tokens)
    opts = OPTIONS[option]
    plans, ids = _lab_plans(topo, nodes, [] if opts is None else ["http://relay.invalid"])
    predialing = 0
    for me, plan in enumerate(plans):
        local = [topo.address(nodes[me])]
        monkeypatch.setattr(predial, "interface_addresses",
                            lambda local=local: [("eth0", a) for a in local])
        port, dials = await _connector_decision(plan, ids[me], opts or {})
        doc = launch_document(plan, ids[me], "program.py", [], **(opts or {}))
        assert predial.decide(json.loads(json.dumps(doc)), local) == (port, dials), \
            (name, option, me)
        if opts is not None:  # didmesh run's pre-dial, from the verified roster's plan
            assert predial.decide_plan(plan, local, **opts) == (port, dials)
        predialing += bool(dials)
    # the topologies with homes in different places do pre-dial, in auto mode only
    expect = {"two-eim-homes": 2, "mixed": 5, "symmetric": 3, "bench": 2}[name]
    assert predialing == (expect if option == "auto" else 0)


def test_two_homes_pre_dial_each_others_signed_endpoints_from_the_session_port() -> None:
    topo = Topology.parse(TOPOLOGIES["two-eim-homes"][0])
    plans, ids = _lab_plans(topo, ["p1", "p2"], ["http://relay.invalid"])
    doc = launch_document(plans[1], ids[1], "program.py", [])
    assert predial.decide(doc, [topo.address("p2")]) == (
        30007, [(topo.address("p1"), 30000), (topo.public_address("p1"), 30000)])


@pytest.mark.parametrize("doc", [
    None, [], "x", {}, {"plan": {}}, {"plan": {"parties": [{"party_id": 1}]}},
    {"plan": {"my_party_id": 5, "parties": [], "relays": ["http://r"]}},
    {"plan": {"my_party_id": 0, "relays": ["http://r"],
              "parties": [{"party_id": 0, "endpoints": ["tcp://10.0.0.1:1"]},
                          {"party_id": 1, "endpoints": ["not an endpoint", 3]}]}},
    {"plan": {"my_party_id": 0, "relays": "http://r", "parties": "x"}, "options": []},
], ids=["none", "list", "text", "empty", "no-parties", "bad-ids", "me-out-of-range",
        "bad-endpoint", "bad-types"])
def test_a_document_it_cannot_read_pre_dials_nothing(doc: Any) -> None:
    assert predial.decide(doc, ["10.0.0.1"]) == (None, [])
    assert predial.from_launch(doc, ["10.0.0.1"]) is None


# ------------------------------------------------------------------------- adoption


def _listener(backlog: int = 8) -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(backlog)
    return srv


def _accepted_from(srv: socket.socket) -> list[int]:
    """The source ports of the connections waiting on ``srv`` (each accepted and closed)."""
    srv.setblocking(False)
    ports = []
    while True:
        try:
            conn, addr = srv.accept()
        except BlockingIOError:
            return ports
        ports.append(addr[1])
        conn.close()


async def test_a_pre_dialed_connection_already_made_is_adopted_not_dialed_again() -> None:
    srv = _listener()
    target = srv.getsockname()
    port = free_ports(1)[0]
    pre = predial.predial(port, [target])
    sock = pre._socks[target]
    try:
        for _ in range(100):  # the connect completes in the kernel, with no one awaiting it
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                with_peer = True
                try:
                    sock.getpeername()
                except OSError:
                    with_peer = False
                if with_peer:
                    break
            await asyncio.sleep(0.01)
        link = await asyncio.wait_for(dial_from(port, [target], 2.0, pre), 5)
        try:
            assert link.transport is not None
            assert link.transport.get_extra_info("socket").fileno() == sock.fileno()
            assert link.transport.get_extra_info("sockname")[1] == port
            assert len(pre) == 0 and "(punched)" in link.description
            assert _accepted_from(srv) == [port]  # that one connection, no second one
        finally:
            link.abort()
    finally:
        pre.close()
        srv.close()


async def test_a_pre_dialed_connect_still_under_way_is_awaited_not_dialed_again() -> None:
    srv = _listener(backlog=0)
    target = srv.getsockname()
    filler = socket.create_connection(target)  # fills the accept queue: SYNs are dropped
    port = free_ports(1)[0]
    pre = predial.predial(port, [target])
    sock = pre._socks[target]
    try:
        await asyncio.sleep(0.05)
        with pytest.raises(OSError):
            sock.getpeername()  # SYN_SENT: under way
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        task = asyncio.ensure_future(dial_from(port, [target], 5.0, pre))
        await asyncio.sleep(0.2)
        assert not task.done()  # waiting on that connect (a new connect would be refused
        assert len(pre) == 0  # ... or fail: the same four-tuple)
        srv.accept()[0].close()  # room in the queue: the kernel's resent SYN gets in
        filler.close()
        link = await asyncio.wait_for(task, 5)
        try:
            assert link.transport is not None
            assert link.transport.get_extra_info("socket").fileno() == sock.fileno()
            assert _accepted_from(srv) == [port]
        finally:
            link.abort()
    finally:
        pre.close()
        filler.close()
        srv.close()


async def test_a_refused_pre_dial_is_closed_and_the_target_dialed_anew() -> None:
    port, tport = free_ports(2)
    target = ("127.0.0.1", tport)
    pre = predial.predial(port, [target])  # nobody listens: refused
    assert len(pre) == 1
    sock = pre._socks[target]
    await asyncio.sleep(0.05)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(target)
    srv.listen(8)
    try:
        link = await asyncio.wait_for(dial_from(port, [target], 3.0, pre), 5)
        connected = time.monotonic()
        try:
            assert sock.fileno() == -1  # the refused socket is closed
            assert link.transport is not None
            assert link.transport.get_extra_info("sockname")[1] == port
            # the new SYN went no sooner than RESYN_INTERVAL after the pre-dialed one
            assert connected - pre.sent >= RESYN_INTERVAL - 0.01
            assert _accepted_from(srv) == [port]
        finally:
            link.abort()
    finally:
        pre.close()
        srv.close()


async def test_pre_dialed_sockets_from_another_port_or_never_adopted_are_closed() -> None:
    srv = _listener()
    target = srv.getsockname()
    port, other = free_ports(2)
    pre = predial.predial(other, [target])
    sock = pre._socks[target]
    link = await asyncio.wait_for(dial_from(port, [target], 2.0, pre), 5)
    link.abort()
    assert len(pre) == 1 and sock.fileno() != -1  # not ours to adopt: another port
    plans, _ = loopback_plans(2, endpoints=False, relays=["http://relay.invalid"])
    puncher = Puncher(SimpleNamespace(plan=plans[0]), None, [], lambda: [], pre)
    puncher.close()  # the run's mesh is up: what no early punch adopted goes
    assert len(pre) == 0 and sock.fileno() == -1
    srv.close()


def test_a_run_that_does_not_punch_closes_the_pre_dialed_sockets_at_once() -> None:
    srv = _listener()
    pre = predial.predial(free_ports(1)[0], [srv.getsockname()])
    sock = next(iter(pre._socks.values()))
    plans, ids = loopback_plans(2, endpoints=False, relays=["http://relay.invalid"])

    async def opener(url: str, did: str) -> Any:
        raise AssertionError

    MeshConnector(plans[0], ids[0], ConnectOptions(relay_only=True), relay_opener=opener,
                  predialed=pre)
    assert len(pre) == 0 and sock.fileno() == -1
    srv.close()


def test_the_party_entry_sends_its_syns_before_the_heavy_imports() -> None:
    """Importing the party entry (and so the package and the pre-dial) brings in neither
    asyncio nor cryptography nor the relay client: the SYNs leave within a few ms of the
    launch document's arrival (bench/punch_timeline.py shows when)."""
    code = ("import sys, didmesh.session.mesh.party; "
            "print(sorted(m for m in ('asyncio', 'cryptography', 'nacl', 'aiohttp', "
            "'didmesh.session.mesh.runner', 'didmesh.session.mesh.channel') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_the_party_entry_refuses_a_document_that_is_not_json_in_one_line() -> None:
    res = subprocess.run([sys.executable, "-m", "didmesh.session.mesh.party"], input=b"{x",
                         capture_output=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.decode().strip() == "didmesh: the launch document on stdin is not JSON"
