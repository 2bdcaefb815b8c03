"""WireGuard behind NATs (issue 11; specs/wireguard.md, section 6.3): the pure parts
(endpoint offers sealed per pair and run, candidate order, pairs with no UDP path) and,
in the Internet lab (root; ``netns``, slow), ``run_over_wireguard`` between parties behind
two different endpoint-independent NATs and a public host, with a public relay started as
README says (no STUN option: it answers STUN by default on UDP 8470 and a free port): the
output equals plain MPyC's and nothing remains; a pair with a symmetric NAT fails early,
named, before any interface exists (the relay's two STUN ports see two mappings).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from didmesh.session.lab import Lab
from didmesh.session.lab import available as lab_available
from didmesh.session.lab.procs import feed, finish
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.plan import MeshPlan, format_endpoint
from didmesh.session.mesh.runner import launch_document
from didmesh.session.wireguard.addresses import tunnel_addresses
from didmesh.session.wireguard.paths import (
    INITIATOR_DELAY,
    RESPONDER_GRACE,
    TRY_SPAN,
    endpoint_choice,
    no_udp_path,
    order_candidates,
)
from didmesh.session.wireguard.rendezvous import (
    MAX_ENDPOINTS,
    Offer,
    OfferRefused,
    hello,
    open_offer,
    parse_hello,
    seal,
)
from didmesh.session.wireguard.testing import UAPI_DIR
from didmesh.session.wireguard.testing import available as wg_available
from didmesh.session.wireguard.tunnel import run_interface, wireguard_go_pids
from didmesh.session.wireguard.udpmap import NAT_EIM, NAT_OPEN, NAT_SYM, NAT_UNKNOWN, judge
from mpyc_helpers import plain_mpyc

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "secure_sum.py"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

# ---------------------------------------------------------------------- pure parts


def _pair() -> list[MeshPlan]:
    plans, _ = loopback_plans(3, endpoints=False)
    return plans


def test_an_offer_opens_only_for_its_receiver_in_its_run() -> None:
    plans = _pair()
    offer = Offer(("198.51.100.7:51820", "10.1.0.2:51820"), NAT_EIM)
    challenge = os.urandom(16)
    sealed = seal(plans[0], 1, offer, challenge)
    assert open_offer(plans[1], 0, sealed, challenge) == offer
    with pytest.raises(OfferRefused, match="does not verify"):  # another run's challenge
        open_offer(plans[1], 0, sealed, os.urandom(16))
    with pytest.raises(OfferRefused, match="does not verify"):  # reflected back to party 0
        open_offer(plans[0], 1, sealed, challenge)
    with pytest.raises(OfferRefused, match="does not verify"):  # party 2 is not the receiver
        open_offer(plans[2], 0, sealed, challenge)
    for i in range(len(sealed)):  # any flipped bit
        bad = bytearray(sealed)
        bad[i] ^= 0x40
        with pytest.raises(OfferRefused):
            open_offer(plans[1], 0, bytes(bad), challenge)
    other, _ = loopback_plans(2, endpoints=False)  # another roster
    with pytest.raises(OfferRefused):
        open_offer(other[1], 0, sealed, challenge)
    assert parse_hello(hello(challenge)) == challenge
    with pytest.raises(OfferRefused):
        parse_hello(b"DMWG1" + bytes(3))


@pytest.mark.parametrize("body", [
    b"{}", b"[]", b'{"udp": [], "nat": "cone"}', b'{"udp": ["x"], "nat": "eim"}',
    b'{"udp": ["1.2.3.4:0"], "nat": "eim"}', b'{"udp": ["0.0.0.0:5"], "nat": "eim"}',
    json.dumps({"udp": ["1.2.3.4:5"] * (MAX_ENDPOINTS + 1), "nat": "eim"}).encode(),
    b'{"udp": [], "nat": "eim", "more": 1}', b'{"udp": [1], "nat": "eim"}',
    b"\xff" * 40, b'{"udp": [], "nat": "eim", "nat": "sym"}',
], ids=["empty", "list", "nat", "host", "port", "unspecified", "many", "extra", "number",
        "bytes", "repeated-key"])
def test_malformed_offers_are_refused(body: bytes) -> None:
    with pytest.raises(OfferRefused):
        Offer.from_bytes(body)


def test_random_sealed_bytes_only_raise_offer_refused() -> None:
    plans = _pair()
    rng = random.Random(11)
    for _ in range(300):
        with pytest.raises(OfferRefused):
            open_offer(plans[1], 0, rng.randbytes(rng.randint(0, 200)), bytes(16))


LAN = [ipaddress.ip_network("10.1.0.0/24")]


@pytest.mark.parametrize(("offer", "signed", "expect"), [
    # same LAN first, then the public mapping, then what was signed
    (Offer(("198.51.100.7:40000", "10.1.0.9:40000"), NAT_EIM), ["tcp://10.1.0.9:40000"],
     ["10.1.0.9:40000", "198.51.100.7:40000"]),
    # another home: its LAN address is no use first; the public mapping is
    (Offer(("198.51.100.7:40000", "10.2.0.9:40000"), NAT_EIM), ["tcp://10.2.0.9:40000"],
     ["198.51.100.7:40000", "10.2.0.9:40000"]),
    # no offer (the relay withheld it): the signed endpoints, in order
    (None, ["tcp://10.2.0.9:4", "tcp://198.51.100.7:4"], ["10.2.0.9:4", "198.51.100.7:4"]),
    # loopback never; at most four
    (Offer(("127.0.0.1:1",), NAT_UNKNOWN), [f"tcp://198.51.100.{i}:4" for i in range(9)],
     [f"198.51.100.{i}:4" for i in range(4)]),
], ids=["same-lan", "other-home", "no-offer", "bounded"])
def test_candidates_best_first(offer: Offer | None, signed: list[str],
                               expect: list[str]) -> None:
    assert order_candidates(offer, signed, LAN) == expect


@pytest.mark.parametrize(("elapsed", "n", "deferred", "want"), [
    (0.0, 2, False, None),  # nothing before the initiator's delay
    (INITIATOR_DELAY, 2, False, 0),
    (INITIATOR_DELAY + TRY_SPAN, 2, False, 1),  # no handshake: the next candidate
    (INITIATOR_DELAY + 2 * TRY_SPAN, 2, False, 0),  # round after round
    (INITIATOR_DELAY, 2, True, None),  # the peer initiates to us: we wait...
    (RESPONDER_GRACE, 2, True, 0),  # ... then try too, between its first try and retry
    (RESPONDER_GRACE + TRY_SPAN, 3, True, 1),
    (100.0, 0, False, None),  # no candidate at all
], ids=["early", "first", "next", "wrap", "deferred-early", "deferred", "deferred-next",
        "none"])
def test_which_candidate_when(elapsed: float, n: int, deferred: bool, want: int | None) -> None:
    assert endpoint_choice(elapsed, n, deferred) == want
    assert INITIATOR_DELAY < RESPONDER_GRACE < 5.0  # the answering side tries before the
    # initiator's retry (WireGuard's REKEY_TIMEOUT) and well after its first try


def _o(nat: str, public: str = "198.51.100.1") -> Offer:
    return Offer((f"{public}:1",), nat)


@pytest.mark.parametrize(("offers", "bad"), [
    ({0: _o(NAT_EIM), 1: _o(NAT_EIM, "198.51.100.2"), 2: _o(NAT_OPEN, "198.51.100.3")}, []),
    ({0: _o(NAT_SYM), 1: _o(NAT_OPEN, "198.51.100.2")}, []),  # a public peer: it can
    ({0: _o(NAT_SYM), 1: _o(NAT_EIM, "198.51.100.2"), 2: _o(NAT_OPEN, "198.51.100.3")},
     [(0, 1, "symmetric NAT at party 0")]),
    ({0: _o(NAT_SYM), 1: _o(NAT_SYM, "198.51.100.2")},
     [(0, 1, "symmetric NAT at party 0 and party 1")]),
    ({0: _o(NAT_SYM), 1: _o(NAT_EIM)}, []),  # one public address: one home, the LAN
    ({0: _o(NAT_SYM), 1: _o(NAT_UNKNOWN, "198.51.100.2")}, []),  # unknown: not early
], ids=["eim-eim-open", "sym-open", "sym-eim", "sym-sym", "one-home", "unknown"])
def test_pairs_with_no_udp_path(offers: dict[int, Offer],
                                bad: list[tuple[int, int, str]]) -> None:
    assert no_udp_path(offers) == bad


@pytest.mark.parametrize(("mapped", "nat"), [
    ([("198.51.100.7", 4000), ("198.51.100.7", 4000)], NAT_EIM),
    ([("198.51.100.7", 4000), ("198.51.100.7", 51234)], NAT_SYM),
    ([("10.1.0.2", 4000), ("10.1.0.2", 4000)], NAT_OPEN),
    ([("198.51.100.7", 4000)], NAT_UNKNOWN),  # one server cannot tell the mapping kind
    ([], NAT_UNKNOWN),
], ids=["eim", "sym", "open", "one-answer", "none"])
def test_nat_kind_from_stun_answers(mapped: list[tuple[str, int]], nat: str) -> None:
    assert judge(mapped, 4000, ["10.1.0.2"]) == nat


# ---------------------------------------------------------------------- in the lab

_WHY = wg_available() or lab_available()
lab_only = [pytest.mark.netns, pytest.mark.slow,
            pytest.mark.skipif(_WHY is not None, reason=str(_WHY))]
RELAY_PORT = 8470

DRIVER = """
import json, sys
from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey
from didmesh.session.mesh.plan import MeshPlan
from didmesh.session.wireguard.run import run_over_wireguard
doc = json.load(sys.stdin)
plan = MeshPlan.from_launch_dict(doc["plan"])
me = IdentityKey.from_seed(bytes.fromhex(doc["identity_seed"]))
try:
    run_over_wireguard(plan, doc["program"], doc["args"], identity=me, timeout=10,
                       connect_timeout=30, handshake_timeout=25, receipt=False,
                       report=lambda m: print(m, file=sys.stderr, flush=True))
except DidmeshError as exc:
    print("didmesh: " + exc.message, file=sys.stderr)
    sys.exit(exc.exit_code)
"""


@contextlib.contextmanager
def _lab(topology: list[str], tmp: Path) -> Iterator[tuple[Lab, str]]:
    with Lab(topology) as lab:
        yield lab, lab.serve_relay(tmp / "relayhome", RELAY_PORT, env=ENV)


def _run(lab: Lab, nodes: list[str], url: str) -> tuple[list[tuple[int, str, str]], MeshPlan]:
    """Each party announces its LAN (or public) address on a session port, as ``accept``
    would without an observed candidate; the NAT mappings are learned at run time."""
    plans, ids = loopback_plans(len(nodes), relays=[url], endpoints=False,
                                session_id=os.urandom(8).hex())
    ports = random.SystemRandom().sample(range(20000, 60999), len(nodes))
    parties = tuple(dataclasses.replace(p, endpoints=(format_endpoint(
        lab.address(nodes[p.party_id]), ports[p.party_id]),)) for p in plans[0].parties)
    procs = []
    for i, node in enumerate(nodes):
        plan = dataclasses.replace(plans[i], parties=parties)
        doc = launch_document(plan, ids[i], str(EXAMPLE), ["--no-log"])
        proc = lab.spawn(node, sys.executable, "-c", DRIVER, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        feed(proc, json.dumps(doc).encode())
        procs.append(proc)
    return finish(procs, 150), dataclasses.replace(plans[0], parties=parties)


def _plain() -> str:
    return plain_mpyc(EXAMPLE, ["--no-log"], 3)[0]


def _nothing_left(lab: Lab, nodes: list[str], plan: MeshPlan) -> None:
    prefix = str(tunnel_addresses(plan.roster_hash, 0).ipv4).rsplit(".", 2)[0]
    for i, node in enumerate(nodes):
        name = run_interface(plan.session_id, i)
        assert name not in lab.run(node, "ip", "-o", "link", "show")
        assert prefix not in lab.run(node, "ip", "route", "show")
        assert not wireguard_go_pids(name)
        assert not (UAPI_DIR / f"{name}.sock").exists()
        assert not Path("/run/didmesh/wg", f"{name}.json").exists()


@lab_only[0]
@lab_only[1]
@lab_only[2]
def test_parties_behind_two_eim_nats_get_a_tunnel(tmp_path: Path) -> None:
    nodes = ["a", "b", "q"]
    with _lab(["relay@2", "eim:h1:a@2", "eim:h2:b@3", "public:q@2"], tmp_path) as (lab, url):
        res, plan = _run(lab, nodes, url)
        for code, _, err in res:
            assert code == 0, err[-3000:]
        assert [o for _, o, _ in res] == [_plain()] * 3
        # each NATed party reached the other at its home's public address (the signed
        # endpoint, its LAN address, is not reachable from the other home)
        assert f"party 1 at {lab.public_address('b')}:" in res[0][2], res[0][2]
        assert f"party 0 at {lab.public_address('a')}:" in res[1][2], res[1][2]
        assert "NAT eim" in res[0][2] and "NAT open" in res[2][2], res[2][2]
        _nothing_left(lab, nodes, plan)


@lab_only[0]
@lab_only[1]
@lab_only[2]
def test_a_symmetric_nat_pair_fails_early_and_named(tmp_path: Path) -> None:
    nodes = ["s", "e", "q"]
    with _lab(["relay@2", "sym:h1:s@2", "eim:h2:e@2", "public:q@2"], tmp_path) as (lab, url):
        res, plan = _run(lab, nodes, url)
        for code, out, err in res:  # every party: exit 2, before any interface existed
            assert code == 2, err[-3000:]
            assert "no UDP path can exist between party 0" in err and "<-> party 1" in err, err
            assert "(symmetric NAT at party 0)" in err and "--transport noise" in err, err
            assert "WireGuard interface" not in err and "sum" not in out, err
        _nothing_left(lab, nodes, plan)


async def test_offers_are_exchanged_over_a_real_relay_and_a_dead_relay_is_a_note() -> None:
    """Three parties exchange offers through a relay process (links ``wg-endpoints``);
    a second, unreachable relay in the session is only noted."""
    import asyncio

    from didmesh.session.wireguard.rendezvous import exchange
    from relay_helpers import spawn_relay

    relay = spawn_relay("memory", [])
    try:
        plans, ids = loopback_plans(3, relays=[relay.url], endpoints=False)
        offers = [Offer((f"198.51.100.{i}:5182{i}",), NAT_EIM) for i in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*(
            exchange(plans[i], ids[i], offers[i], timeout=15) for i in range(3))), 30)
        for i, (got, notes) in enumerate(results):
            assert notes == []
            assert got == {j: offers[j] for j in range(3) if j != i}
        dead = [dataclasses.replace(p, relays=("http://127.0.0.1:1",)) for p in plans[:2]]
        got, notes = await exchange(dead[0], ids[0], offers[0], timeout=5, peers=[1])
        assert got == {} and "no UDP endpoints from party 1" in notes[0], notes
    finally:
        assert relay.terminate() == 0


@lab_only[0]
@lab_only[1]
@lab_only[2]
def test_didmesh_run_between_two_eim_homes_prints_what_plain_mpyc_prints(tmp_path: Path
                                                                          ) -> None:
    """The CLI, as a user runs it: a session agreed with the lab relay in its roster,
    parties behind two different endpoint-independent NATs and one public host, each
    announcing (as the invitees do) its LAN or public address; ``didmesh run --transport
    wireguard`` in every node."""
    import asyncio
    import shutil

    from didmesh.identity.keystore import Keystore
    from didmesh.session.lab.topology import Topology
    from didmesh.session.testing import World

    tokens = ["relay@2", "eim:h1:a@2", "eim:h2:b@3", "public:q@2"]
    nodes = ["a", "b", "q"]
    topo = Topology.parse(tokens)
    url = f"http://{topo.public_address('relay')}:{RELAY_PORT}"
    program = tmp_path / "secure_sum.py"
    shutil.copy(EXAMPLE, program)

    async def agree() -> World:
        w = World(tmp_path / "w", 3, program=program, relays=[url])
        w.invite_all()
        await w.deliver_invites()
        for i, p in enumerate(w.parties[1:], 1):
            p.engine.accept(w.sid, endpoints=[format_endpoint(topo.address(nodes[i]),
                                                              51840 + i)])
        await w.settle()
        await w.close()
        return w

    world = asyncio.run(agree())
    for p in world.parties:
        Keystore(world.root / p.name).create(passphrase=None, key=p.key)
    with _lab(tokens, tmp_path) as (lab, _):
        procs = []
        for i, node in enumerate(nodes):
            env = {k: v for k, v in ENV.items() if not k.startswith("DIDMESH_")}
            env["DIDMESH_HOME"] = str(world.root / world.parties[i].name)
            procs.append(lab.spawn(
                node, sys.executable, "-m", "didmesh.session.cli.main", "run",
                world.sid[:8], "--transport", "wireguard", "--handshake-timeout", "25",
                "--connect-timeout", "30", "--timeout", "10", "--", str(program), "--no-log",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                text=True, env=env))
        res = finish(procs, 150)
        for code, _, err in res:
            assert code == 0, err[-3000:]
        assert [o for _, o, _ in res] == [_plain()] * 3
        assert f"party 1 at {lab.public_address('b')}:51841" in res[0][2], res[0][2]
        from didmesh.session.wireguard import load_plan

        _nothing_left(lab, nodes, load_plan(world.parties[0].engine.store, world.sid))


@lab_only[0]
@lab_only[1]
@lab_only[2]
def test_two_parties_of_one_home_use_their_lan(tmp_path: Path) -> None:
    """Parties a and b share a home (one NAT, no hairpinning): each other's LAN address
    is their best candidate; the public host reaches both through the NAT."""
    nodes = ["a", "b", "q"]
    with _lab(["relay@2", "eim:h1:a,b@2", "public:q@2"], tmp_path) as (lab, url):
        res, plan = _run(lab, nodes, url)
        for code, _, err in res:
            assert code == 0, err[-3000:]
        assert [o for _, o, _ in res] == [_plain()] * 3
        assert f"party 1 at {lab.address('b')}:" in res[0][2], res[0][2]
        assert f"party 0 at {lab.address('a')}:" in res[1][2], res[1][2]
        assert f"party 0 at {lab.public_address('a')}:" in res[2][2], res[2][2]
        _nothing_left(lab, nodes, plan)
