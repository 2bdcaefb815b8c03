"""Hole punching against hostile peers, without a lab (session/mesh/punch.py, puncher.py).

The punch messages travel inside the relayed pair's Noise channel, so the relay cannot
write them; these tests play the *peer* lying: addresses it never signed, SYNC floods,
an impostor listening at the address it offers. Dials are counted by replacing the
socket part (:func:`~didmesh.session.mesh.punch.dial_from`) with a recorder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from types import SimpleNamespace
from typing import Any

import pytest
from didmesh.session.mesh import punch
from didmesh.session.mesh import puncher as puncher_module
from didmesh.session.mesh.connect import ConnectOptions, MeshConnector
from didmesh.session.mesh.loopback import free_ports, loopback_plans
from didmesh.session.mesh.plan import MeshPlan
from didmesh.session.mesh.primitives import DH25519
from didmesh.session.mesh.punch import MAX_ATTEMPTS, NAT_EIM, Offer, SyncGate, encode_sync
from didmesh.session.mesh.puncher import Puncher
from didmesh.session.mesh.testing import channel_pair
from didmesh.session.mesh.transport import ByteLink, serve_tcp

PEER_SIGNED = "tcp://198.51.100.12:40000"
MY_SIGNED = "tcp://198.51.100.13:41000"


class MemLink(ByteLink):
    """One end of an in-memory byte pipe."""

    kind = "relay"

    def __init__(self) -> None:
        super().__init__("relay mem")
        self.other: MemLink | None = None
        self.aborted = False

    @classmethod
    def pair(cls) -> tuple[MemLink, MemLink]:
        a, b = cls(), cls()
        a.other, b.other = b, a
        return a, b

    def write(self, data: bytes | bytearray) -> None:
        assert self.other is not None
        if not self.aborted:
            self.other._deliver(bytes(data))

    def close(self) -> None:
        self.aborted = True

    def abort(self) -> None:
        self.aborted = True


def _plans() -> list[MeshPlan]:
    plans, _ = loopback_plans(2, endpoints=False, relays=["http://relay.invalid"])
    eps = [(PEER_SIGNED,), (MY_SIGNED,)]
    parties = tuple(dataclasses.replace(p, endpoints=eps[p.party_id]) for p in plans[0].parties)
    return [dataclasses.replace(p, parties=parties) for p in plans]


def _responder(plan: MeshPlan) -> Puncher:
    async def observe(url: str, port: int) -> tuple[str, int | None]:
        return "198.51.100.13", port

    return Puncher(SimpleNamespace(plan=plan), observe, list(plan.relays),
                   lambda: ["10.2.0.2"])


@pytest.mark.parametrize(("times", "admitted"), [
    ([0.0, 0.0, 0.0], [True, False, False]),  # a burst: one dial
    ([0.0, 0.1, 0.2, 0.3], [True, False, True, False]),  # 0.2 s apart at least
    ([0.0, 1.0, 2.0, 3.0, 4.0], [True, True, True, False, False]),  # three in all
    ([5.0, 5.19, 5.2], [True, False, True]),
], ids=["burst", "rate", "count", "edge"])
def test_sync_gate_bounds_dials_in_number_and_rate(times: list[float],
                                                   admitted: list[bool]) -> None:
    gate = SyncGate()
    assert [gate.admit(t) for t in times] == admitted


async def test_a_lying_flooding_peer_gets_few_dials_and_only_to_signed_addresses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dials: list[tuple[int, list[tuple[str, int]]]] = []

    async def record(port: int, dial: Any, span: float,
            predialed: Any = None) -> Any:
        dials.append((port, list(dial)))
        raise TimeoutError

    monkeypatch.setattr(puncher_module, "dial_from", record)
    peer_ch, my_ch = channel_pair(random.Random(5))
    peer_link, my_link = MemLink.pair()
    puncher = _responder(_plans()[1])
    lie = Offer((PEER_SIGNED, "tcp://192.0.2.99:22", "tcp://203.0.113.5:80"), NAT_EIM)
    deadline = time.monotonic() + 20
    task = asyncio.create_task(puncher.as_responder(0, my_link, my_ch, lie.encode(), deadline))
    for _ in range(5):  # bursts of SYNCs, faster than any honest initiator sends them
        for n in range(20):
            peer_link.write(peer_ch.send(encode_sync(n)))
        await asyncio.sleep(punch.MIN_SYNC_INTERVAL + 0.05)
    peer_link.write(peer_ch.send(punch.encode_done("relayed: gave up")))
    peer_link.write(peer_ch.send(bytes((7,))))  # SELECT on the relayed link
    link, ch = await asyncio.wait_for(task, 10)
    assert link is my_link and ch is my_ch
    assert "relayed: gave up" in link.description
    assert len(dials) == MAX_ATTEMPTS  # 100 SYNCs, at most MAX_ATTEMPTS dials
    # our session port, and only the one address the peer signed in its acceptance
    assert all(d == (41000, [("198.51.100.12", 40000)]) for d in dials)
    # the responder answered with its own (signed) observed address
    got = peer_ch.next_message()
    while got is None:
        peer_ch.receive_data(await peer_link.read_some(1.0))
        got = peer_ch.next_message()
    assert Offer.decode(got) == Offer((MY_SIGNED,), NAT_EIM)


async def test_an_unexpected_message_during_punching_is_refused() -> None:
    peer_ch, my_ch = channel_pair(random.Random(6))
    peer_link, my_link = MemLink.pair()
    puncher = _responder(_plans()[1])
    task = asyncio.create_task(puncher.as_responder(
        0, my_link, my_ch, Offer((PEER_SIGNED,), NAT_EIM).encode(), time.monotonic() + 10))
    peer_link.write(peer_ch.send(b"\x00data before SELECT"))
    with pytest.raises(punch.PunchError, match="unexpected message"):
        await asyncio.wait_for(task, 5)


async def test_a_punched_connection_to_an_impostor_fails_the_handshake() -> None:
    """The peer offers an address where someone else listens (with another key): the
    connection opens, the KK handshake bound to the roster fails, nothing is used."""
    plans, ids = loopback_plans(2, endpoints=False)
    impostor_key = DH25519().generate_keypair()
    parties = (plans[1].parties[0],
               dataclasses.replace(plans[1].parties[1], static_public=impostor_key.public))
    fake = dataclasses.replace(plans[1], parties=parties,
                               my_static_private=impostor_key.private)
    impostor = MeshConnector(fake, ids[1], ConnectOptions(handshake_timeout=3))
    impostor.pairs[0] = SimpleNamespace(peer_id=0)  # type: ignore[assignment]
    port = free_ports(1)[0]
    server = await serve_tcp("127.0.0.1", port, impostor.listener.on_connection)
    try:
        me = MeshConnector(plans[0], ids[0], ConnectOptions(handshake_timeout=3))
        puncher = Puncher(me.handshake, None, [], lambda: [])
        got = await puncher._attempt(1, free_ports(1)[0], [("127.0.0.1", port)], 2.0,
                                     time.monotonic() + 5, initiator=True)
        assert got is None
        assert impostor.inbound.failed == 1 and impostor.inbound.accepted == 0
    finally:
        server.close()


async def test_a_machine_that_hides_its_interfaces_or_relays_that_fail_offer_nothing() -> None:
    """Punching is an optimisation: when gathering what to offer fails, the party offers
    nothing (the pair stays relayed), it never fails the relayed path."""
    plan = _plans()[1]

    def broken() -> list[str]:
        raise OSError("no interfaces for you")

    async def down(url: str, port: int) -> tuple[str, int | None]:
        raise OSError("relay down")

    hidden = Puncher(SimpleNamespace(plan=plan), _responder(plan)._observe, ["http://r"],
                     broken)
    assert await hidden.offer() == Offer((MY_SIGNED,), NAT_EIM)  # the port from the roster
    nobody = Puncher(SimpleNamespace(plan=plan), down, ["http://r1", "http://r2"],
                     lambda: ["10.2.0.2"])
    assert await nobody.offer() == Offer((), punch.NAT_UNKNOWN)


@pytest.mark.parametrize(("mine", "theirs", "grace"), [
    (("tcp://10.1.0.2:4000", "tcp://198.51.100.12:4000"),
     ("tcp://10.2.0.2:5000", "tcp://198.51.100.13:5000"), punch.PUNCH_GRACE),  # two homes
    (("tcp://10.1.0.2:4000", "tcp://198.51.100.12:4000"),
     ("tcp://10.1.0.3:5000", "tcp://198.51.100.12:5000"), 3.0),  # one home, one NAT
    (("tcp://127.0.0.1:4000",), ("tcp://127.0.0.1:5000",), 3.0),  # one machine
    (("tcp://198.51.100.11:4000",), ("tcp://10.2.0.2:5000", "tcp://198.51.100.13:5000"),
     punch.PUNCH_GRACE),  # a public party and a NATed one
    ((), ("tcp://198.51.100.13:5000",), 3.0),  # nothing announced: no punch to hurry
], ids=["two-homes", "one-home", "one-machine", "public-and-nated", "no-address"])
def test_relay_starts_sooner_only_for_parties_in_different_homes(
        mine: tuple[str, ...], theirs: tuple[str, ...], grace: float) -> None:
    plans = _plans()
    eps = [mine, theirs]
    parties = tuple(dataclasses.replace(p, endpoints=eps[p.party_id])
                    for p in plans[0].parties)
    for me in (0, 1):  # both parties of the pair compute the same
        plan = dataclasses.replace(plans[me], parties=parties)
        puncher = Puncher(SimpleNamespace(plan=plan), None, [], lambda: [])
        assert puncher.relay_grace(1 - me, 3.0) == grace


async def test_the_relayed_link_closing_before_select_on_the_punched_one_is_not_a_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The initiator drops the relayed link as soon as its punched handshake is done; the
    close may overtake its SELECT on the punched connection: the responder waits for it."""
    peer_ch, my_ch = channel_pair(random.Random(7))
    peer_link, my_link = MemLink.pair()
    puncher = _responder(_plans()[1])
    punched = (MemLink(), my_ch)

    async def slow_attempt(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)  # the handshake and SELECT on the punched link
        return punched

    monkeypatch.setattr(puncher, "_attempt", slow_attempt)
    task = asyncio.create_task(puncher.as_responder(
        0, my_link, my_ch, Offer((PEER_SIGNED,), NAT_EIM).encode(), time.monotonic() + 10))
    peer_link.write(peer_ch.send(encode_sync(1)))
    await asyncio.sleep(0.05)
    my_link._deliver_eof(None)  # the relay passes on the initiator's close
    assert await asyncio.wait_for(task, 5) is punched
    assert my_link.aborted


async def _next(ch: Any, link: MemLink) -> bytes:
    got = ch.next_message()
    while got is None:
        ch.receive_data(await link.read_some(2.0))
        got = ch.next_message()
    return bytes(got)


async def test_the_responder_dials_when_connect_arrives_and_retries_only_on_sync(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempt 1 needs no SYNC: the responder dials as soon as it has answered CONNECT
    (half a relay round trip before the initiator dials); later attempts wait for SYNC."""
    dials: list[float] = []

    async def record(port: int, dial: Any, span: float,
            predialed: Any = None) -> Any:
        dials.append(time.monotonic())
        raise TimeoutError

    monkeypatch.setattr(puncher_module, "dial_from", record)
    peer_ch, my_ch = channel_pair(random.Random(8))
    peer_link, my_link = MemLink.pair()
    puncher = _responder(_plans()[1])
    task = asyncio.create_task(puncher.as_responder(
        0, my_link, my_ch, Offer((PEER_SIGNED,), NAT_EIM).encode(), time.monotonic() + 10))
    assert Offer.decode(await _next(peer_ch, peer_link)) == Offer((MY_SIGNED,), NAT_EIM)
    await asyncio.sleep(0.05)
    assert len(dials) == 1  # no SYNC was sent
    await asyncio.sleep(punch.MIN_SYNC_INTERVAL)
    peer_link.write(peer_ch.send(encode_sync(2)))
    await asyncio.sleep(0.05)
    assert len(dials) == 2
    peer_link.write(peer_ch.send(bytes((7,))))  # SELECT on the relayed link
    link, _ = await asyncio.wait_for(task, 5)
    assert link is my_link


async def test_the_initiator_dials_when_the_answer_arrives_and_syncs_only_retries(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dials: list[tuple[int, list[tuple[str, int]]]] = []

    async def record(port: int, dial: Any, span: float,
            predialed: Any = None) -> Any:
        dials.append((port, list(dial)))
        raise TimeoutError

    monkeypatch.setattr(puncher_module, "dial_from", record)
    monkeypatch.setattr(puncher_module, "window", lambda rtt: 0.05)
    peer_ch, my_ch = channel_pair(random.Random(9))
    my_link, peer_link = MemLink.pair()

    async def observe(url: str, port: int) -> tuple[str, int | None]:
        return "198.51.100.12", port

    puncher = Puncher(SimpleNamespace(plan=_plans()[0]), observe, ["http://relay.invalid"],
                      lambda: ["10.1.0.2"])
    task = asyncio.create_task(puncher.as_initiator(1, my_link, peer_ch,
                                                    time.monotonic() + 10))
    assert Offer.decode(await _next(my_ch, peer_link)) == Offer((PEER_SIGNED,), NAT_EIM)
    assert set(puncher._claims) == {("198.51.100.13", 41000)}  # expected from CONNECT on
    peer_link.write(my_ch.send(Offer((MY_SIGNED,), NAT_EIM).encode()))
    seen = [await _next(my_ch, peer_link) for _ in range(MAX_ATTEMPTS)]
    assert seen[:-1] == [encode_sync(n) for n in range(2, MAX_ATTEMPTS + 1)]
    assert seen[-1] == punch.encode_done(f"relayed: hole punching failed {MAX_ATTEMPTS} times")
    link, _ = await asyncio.wait_for(task, 5)
    assert link is my_link and len(dials) == MAX_ATTEMPTS
    assert all(d == (40000, [("198.51.100.13", 41000)]) for d in dials)
    assert puncher._claims == {}


async def test_the_responders_early_syn_at_an_open_initiators_listener_is_handed_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With no NAT in front of the initiator, the responder's SYN (sent when CONNECT
    arrived) may reach the initiator's listener before the answer does: the listener
    hands that connection to the punch, which runs its handshake on it."""
    async def never(port: int, dial: Any, span: float,
            predialed: Any = None) -> Any:
        await asyncio.sleep(30)

    monkeypatch.setattr(puncher_module, "dial_from", never)
    peer_ch, my_ch = channel_pair(random.Random(10))
    my_link, peer_link = MemLink.pair()

    async def observe(url: str, port: int) -> tuple[str, int | None]:
        return "198.51.100.12", port

    early = puncher_module.PunchedLink("tcp 198.51.100.13:41000")
    early.transport = SimpleNamespace(  # type: ignore[assignment]
        get_extra_info=lambda name: ("198.51.100.13", 41000), is_closing=lambda: False)
    secured = object()

    async def initiate(link: Any, peer: int, deadline: float) -> Any:
        assert link is early and peer == 1
        return secured

    puncher = Puncher(SimpleNamespace(plan=_plans()[0], initiate=initiate), observe,
                      ["http://relay.invalid"], lambda: ["198.51.100.12"])
    task = asyncio.create_task(puncher.as_initiator(1, my_link, peer_ch,
                                                    time.monotonic() + 10))
    await _next(my_ch, peer_link)  # our CONNECT left
    assert puncher.claim(early)  # the responder's SYN, before its CONNECT
    peer_link.write(my_ch.send(Offer((MY_SIGNED,), NAT_EIM).encode()))
    link, ch = await asyncio.wait_for(task, 5)
    assert link is early and ch is secured and my_link.aborted
    assert puncher.stats.punched == 1 and puncher._claims == {}


async def test_with_the_responders_early_connect_the_initiator_dials_half_a_rtt_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The responder's CONNECT came with handshake message 2 (already in the channel): the
    initiator answers and, with no SYNC, dials half the handshake's round trip later, as
    its CONNECT reaches the responder (which dials then)."""
    dials: list[float] = []

    async def record(port: int, dial: Any, span: float,
            predialed: Any = None) -> Any:
        dials.append(time.monotonic())
        raise TimeoutError

    monkeypatch.setattr(puncher_module, "dial_from", record)
    monkeypatch.setattr(puncher_module, "MAX_ATTEMPTS", 1)
    peer_ch, my_ch = channel_pair(random.Random(11))
    my_link, peer_link = MemLink.pair()
    my_link.handshake_rtt = 0.3
    peer_link.write(my_ch.send(Offer((MY_SIGNED,), NAT_EIM).encode()))  # with message 2

    async def observe(url: str, port: int) -> tuple[str, int | None]:
        return "198.51.100.12", port

    puncher = Puncher(SimpleNamespace(plan=_plans()[0]), observe, ["http://relay.invalid"],
                      lambda: ["10.1.0.2"])
    await puncher.offer()
    start = time.monotonic()
    task = asyncio.create_task(puncher.as_initiator(1, my_link, peer_ch, start + 10))
    assert Offer.decode(await _next(my_ch, peer_link)) == Offer((PEER_SIGNED,), NAT_EIM)
    link, _ = await asyncio.wait_for(task, 5)
    assert link is my_link and len(dials) == 1
    assert 0.12 <= dials[0] - start <= 0.3  # RTT/2 after our CONNECT, not a round trip


async def test_an_early_connect_opens_claims_that_the_responder_then_punches_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The responder sends its CONNECT with message 2 (once its offer is ready, for a pair
    that may punch) and from then on its listener hands over a connection from the
    initiator's signed endpoint (the initiator's SYN may come first); on the initiator's
    CONNECT it answers nothing more and runs its handshake on that connection."""
    async def never(port: int, dial: Any, span: float,
            predialed: Any = None) -> Any:
        await asyncio.sleep(30)

    monkeypatch.setattr(puncher_module, "dial_from", never)
    plan = _plans()[1]
    secured = object()
    early_link = puncher_module.PunchedLink("tcp 198.51.100.12:40000")
    early_link.transport = SimpleNamespace(  # type: ignore[assignment]
        get_extra_info=lambda name: ("198.51.100.12", 40000), is_closing=lambda: False)

    async def respond(link: Any, deadline: float, expect: Any) -> Any:
        assert link is early_link and expect == 0
        return 0, secured

    async def observe(url: str, port: int) -> tuple[str, int | None]:
        return "198.51.100.13", port

    puncher = Puncher(SimpleNamespace(plan=plan, respond=respond), observe,
                      list(plan.relays), lambda: ["10.2.0.2"])
    assert puncher.early_offer(0) is None  # the offer is not ready yet: nothing early
    await puncher.offer()
    msg = puncher.early_offer(0)
    assert msg is not None and Offer.decode(msg) == Offer((MY_SIGNED,), NAT_EIM)
    assert set(puncher._claims) == {("198.51.100.12", 40000)}
    assert puncher.claim(early_link)  # the initiator's SYN reached our listener
    peer_ch, my_ch = channel_pair(random.Random(12))
    peer_link, my_link = MemLink.pair()
    link, ch = await asyncio.wait_for(puncher.as_responder(
        0, my_link, my_ch, Offer((PEER_SIGNED,), NAT_EIM).encode(), time.monotonic() + 10), 5)
    assert link is early_link and ch is secured and my_link.aborted
    assert not peer_link._pending  # no second CONNECT
    assert puncher._claims == {} and puncher._early == {}


async def test_an_early_connect_whose_pair_ends_otherwise_releases_its_claims() -> None:
    plan = _plans()[1]
    puncher = _responder(plan)
    await puncher.offer()
    assert puncher.early_offer(0) is not None and puncher._claims
    puncher.drop_early(0)
    assert puncher._claims == {} and puncher._early == {}
    assert puncher.early_offer(0) is not None
    puncher.close()
    assert puncher._claims == {} and puncher._early == {}


PEER_LAN = "tcp://10.1.0.2:40000"
MY_LAN = "tcp://10.2.0.2:41000"


@pytest.mark.parametrize(("mine", "theirs", "me", "ok"), [
    ((MY_LAN, MY_SIGNED), (PEER_LAN, PEER_SIGNED), 0, True),  # two homes behind NATs
    ((MY_LAN, MY_SIGNED), (PEER_LAN, PEER_SIGNED), 1, True),  # both sides decide alike
    ((MY_LAN, MY_SIGNED), (PEER_SIGNED,), 1, True),  # a public initiator, a NATed responder
    ((MY_LAN, MY_SIGNED), (PEER_SIGNED,), 0, False),  # a public responder: dialed directly
    ((MY_SIGNED,), (PEER_SIGNED,), 0, False),  # two public parties
    ((MY_LAN, MY_SIGNED), (MY_LAN.replace("41000", "40000"),), 0, False),  # one home
    ((), (PEER_LAN, PEER_SIGNED), 1, False),  # we announce nothing: no session port
    ((MY_LAN, MY_SIGNED), ("tcp://127.0.0.1:4000", "tcp://127.0.0.2:4000"), 1, False),
], ids=["nated-0", "nated-1", "public-initiator", "public-responder", "both-public",
        "one-home", "no-port", "loopback-only"])
def test_which_pairs_punch_early(mine: tuple[str, ...], theirs: tuple[str, ...], me: int,
                                 ok: bool) -> None:
    plans, _ = loopback_plans(2, endpoints=False, relays=["http://relay.invalid"])
    eps = {me: mine, 1 - me: theirs}
    parties = tuple(dataclasses.replace(p, endpoints=eps[p.party_id])
                    for p in plans[0].parties)
    plan = dataclasses.replace(plans[me], parties=parties)
    puncher = Puncher(SimpleNamespace(plan=plan), None, [], lambda: [])
    assert puncher.early_punch_ok(1 - me) is ok


def _pair(plan: MeshPlan, peer: int) -> Any:
    from didmesh.session.mesh.paths import Pair
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    return Pair(plan, peer, fut, {"relay"})


@pytest.mark.parametrize("me", [0, 1], ids=["initiator", "responder"])
async def test_an_early_punch_dials_only_signed_endpoints_and_wins_the_pair(
        me: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no message exchanged, each side dials the peer's signed (non-loopback)
    endpoints from its session port and runs its handshake role on the connection; the
    pair's path is then `punched`. The lower id sends SELECT on it."""
    dials: list[tuple[int, list[tuple[str, int]]]] = []
    opened = puncher_module.PunchedLink("tcp 198.51.100.12:40000 (punched)")
    sent: list[bytes] = []
    opened.write = sent.append  # type: ignore[method-assign]

    async def dial(port: int, targets: Any, span: float,
            predialed: Any = None) -> Any:
        dials.append((port, list(targets)))
        assert span <= punch.EARLY_WINDOW
        return opened

    monkeypatch.setattr(puncher_module, "dial_from", dial)
    peer_ch, my_ch = channel_pair(random.Random(13))

    async def initiate(link: Any, peer: int, deadline: float) -> Any:
        assert link is opened and peer == 1
        return my_ch

    async def respond(link: Any, deadline: float, expect: Any) -> Any:
        assert link is opened and expect == 0
        return 0, my_ch

    plans, _ = loopback_plans(2, endpoints=False, relays=["http://relay.invalid"])
    eps = {0: (PEER_LAN, "tcp://127.0.0.1:40000", PEER_SIGNED),
           1: (MY_LAN, MY_SIGNED)}
    parties = tuple(dataclasses.replace(p, endpoints=eps[p.party_id])
                    for p in plans[0].parties)
    plan = dataclasses.replace(plans[me], parties=parties)
    puncher = Puncher(SimpleNamespace(plan=plan, initiate=initiate, respond=respond), None,
                      [], lambda: ["10.1.0.2" if me == 0 else "10.2.0.2"])
    pair = _pair(plan, 1 - me)
    await asyncio.wait_for(puncher.early_punch(pair, time.monotonic() + 10), 5)
    link, ch = pair.future.result()
    assert link is opened and ch is my_ch and "punched in" in link.description
    signed = {0: [("10.1.0.2", 40000), ("198.51.100.12", 40000)],
              1: [("10.2.0.2", 41000), ("198.51.100.13", 41000)]}
    assert dials == [(40000 if me == 0 else 41000, signed[1 - me])]
    assert puncher.stats.early == puncher.stats.punched == 1 and puncher._claims == {}
    assert bool(sent) is (me == 0)  # SELECT from the initiator only


async def test_a_failed_early_punch_leaves_the_pair_to_its_other_paths(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def nothing(port: int, targets: Any, span: float,
            predialed: Any = None) -> Any:
        raise TimeoutError

    monkeypatch.setattr(puncher_module, "dial_from", nothing)
    monkeypatch.setattr(puncher_module, "EARLY_WINDOW", 0.05)
    plans, _ = loopback_plans(2, endpoints=False, relays=["http://relay.invalid"])
    eps = {0: (PEER_LAN, PEER_SIGNED), 1: (MY_LAN, MY_SIGNED)}
    parties = tuple(dataclasses.replace(p, endpoints=eps[p.party_id])
                    for p in plans[0].parties)
    plan = dataclasses.replace(plans[1], parties=parties)
    puncher = Puncher(SimpleNamespace(plan=plan), None, [], lambda: ["10.2.0.2"])
    pair = _pair(plan, 0)
    await asyncio.wait_for(puncher.early_punch(pair, time.monotonic() + 10), 5)
    assert not pair.done and pair.kinds_left == {"relay"} and pair.errors == []
    assert puncher.stats.early == 0 and puncher._claims == {}


async def test_the_peers_syn_before_our_early_punch_runs_is_handed_to_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The early punch's claims are registered before the listener opens: a connection
    from the peer's signed endpoint arriving first (a public initiator, its peer's SYN
    before its own dial) goes to the early punch, which runs its handshake role on it,
    never to the listener (where both ends would wait for a hello)."""
    async def never(port: int, targets: Any, span: float,
            predialed: Any = None) -> Any:
        await asyncio.sleep(30)

    monkeypatch.setattr(puncher_module, "dial_from", never)
    secured, _ = channel_pair(random.Random(14))
    early_link = puncher_module.PunchedLink("tcp 198.51.100.13:41000")
    early_link.transport = SimpleNamespace(  # type: ignore[assignment]
        get_extra_info=lambda name: ("198.51.100.13", 41000), is_closing=lambda: False)
    early_link.write = lambda data: None  # type: ignore[method-assign]

    async def initiate(link: Any, peer: int, deadline: float) -> Any:
        assert link is early_link and peer == 1
        return secured

    plans, _ = loopback_plans(2, endpoints=False, relays=["http://relay.invalid"])
    eps = {0: (PEER_SIGNED,), 1: (MY_LAN, MY_SIGNED)}  # a public initiator
    parties = tuple(dataclasses.replace(p, endpoints=eps[p.party_id])
                    for p in plans[0].parties)
    plan = dataclasses.replace(plans[0], parties=parties)
    puncher = Puncher(SimpleNamespace(plan=plan, initiate=initiate), None, [],
                      lambda: ["198.51.100.12"])
    assert puncher.early_punch_ok(1)
    puncher.expect_early(1)
    assert puncher.claim(early_link)  # before the early punch runs
    pair = _pair(plan, 1)
    await asyncio.wait_for(puncher.early_punch(pair, time.monotonic() + 10), 5)
    assert pair.future.result() == (early_link, secured)
    assert puncher.stats.early == 1 and puncher._claims == {}
    puncher.expect_early(1)
    puncher.close()  # claims of an early punch that never ran are released
    assert puncher._claims == {}
