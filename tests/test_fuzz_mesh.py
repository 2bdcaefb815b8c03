"""Fuzzing the mesh's parsers of untrusted input (issue 6, "Fuzzing").

Record framing (FrameDecoder via SecureChannel), the Noise KK handshake messages,
authenticated channel messages of any kind (PeerChannel), signed abort notices, mesh plans
handed to child processes, and endpoints. Property: any input -> a result or a DidmeshError;
never another exception or a hang; random bytes never complete a handshake or yield a
message.
"""

from __future__ import annotations

import json
import random
from typing import Any

from adversary.fuzz import (
    byte_mutations,
    dumps,
    fuzz_settings,
    mutate,
    nested,
    only_tree_errors,
    tree_errors_or_known,
)
from didmesh.identity.errors import DidmeshError
from didmesh.session.mesh.abort import decode_abort, encode_abort, make_abort
from didmesh.session.mesh.channel import MeshHandshake
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.peer import PeerChannel
from didmesh.session.mesh.plan import MeshPlan, parse_endpoint
from didmesh.session.mesh.testing import PartyKeys, channel_pair
from hypothesis import given
from hypothesis import strategies as st

PLANS, IDS = loopback_plans(3, endpoints=False, session_id="fuzz-session")
NOTICE = encode_abort(
    make_abort(PLANS[1], IDS[1], culprit=2, code="peer_lost", reason="gone", now=1.0), IDS[1]
)


# --------------------------------------------------------------------------- framing


@fuzz_settings(200)
@given(seed=st.integers(0, 2**32 - 1), junk=st.binary(max_size=2000), eof=st.booleans())
def test_fuzz_records_random_bytes(seed: int, junk: bytes, eof: bool) -> None:
    _a, b = channel_pair(random.Random(seed))

    def feed() -> list[bytes]:
        b.receive_data(junk)
        out = list(b)
        if eof:
            b.receive_eof()
            out += list(b)
        return out

    got = only_tree_errors("SecureChannel.receive_data", feed)
    assert not got  # nothing forged decrypts (a 16-byte tag in the way)


@fuzz_settings(150)
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_fuzz_records_mutated_stream(seed: int, data: st.DataObject) -> None:
    rng = random.Random(seed)
    a, b = channel_pair(rng)
    msgs = [rng.randbytes(rng.choice([0, 3, 300, 70_000])) for _ in range(3)]
    wire = bytes(a.send_many(msgs) + a.close())
    bad = byte_mutations(wire, data)

    def feed() -> list[bytes]:
        b.receive_data(bad)
        out = list(b)
        b.receive_eof()
        return out + list(b)

    got = only_tree_errors("SecureChannel(mutated)", feed)
    if got is not None:  # accepted iff nothing was changed
        assert got == msgs and bad == wire
    elif bad != wire and got is None:
        assert b.state in ("aborted", "closed")


# --------------------------------------------------------------------------- handshake


def _handshakes(seed: int) -> tuple[MeshHandshake, MeshHandshake]:
    rng = random.Random(seed)
    ka, kb = PartyKeys.from_rng(rng), PartyKeys.from_rng(rng)
    kw: dict[str, Any] = {"roster_hash": b"\x01" * 32}
    a = MeshHandshake.for_parties(
        local_id=0, remote_id=1, local_static_private=ka.private,
        remote_static_public=kb.public, **kw,
    )  # fmt: skip
    b = MeshHandshake.for_parties(
        local_id=1, remote_id=0, local_static_private=kb.private,
        remote_static_public=ka.public, **kw,
    )  # fmt: skip
    return a, b


@fuzz_settings(200)
@given(seed=st.integers(0, 2**32 - 1), data=st.data(), side=st.sampled_from(["init", "resp"]))
def test_fuzz_handshake_messages(seed: int, data: st.DataObject, side: str) -> None:
    a, b = _handshakes(seed)
    first = a.step()
    if side == "resp":  # the responder gets a random or altered message 1
        msg = data.draw(st.one_of(st.binary(max_size=120), st.just(first).map(
            lambda m: byte_mutations(m, data))))  # fmt: skip
        only_tree_errors("MeshHandshake.step(resp)", b.step, msg)
        if b.complete:
            assert msg.startswith(first)  # only the real message completes it
    else:  # the initiator gets a random or altered message 2
        reply = b.step(first)
        msg = data.draw(st.one_of(st.binary(max_size=120), st.just(reply).map(
            lambda m: byte_mutations(m, data))))  # fmt: skip
        only_tree_errors("MeshHandshake.step(init)", a.step, msg)
        if a.complete:
            assert msg.startswith(reply)


# --------------------------------------------------------------------------- channel messages


class _Link:
    kind = "direct"

    def __init__(self) -> None:
        self.written = bytearray()
        self.aborted = False

    def write(self, data: bytes | bytearray) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True

    def set_receiver(self, receiver: object) -> None:
        pass

    # a direct link: not resumable (ByteLink's defaults)
    resuming = False
    resume_grace = 0.0

    def ack_due(self) -> int | None:
        return None

    def peer_acked(self, offset: int) -> None:
        pass


class _Events:
    def __init__(self) -> None:
        self.failed: list[DidmeshError] = []
        self.other: list[tuple[str, bytes]] = []

    def peer_failed(self, peer: PeerChannel, exc: DidmeshError) -> None:
        self.failed.append(exc)

    def abort_received(self, peer: PeerChannel, payload: bytes) -> None:
        self.other.append(("abort", payload))

    def ready_received(self, peer: PeerChannel, payload: bytes) -> None:
        self.other.append(("ready", payload))

    def bye_received(self, peer: PeerChannel) -> None:
        self.other.append(("bye", b""))


@fuzz_settings(200)
@given(seed=st.integers(0, 2**32 - 1), msgs=st.lists(st.binary(max_size=40), max_size=6))
def test_fuzz_authenticated_channel_messages(seed: int, msgs: list[bytes]) -> None:
    """A roster peer sends any message kinds and payloads over a valid channel."""
    a, b = channel_pair(random.Random(seed))
    link, events = _Link(), _Events()
    peer = PeerChannel(1, "bob", link, b)
    peer.start(events)
    wire = bytes(a.send_many(msgs)) if msgs else b""
    only_tree_errors("PeerChannel.link_data", peer.link_data, wire)
    only_tree_errors("PeerChannel.link_eof", peer.link_eof, None)
    # the stream ends without the close record: the peer failed, unless it said BYE first
    assert events.failed or ("bye", b"") in events.other
    assert all(isinstance(e, DidmeshError) for e in events.failed)


# --------------------------------------------------------------------------- abort notices


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_abort_notices(data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        raw = dumps(mutate(json.loads(NOTICE), data, rounds=3)).encode()
    else:
        raw = byte_mutations(NOTICE, data)
    got = tree_errors_or_known("decode_abort", decode_abort, raw, PLANS[0])
    if got is not None:  # only the signed notice, as signed
        assert got == decode_abort(NOTICE, PLANS[0])


def test_abort_notice_deep_nesting() -> None:
    only_tree_errors("decode_abort", decode_abort, nested(1500).encode(), PLANS[0])


# --------------------------------------------------------------------------- plans, endpoints


@fuzz_settings(150)
@given(data=st.data())
def test_fuzz_launch_plan(data: st.DataObject) -> None:
    doc = mutate(PLANS[0].to_launch_dict(), data, rounds=3)
    got = only_tree_errors("MeshPlan.from_launch_dict", MeshPlan.from_launch_dict, doc)
    if got is not None:
        only_tree_errors("MeshPlan.validate", got.validate)


@fuzz_settings(300)
@given(text=st.one_of(st.text(max_size=60), st.from_regex(r"tcp://[a-z0-9.:\[\]]{0,20}:\d{0,7}")))
def test_fuzz_endpoint(text: str) -> None:
    got = only_tree_errors("parse_endpoint", parse_endpoint, text)
    if got is not None:
        assert 0 < got[1] < 65536
