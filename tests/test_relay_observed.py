"""``GET /v1/observed``: the relay tells an authenticated client its connection's source
address and port (STUN-like). Sans-IO parts as data, a real relay on loopback, and in the
Internet lab the public mapping of a port behind an EIM and a symmetric NAT."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import openapi_schema_validator
import pytest
import yaml
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.relay.errors import AuthInvalid, AuthRequired, RelayProtocolError, RelayUnreachable
from didmesh.relay.observed import (
    ObservedAddress,
    _response,
    observe,
    observed_of,
    parse_observed,
)
from didmesh.session.lab import Lab
from didmesh.session.lab import available as lab_available
from relay_helpers import RelayProcess, start_relay

SPEC = yaml.safe_load((Path(__file__).parent.parent / "specs" / "relay-api.yaml").read_text())


def _schema_check(body: Any, status: int = 200) -> None:
    resp = SPEC["paths"]["/v1/observed"]["get"]["responses"][str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    schema = {**resp["content"]["application/json"]["schema"], "components": SPEC["components"]}
    openapi_schema_validator.validate(body, schema, cls=openapi_schema_validator.OAS31Validator,
                                      format_checker=openapi_schema_validator.oas31_format_checker)


# ---------------------------------------------------------------------- sans-IO


@pytest.mark.parametrize(("peer", "forwarded", "want"), [
    (("127.0.0.1", 5000), None, ObservedAddress("127.0.0.1", 5000)),
    (("198.51.100.12", 41000), None, ObservedAddress("198.51.100.12", 41000)),
    (("::ffff:10.1.2.3", 7, 0, 0), None, ObservedAddress("10.1.2.3", 7)),
    (("2001:db8::1", 9, 0, 0), None, ObservedAddress("2001:db8::1", 9)),
    (("fe80::1%eth0", 9, 0, 2), None, ObservedAddress("fe80::1", 9)),
    (("127.0.0.1", 5000), "203.0.113.9", ObservedAddress("203.0.113.9", None)),
    (None, None, None),
    (("not an address", 1), None, None),
    (("127.0.0.1", 1), "also not", None),
], ids=["v4", "nat", "mapped", "v6", "scoped", "proxied", "none", "garbage", "bad-fwd"])
def test_what_the_relay_observes(peer: Any, forwarded: str | None,
                                 want: ObservedAddress | None) -> None:
    assert observed_of(peer, forwarded) == want


@pytest.mark.parametrize("body", [
    None, [], "x", {"address": "1.2.3.4", "port": 1},
    {"address": "1.2.3.4", "port": 1, "transport": "tcp", "extra": 1},
    {"address": "1.2.3.4", "port": 0, "transport": "tcp"},
    {"address": "1.2.3.4", "port": 65536, "transport": "tcp"},
    {"address": "1.2.3.4", "port": True, "transport": "tcp"},
    {"address": "1.2.3.4", "port": 10**30, "transport": "tcp"},
    {"address": "1.2.3.4", "port": "80", "transport": "tcp"},
    {"address": "1.2.3.4", "port": 80, "transport": "udp"},
    {"address": "example.org", "port": 80, "transport": "tcp"},
    {"address": "1" * 100, "port": 80, "transport": "tcp"},
    {"address": 16909060, "port": 80, "transport": "tcp"},
])
def test_a_malformed_answer_is_a_protocol_error(body: Any) -> None:
    with pytest.raises(RelayProtocolError):
        parse_observed(body)


def test_answers_round_trip_and_fit_the_openapi_schema() -> None:
    for seen in (ObservedAddress("198.51.100.12", 41000), ObservedAddress("2001:db8::1", None)):
        _schema_check(seen.to_json())
        assert parse_observed(json.loads(json.dumps(seen.to_json()))) == seen


@pytest.mark.parametrize(("raw", "error"), [
    (b"", RelayProtocolError),
    (b"garbage", RelayProtocolError),
    (b"HTTP/1.1 200 OK\r\n\r\nnot json", RelayProtocolError),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n", RelayProtocolError),
    (b'HTTP/1.1 401 Unauthorized\r\n\r\n{"error": {"code": "auth_required", "message": "m"}}',
     AuthRequired),
    (b"HTTP/1.1 200 OK\r\n\r\n" + b" " * 20000, RelayProtocolError),
])
def test_a_bad_http_answer_is_refused(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        _response(raw, "http://relay.test")


# ---------------------------------------------------------------------- a real relay


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with start_relay("memory", ["--rate-ip-per-s", "0"],
                     home=tmp_path_factory.mktemp("observed")) as r:
        yield r


async def test_the_relay_tells_a_client_its_address_and_port(relay: RelayProcess) -> None:
    async with RelayClient(relay.url, IdentityKey.generate()) as client:
        seen = await client.observed()
        assert seen.address == "127.0.0.1" and seen.port is not None and seen.port > 0
        async with aiohttp.ClientSession() as s, s.get(
                relay.url + "/v1/observed",
                headers={"Authorization": "Bearer " + await client.token()}) as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            _schema_check(await r.json())


async def test_asked_from_a_port_a_listener_holds_it_observes_that_port(
        relay: RelayProcess) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        async with RelayClient(relay.url, IdentityKey.generate()) as client:
            assert await client.observed(local_port=port) == ObservedAddress("127.0.0.1", port)
            again = await client.observed(local_port=port)  # the port is free to reuse at once
            assert again.port == port
    finally:
        listener.close()


async def test_only_an_authenticated_client_is_told(relay: RelayProcess) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(relay.url + "/v1/observed") as r:
            assert r.status == 401 and r.headers["X-Didmesh-Error"] == "auth_required"
            _schema_check(await r.json(), 401)
        async with s.get(relay.url + "/v1/observed",
                         headers={"Authorization": "Bearer t1.forged.token"}) as r:
            assert r.status == 401
    with pytest.raises(AuthInvalid):
        await observe(relay.url, "t1.forged.token")


async def test_an_unreachable_relay_is_named() -> None:
    with pytest.raises(RelayUnreachable, match="127.0.0.1:9"):
        await observe("http://127.0.0.1:9", "t", timeout=2)
    with pytest.raises(RelayUnreachable, match="not a relay URL"):
        await observe("ftp://x", "t")


async def test_behind_a_trusted_proxy_the_port_is_unknown(tmp_path: Path) -> None:
    with start_relay("memory", ["--rate-ip-per-s", "0"], home=tmp_path,
                     env={"DIDMESH_RELAY_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8"}) as r:
        async with RelayClient(r.url, IdentityKey.generate()) as client:
            token = await client.token()
        async with aiohttp.ClientSession() as s, s.get(
                r.url + "/v1/observed", headers={"Authorization": "Bearer " + token,
                                                 "X-Forwarded-For": "203.0.113.7, 10.0.0.1"}
        ) as resp:
            body = await resp.json()
    assert body == {"address": "203.0.113.7", "port": None, "transport": "tcp"}
    _schema_check(body)


# ---------------------------------------------------------------------- across NATs (lab)

_PARTY = """
import asyncio, json, sys
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
async def main():
    async with RelayClient(sys.argv[1], IdentityKey.generate()) as c:
        seen = [await c.observed(local_port=int(sys.argv[2])) for _ in range(2)]
        print(json.dumps([s.to_json() for s in seen]))
asyncio.run(main())
"""


@pytest.mark.netns
@pytest.mark.skipif(lab_available() is not None, reason=str(lab_available()))
def test_behind_nats_the_relay_sees_the_public_mapping(tmp_path: Path) -> None:
    with Lab(["relay", "eim:h1:p1", "sym:h2:p2"]) as lab:
        url = lab.serve_relay(tmp_path, 8470, env={"PATH": "/usr/bin:/bin"})
        eim = json.loads(lab.python("p1", _PARTY, url, "42000", timeout=30))
        sym = json.loads(lab.python("p2", _PARTY, url, "42000", timeout=30))
    assert [s["address"] for s in eim] == [lab.public_address("p1")] * 2
    assert [s["port"] for s in eim] == [42000, 42000]  # EIM keeps the port
    assert [s["address"] for s in sym] == [lab.public_address("p2")] * 2
    assert 42000 not in [s["port"] for s in sym]  # symmetric: a random port each time
