"""Every JSON the relay layer reads goes through identity.strict_json.loads_strict: repeated
keys, NaN/Infinity and deep nesting are refused with the same codes as any malformed input,
on the wire (a real relay process) and in the sans-IO parsers."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.envelope import Envelope, seal
from didmesh.relay.errors import InvalidEnvelope, MalformedRequest, TooLarge
from didmesh.relay.protocol import MAX_CONTROL_BYTES, Linked, parse_link_request
from relay_helpers import RelayProcess, shared_relay  # noqa: F401
from test_relay_server import code_of, raw

ALICE, BOB = IdentityKey.generate(), IdentityKey.generate()


def _envelope_text() -> str:
    env = seal(ALICE, BOB.did, "s", b"hi", now_ms=int(time.time() * 1000))
    return env.to_json().decode()


def _with_repeated(text: str, key: str, value: Any) -> str:
    """``text`` (a JSON object) with ``key`` given a second time (a smuggling attempt)."""
    return text[:-1] + f', "{key}": {json.dumps(value)}' + "}"


HOSTILE_ENVELOPES = {
    "repeated-to": (_with_repeated(_envelope_text(), "to", ALICE.did), "repeats the key 'to'"),
    "nan-ts": (_envelope_text().replace('"ts":', '"ts":NaN,"x":'), "NaN"),
    "infinity-ttl": (_envelope_text().replace('"ttl":', '"ttl":Infinity,"y":'), "Infinity"),
    "deep": ("[" * 100 + "]" * 100, "nested deeper than 64"),
    "not-utf8": (b'{"v": "\xff"}', "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ENVELOPES))
def test_hostile_envelope_json(case: str) -> None:
    text, fragment = HOSTILE_ENVELOPES[case]
    with pytest.raises(InvalidEnvelope, match=fragment) as exc:
        Envelope.from_json(text)
    assert exc.value.message.startswith("envelope ")


def test_envelope_size_is_checked_before_parsing() -> None:
    with pytest.raises(TooLarge, match="envelope is 2000 bytes"):
        Envelope.from_json(b"[" * 2000, max_bytes=1000)
    assert Envelope.from_json(_envelope_text()).to == BOB.did


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (_with_repeated(json.dumps({"type": "link", "session": "s", "peer": BOB.did}),
                        "peer", IdentityKey.generate().did), "repeats the key 'peer'"),
        ('{"type": "link", "session": NaN}', "NaN"),
        (" " * (MAX_CONTROL_BYTES + 1), f"over {MAX_CONTROL_BYTES} bytes"),
        ("[" * 100 + "]" * 100, "nested"),
    ],
    ids=["repeated-peer", "nan", "oversize", "deep"],
)
def test_hostile_control_messages(text: str, fragment: str) -> None:
    with pytest.raises(MalformedRequest, match=fragment):
        parse_link_request(text, ALICE.did)
    with pytest.raises(MalformedRequest, match=fragment):
        Linked.parse(text)


@pytest.mark.parametrize(
    ("path", "payload", "code", "fragment"),
    [
        ("/v1/auth/challenge", b'{"did": "%s", "did": "%s"}', "malformed", "repeats the key"),
        ("/v1/auth/challenge", b'{"did": NaN}', "malformed", "NaN"),
        ("/v1/auth/challenge", b"[" * 100 + b"]" * 100, "malformed", "nested"),
        ("/v1/auth/challenge", b"{nope", "malformed", "request body is not valid JSON"),
        ("/v1/envelopes", b'{"v": 1, "v": 1}', "invalid_envelope", "repeats the key 'v'"),
        ("/v1/envelopes", b'{"ts": -Infinity}', "invalid_envelope", "Infinity"),
    ],
    ids=["repeated-did", "nan", "deep", "truncated", "envelope-repeated", "envelope-inf"],
)
async def test_hostile_json_on_the_wire(
    shared_relay: RelayProcess,  # noqa: F811
    path: str, payload: bytes, code: str, fragment: str,
) -> None:
    if b"%s" in payload:
        payload = payload % (ALICE.did.encode(), BOB.did.encode())
    status, body = await raw("POST", shared_relay.url + path, data=payload)
    assert (status, code_of(body)) == (400, code)
    assert fragment in body["error"]["message"]
