"""The malicious relay (issue 6): a proxy in front of a real relay process tampers with,
replays, reorders, duplicates, drops, delays and cross-wires envelopes (session layer over
RelayMailbox) and link frames (mesh over relayed links). Each behaviour ends either
detected (a specific error or warning naming the cause) or tolerated (same agreed roster;
a drop or delay ends in a clear timeout) -- never a wrong roster, an unverified party, or
a party bound to the wrong id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from adversary.fakes import Events, Sink
from adversary.relay_proxy import LinkView, MaliciousRelay, deliver_items, tamper_body
from didmesh.identity.keys import IdentityKey
from didmesh.session.errors import WaitTimeout
from didmesh.session.mailbox import RelayMailbox
from didmesh.session.state import Status
from didmesh.session.testing import World
from relay_helpers import RelayProcess, start_relay


@pytest.fixture(scope="module")
def real_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    args = ["--rate-ip-per-s", "0", "--rate-did-per-s", "1000", "--rate-did-burst", "1000"]
    with start_relay("memory", args, home=tmp_path_factory.mktemp("relay")) as relay:
        yield relay


@pytest.fixture
async def proxy(real_relay: RelayProcess) -> AsyncIterator[MaliciousRelay]:
    async with MaliciousRelay(real_relay.url) as mal:
        yield mal


class Warnings:
    def __init__(self) -> None:
        self.by_did: dict[str, list[str]] = {}

    def factory(self, ident: IdentityKey, urls: Sequence[str]) -> RelayMailbox:
        box = self.by_did.setdefault(ident.did, [])
        return RelayMailbox(list(urls), ident, timeout=5.0, on_warning=box.append)

    def of(self, did: str) -> str:
        return "\n".join(self.by_did.get(did, []))


async def run_world(
    tmp: Path, proxy: MaliciousRelay, warn: Warnings, m: int = 3, timeout: float = 15.0
) -> World:
    tmp.mkdir(parents=True, exist_ok=True)
    world = World(tmp, m, relays=[proxy.url], factory=warn.factory)
    world.invite_all()
    await world.deliver_invites(timeout=timeout)
    world.accept_all()
    await world.settle(timeout=timeout)
    return world


def assert_agreed_on_one_roster(world: World) -> None:
    assert all(world.status(p) == Status.AGREED for p in world.parties)
    rosters = [p.engine.store.load(world.sid).agreed_roster for p in world.parties]
    assert len({r.roster_hash for r in rosters if r}) == 1
    roster = rosters[0]
    assert roster is not None
    assert [x.did for x in roster.parties] == [p.did for p in world.parties]
    assert [x.party_id for x in roster.parties] == list(range(len(world.parties)))


async def close(*worlds: World) -> None:
    for world in worlds:
        with contextlib.suppress(Exception):
            await world.close()


# --------------------------------------------------------------------------- envelopes


async def test_honest_proxy_changes_nothing(tmp_path: Path, proxy: MaliciousRelay) -> None:
    warn = Warnings()
    world = await run_world(tmp_path, proxy, warn)
    try:
        assert_agreed_on_one_roster(world)
        assert proxy.captured and sum(proxy.delivered.values()) >= len(proxy.captured)
        assert not any(warn.by_did.values())
    finally:
        await close(world)


async def test_tampered_envelopes_are_detected_and_named(
    tmp_path: Path, proxy: MaliciousRelay
) -> None:
    warn = Warnings()
    world = World(tmp_path, 3, relays=[proxy.url], factory=warn.factory)
    victim = world.parties[2].did
    proxy.on_deliver = lambda did, items: [
        {**i, "envelope": tamper_body(i["envelope"])} if did == victim else i for i in items
    ]
    try:
        world.invite_all()
        with pytest.raises(WaitTimeout, match="timed out"):
            await world.deliver_invites(timeout=3)
        assert "not signed by its sender" in warn.of(victim)  # the body is under the signature
        assert not world.parties[2].engine.store.exists(world.sid)  # nothing was accepted
        assert world.status(world.organizer) == Status.COLLECTING
    finally:
        await close(world)


async def test_envelope_fields_rewritten_by_the_relay_are_detected(
    tmp_path: Path, proxy: MaliciousRelay
) -> None:
    """Re-addressing, re-dating or re-labelling the session breaks the sender's signature."""
    warn = Warnings()
    world = World(tmp_path, 2, relays=[proxy.url], factory=warn.factory)
    victim = world.parties[1].did
    proxy.on_deliver = lambda did, items: [
        {**i, "envelope": {**i["envelope"], "session": "another-session"}} for i in items
    ]
    try:
        world.invite_all()
        with pytest.raises(WaitTimeout):
            await world.deliver_invites(timeout=3)
        assert "not signed by its sender" in warn.of(victim)
    finally:
        await close(world)


async def test_duplicated_and_reordered_envelopes_are_tolerated(
    tmp_path: Path, proxy: MaliciousRelay
) -> None:
    def dup_and_reverse(did: str, items: list[Any]) -> list[Any]:
        return list(reversed(items + items))

    proxy.on_deliver = dup_and_reverse
    proxy.on_post = lambda env: [env, env]  # and posted twice: the relay's duplicate path
    warn = Warnings()
    world = await run_world(tmp_path, proxy, warn)
    try:
        assert_agreed_on_one_roster(world)
    finally:
        await close(world)


async def test_delayed_envelopes_are_tolerated(tmp_path: Path, proxy: MaliciousRelay) -> None:
    async def slow(did: str, items: list[Any]) -> list[Any]:
        await asyncio.sleep(0.2)
        return items

    proxy.on_deliver = slow
    warn = Warnings()
    world = await run_world(tmp_path, proxy, warn)
    try:
        assert_agreed_on_one_roster(world)
    finally:
        await close(world)


async def test_dropped_envelopes_end_in_a_clear_timeout(
    tmp_path: Path, proxy: MaliciousRelay
) -> None:
    warn = Warnings()
    world = World(tmp_path, 3, relays=[proxy.url], factory=warn.factory)
    victim = world.parties[2].did
    proxy.on_deliver = lambda did, items: [] if did == victim else items
    try:
        world.invite_all()
        await world.organizer.engine.flush(world.organizer.mailbox)
        await world.pump(world.parties[1], lambda: world.parties[1].engine.store.exists(world.sid))
        world.accept_all([world.parties[1]])
        with pytest.raises(WaitTimeout, match=r"timed out after 2 s waiting"):
            await world.settle(timeout=2, parties=world.parties[:2])
        assert world.status(world.organizer) == Status.COLLECTING  # no roster without Carol
        assert world.status(world.parties[1]) == Status.ACCEPTED
    finally:
        await close(world)


async def test_withheld_confirmations_leave_the_victim_unagreed(
    tmp_path: Path, proxy: MaliciousRelay
) -> None:
    """The relay shows Bob everything but Carol's messages: Bob never agrees (timeout)
    while the others do; nobody starts on a roster that is not confirmed by all."""
    warn = Warnings()
    world = World(tmp_path, 3, relays=[proxy.url], factory=warn.factory)
    bob, carol = world.parties[1], world.parties[2]
    proxy.on_deliver = lambda did, items: [
        i for i in items if not (did == bob.did and i["envelope"]["from"] == carol.did)
    ]
    try:
        world.invite_all()
        await world.deliver_invites(timeout=10)
        world.accept_all()
        with pytest.raises(WaitTimeout):
            await world.settle(timeout=4)
        assert world.status(world.organizer) == Status.AGREED
        assert world.status(carol) == Status.AGREED
        assert world.status(bob) == Status.CONFIRMING
        assert bob.engine.store.load(world.sid).agreed_roster is None
    finally:
        await close(world)


async def test_cross_wired_envelopes_between_parties_are_refused(
    tmp_path: Path, proxy: MaliciousRelay
) -> None:
    """Everything for Bob is also handed to Carol: she cannot open it and says so."""
    warn = Warnings()
    world = World(tmp_path, 3, relays=[proxy.url], factory=warn.factory)
    bob, carol = world.parties[1].did, world.parties[2].did

    def cross(did: str, items: list[Any]) -> list[Any]:
        if did != carol:
            return items
        stolen = [e for e in proxy.captured if e["to"] == bob]
        return items + deliver_items(stolen)

    proxy.on_deliver = cross
    try:
        world.invite_all()
        await world.deliver_invites()
        world.accept_all()
        await world.settle()
        assert_agreed_on_one_roster(world)
        assert "not to us" in warn.of(carol)
    finally:
        await close(world)


async def test_envelopes_replayed_across_sessions_change_nothing(
    tmp_path: Path, proxy: MaliciousRelay
) -> None:
    """Every envelope of a finished session is replayed into a second session's inboxes
    (the same DIDs' old traffic and another session's traffic)."""
    warn = Warnings()
    first = await run_world(tmp_path / "a", proxy, warn)
    old = list(proxy.captured)
    first_hash = first.organizer.engine.store.load(first.sid).agreed_roster

    def replay(did: str, items: list[Any]) -> list[Any]:
        return deliver_items(old) + items

    proxy.on_deliver = replay
    second = await run_world(tmp_path / "b", proxy, warn)
    try:
        assert_agreed_on_one_roster(first)
        assert_agreed_on_one_roster(second)
        again = first.organizer.engine.store.load(first.sid).agreed_roster
        assert first_hash is not None and again is not None
        assert again.roster_hash == first_hash.roster_hash
        second_hash = second.organizer.engine.store.load(second.sid).agreed_roster
        assert second_hash is not None and second_hash.roster_hash != first_hash.roster_hash
        for p in second.parties:
            assert "not to us" in warn.of(p.did)  # the other session's envelopes
    finally:
        await close(first, second)


# --------------------------------------------------------------------------- link frames


async def _relayed_pair(url: str, timeout: float = 8.0) -> tuple[list[Any], list[Any]]:
    from didmesh.session.mesh.connect import ConnectOptions, MeshConnector, RelayLinks
    from didmesh.session.mesh.loopback import loopback_plans

    plans, ids = loopback_plans(2, relays=[url], endpoints=False)
    options = ConnectOptions(relay_only=True, connect_timeout=timeout, handshake_timeout=3.0)
    openers = [RelayLinks(p, i, options) for p, i in zip(plans, ids, strict=True)]
    _OPENERS.extend(openers)
    conns = [
        MeshConnector(p, i, options, relay_opener=o)
        for p, i, o in zip(plans, ids, openers, strict=True)
    ]
    results = await asyncio.gather(*(c.connect_all() for c in conns), return_exceptions=True)
    return results, plans


_OPENERS: list[Any] = []


def _abort(results: list[Any]) -> None:
    for r in results:
        if isinstance(r, dict):
            for p in r.values():
                p.abort()


@pytest.fixture(autouse=True)
async def _close_openers() -> AsyncIterator[None]:
    yield
    while _OPENERS:
        await _OPENERS.pop().aclose()


async def _send_through(results: list[Any], payloads: list[bytes]) -> tuple[Events, Sink]:
    p01, p10 = results[0][1], results[1][0]
    ev0, ev1, sink = Events(), Events(), Sink()
    p01.start(ev0)
    p10.start(ev1)
    p10.attach(sink)
    for data in payloads:
        p01.send_app(data)
        await asyncio.sleep(0.05)
    for _ in range(60):
        if ev1.failed or len(sink.data) >= sum(map(len, payloads)):
            break
        await asyncio.sleep(0.05)
    return ev1, sink


async def test_relayed_link_honest(proxy: MaliciousRelay) -> None:
    results, _ = await _relayed_pair(proxy.url)
    try:
        assert all(isinstance(r, dict) for r in results), results
        ev1, sink = await _send_through(results, [b"a" * 100, b"b" * 200])
        assert bytes(sink.data) == b"a" * 100 + b"b" * 200 and not ev1.failed
        assert all(v.partner is not None for v in proxy.links)
    finally:
        _abort(results)


class FrameAttack:
    """What the relay does to party 0's frames once the channel is up."""

    def __init__(self, kind: str, victim_did: str, links: list[LinkView]) -> None:
        self.kind, self.did, self.links = kind, victim_did, links
        self.held: list[bytes] = []

    def __call__(self, view: LinkView, frame: bytes) -> list[bytes]:
        if view.did != self.did:
            return [frame]
        if self.kind == "tamper":
            return [frame[:-1] + bytes([frame[-1] ^ 1])]
        if self.kind == "duplicate":
            return [frame, frame]
        if self.kind == "reorder":
            if not self.held:
                self.held.append(frame)
                return []
            return [frame, self.held.pop()]
        if self.kind == "cross":  # a frame recorded on another link (the other end's)
            other = next(v for v in self.links if v.did != self.did and v.sent)
            return [other.sent[0]]
        return []  # drop


@pytest.mark.parametrize("kind", ["tamper", "duplicate", "reorder", "cross"])
async def test_relayed_link_frames_altered_after_handshake_are_detected(
    proxy: MaliciousRelay, kind: str
) -> None:
    results, plans = await _relayed_pair(proxy.url)
    try:
        assert all(isinstance(r, dict) for r in results), results
        sender = plans[0].parties[0].did
        proxy.on_frame = FrameAttack(kind, sender, list(proxy.links))
        ev1, sink = await _send_through(results, [b"x" * 64, b"y" * 64, b"z" * 64])
        assert ev1.failed, f"{kind}: the receiver did not notice"
        err = ev1.failed[0]
        assert getattr(err, "code", "") in ("record_rejected", "frame_malformed"), err
        assert len(sink.data) < 3 * 64  # nothing after the altered frame was delivered
        assert bytes(sink.data) == (b"x" * 64 + b"y" * 64 + b"z" * 64)[: len(sink.data)]
    finally:
        _abort(results)


@pytest.mark.parametrize("kind", ["tamper", "drop"])
async def test_relayed_handshake_frames_altered_fail_the_pair(
    proxy: MaliciousRelay, kind: str
) -> None:
    from didmesh.session.mesh.faults import ConnectFailed

    attack: dict[str, Any] = {}

    def hook(view: LinkView, frame: bytes) -> list[bytes]:
        attack.setdefault("did", view.did)  # the first end to speak: the initiator
        if view.did != attack["did"]:
            return [frame]
        return FrameAttack(kind, view.did, [])(view, frame)

    proxy.on_frame = hook
    results, _ = await _relayed_pair(proxy.url, timeout=4.0)
    try:
        assert all(isinstance(r, ConnectFailed) for r in results), results
        text = " ".join(r.message for r in results if isinstance(r, ConnectFailed))
        assert "party 0" in text or "party 1" in text
    finally:
        _abort(results)
