"""``didmesh vc-api serve`` as a real process on loopback: issuing with the bearer token,
verifying, size caps, token storage, shutdown."""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli
from didmesh.session.vcapi.server import LISTENING
from didmesh.session.vcapi.service import MAX_REQUEST_BYTES

CREDENTIAL = {
    "@context": ["https://www.w3.org/ns/credentials/v2",
                 {"Badge": "https://vocab.didmesh.test/ns#Badge"}],
    "type": ["VerifiableCredential", "Badge"],
    "credentialSubject": {"id": "did:example:member"},
}


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    err_path: Path

    def stderr(self) -> str:
        return self.err_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    env["DIDMESH_HOME"] = str(home)
    return env


def start(home: Path, *args: str, timeout: float = 30) -> Server:
    err_path = home / f"server-{time.monotonic_ns()}.err"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "didmesh.session.cli.main", "vc-api", "serve", "--port", "0",
             *args],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
            env=_env(home),
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.startswith(LISTENING):
                return Server(proc, line[len(LISTENING):].strip(), err_path)
    proc.kill()
    proc.wait(5)
    raise AssertionError(f"vc-api did not start: {err_path.read_text()[-2000:]}")


def call(url: str, body: Any, token: str | None = None, raw: bytes | None = None
         ) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    assert url.startswith("http://127.0.0.1:")  # the server under test, on loopback
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    h = tmp_path_factory.mktemp("vcapi")
    assert run_cli(h, "id", "new", "--no-passphrase").rc == 0
    return h


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    srv = start(home)
    yield srv
    assert srv.stop() == 0


def token(home: Path) -> str:
    return (home / "vc-api" / "token").read_text().strip()


def test_listens_on_loopback_and_prints_the_token_once(home: Path, server: Server) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    path = home / "vc-api" / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token(home) in server.stderr()  # printed once, when made
    again = start(home)
    try:
        assert token(home) not in again.stderr()
        assert "issuer did:key:" in again.stderr()
    finally:
        assert again.stop() == 0


def test_issue_verify_and_tamper_over_http(home: Path, server: Server) -> None:
    status, body = call(f"{server.url}/credentials/issue", {"credential": CREDENTIAL}, token(home))
    assert status == 201, body
    vc = body["verifiableCredential"]
    status, body = call(f"{server.url}/credentials/verify", {"verifiableCredential": vc})
    assert (status, body["verified"]) == (200, True)
    vc["credentialSubject"]["id"] = "did:example:someone-else"
    status, body = call(f"{server.url}/credentials/verify", {"verifiableCredential": vc})
    assert (status, body["verified"]) == (400, False)
    assert body["errors"][0]["title"] == "invalid_proof"


def test_issuing_without_the_token_is_refused(server: Server) -> None:
    status, body = call(f"{server.url}/credentials/issue", {"credential": CREDENTIAL})
    assert status == 401 and body["title"] == "unauthorized"
    status, body = call(f"{server.url}/credentials/issue", {"credential": CREDENTIAL}, "x" * 43)
    assert status == 401


def test_oversized_request_is_refused_before_parsing(server: Server) -> None:
    raw = b'{"verifiableCredential": "' + b"a" * MAX_REQUEST_BYTES + b'"}'
    status, body = call(f"{server.url}/credentials/verify", None, raw=raw)
    assert status == 413 and body["title"] == "request_too_large"


def test_verify_only_needs_no_identity(tmp_path: Path) -> None:
    srv = start(tmp_path, "--verify-only")
    try:
        status, body = call(f"{srv.url}/credentials/issue", {"credential": CREDENTIAL}, "x" * 43)
        assert status == 403
        assert not (tmp_path / "vc-api" / "token").exists()
    finally:
        assert srv.stop() == 0


def test_token_file_readable_by_others_is_refused(home: Path, tmp_path: Path) -> None:
    loose = tmp_path / "token"
    loose.write_text("y" * 43)
    loose.chmod(0o644)
    result = run_cli(home, "vc-api", "serve", "--port", "0", "--token-file", str(loose),
                     timeout=30)
    assert result.rc == 2
    assert result.err.startswith("didmesh: ") and "chmod 600" in result.err
    assert result.err.count("\n") == 1  # one line, no traceback
