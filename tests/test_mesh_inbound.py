"""Inbound direct connections are unauthenticated until their handshake completes
(didmesh issue 5, part 1): a lying hello, garbage or a flood of junk connections on a
party's listening port must not end the pair; the real peer still gets through, and a
pair whose peer never comes fails at its deadline quoting the last attempt's reason.
Real loopback TCP; the attacker is raw asyncio streams."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import pytest
from didmesh.session.mesh.connect import (
    HELLO_MAGIC,
    HELLO_VERSION,
    REJECT_MAGIC,
    ConnectOptions,
    MeshConnector,
    encode_hello,
)
from didmesh.session.mesh.faults import ConnectFailed, PathUnavailable
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.mesh import Mesh
from didmesh.session.mesh.plan import MeshPlan

HOST = "127.0.0.1"


def _port(plan: MeshPlan, party: int) -> int:
    return int(plan.parties[party].endpoints[0].rsplit(":", 1)[1])


async def _open(port: int, timeout: float = 5.0) -> tuple[asyncio.StreamReader,
                                                          asyncio.StreamWriter]:
    deadline = time.monotonic() + timeout
    while True:  # the responder may not listen yet
        try:
            return await asyncio.open_connection(HOST, port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def _send_and_read(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Connect, send ``payload``, return everything the responder sends until it closes."""
    r, w = await _open(port)
    try:
        w.write(payload)
        await w.drain()
        return await asyncio.wait_for(r.read(), timeout)
    finally:
        w.transport.abort()


def _lying_hello(plan: MeshPlan, claimed: int, responder: int, *, right_tag: bool) -> bytes:
    """A hello claiming to be party ``claimed``, then a KK message 1 of random bytes. With
    the right tag this is what anybody who once saw a hello of this session can send."""
    hash_ = plan.roster_hash if right_tag else os.urandom(len(plan.roster_hash))
    return encode_hello(hash_, claimed, responder) + (48).to_bytes(2, "big") + os.urandom(48)


async def _run_completes(plans: list[MeshPlan], ids: list[Any], results: list[Any]) -> None:
    """Connectivity check and goodbye over the connected channels: the run completes."""
    meshes = [Mesh(plans[i], results[i], identity=ids[i], timeout=5) for i in range(len(plans))]
    try:
        for m in meshes:
            m.start()
        tables = await asyncio.gather(*(m.check(timeout=5) for m in meshes))
        assert tables[0] == tables[1]
        await asyncio.gather(*(m.finish(5) for m in meshes))
        assert all(m.fatal is None for m in meshes)
    finally:
        for m in meshes:
            m.close()


async def test_lying_hello_and_garbage_then_the_real_peer_connects() -> None:
    plans, ids = loopback_plans(2)
    options = ConnectOptions(connect_timeout=10, handshake_timeout=2)
    responder = MeshConnector(plans[1], ids[1], options)
    task = asyncio.ensure_future(responder.connect_all())
    port = _port(plans[1], 1)
    try:
        # claims party 0 with this session's hello tag, then garbage instead of KK msg 1
        answer = await _send_and_read(port, _lying_hello(plans[1], 0, 1, right_tag=True))
        assert answer == REJECT_MAGIC + b"A"  # the diagnostic still goes to the sender
        # claims party 0 with another roster's tag
        answer = await _send_and_read(port, _lying_hello(plans[1], 0, 1, right_tag=False))
        assert answer == REJECT_MAGIC + b"R"
        # not a hello at all, and a hello cut short
        assert await _send_and_read(port, os.urandom(64)) == REJECT_MAGIC + b"P"
        r, w = await _open(port)
        w.write(encode_hello(plans[1].roster_hash, 0, 1)[:10])
        w.transport.abort()
        await asyncio.sleep(0.2)
        assert not task.done(), "an unauthenticated connection ended the pair"
        assert responder.inbound.failed == 4 and responder.inbound.pending == 0
        initiator = MeshConnector(plans[0], ids[0], options)
        r0 = await asyncio.wait_for(initiator.connect_all(), 10)
        r1 = await asyncio.wait_for(task, 10)
        await _run_completes(plans, ids, [r0, r1])
        assert responder.inbound.accepted == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _junk(port: int, kind: str, rng: random.Random, plan: MeshPlan) -> float:
    """One junk connection; returns how long the responder let it stay open."""
    t0 = time.monotonic()
    try:
        r, w = await asyncio.open_connection(HOST, port)
    except OSError:
        return 0.0  # the listener is gone: the run is over
    try:
        if kind == "garbage":
            w.write(rng.randbytes(rng.randrange(1, 300)))
        elif kind == "lying":
            w.write(_lying_hello(plan, 0, 1, right_tag=rng.random() < 0.5))
        elif kind == "slowloris":  # the first bytes of a hello, one byte at a time
            head = HELLO_MAGIC + bytes((HELLO_VERSION,))
            for b in head:
                w.write(bytes((b,)))
                await asyncio.sleep(0.2)
        # "silent": connect and send nothing
        await asyncio.wait_for(r.read(), 10)  # until the responder closes it
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        w.transport.abort()
    return time.monotonic() - t0


async def test_junk_flood_then_the_real_peer_connects() -> None:
    plans, ids = loopback_plans(2)
    limit, hs_timeout = 8, 1.0
    options = ConnectOptions(connect_timeout=15, handshake_timeout=hs_timeout,
                             inbound_limit=limit)
    responder = MeshConnector(plans[1], ids[1], options)
    task = asyncio.ensure_future(responder.connect_all())
    port = _port(plans[1], 1)
    await _open(port)  # listening
    rng = random.Random(5)
    kinds = ["silent", "slowloris", "garbage", "lying"]
    junk = [asyncio.ensure_future(_junk(port, kinds[i % 4], rng, plans[1]))
            for i in range(120)]
    try:
        await asyncio.sleep(0.05)  # the flood is under way
        initiator = MeshConnector(plans[0], ids[0], options)
        r0 = await asyncio.wait_for(initiator.connect_all(), 15)
        r1 = await asyncio.wait_for(task, 15)
        await _run_completes(plans, ids, [r0, r1])
        held = await asyncio.wait_for(asyncio.gather(*junk), 15)
        stats = responder.inbound
        assert stats.peak <= limit, stats
        assert stats.evicted > 0 and stats.accepted >= 1, stats
        # nobody holds a slot longer than the handshake budget (slowloris, silent)
        assert max(held) < hs_timeout + 1.0, max(held)
    finally:
        task.cancel()
        for j in junk:
            j.cancel()
        await asyncio.gather(task, *junk, return_exceptions=True)


async def test_attacker_only_the_pair_fails_at_its_deadline_with_the_reason() -> None:
    plans, ids = loopback_plans(3)
    deadline = 1.5
    options = ConnectOptions(connect_timeout=deadline, handshake_timeout=1.0)
    # party 2 waits for 0 and 1; only an attacker claiming to be party 0 shows up (party 1
    # stays silent too: both pairs fail, each with what it saw)
    t0 = time.monotonic()
    task = asyncio.ensure_future(MeshConnector(plans[2], ids[2], options).connect_all())
    answer = await _send_and_read(_port(plans[2], 2), _lying_hello(plans[2], 0, 2,
                                                                    right_tag=True))
    assert answer == REJECT_MAGIC + b"A"
    err = await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    elapsed = time.monotonic() - t0
    [exc] = err
    assert isinstance(exc, ConnectFailed), exc
    assert elapsed >= deadline - 0.05, "failed before the deadline"
    msg = exc.message
    assert "party 0 'alice'" in msg and "party 2 'carol'" in msg
    assert "no valid handshake before the deadline" in msg
    assert f"last attempt from tcp {HOST}:" in msg
    assert "altered in transit, or the peer holds another roster or key" in msg


def test_inbound_limit_is_checked() -> None:
    with pytest.raises(PathUnavailable, match="inbound_limit"):
        ConnectOptions(inbound_limit=0)
    assert ConnectOptions().inbound_limit == 64
