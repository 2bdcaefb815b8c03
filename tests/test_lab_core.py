"""The Internet lab's parts that need no namespaces: the delay line (sans-IO timing core),
the topology as data, and the NAT rulesets. The lab itself: tests/test_lab_netns.py."""

from __future__ import annotations

import random

import pytest
from didmesh.session.lab import LabError, Topology
from didmesh.session.lab.delay import DelayLine, LinkShape, ReleaseCost
from didmesh.session.lab.nat import ruleset

# ---------------------------------------------------------------------- sans-IO timing core


def test_delay_line_releases_each_packet_at_its_due_time_in_order() -> None:
    line = DelayLine(LinkShape(delay_ms=10))
    line.push(0.000, b"a")
    line.push(0.001, b"b")
    line.push(0.004, b"c")
    assert line.next_due() == pytest.approx(0.010)
    assert line.pop_due(0.0099) == []
    assert line.pop_due(0.0105) == [b"a"]
    assert line.pop_due(0.0139) == [b"b"]
    assert line.pop_due(1.0) == [b"c"]
    assert line.next_due() is None and len(line) == 0 and line.passed == 3


def test_zero_delay_releases_at_once() -> None:
    line = DelayLine(LinkShape())
    line.push(5.0, b"x")
    assert line.pop_due(5.0) == [b"x"]


def test_the_forwarders_release_cost_is_credited_but_never_before_arrival() -> None:
    """A packet is due at arrival + delay - credit (the forwarder's measured release cost),
    so it *leaves* after the configured delay; the credit never exceeds the delay."""
    line = DelayLine(LinkShape(delay_ms=1))
    line.push(0.0, b"a", credit=0.0001)
    line.push(0.0015, b"b", credit=0.5)  # an absurd credit: still not due before arrival
    assert line.next_due() == pytest.approx(0.0009)
    assert line.pop_due(0.00089) == [] and line.pop_due(0.0009) == [b"a"]
    assert line.last_popped == pytest.approx(0.0009)
    assert line.pop_due(0.00149) == [] and line.pop_due(0.0015) == [b"b"]
    assert line.last_popped == 0.0015  # released at its arrival at the earliest
    zero = DelayLine(LinkShape())
    zero.push(2.0, b"z", credit=0.0002)
    assert zero.next_due() == 2.0  # no delay, nothing to credit


def test_release_cost_is_a_bounded_moving_average_of_lateness() -> None:
    cost = ReleaseCost(limit=0.0002, weight=0.5)
    cost.observe(due=1.0, left=1.0001)
    assert cost.value == pytest.approx(0.00005)
    for _ in range(40):
        cost.observe(due=1.0, left=1.0001)
    assert cost.value == pytest.approx(0.0001)
    for _ in range(40):  # a preempted write (10 ms late) counts as the limit at most
        cost.observe(due=1.0, left=1.01)
    assert cost.value == pytest.approx(0.0002)
    for _ in range(40):  # early (clock granularity) counts as zero, never negative
        cost.observe(due=1.0, left=0.999)
    assert 0 <= cost.value < 1e-9


def test_jitter_spreads_due_times_but_never_reorders() -> None:
    line = DelayLine(LinkShape(delay_ms=20, jitter_ms=15), random.Random(7))
    for i in range(2000):
        line.push(i * 0.0001, i.to_bytes(2, "big"))
    dues = [due for due, _ in line._queue]
    assert dues == sorted(dues)
    gaps = [due - i * 0.0001 for i, due in enumerate(dues)]
    assert min(gaps) >= 0.005 and max(gaps) <= 0.035 + 0.2  # in order may push later
    assert max(gaps) - min(gaps) > 0.01  # jitter did spread them
    out = line.pop_due(100.0)
    assert [int.from_bytes(p, "big") for p in out] == list(range(2000))


def test_loss_drops_about_the_configured_fraction() -> None:
    line = DelayLine(LinkShape(delay_ms=1, loss=0.2), random.Random(11))
    kept = sum(line.push(0.0, b"p") for _ in range(20000))
    assert 0.18 < line.lost / 20000 < 0.22 and kept + line.lost == 20000


def test_a_full_queue_drops_at_the_tail() -> None:
    line = DelayLine(LinkShape(delay_ms=100, limit=3))
    assert [line.push(0.0, bytes([i])) for i in range(5)] == [True, True, True, False, False]
    assert line.overflowed == 2 and line.pop_due(1.0) == [b"\0", b"\1", b"\2"]


@pytest.mark.parametrize("shape", [
    {"delay_ms": -1}, {"delay_ms": 20_000}, {"delay_ms": 5, "jitter_ms": 6},
    {"loss": 1.0}, {"loss": -0.1}, {"limit": 0},
])
def test_impossible_link_shapes_are_refused(shape: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LinkShape(**shape)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- topology as data


@pytest.mark.parametrize("tokens", [
    ["relay"],
    ["public:relay@20", "public:p0@5/1", "eim:h1:p1,p2@10/2/1.5", "sym:h2:p3@0/0/0/50"],
])
def test_topology_text_round_trips(tokens: list[str]) -> None:
    top = Topology.parse(tokens)
    assert Topology.parse(top.render()) == top


def test_addresses_are_test_ranges_and_homes_share_one_public_address() -> None:
    top = Topology.parse(["relay", "eim:h1:p1,p2", "sym:h2:p3"])
    assert top.address("relay") == top.public_address("relay") == "198.51.100.10"
    assert top.address("p1") == "10.1.0.2" and top.address("p2") == "10.1.0.3"
    assert top.public_address("p1") == top.public_address("p2") == top.address("h1")
    assert top.address("p3") == "10.2.0.2" and top.public_address("p3") == "198.51.100.12"
    assert top.nodes() == ["inet", "relay", "h1", "p1", "p2", "h2", "p3"]


@pytest.mark.parametrize(("tokens", "says"), [
    ([], "at least one site"),
    (["nat:h1:p1"], "write public:NAME"),
    (["eim:h1"], "write public:NAME"),
    (["eim:h1:"], "1 to 50 parties"),
    (["relay", "public:relay"], "used twice"),
    (["public:inet"], "used twice"),
    (["public:P0"], "lowercase"),
    (["public:averyverylongname"], "lowercase"),
    (["public:p0@x"], "numbers only"),
    (["public:p0@1/2/3/4/5"], "numbers only"),
    (["public:p0@5/6"], "jitter"),
    (["public:p0@5/0/100"], "below 100"),
    (["public:p0@5/0/0/0"], "rate"),
])
def test_bad_topologies_say_what_is_wrong(tokens: list[str], says: str) -> None:
    with pytest.raises(LabError, match=says):
        Topology.parse(tokens)


def test_nat_rulesets() -> None:
    eim, sym = ruleset("eim", "10.1.0.0/24"), ruleset("sym", "10.2.0.0/24")
    assert 'oifname "wan" masquerade\n' in eim and "fully-random" not in eim
    assert 'oifname "wan" masquerade fully-random' in sym
    assert 'iifname "wan" drop' in eim and "policy drop" in eim
    with pytest.raises(LabError):
        ruleset("public", "10.1.0.0/24")
