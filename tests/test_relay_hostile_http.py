"""Hostile and odd HTTP against a real relay process on loopback (specs/relay.md, section 6;
claims F13 and F14 in specs/threat-model.md), raw bytes on sockets.

Three defects, found by a stranger and fixed here:

* a valid request followed in the same write by garbage lost its answer: aiohttp's parser
  raised on the garbage and dropped the requests it had parsed from that read, so only the
  400 came back;
* ``GET / HTTP/2.0`` was answered ``HTTP/2.0 404 Not Found`` (aiohttp writes the request's
  version in its status line), HTTP/0.9's ``GET /`` hung until the header timeout (first on
  a connection, and later, after a complete request, on a keep-alive one), and every parse
  failure was answered in HTTP/1.0;
* the 404 body repeated the request path (``no endpoint /...``) and the 405 body the method;
  the access log carried the decoded path, so ``%0A`` and ``%1B`` became a newline and an
  escape for anyone reading the log with ``jq -r``. (Found on the way: a 400 for unknown
  fields repeated every key sent, thousands of them, escapes and all.)
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from adversary.fuzz import fuzz_settings
from aiohttp.http import StreamWriter
from didmesh.identity.keys import IdentityKey
from didmesh.relay.app import METHOD_NOT_ALLOWED_MESSAGE, NOT_FOUND_MESSAGE
from didmesh.relay.client import RelayClient
from didmesh.relay.errors import WIRE_ERRORS
from didmesh.relay.httperrors import MAX_FIELD_BYTES
from didmesh.relay.httpversion import (
    UNSUPPORTED_MESSAGE,
    BareLine,
    FirstLine,
    version_refused,
)
from didmesh.relay.logtext import inert, request_target_path
from hypothesis import given
from hypothesis import strategies as st
from relay_helpers import RelayProcess, exchange, start_relay

SPEC = yaml.safe_load((Path(__file__).parent.parent / "specs" / "relay-api.yaml").read_text())
CODES = SPEC["components"]["schemas"]["ErrorCode"]["enum"]
MARK = b"EVILMARK"
INFO = b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n"
INFO_CLOSE = b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
MISSING = b"GET /nothing/here HTTP/1.1\r\nHost: x\r\n\r\n"
NOT_ALLOWED = b"DELETE /info HTTP/1.1\r\nHost: x\r\n\r\n"
BAD_JSON = (
    b"POST /v1/auth/challenge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n[]"
)


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    with start_relay("memory", ["--rate-ip-per-s", "0", "--header-timeout-s", "8"]) as r:
        yield r


@dataclass(frozen=True)
class Answer:
    version: bytes
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str | None:
        return self.headers.get("x-didmesh-error")


def answers(raw: bytes) -> list[Answer]:
    """Split a stream of responses (each with a Content-Length, as the relay's are)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"a response cut short: {raw[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        found = re.fullmatch(r"(HTTP/\d\.\d) (\d{3}) [A-Za-z -]+", lines[0])
        assert found, f"not a well-formed status line: {lines[0]!r}"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        size = int(headers["content-length"])
        out.append(Answer(found.group(1).encode(), int(found.group(2)), headers, rest[:size]))
        raw = rest[size:]
    return out


def relay_error(answer: Answer, status: int, code: str) -> dict[str, str]:
    """The JSON error of ``answer``, checked against the spec's Error schema."""
    assert (answer.status, answer.code) == (status, code), answer
    assert answer.headers["content-type"].startswith("application/json")
    error = json.loads(answer.body)["error"]
    assert set(error) == {"code", "message"} and error["code"] == code
    assert code in WIRE_ERRORS and code in CODES and error["message"].isprintable()
    return error


# ---------------------------------------------------------------- pipelined garbage

GARBAGE = b"\x16\x03\x01" + MARK + b"\r\n\r\n"
LONG_HEADER = b"GET /info HTTP/1.1\r\nHost: x\r\nX-Long: " + MARK * (MAX_FIELD_BYTES // 8 + 1)
PIPELINED = [
    # (name, bytes in one write, statuses of the valid requests, last status and code)
    ("valid then garbage", INFO + GARBAGE, [200], 400, "malformed"),
    ("valid then garbage without a line end", INFO + b"\x00" + MARK, [200], 400, "malformed"),
    ("three valid then garbage", INFO + MISSING + HEALTH + GARBAGE, [200, 404, 200],
     400, "malformed"),
    ("a POST with its body then garbage", BAD_JSON + GARBAGE, [400], 400, "malformed"),
    ("valid then a request without Host", INFO + b"GET /info HTTP/1.1\r\n\r\n", [200],
     400, "malformed"),
    ("valid then a bad header character", INFO + b"GET /info HTTP/1.1\r\nHost: x\r\nX: \x01"
     + MARK + b"\r\n\r\n", [200], 400, "malformed"),
    ("valid then a header over the limit", INFO + LONG_HEADER + b"\r\n\r\n", [200],
     431, "too_large"),
    ("valid then HTTP/2.0", INFO + b"GET /info HTTP/2.0\r\nHost: x\r\n\r\n", [200],
     505, "unsupported_http_version"),
    ("valid then HTTP/1.2", INFO + b"GET /info HTTP/1.2\r\nHost: x\r\n\r\n", [200],
     505, "unsupported_http_version"),
]  # fmt: skip


@pytest.mark.parametrize(("bytes_", "valid", "status", "code"),
                         [p[1:] for p in PIPELINED], ids=[p[0] for p in PIPELINED])
def test_requests_before_garbage_in_one_write_are_answered_then_the_garbage(
    relay: RelayProcess, bytes_: bytes, valid: list[int], status: int, code: str
) -> None:
    """Before, the valid requests' answers were lost: only the 400 came back."""
    raw, took = exchange(relay.port, bytes_)
    assert MARK not in raw
    got = answers(raw)  # the relay closed after the last one (exchange read to EOF)
    assert [a.status for a in got] == [*valid, status], raw[:600]
    assert all(a.version == b"HTTP/1.1" for a in got)
    assert json.loads(got[0].body)  # the valid requests' real answers
    relay_error(got[-1], status, code)
    assert got[-1].headers.get("connection") == "close"
    assert took < 5


def test_garbage_first_gets_its_error_and_a_new_connection_is_served(
    relay: RelayProcess,
) -> None:
    """After a framing error the rest of the stream cannot be framed, so a request behind
    garbage on the same connection is not answered (RFC 9112 section 2.2: respond 400 and
    close); the next connection is served."""
    raw, _ = exchange(relay.port, GARBAGE + INFO)
    got = answers(raw)
    assert [a.status for a in got] == [400] and MARK not in raw
    relay_error(got[0], 400, "malformed")
    got = answers(exchange(relay.port, INFO_CLOSE)[0])
    assert [a.status for a in got] == [200]


def test_pipelined_requests_on_one_connection_keep_their_order(relay: RelayProcess) -> None:
    """One request is parsed at a time now: pipelining still works, in order, whether the
    requests come in one write or byte by byte."""
    many = (INFO + MISSING + NOT_ALLOWED + BAD_JSON) * 3 + HEALTH.replace(
        b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"
    )
    want = [200, 404, 405, 400] * 3 + [200]
    got = answers(exchange(relay.port, many)[0])
    assert [a.status for a in got] == want
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        for i in range(0, len(many), 97):  # uneven pieces: requests split anywhere
            sock.sendall(many[i : i + 97])
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert [a.status for a in answers(raw)] == want


async def _token(url: str) -> str:
    async with RelayClient(url, IdentityKey.generate()) as client:
        return await client.token()


def _upgrade(path: bytes, token: str | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16))
    head = (b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n")
    if token is not None:
        head += b"Authorization: Bearer " + token.encode() + b"\r\n"
    return head + b"\r\n"


@pytest.mark.parametrize("before", [0, 3])
def test_a_websocket_frame_in_the_upgrade_write_still_reaches_the_socket(
    relay: RelayProcess, before: int
) -> None:
    """The parser now stops after each request; the bytes after an accepted upgrade are
    still the WebSocket's: a ping sent in the same write as the upgrade (and requests
    before it) gets its pong."""
    mask, payload = b"\x01\x02\x03\x04", b"didmesh"
    ping = bytes([0x89, 0x80 | len(payload)]) + mask
    ping += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    token = asyncio.run(_token(relay.url))
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        sock.sendall(INFO * before + _upgrade(b"/v1/inbox/ws", token) + ping)
        raw = b""
        while b"\x8a\x07didmesh" not in raw:
            chunk = sock.recv(65536)
            assert chunk, raw
            raw += chunk
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == before and b"HTTP/1.1 101 " in raw


def test_a_request_after_a_declined_upgrade_in_one_write_is_answered(
    relay: RelayProcess,
) -> None:
    declined = _upgrade(b"/v1/inbox/ws")  # no token: 401, no upgrade
    raw, _ = exchange(relay.port, declined + INFO_CLOSE)
    got = answers(raw)
    assert [(a.status, a.code) for a in got] == [(401, "auth_required"), (200, None)]


# ---------------------------------------------------------------- HTTP versions

VERSIONS = [
    ("HTTP/2.0", b"GET /info HTTP/2.0\r\nHost: x\r\n\r\n"),
    ("HTTP/2.0 to an unknown path", b"GET /" + MARK + b" HTTP/2.0\r\nHost: x\r\n\r\n"),
    ("HTTP/3.0", b"GET /info HTTP/3.0\r\nHost: x\r\n\r\n"),
    ("HTTP/1.2", b"GET /info HTTP/1.2\r\nHost: x\r\n\r\n"),
    ("HTTP/9.9", b"GET /info HTTP/9.9\r\nHost: x\r\n\r\n"),
    ("HTTP/0.9 spelled out", b"GET /info HTTP/0.9\r\n\r\n"),
    ("HTTP/0.9 request line alone", b"GET /info\r\n"),
    ("HTTP/0.9 with a bare LF", b"GET /" + MARK + b"\n"),
    ("HTTP/0.9 POST", b"POST /v1/envelopes\r\n"),
    ("HTTP/2 connection preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
]


@pytest.mark.parametrize("request_", [v[1] for v in VERSIONS], ids=[v[0] for v in VERSIONS])
def test_an_unspoken_http_version_gets_505_in_http11(
    relay: RelayProcess, request_: bytes
) -> None:
    """Before: ``HTTP/2.0 404 Not Found`` (the client's version echoed in the status line),
    ``HTTP/1.0 400`` for versions llhttp refuses, and no answer at all to HTTP/0.9's
    ``GET /`` until the header timeout."""
    raw, took = exchange(relay.port, request_)
    assert raw.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n") and MARK not in raw
    (got,) = answers(raw)
    error = relay_error(got, 505, "unsupported_http_version")
    assert error["message"] == UNSUPPORTED_MESSAGE
    assert got.headers.get("connection") == "close"
    assert took < 3  # at once, not after the header timeout (8 s here)


LATER_BARE_LINES = [
    # (name, the writes on one connection, the statuses, in order)
    ("after a request, in its write", [INFO + b"GET /\r\n"], [200, 505]),
    ("after a request, in a later write", [INFO, b"GET /info\r\n"], [200, 505]),
    ("after three requests, with a bare LF", [INFO + MISSING + HEALTH, b"GET /x\n"],
     [200, 404, 200, 505]),
    ("after a request with a body", [BAD_JSON.replace(b"2\r\n\r\n[]", b"4\r\n\r\n\r\n\r\n")
                                     + b"POST /v1/envelopes\r\n"], [400, 505]),
    ("after a request and an empty line", [INFO + b"\r\n", b"GET /\r\n"], [200, 505]),
    ("after ten requests in its write", [INFO * 10 + b"GET /\r\n"], [200] * 10 + [505]),
]  # fmt: skip


@pytest.mark.parametrize(("writes", "statuses"), [c[1:] for c in LATER_BARE_LINES],
                         ids=[c[0] for c in LATER_BARE_LINES])
def test_a_bare_request_line_later_on_a_connection_gets_505_at_once(
    relay: RelayProcess, writes: list[bytes], statuses: list[int]
) -> None:
    """HTTP/0.9's ``GET /path`` (no version) after complete requests on a keep-alive
    connection: it was answered only by the close at the keep-alive timeout (8 s here)."""
    before = len(relay.log_lines())
    raw, took = exchange(relay.port, *writes)
    got = answers(raw)
    assert [a.status for a in got] == statuses, raw[:600]
    assert all(a.version == b"HTTP/1.1" for a in got)
    error = relay_error(got[-1], 505, "unsupported_http_version")
    assert error["message"] == UNSUPPORTED_MESSAGE
    assert got[-1].headers.get("connection") == "close"
    assert took < 3
    time.sleep(0.2)
    lines = relay.log_lines()[before:]
    assert not [ln for ln in lines if ln["level"] in ("error", "critical") or "exc" in ln]


BODY_HEAD = (b"POST /v1/auth/challenge HTTP/1.1\r\nHost: x\r\n"
             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")


@pytest.mark.parametrize("before", [b"", INFO, INFO * 6], ids=["alone", "after one", "after six"])
@pytest.mark.parametrize("more", [b"", b"{tail}"], ids=["body ends there", "more body to come"])
def test_a_body_ending_like_a_bare_request_line_is_left_intact(
    relay: RelayProcess, before: bytes, more: bytes
) -> None:
    """A read that ends, inside or at the end of a body, with an empty line and ``GET /``
    (behind requests in the same read, which the parser holds back): the body is not cut
    or lengthened (the request after it is answered as itself)."""
    body = b"[1,\r\n\r\nGET /\r\n" + more
    head = BODY_HEAD % len(body)
    cut = len(before) + len(head) + len(body) - len(more)
    payload = before + head + body + INFO_CLOSE
    raw, _ = exchange(relay.port, payload[:cut], payload[cut:])
    got = answers(raw)
    want = [(200, None)] * before.count(b"GET") + [(400, "malformed"), (200, None)]
    assert [(a.status, a.code) for a in got] == want, raw[:600]


INFO10 = b"GET /info HTTP/1.0\r\n\r\n"
INFO10_KEEP = b"GET /info HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"


def test_http10_is_answered_with_an_http11_status_line_in_http10_framing(
    relay: RelayProcess,
) -> None:
    """RFC 9110 section 6.2: the answer's version is the highest the relay conforms to with
    the request's major version, HTTP/1.1 (aiohttp wrote ``HTTP/1.0``). The framing stays
    HTTP/1.0's (RFC 9112 sections 6.1, 9.3): a Content-Length, never chunked, and the
    connection closed after the answer, said with ``Connection: close``."""
    raw, took = exchange(relay.port, INFO10)
    (got,) = answers(raw)  # and then the relay closed: exchange read to EOF
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and took < 3
    assert got.headers.get("connection") == "close" and "transfer-encoding" not in got.headers
    assert json.loads(got.body)
    raw, _ = exchange(relay.port, b"GET /info HTTP/1.0\r\nX: \x01\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    (got,) = answers(exchange(relay.port, b"GET /nothing HTTP/1.0\r\n\r\n")[0])
    relay_error(got, 404, "not_found")
    assert got.version == b"HTTP/1.1" and got.headers.get("connection") == "close"


def test_http10_keep_alive_is_kept_only_when_asked(relay: RelayProcess) -> None:
    """An HTTP/1.0 client asking ``Connection: keep-alive`` gets it confirmed and a second
    answer on the same connection; the request without it is the last one answered."""
    raw, took = exchange(relay.port, INFO10_KEEP + INFO10 + INFO10)
    got = answers(raw)
    assert [(a.version, a.status) for a in got] == [(b"HTTP/1.1", 200)] * 2, raw[:600]
    assert [a.headers.get("connection") for a in got] == ["keep-alive", "close"]
    assert not [a for a in got if "transfer-encoding" in a.headers] and took < 3


def test_http10_falls_back_to_aiohttps_status_line_with_another_writer() -> None:
    """With a writer that is not aiohttp's plain one (another aiohttp), an HTTP/1.0 request
    is answered as aiohttp does (``HTTP/1.0``): the writer is left alone."""
    from didmesh.relay.httperrors import Http11StatusLine, _http11_writer

    class Other:
        loop = None

    other = Other()
    assert _http11_writer(other, object()) is other
    loop = asyncio.new_event_loop()
    try:
        built = _http11_writer(StreamWriter(_Proto(), loop), _Proto())
    finally:
        loop.close()
    assert isinstance(built, Http11StatusLine)


class _Proto:
    transport = None


# ---------------------------------------------------------------- another aiohttp

#: a relay process run as on an aiohttp whose internals differ (relay/httperrors.py lists
#: what the relay reads): code run before the relay's own main
FALLBACKS = {
    # aiohttp before 3.14.1: the parser takes no bound on queued requests
    "no queue bound": (
        "import didmesh.relay.httperrors as h\n"
        "_parser = h.HttpRequestParser\n"
        "def parser(*a, max_msg_queue_size=None, **k):\n"
        "    if max_msg_queue_size is not None:\n"
        "        raise TypeError('unexpected keyword argument max_msg_queue_size')\n"
        "    return _parser(*a, **k)\n"
        "h.HttpRequestParser = parser\n"
    ),
    # none of the private names the relay reads is there (as the relay sees it: aiohttp's
    # own handler keeps its attributes, under whatever names another aiohttp uses)
    "no internals": (
        "import didmesh.relay.httperrors as h\n"
        "_bound = h.one_request_at_a_time\n"
        "h.one_request_at_a_time = lambda handler, *a: _bound(object(), *a)\n"
        "h._ErrInfo = h._ERROR_MESSAGE = None\n"
        "h.request_queue = lambda handler: None\n"
    ),
}
FALLBACK_MAIN = "import sys\nfrom didmesh.relay.server import main\nsys.exit(main())\n"


@pytest.mark.parametrize("fallback", sorted(FALLBACKS))
def test_a_relay_on_another_aiohttp_falls_back_and_still_answers(fallback: str) -> None:
    """Without the aiohttp internals the relay's HTTP fixes read, it still answers every
    request, in order, in HTTP/1.1, and every parse failure with its JSON error, and closes
    a connection that stalls at the keep-alive timeout (2 s here) as aiohttp does: only the
    fixes that need those internals are off (requests before garbage in one read may go
    unanswered; a bare HTTP/0.9 line after a request waits for that timeout). It says so
    once in its log, and logs no traceback."""
    command = [sys.executable, "-c", FALLBACKS[fallback] + FALLBACK_MAIN]
    args = ["--rate-ip-per-s", "0", "--header-timeout-s", "2"]
    with start_relay("memory", args, command=command) as relay:
        got = answers(exchange(relay.port, INFO + MISSING + HEALTH + INFO_CLOSE)[0])
        assert [(a.version, a.status) for a in got] == [(b"HTTP/1.1", s) for s in
                                                        (200, 404, 200, 200)]
        raw, took = exchange(relay.port, GARBAGE + INFO)
        (got,) = answers(raw)
        relay_error(got, 400, "malformed")
        assert MARK not in raw and took < 1.5
        got = answers(exchange(relay.port, INFO + GARBAGE)[0])
        relay_error(got[-1], 400, "malformed")
        (got,) = answers(exchange(relay.port, INFO10)[0])
        assert (got.version, got.status, got.headers.get("connection")) == (
            b"HTTP/1.1", 200, "close")
        raw, took = exchange(relay.port, b"GET /info\r\n")  # bare, first: at once
        assert raw.startswith(b"HTTP/1.1 ") and took < 1.5
        raw, took = exchange(relay.port, INFO + b"GET /info\r\n")  # later: the timeout
        assert answers(raw)[0].status == 200 and 1.5 < took < 6
        time.sleep(0.3)
        lines = relay.log_lines()
    assert [ln for ln in lines if "no bound on queued requests" in ln.get("msg", "")]
    assert not [ln for ln in lines if ln["level"] in ("error", "critical") or "exc" in ln]


# ---------------------------------------------------------------- reflection, log injection

HOSTILE_PATH = b"/" + MARK + b"%0A%0D%1B%5B31m%E2%80%AE%C2%9B%7F%3Cscript%3E"


@pytest.mark.parametrize(
    ("request_", "status", "message"),
    [
        (b"GET " + HOSTILE_PATH + b"?x=%0A" + MARK + b" HTTP/1.1\r\nHost: x\r\n\r\n", 404,
         NOT_FOUND_MESSAGE),
        (b"GET /v1/" + MARK + b" HTTP/1.1\r\nHost: x\r\n\r\n", 404, NOT_FOUND_MESSAGE),
        (b"PROPFIND /info HTTP/1.1\r\nHost: x\r\n\r\n", 405, METHOD_NOT_ALLOWED_MESSAGE),
        (b"DELETE /v1/envelopes HTTP/1.1\r\nHost: x\r\n\r\n", 405, METHOD_NOT_ALLOWED_MESSAGE),
    ],
    ids=["404 hostile path", "404 under /v1", "405 PROPFIND", "405 DELETE"],
)
def test_404_and_405_bodies_are_fixed_text(
    relay: RelayProcess, request_: bytes, status: int, message: str
) -> None:
    """Before: ``no endpoint /EVILMARK...`` and ``PROPFIND is not allowed here``."""
    closing = request_.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    raw, _ = exchange(relay.port, closing)
    (got,) = answers(raw)
    error = relay_error(got, status, "not_found" if status == 404 else "method_not_allowed")
    assert error["message"] == message
    assert MARK not in raw and b"PROPFIND" not in got.body and b"DELETE" not in got.body
    if status == 405:
        assert got.headers["allow"]  # the methods it takes: fixed by the route, not the client


def test_unknown_field_names_come_back_bounded_and_inert(relay: RelayProcess) -> None:
    """A 400 names the unknown fields a client sent (useful to a developer), but at most
    five, each cut to 40 characters and percent-encoded outside printable ASCII: 3,000
    keys came back whole, escapes and all."""
    keys = {f"k{i:04d}\x1b[2J\u202e" + "x" * 60: 1 for i in range(3000)}
    body = json.dumps({"did": "did:key:z6Mk", **keys}).encode()
    raw, _ = exchange(relay.port, b"POST /v1/auth/challenge HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nConnection: close\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
    (got,) = answers(raw)
    message = relay_error(got, 400, "malformed")["message"]
    assert len(message) < 400 and message.isascii() and message.isprintable(), message
    assert message.startswith("unknown field(s): k0000%1B[2J%E2%80%AExxx")
    assert message.endswith(" and 2995 more")


@pytest.mark.parametrize(("parse", "count"), [("envelope", 500), ("link request", 40)])
def test_unknown_field_names_in_envelopes_and_link_requests_are_bounded(
    parse: str, count: int
) -> None:
    """(A link request is at most 4096 bytes, so fewer keys.)"""
    from didmesh.relay.envelope import Envelope
    from didmesh.relay.errors import RelayError
    from didmesh.relay.protocol import parse_link_request

    keys = {f"\x1b]0;{i}\x07" + "y" * (100 if count > 100 else 20): 1 for i in range(count)}
    with pytest.raises(RelayError) as caught:
        if parse == "envelope":
            Envelope.from_dict(keys)
        else:
            parse_link_request(json.dumps({"type": "link", **keys}), "did:key:z6Mk")
    assert len(caught.value.message) < 400 and caught.value.message.isprintable()
    assert caught.value.message.endswith(f" and {count - 5} more")
    assert "%1B]0;" in caught.value.message


def test_an_http_client_sees_the_fixed_404(relay: RelayProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(relay.url + "/" + MARK.decode() + "%0A", timeout=10)  # noqa: S310
    body = caught.value.read()
    assert caught.value.code == 404 and MARK not in body
    assert json.loads(body)["error"]["message"] == NOT_FOUND_MESSAGE


def test_access_log_carries_no_raw_client_bytes(relay: RelayProcess) -> None:
    """Every field of every log line is printable ASCII once the JSON is decoded (what
    ``jq -r`` prints), and the access line's path is the path as sent."""
    before = len(relay.log_lines())
    exchange(relay.port, b"GET " + HOSTILE_PATH + b"?q=%0A" + MARK + b" HTTP/1.1\r\n"
             b"Host: x\r\nConnection: close\r\n\r\n")
    exchange(relay.port, INFO + GARBAGE)
    exchange(relay.port, b"GET /" + MARK + b" HTTP/2.0\r\n\r\n")
    time.sleep(0.3)
    lines = relay.log_lines()[before:]
    access = [ln for ln in lines if ln.get("msg") == "access"]
    assert HOSTILE_PATH.decode() in [ln["path"] for ln in access]  # as sent, not decoded
    for line in lines:
        for key, value in line.items():
            if isinstance(value, str):
                assert value.isascii() and value.isprintable(), line
                assert MARK.decode() not in value or key == "path"  # not the query
    assert not [ln for ln in lines if ln["level"] in ("error", "critical") or "exc" in ln]


INERT = [
    ("/plain/path-1.2_~", "/plain/path-1.2_~"),
    ("/a\nb", "/a%0Ab"),
    ("/\r\n{\"level\":\"error\"}", "/%0D%0A{\"level\":\"error\"}"),
    ("/\x1b[31mred", "/%1B[31mred"),
    ("/del\x7f", "/del%7F"),
    ("/\u202eexe.txt", "/%E2%80%AEexe.txt"),  # right-to-left override
    ("/\x9b31m", "/%C2%9B31m"),  # C1 control sequence introducer
    ("/\udcff", "/%ED%B3%BF"),  # a lone surrogate (surrogateescape)
    ("/a b\tc", "/a%20b%09c"),
]


@pytest.mark.parametrize(("text", "logged"), INERT, ids=[i[1] for i in INERT])
def test_inert_percent_encodes_what_a_terminal_would_act_on(text: str, logged: str) -> None:
    assert inert(text) == logged
    assert inert(text).isascii() and inert(text).isprintable()


def test_the_json_log_formatter_writes_no_terminal_controls() -> None:
    """Whatever a log call is handed (an exception quoting client input, a field nobody
    made inert), no decoded field holds a character a terminal acts on; a traceback keeps
    its lines."""
    import logging

    from didmesh.relay.server import JsonFormatter

    evil = "x\x1b]0;owned\x07\u202e\x9b2J\r\n{\"level\":\"error\"}"
    try:
        raise ValueError(evil)
    except ValueError:
        record = logging.LogRecord("didmesh.relay", logging.ERROR, __file__, 1, "failed %s",
                                   (evil,), exc_info=__import__("sys").exc_info())
    record.fields = {"path": evil, "n": 3}
    line = JsonFormatter().format(record)
    assert "\n" not in line and line.isascii()
    out = json.loads(line)
    for key in ("msg", "path"):
        assert out[key].isprintable() and "\\u001b" in out[key], out
    assert out["n"] == 3 and out["exc"].count("\n") >= 3  # the traceback's lines
    assert all(c.isprintable() or c in "\n\t" for c in out["exc"])


def test_request_target_path_drops_the_query_and_bounds_the_length() -> None:
    assert request_target_path("/v1/inbox?after=%0A") == "/v1/inbox"
    assert request_target_path("/x#frag") == "/x"
    assert len(request_target_path("/" + "a" * 5000)) == 200
    assert len(inert("\x00" * 500)) == 200 * 3


# ---------------------------------------------------------------- sans-IO parts

FIRST_LINES = [
    # (pieces fed, bytes handed on)
    ([b"GET /\r\n"], b"GET /\r\n\r\n"),
    ([b"GET /x\n"], b"GET /x\n\r\n"),
    ([b"GE", b"T /", b"x\r", b"\n"], b"GET /x\r\n\r\n"),
    ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ([b"GET / HTTP/1.1\r\n", b"GET /\r\n"], b"GET / HTTP/1.1\r\nGET /\r\n"),  # first only
    ([b"\x16\x03\x01 \x00\r\n"], b"\x16\x03\x01 \x00\r\n"),  # not two printable tokens
    ([b"A" * 40, b" /\r\n"], b"A" * 40 + b" /\r\n"),  # over the limit (32): left alone
    ([b"", b"GET /\r\n"], b"GET /\r\n\r\n"),
]


@pytest.mark.parametrize(("pieces", "handed"), FIRST_LINES, ids=[repr(f[1]) for f in FIRST_LINES])
def test_first_line_completes_only_an_http09_request(pieces: list[bytes], handed: bytes) -> None:
    first = FirstLine(limit=32)
    assert b"".join(first.feed(p) for p in pieces) == handed
    assert first.done == (b"\n" in handed)


BARE_LINES = [
    # (pieces fed, whether they end with a bare request line after an empty line)
    ([b"GET /\r\n"], True),  # the start of a connection counts as after an empty line
    ([INFO, b"GET /x\r\n"], True),
    ([INFO + b"GET /x\n"], True),
    ([INFO + b"GE", b"T /x\r", b"\n"], True),
    ([INFO + b"GET /x\r\n\r\n"], False),  # ended already
    ([INFO + b"GET /x HTTP/1.1\r\n"], False),  # a version
    ([b"GET /x HTTP/1.1\r\nX-A: b\r\n"], False),  # a header line looks alike, no empty line
    ([INFO + b"GET /x"], False),  # no line end yet
    ([INFO + b"\x16\x03 \x01\r\n"], False),  # not printable tokens
    ([INFO, b"A" * 40 + b" /\r\n"], False),  # longer than the limit (32)
    ([INFO, b"abc GET /\r\n"], False),  # three tokens
]


@pytest.mark.parametrize(("pieces", "bare"), BARE_LINES, ids=[repr(b[0])[-24:] for b in BARE_LINES])
def test_bare_line_spots_a_versionless_line_after_an_empty_line(
    pieces: list[bytes], bare: bool
) -> None:
    watch = BareLine(limit=32)
    for piece in pieces:
        watch.feed(piece)
    assert watch.ends_with_bare_line() is bare


def test_version_refused_reads_llhttp_reasons_not_client_bytes() -> None:
    from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine

    refused = "Bad status line:\n  Invalid HTTP version:\n\n  b''\n   ^"
    assert version_refused(BadStatusLine(error=refused))
    assert version_refused(BadHttpMessage("Pause on PRI/Upgrade:\n\n  b''\n    ^"))
    # the client's bytes come after the reason, in repr form: they cannot make a 505
    assert not version_refused(
        BadHttpMessage("Invalid method encountered:\n\n  b'Invalid HTTP version:'\n  ^")
    )
    assert not version_refused(ValueError("Invalid HTTP version"))


# ---------------------------------------------------------------- fuzz: pipelined mixtures

VALID = {  # a request and its answer's status (all keep the connection open)
    "info": (INFO, 200),
    "health": (HEALTH, 200),
    "missing": (MISSING, 404),
    "not allowed": (NOT_ALLOWED, 405),
    "bad body": (BAD_JSON, 400),
}
_NOT_A_METHOD_START = [b for b in range(256) if not (0x41 <= b <= 0x5A) and b not in b"\r\n"]


@st.composite
def garbage(draw: st.DrawFn) -> tuple[bytes, int, str]:
    """Bytes that are not a request, each kind with the answer it must get."""
    noise = draw(st.binary(max_size=64))
    kind = draw(st.sampled_from(["not a method", "header control char", "version", "long"]))
    if kind == "not a method":
        first = bytes([draw(st.sampled_from(_NOT_A_METHOD_START))])
        return first + noise + MARK + b"\r\n\r\n", 400, "malformed"
    if kind == "header control char":
        ctl = bytes([draw(st.sampled_from([*range(0, 9), *range(11, 13), *range(14, 32), 127]))])
        head = b"GET /info HTTP/1.1\r\nHost: x\r\nX-A: " + ctl
        return head + noise + MARK + b"\r\n\r\n", 400, "malformed"
    if kind == "version":
        major, minor = draw(st.integers(0, 9)), draw(st.integers(0, 9))
        if (major, minor) in ((1, 0), (1, 1)):
            major = 2
        line = b"GET /" + MARK + b" HTTP/%d.%d" % (major, minor)
        return line + b"\r\nHost: x\r\n\r\n", 505, "unsupported_http_version"
    tail = noise.replace(b"\r", b"").replace(b"\n", b"")
    return LONG_HEADER + tail + b"\r\n\r\n", 431, "too_large"


@fuzz_settings(40)
@given(
    before=st.lists(st.sampled_from(sorted(VALID)), max_size=4),
    bad=garbage(),
    split=st.integers(0, 400),
)
def test_fuzz_valid_requests_then_garbage(
    relay: RelayProcess, before: list[str], bad: tuple[bytes, int, str], split: int
) -> None:
    """Any number of valid requests, then garbage of any kind, in one write or cut
    anywhere in two: each valid request gets its answer in order, then the garbage its
    JSON error in HTTP/1.1, then the relay closes; nothing of the garbage comes back."""
    payload = b"".join(VALID[name][0] for name in before) + bad[0]
    cut = min(split, len(payload))
    parts = (payload[:cut], payload[cut:]) if 0 < cut < len(payload) else (payload,)
    raw, took = exchange(relay.port, *parts)
    assert MARK not in raw
    got = answers(raw)
    assert [a.status for a in got] == [VALID[name][1] for name in before] + [bad[1]], raw[:800]
    assert all(a.version == b"HTTP/1.1" for a in got)
    relay_error(got[-1], bad[1], bad[2])
    assert took < 5
