"""The inbound MPyC connection check over the tunnel (session/wireguard/guard.py), sans-IO
and through its asyncio adapter: a party id is admitted only from its own tunnel address,
only by a higher party, and only once; every refusal names who claimed what."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from didmesh.session.mesh.plan import MeshPlan, PlanParty
from didmesh.session.wireguard import tunnel_addresses
from didmesh.session.wireguard.guard import GuardProtocol, InboundGuard, InboundRefused

ROSTER = bytes(range(32))


def plan(me: int, m: int = 4) -> MeshPlan:
    keys = [X25519PrivateKey.generate() for _ in range(m)]
    return MeshPlan(
        session_id="ab" * 16, roster_hash=ROSTER, my_party_id=me,
        my_static_private=keys[me].private_bytes_raw(),
        parties=tuple(PlanParty(i, f"did:key:z6Mkparty{i}", k.public_key().public_bytes_raw())
                      for i, k in enumerate(keys)),
    )


def addr(i: int) -> str:
    return str(tunnel_addresses(ROSTER, i).ipv4)


def hello(pid: int) -> bytes:
    return pid.to_bytes(2, "little")


# (me, source party or address, claimed id) -> admitted id or a phrase of the refusal
CASES: list[tuple[str, int, str, int, Any]] = [
    ("own address, lower id", 3, addr(1), 1, 1),
    ("own address, id 0", 2, addr(0), 0, 0),
    ("another party's id", 3, addr(0), 1, f"from {addr(0)} (party 0"),
    ("an id of no party", 3, addr(1), 77, "not in the roster"),
    ("an address of no party", 3, "100.64.0.250", 1, "an address of no party"),
    ("a higher id connects to a lower", 1, addr(2), 2, "the lower id connects"),
    ("its own id to itself", 2, addr(2), 2, "the lower id connects"),
    ("IPv4-mapped IPv6 source", 3, "::ffff:" + addr(2), 2, 2),
    ("garbage source", 3, "not-an-ip", 1, "an address of no party"),
]


@pytest.mark.parametrize(("me", "source", "claimed", "want"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_inbound(me: int, source: str, claimed: int, want: Any) -> None:
    guard = InboundGuard(plan(me))
    if isinstance(want, int):
        assert guard.check_inbound(source, hello(claimed)) == want
    else:
        with pytest.raises(InboundRefused) as info:
            guard.check_inbound(source, hello(claimed))
        assert want in info.value.message
        assert info.value.party == guard.party_at(source)


def test_a_second_connection_of_one_party_is_refused() -> None:
    guard = InboundGuard(plan(3))
    assert guard.check_inbound(addr(1), hello(1)) == 1
    with pytest.raises(InboundRefused, match="second MPyC connection from party 1"):
        guard.check_inbound(addr(1), hello(1))


class FakeTransport(asyncio.Transport):
    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source
        self.aborted = False
        self.protocol: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.source, 40000) if name == "peername" else default

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def abort(self) -> None:
        self.aborted = True


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.made: Any = None
        self.data = b""

    def connection_made(self, transport: Any) -> None:
        self.made = transport

    def data_received(self, data: bytes) -> None:
        self.data += data


@pytest.mark.parametrize("pieces", [[b"\x01", b"\x00rest"], [b"\x01\x00", b"rest"],
                                    [b"\x01\x00rest"]], ids=["1+5", "2+4", "6"])
def test_the_adapter_hands_over_an_admitted_connection_with_all_bytes(
        pieces: list[bytes]) -> None:
    made: list[Recorder] = []
    refused: list[InboundRefused] = []

    def make(pid: int) -> Recorder:
        assert pid == 1
        made.append(Recorder())
        return made[-1]

    proto = GuardProtocol(InboundGuard(plan(2)), make, refused.append)
    tr = FakeTransport(addr(1))
    proto.connection_made(tr)
    for p in pieces:
        (made[0] if made else proto).data_received(p)
    assert not refused and not tr.aborted
    assert tr.protocol is made[0] and made[0].made is tr
    assert made[0].data == b"\x01\x00rest"


def test_the_adapter_aborts_and_reports_an_impostor() -> None:
    refused: list[InboundRefused] = []
    proto = GuardProtocol(InboundGuard(plan(2)), lambda pid: Recorder(), refused.append)
    tr = FakeTransport(addr(0))
    proto.connection_made(tr)
    proto.data_received(hello(1) + os.urandom(8))
    assert tr.aborted and tr.protocol is None
    assert len(refused) == 1 and refused[0].party == 0
    assert "announced party id 1" in refused[0].message
