"""Accurate failure reasons (didmesh issue 13, item 3).

* A relay that alters handshake frames: both parties say that the handshake did not
  authenticate because it was altered in transit *or* the peer holds another roster or
  key, and over which path (the relay's URL) -- not "check your roster".
* A failure whose exception has an empty text (``TimeoutError()``) still gives a reason.
* (A tampered record's abort notice reaching the parties it did not hit is checked with
  real processes in tests/test_mesh_clean_end.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from adversary.relay_proxy import LinkView, MaliciousRelay
from didmesh.session.mesh.connect import ConnectOptions, MeshConnector, RelayLinks, reason_of
from didmesh.session.mesh.faults import ConnectFailed
from didmesh.session.mesh.loopback import loopback_plans
from relay_helpers import RelayProcess, start_relay


@pytest.fixture(scope="module")
def real_relay() -> Iterator[RelayProcess]:
    with start_relay("memory", ["--rate-ip-per-s", "0"]) as relay:
        yield relay


@pytest.fixture
async def proxy(real_relay: RelayProcess) -> AsyncIterator[MaliciousRelay]:
    async with MaliciousRelay(real_relay.url) as mal:
        yield mal


async def _pair(url: str, **opener: Any) -> list[Any]:
    plans, ids = loopback_plans(2, relays=[url], endpoints=False)
    options = ConnectOptions(relay_only=True, connect_timeout=6.0, handshake_timeout=3.0)
    openers = [RelayLinks(p, i, options) for p, i in zip(plans, ids, strict=True)]
    try:
        conns = [MeshConnector(p, i, options, relay_opener=opener.get("fake") or o)
                 for p, i, o in zip(plans, ids, openers, strict=True)]
        return await asyncio.gather(*(c.connect_all() for c in conns),
                                    return_exceptions=True)
    finally:
        for o in openers:
            await o.aclose()


def _abort(results: list[Any]) -> None:
    for r in results:
        if isinstance(r, dict):
            for p in r.values():
                p.abort()


async def test_altered_handshake_names_transit_or_roster_and_the_path(
    proxy: MaliciousRelay,
) -> None:
    first: dict[str, str] = {}

    def flip_initiators_frames(view: LinkView, frame: bytes) -> list[bytes]:
        first.setdefault("did", view.did)  # the first to speak is the initiator
        if view.did != first["did"]:
            return [frame]
        return [frame[:-1] + bytes([frame[-1] ^ 1])]

    proxy.on_frame = flip_initiators_frames
    results = await _pair(proxy.url)
    try:
        assert all(isinstance(r, ConnectFailed) for r in results), results
        for r in results:
            assert "did not authenticate" in r.message, r.message
            assert "altered in transit" in r.message, r.message
            assert "another roster or key" in r.message, r.message
            assert f"relay: {proxy.url}" in r.message, r.message  # the path
            assert "peer's static key or roster view differs" not in r.message
    finally:
        _abort(results)


async def test_a_timeout_is_a_reason_never_an_empty_one() -> None:
    async def opener(url: str, peer: str) -> Any:
        raise TimeoutError  # str(TimeoutError()) == ""

    results = await _pair("http://127.0.0.1:9", fake=opener)
    for r in results:
        assert isinstance(r, ConnectFailed), r
        assert "relay: http://127.0.0.1:9: timed out" in r.message, r.message
        assert not r.message.rstrip().endswith(":"), r.message


@pytest.mark.parametrize(
    "exc, text",
    [
        (TimeoutError(), "timed out"),
        (ConnectionResetError(), "the connection closed (ConnectionResetError)"),
        (OSError(), "OSError"),
        (ValueError("specific"), "specific"),
        (ConnectFailed("a message"), "a message"),
    ],
    ids=["timeout", "reset", "oserror", "text", "tree-error"],
)
def test_reason_of_is_never_empty(exc: BaseException, text: str) -> None:
    assert reason_of(exc) == text
