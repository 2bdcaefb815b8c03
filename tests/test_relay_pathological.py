"""The pathological JSON catalogue (tests/data/pathological_json.json) against a real relay
process, at every endpoint that reads JSON (issue 13, item 1).

A body with a 4,301-digit integer made ``POST /v1/auth/challenge`` and
``POST /v1/envelopes`` answer 500 ``internal``. Now every case is answered below 500, a
refusal carries a stable error code, and the relay stays healthy and logs no internal
error.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from adversary.pathological import CASES, PLACEHOLDER, Case
from didmesh.identity.keys import IdentityKey
from didmesh.relay.auth import sign_challenge
from didmesh.relay.envelope import seal
from relay_helpers import RelayProcess, start_relay

ALICE = IdentityKey.from_seed(b"\x41" * 32)
BOB = IdentityKey.from_seed(b"\x42" * 32)
REQUEST_CAP = 262_144
ENVELOPE_CAP = 65_536


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    with start_relay("memory", ["--rate-ip-per-s", "0", "--rate-did-per-s", "0"]) as r:
        yield r


def post(url: str, body: bytes, token: str = "") -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback)
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, json.loads(raw) if raw else None


def token_for(relay: RelayProcess, key: IdentityKey) -> str:
    _, ch = post(relay.url + "/v1/auth/challenge", json.dumps({"did": key.did}).encode())
    sig = sign_challenge(key, ch["relay_id"], ch["challenge"])
    body = {"did": key.did, "challenge": ch["challenge"], "signature": sig}
    status, tok = post(relay.url + "/v1/auth/token", json.dumps(body).encode())
    assert status == 200, tok
    return str(tok["token"])


def bodies(relay: RelayProcess, case: Case) -> list[tuple[str, bytes, bool]]:
    """(path, body, needs a token) for every JSON endpoint, with ``case`` applied."""
    env = seal(ALICE, BOB.did, "s-1", b"x", now_ms=0, ttl=60).to_dict()
    return [
        ("/v1/auth/challenge", case.splice({"did": PLACEHOLDER}, REQUEST_CAP), False),
        ("/v1/auth/token", case.splice(
            {"did": ALICE.did, "challenge": PLACEHOLDER, "signature": "AA"}, REQUEST_CAP), False),
        ("/v1/envelopes", case.splice(env | {"ts": PLACEHOLDER}, ENVELOPE_CAP), False),
        ("/v1/envelopes", case.splice(env | {"to": PLACEHOLDER}, REQUEST_CAP), False),
        ("/v1/inbox/ack", case.splice({"ids": [PLACEHOLDER]}, REQUEST_CAP), True),
    ]  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_http_endpoints(relay: RelayProcess, case: Case) -> None:
    token = token_for(relay, BOB)
    for path, body, authed in bodies(relay, case):
        status, answer = post(relay.url + path, body, token if authed else "")
        assert status < 500, (path, status, answer)
        if status >= 400:
            assert isinstance(answer, dict) and answer["error"]["code"] not in ("", "internal")
            assert answer["error"]["message"], (path, answer)
        if case.parser == "refuse" and path != "/v1/envelopes":
            assert status == 400 or status == 413, (path, status, answer)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_push_socket_messages(relay: RelayProcess, case: Case) -> None:
    """A client's message on its push socket: ignored or answered by a close code; the
    socket's owner is the only one affected."""

    async def go() -> int | None:
        token = token_for(relay, BOB)
        async with aiohttp.ClientSession() as http, http.ws_connect(
            relay.url + "/v1/inbox/ws", headers={"Authorization": "Bearer " + token},
            max_msg_size=1 << 20,
        ) as ws:  # fmt: skip
            raw = case.splice({"type": "ack", "ids": [PLACEHOLDER]}, REQUEST_CAP)
            try:  # a text frame, as the protocol has it (binary if it is not UTF-8)
                await ws.send_str(raw.decode("utf-8"))
            except UnicodeDecodeError:
                await ws.send_bytes(raw)
            try:
                async with asyncio.timeout(1.0):
                    async for _msg in ws:
                        pass
            except TimeoutError:
                return None
            return ws.close_code

    code = asyncio.run(go())
    assert code is None or code != 1011, f"internal error closing code {code}"


def test_relay_stayed_healthy(relay: RelayProcess) -> None:
    with urllib.request.urlopen(relay.url + "/healthz", timeout=5) as resp:  # noqa: S310
        assert resp.status == 200
    internal = [e for e in relay.log_lines() if "internal" in json.dumps(e).lower()
                or "traceback" in json.dumps(e).lower()]  # fmt: skip
    assert not internal, internal[:3]
