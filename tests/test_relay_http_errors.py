"""Requests aiohttp cannot parse get the relay's JSON error, never the client's bytes back
(specs/relay.md, sections 5 and 6), against a real relay process on loopback.

Before, an oversized header was answered with aiohttp's plain-text 400, whose body repeated
the client's bytes, and each bad request logged a traceback at error level; a bad gzip body
was a 500 ``internal``, and a bad chunk in a body being read was answered only after
``body_timeout_s``. Each case is raw bytes on a socket (no HTTP client would send them); the
marker ``<script>EVIL`` must appear neither in the answer nor in the relay's log.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from didmesh.relay.errors import WIRE_ERRORS
from didmesh.relay.httperrors import MAX_FIELD_BYTES, MAX_HEADERS, MAX_LINE_BYTES
from relay_helpers import RelayProcess, exchange, start_relay

MARK = b"<script>EVIL"
LONG = MARK + b"A" * (MAX_FIELD_BYTES + 100)
SPEC = yaml.safe_load((Path(__file__).parent.parent / "specs" / "relay-api.yaml").read_text())
CODES = SPEC["components"]["schemas"]["ErrorCode"]["enum"]
POST = b"POST /v1/envelopes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    parts: tuple[bytes, ...]  # sent with a pause between them
    status: int
    code: str


CASES = [
    Case("header value over the limit",
         (b"GET /info HTTP/1.1\r\nHost: x\r\nX-Long: " + LONG + b"\r\n\r\n",), 431, "too_large"),
    Case("header name over the limit",
         (b"GET /info HTTP/1.1\r\nHost: x\r\nX" + b"a" * MAX_FIELD_BYTES + b": 1\r\n\r\n",),
         431, "too_large"),
    Case("request line over the limit",
         (b"GET /" + MARK + b"B" * MAX_LINE_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n",),
         431, "too_large"),
    Case("too many headers",
         (b"GET /info HTTP/1.1\r\nHost: x\r\n"
          + b"".join(b"X-%d: <script>EVIL\r\n" % i for i in range(MAX_HEADERS + 5)) + b"\r\n",),
         431, "too_large"),
    Case("header over the limit in a second request on the connection",
         (b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n",
          b"GET /info HTTP/1.1\r\nHost: x\r\nX-Long: " + LONG + b"\r\n\r\n"), 431, "too_large"),
    Case("header name with a bad character",
         (b"GET /info HTTP/1.1\r\nHost: x\r\n" + MARK + b": 1\r\n\r\n",), 400, "malformed"),
    Case("header value with a control character",
         (b"GET /info HTTP/1.1\r\nHost: x\r\nX-A: a\x01" + MARK + b"\r\n\r\n",), 400, "malformed"),
    Case("bad method", (b"G" + MARK + b"T /info HTTP/1.1\r\nHost: x\r\n\r\n",), 400, "malformed"),
    Case("bad version", (b"GET /info HTTP/9." + MARK + b"\r\nHost: x\r\n\r\n",), 400, "malformed"),
    Case("not HTTP at all", (b"\x16\x03\x01\x02\x00" + MARK + b"\r\n\r\n",), 400, "malformed"),
    Case("Content-Length with Transfer-Encoding",
         (POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",),
         400, "malformed"),
    Case("bad chunk size in the same packet",
         (POST + b"Transfer-Encoding: chunked\r\n\r\nZZ" + MARK + b"\r\n",), 400, "malformed"),
    Case("bad chunk size while the body is read",
         (POST + b"Transfer-Encoding: chunked\r\n\r\n", b"ZZ" + MARK + b"\r\n"), 400, "malformed"),
    Case("gzip body that does not inflate",
         (POST + b"Content-Encoding: gzip\r\nContent-Length: 12\r\n\r\n", MARK), 400, "malformed"),
]  # fmt: skip


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    with start_relay("memory", ["--rate-ip-per-s", "0", "--body-timeout-s", "20"]) as r:
        yield r


def last_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """The last HTTP response in ``raw`` (status, lower-cased headers, body)."""
    start = [m.start() for m in re.finditer(rb"HTTP/1\.[01] \d{3} ", raw)][-1]
    head, _, body = raw[start:].partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_unparseable_request_gets_a_json_error_without_its_bytes(
    relay: RelayProcess, case: Case
) -> None:
    raw, took = exchange(relay.port, *case.parts)
    assert MARK not in raw and b"AAAAAAAA" not in raw and b"aaaaaaaa" not in raw
    # every answer in HTTP/1.1 (aiohttp answered parse failures in HTTP/1.0)
    assert set(re.findall(rb"HTTP/\d\.\d(?= \d{3} )", raw)) == {b"HTTP/1.1"}
    status, headers, body = last_response(raw)
    assert (status, headers.get("x-didmesh-error")) == (case.status, case.code), raw[:400]
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["code"] in WIRE_ERRORS  # the spec's
    assert error["code"] in CODES  # Error schema: these two keys, a code of its enum
    assert error["code"] == case.code and error["message"].isprintable()
    if case.code == "too_large":
        assert str(MAX_FIELD_BYTES) in error["message"]
    assert took < 5  # answered at once, not after body_timeout_s (20 s here)


def test_the_relay_stays_healthy_and_logs_no_client_bytes(relay: RelayProcess) -> None:
    for case in CASES:
        exchange(relay.port, *case.parts)
    # a header just within the limit is served
    ok = b"GET /info HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * (MAX_FIELD_BYTES - 100)
    raw, _ = exchange(relay.port, ok + b"\r\nConnection: close\r\n\r\n")
    assert last_response(raw)[0] == 200
    with urllib.request.urlopen(relay.url + "/metrics", timeout=10) as resp:  # noqa: S310
        metrics = resp.read().decode()
    assert 'didmesh_relay_rejections_total{code="too_large"}' in metrics
    time.sleep(0.3)
    text = relay.log_path.read_bytes()
    assert MARK not in text and b"AAAAAAAA" not in text
    lines = relay.log_lines()
    assert not [line for line in lines if line["level"] in ("error", "critical")]
    assert not [line for line in lines if "exc" in line]
    access = [line for line in lines if line.get("msg") == "access"]
    assert {line.get("error") for line in access} >= {"too_large", "malformed"}
    warned = [line for line in lines if line.get("msg") == "bad HTTP request"]
    assert 1 <= len(warned) <= 6  # throttled: at most 5 per 10 s per address (+ a summary)


def _internal_rejections(relay: RelayProcess) -> float:
    with urllib.request.urlopen(relay.url + "/metrics", timeout=10) as resp:  # noqa: S310
        metrics = resp.read().decode()
    found = re.search(r'^didmesh_relay_rejections_total\{code="internal"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_a_client_that_leaves_before_its_body_is_not_a_relay_failure(
    relay: RelayProcess, how: str
) -> None:
    """A client that goes away while the relay reads its body (a dropped phone, a curl
    cut short) is no bug of the relay: before, each was logged at error level with a
    traceback ("Error handling request ... ConnectionResetError: Connection lost") and
    counted as ``internal`` (500) in the metrics an operator alarms on. Now the access
    line alone records it, as status 499 (the client closed the request)."""
    internal = _internal_rejections(relay)
    before = len(relay.log_lines())
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(POST + b'Content-Length: 100\r\n\r\n{"a": ')
        time.sleep(0.3)  # the handler waits for the rest of the body
        if how == "half-close":
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            assert sock.recv(65536) == b""  # nothing can be answered: the relay closes
    deadline = time.monotonic() + 5
    while True:
        new = relay.log_lines()[before:]
        access = [line for line in new
                  if line.get("msg") == "access" and line.get("path") == "/v1/envelopes"]
        if access or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not [line for line in new if line["level"] in ("error", "critical") or "exc" in line]
    assert [(line["status"], line.get("error")) for line in access] == [(499, "client_closed")]
    assert _internal_rejections(relay) == internal
