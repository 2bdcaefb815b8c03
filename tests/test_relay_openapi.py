"""Real relay responses checked against specs/relay-api.yaml, and a bounded schemathesis run
driving a live relay from the same document."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openapi_schema_validator
import pytest
import yaml
from didmesh.identity.keys import IdentityKey
from didmesh.relay.auth import challenge_signing_input
from didmesh.relay.client import RelayClient
from didmesh.relay.envelope import b64url, seal
from relay_helpers import RelayProcess, start_relay

SPEC_PATH = Path(__file__).parent.parent / "specs" / "relay-api.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())


def test_spec_is_valid_openapi_31() -> None:
    assert SPEC["openapi"].startswith("3.1")
    for schema in SPEC["components"]["schemas"].values():
        openapi_schema_validator.OAS31Validator.check_schema(schema)  # raises on error
    for path, ops in SPEC["paths"].items():
        for method, op in ops.items():
            assert op["operationId"] and op["responses"], (path, method)


def check(method: str, path: str, status: int, ctype: str, body: Any) -> None:
    """Fail unless the spec documents this status for this operation and the body fits."""
    op = SPEC["paths"][path][method.lower()]
    assert str(status) in op["responses"], f"{method} {path} -> {status} is not documented"
    resp = op["responses"][str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    content = resp.get("content")
    if content is None:
        return
    assert ctype in content, f"{method} {path} -> {status}: {ctype} not in {list(content)}"
    schema = {**content[ctype]["schema"], "components": SPEC["components"]}
    if ctype == "application/json":
        openapi_schema_validator.validate(body, schema, cls=openapi_schema_validator.OAS31Validator)


class Recorder:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base, self.s = base, session
        self.seen: set[tuple[str, str, int]] = set()

    async def __call__(
        self, method: str, path: str, *, body: Any = None, data: bytes | None = None,
        headers: dict[str, str] | None = None, query: str = "",
    ) -> tuple[int, Any]:
        h = {"Content-Type": "application/json", **(headers or {})}
        payload = data if data is not None else (
            json.dumps(body).encode() if body is not None else None)
        async with self.s.request(method, self.base + path + query, data=payload,
                                  headers=h) as r:
            raw = await r.read()
            ctype = r.content_type
            parsed: Any = json.loads(raw) if ctype == "application/json" else raw.decode()
            if r.status >= 400:
                assert r.headers["X-Didmesh-Error"] == parsed["error"]["code"]
        check(method, path, r.status, ctype, parsed)
        self.seen.add((method, path, r.status))
        return r.status, parsed


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with start_relay(
        "memory", ["--inbox-max-envelopes", "2", "--rate-ip-per-s", "0", "--long-poll-max-s", "0.2",
                   "--rate-did-per-s", "1000", "--rate-did-burst", "1000"],
        home=tmp_path_factory.mktemp("oas"),
    ) as r:
        yield r


async def test_real_responses_match_the_spec(relay: RelayProcess) -> None:
    alice, bob, mallory = (IdentityKey.generate() for _ in range(3))
    now = int(time.time() * 1000)
    async with aiohttp.ClientSession() as s, RelayClient(relay.url, bob) as cb:
        rec = Recorder(relay.url, s)
        await rec("GET", "/info")
        await rec("GET", "/healthz")
        await rec("GET", "/metrics")
        # auth
        _, ch = await rec("POST", "/v1/auth/challenge", body={"did": alice.did})
        await rec("POST", "/v1/auth/challenge", body={"did": "nope"})
        await rec("POST", "/v1/auth/challenge", data=b"x", headers={"Content-Type": "text/plain"})
        await rec("POST", "/v1/auth/challenge", data=b" " * 300_000)
        bad = b64url(mallory.sign(challenge_signing_input(ch["relay_id"], alice.did,
                                                          ch["challenge"])))
        req = {"did": alice.did, "challenge": ch["challenge"], "signature": bad}
        await rec("POST", "/v1/auth/token", body=req)  # 403
        good = b64url(alice.sign(challenge_signing_input(ch["relay_id"], alice.did,
                                                         ch["challenge"])))
        await rec("POST", "/v1/auth/token", body={**req, "signature": good})  # 200
        await rec("POST", "/v1/auth/token", body={**req, "signature": good})  # 401 reused
        await rec("POST", "/v1/auth/token", body={"did": alice.did})  # 400
        # envelopes
        env = seal(alice, bob.did, "s", b"x", now_ms=now)
        await rec("POST", "/v1/envelopes", data=env.to_json())  # 201
        await rec("POST", "/v1/envelopes", data=env.to_json())  # 200
        await rec("POST", "/v1/envelopes", data=b"{")  # 400
        await rec("POST", "/v1/envelopes", body={**env.to_dict(), "from": mallory.did})  # 403
        old = seal(alice, bob.did, "s", b"x", now_ms=now - 10**7)
        await rec("POST", "/v1/envelopes", data=old.to_json())  # 409 stale
        big = seal(alice, bob.did, "s", b"x" * 70_000, now_ms=now)
        await rec("POST", "/v1/envelopes", data=big.to_json())  # 413
        await rec("POST", "/v1/envelopes", data=seal(alice, bob.did, "s", b"2",
                                                     now_ms=now).to_json())
        await rec("POST", "/v1/envelopes", data=seal(alice, bob.did, "s", b"3",
                                                     now_ms=now).to_json())  # 507
        # inbox
        auth = {"Authorization": "Bearer " + await cb.token()}
        _, batch = await rec("GET", "/v1/inbox", headers=auth, query="?limit=10")
        assert len(batch["envelopes"]) == 2
        await rec("GET", "/v1/inbox", headers=auth, query="?wait=abc")  # 400
        await rec("GET", "/v1/inbox")  # 401
        await rec("POST", "/v1/inbox/ack", headers=auth, body={"ids": [env.id]})
        await rec("POST", "/v1/inbox/ack", headers=auth, body={"ids": "x"})  # 400
        await rec("POST", "/v1/envelopes", data=env.to_json())  # 409 replay
        await rec("GET", "/v1/link")  # 401
        await rec("GET", "/v1/link", headers=auth)  # 400: not an upgrade
        await rec("GET", "/v1/inbox/ws")  # 401
    want = {
        ("POST", "/v1/envelopes", 200), ("POST", "/v1/envelopes", 201),
        ("POST", "/v1/envelopes", 400), ("POST", "/v1/envelopes", 403),
        ("POST", "/v1/envelopes", 409), ("POST", "/v1/envelopes", 413),
        ("POST", "/v1/envelopes", 507), ("POST", "/v1/auth/token", 401),
        ("POST", "/v1/auth/token", 403), ("POST", "/v1/auth/challenge", 415),
        ("POST", "/v1/auth/challenge", 413), ("GET", "/v1/link", 400),
    }
    assert want <= rec.seen, want - rec.seen


async def _token(url: str) -> str:
    async with RelayClient(url, IdentityKey.generate()) as c:
        return await c.token()


def _schemathesis(relay: RelayProcess, seconds: int, tmp: Path) -> None:
    """Fuzz every operation, authenticated (a real token) so the inbox endpoints are reached."""
    token = asyncio.run(_token(relay.url))
    exe = shutil.which("schemathesis") or shutil.which("st")
    cmd = [exe] if exe else [sys.executable, "-m", "schemathesis.cli"]
    proc = subprocess.run(
        [*cmd, "run", str(SPEC_PATH), "--url", relay.url, "--max-time", str(seconds),
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
         "response_schema_conformance,response_headers_conformance,unsupported_method",
         "--phases", "examples,coverage,fuzzing", "--workers", "2",
         "--suppress-health-check", "all", "--no-color",
         "-H", f"Authorization: Bearer {token}"],
        capture_output=True, text=True, timeout=seconds + 60, cwd=tmp,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "HYPOTHESIS_STORAGE_DIRECTORY":
             str(tmp / ".hypothesis")},
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "Authentication failed" not in proc.stdout, \
        proc.stdout[-6000:]
    assert relay.alive()


def test_schemathesis_short(relay: RelayProcess, tmp_path: Path) -> None:
    _schemathesis(relay, 12, tmp_path)
    asyncio.run(_still_serves(relay.url))


@pytest.mark.slow
@pytest.mark.soak
def test_schemathesis_long(relay: RelayProcess, tmp_path: Path) -> None:
    _schemathesis(relay, 40, tmp_path)
    asyncio.run(_still_serves(relay.url))


async def _still_serves(url: str) -> None:
    a, b = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(url, a) as ca, RelayClient(url, b) as cb:
        await ca.send(b.did, "s", b"after fuzzing")
        assert [i.open(b) for i in await cb.fetch()] == [b"after fuzzing"]
