"""Fuzzing the relay's parsers of untrusted input (issue 6, "Fuzzing").

Envelopes (JSON, fields, crypto), link/push control messages, auth challenges and tokens,
the client's parsing of relay answers, error bodies, config files, environment values and
store URLs. Property: any input -> a result or a DidmeshError; never another exception,
never a hang. A mutated envelope that still opens carries exactly the original content.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from adversary.fuzz import (
    byte_mutations,
    dumps,
    fuzz_settings,
    json_values,
    mutate,
    nested,
    only_tree_errors,
)
from didmesh.identity.keys import IdentityKey
from didmesh.relay.auth import Authenticator, sign_challenge
from didmesh.relay.client import RelayClient
from didmesh.relay.config import FIELD_TYPES, load_config, read_config_file
from didmesh.relay.envelope import Envelope, open_envelope, seal
from didmesh.relay.errors import RelayError, error_from_wire
from didmesh.relay.protocol import (
    Linked,
    parse_ack_ids,
    parse_link_request,
    parse_push_client_message,
)
from didmesh.relay.store.url import parse_store_url
from hypothesis import given
from hypothesis import strategies as st

NOW = 1_700_000_000_000
ALICE = IdentityKey.from_seed(bytes(range(32)))
BOB = IdentityKey.from_seed(bytes(range(1, 33)))
SECRET = bytes(range(32))
_ENV = seal(ALICE, BOB.did, "s-1", b"the plaintext", now_ms=NOW, ttl=60, rng=lambda n: b"\x07" * n)
_ENV_DICT = _ENV.to_dict()


def _open_env(raw: bytes | str) -> bytes:
    env = Envelope.from_json(raw, max_bytes=64 * 1024)
    env.verify_signature()
    return open_envelope(BOB, env, now_ms=NOW + 1000)


# --------------------------------------------------------------------------- envelopes


@fuzz_settings(200)
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_fuzz_envelope_random_bytes(raw: bytes | str) -> None:
    only_tree_errors("Envelope.from_json", _open_env, raw)


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_envelope_field_mutations(data: st.DataObject) -> None:
    doc = mutate(_ENV_DICT, data)
    got = only_tree_errors("open_envelope(mutated)", _open_env, dumps(doc))
    if got is not None:  # whatever still opens is the sealed message, unaltered
        assert got == b"the plaintext" and Envelope.from_dict(doc) == _ENV


@fuzz_settings(150)
@given(data=st.data())
def test_fuzz_envelope_byte_mutations(data: st.DataObject) -> None:
    raw = byte_mutations(_ENV.to_json(), data)
    got = only_tree_errors("open_envelope(bytes)", _open_env, raw)
    if got is not None:
        assert got == b"the plaintext"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(nested(3000).encode(), id="deep-nesting"),
        pytest.param(b"x" * 70_000, id="oversize"),
        pytest.param(b'{"v":1e999}', id="huge-float"),
        pytest.param(b"\xef\xbb\xbf{}", id="bom"),
    ],
)
def test_envelope_classic_attacks(raw: bytes) -> None:
    assert only_tree_errors("Envelope.from_json", _open_env, raw) is None


# --------------------------------------------------------------------------- control messages

_LINK = {"type": "link", "session": "s-1", "peer": BOB.did, "link_id": "a"}
_LINKED = {
    "type": "linked", "session": "s-1", "peer": BOB.did, "link_id": "a",
    "max_bytes": 1024, "max_duration_s": 60.0, "max_frame": 1024,
}  # fmt: skip


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_link_control_messages(data: st.DataObject) -> None:
    text = dumps(mutate(_LINK, data))
    req = only_tree_errors("parse_link_request", parse_link_request, text, ALICE.did)
    if req is not None:
        assert req.peer != ALICE.did
    only_tree_errors("parse_push_client_message", parse_push_client_message, text)
    raw = data.draw(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
    only_tree_errors("parse_link_request", parse_link_request, raw, ALICE.did)
    only_tree_errors("parse_push_client_message", parse_push_client_message, raw)
    only_tree_errors("parse_ack_ids", parse_ack_ids, data.draw(json_values))


@fuzz_settings(150)
@given(data=st.data())
def test_fuzz_linked_message_from_relay(data: st.DataObject) -> None:
    doc = mutate(_LINKED, data)
    text = dumps(doc)  # inf as 1e400, NaN, integers of any length: all refused by the parser
    only_tree_errors("Linked.parse", Linked.parse, text)


def test_linked_message_with_infinite_limit() -> None:
    text = json.dumps({**_LINKED, "max_bytes": 1}).replace('"max_bytes": 1', '"max_bytes": 1e999')
    only_tree_errors("Linked.parse", Linked.parse, text)


def test_control_message_deep_nesting() -> None:
    only_tree_errors("parse_link_request", parse_link_request, nested(2000), ALICE.did)


# --------------------------------------------------------------------------- client parsing


def _client_parse(text: str) -> list[Any]:
    """What the client does with a push batch: the strict parser, then the items."""
    from didmesh.identity.strict_json import loads_strict
    from didmesh.relay.errors import RelayProtocolError

    data = loads_strict(text, max_bytes=1 << 20, error=RelayProtocolError, what="batch")
    return RelayClient._parse_items(data)


@fuzz_settings(150)
@given(data=st.data())
def test_fuzz_inbox_batch_from_relay(data: st.DataObject) -> None:
    batch: Any = [{"received_ms": NOW, "envelope": _ENV_DICT}]
    batch = mutate(batch, data, rounds=3)
    text = dumps(batch)  # as the relay's bytes: parsed by the client first
    items = only_tree_errors("RelayClient._parse_items", _client_parse, text)
    for item in items or []:
        got = only_tree_errors("Received.open", item.open, BOB, now_ms=NOW + 1000)
        if got is not None:
            assert got == b"the plaintext"


def test_inbox_batch_with_infinite_time() -> None:
    batch = json.loads(
        '[{"received_ms": 1e999, "envelope": ENV}]'.replace("ENV", json.dumps(_ENV_DICT))
    )
    only_tree_errors("RelayClient._parse_items", RelayClient._parse_items, batch)


@fuzz_settings(200)
@given(status=st.integers(100, 599), body=json_values)
def test_fuzz_error_bodies(status: int, body: Any) -> None:
    err = error_from_wire(status, body, "http://relay")
    assert isinstance(err, RelayError) and err.message


# --------------------------------------------------------------------------- auth


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_auth_tokens_and_challenges(data: st.DataObject) -> None:
    auth = Authenticator(SECRET, "relay-fuzz")
    ch = auth.issue_challenge(ALICE.did, now_ms=NOW)
    tok = auth.issue_token(ALICE.did, now_ms=NOW)
    bad_tok = data.draw(
        st.one_of(
            st.text(max_size=120),
            st.builds(lambda i, c: tok.encoded[:i] + c + tok.encoded[i + 1 :],
                      st.integers(0, len(tok.encoded) - 1), st.characters()),
            json_values,
        )
    )  # fmt: skip
    got = only_tree_errors("verify_token", auth.verify_token, bad_tok, now_ms=NOW)
    if got is not None:
        assert bad_tok == tok.encoded and got.did == ALICE.did
    sig = sign_challenge(ALICE, "relay-fuzz", ch.encoded)
    args = [ALICE.did, ch.encoded, sig]
    i = data.draw(st.integers(0, 2))
    args[i] = data.draw(st.one_of(json_values, st.text(max_size=200)))
    got_ch = only_tree_errors("redeem", auth.redeem, *args, now_ms=NOW)
    if got_ch is not None:
        assert args == [ALICE.did, ch.encoded, sig]


# --------------------------------------------------------------------------- config


@fuzz_settings(120)
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.dictionaries(st.sampled_from(sorted(FIELD_TYPES)), json_values, max_size=4).map(
            lambda d: "\n".join(f"{k}: {dumps(v)}" for k, v in d.items())
        ),
    ),
    suffix=st.sampled_from([".toml", ".yaml", ".yml", ".conf"]),
)
def test_fuzz_relay_config_file(
    tmp_path_factory: pytest.TempPathFactory, text: str, suffix: str
) -> None:
    path = tmp_path_factory.mktemp("cfg") / f"relay{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    only_tree_errors("read_config_file", read_config_file, path)
    only_tree_errors("load_config", load_config, config_file=path, env={})


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("port = inf\n", id="toml-inf"),
        pytest.param("rate_did_per_s = nan\n", id="toml-nan-float"),
        pytest.param("relay:\n  relay: 1\n", id="yaml-nested"),
        pytest.param("[" * 2000 + "]" * 2000, id="yaml-deep"),
    ],
)  # fmt: skip
def test_relay_config_file_attacks(tmp_path: Path, text: str) -> None:
    path = tmp_path / ("relay.toml" if "=" in text else "relay.yaml")
    path.write_text(text)
    only_tree_errors("load_config", load_config, config_file=path, env={})


@fuzz_settings(150)
@given(
    env=st.dictionaries(
        st.sampled_from(sorted(FIELD_TYPES)).map(lambda k: "DIDMESH_RELAY_" + k.upper()),
        st.text(max_size=30),
        max_size=4,
    ),
    store=st.one_of(st.none(), st.text(max_size=60)),
)
def test_fuzz_relay_env_and_store_url(env: dict[str, str], store: str | None) -> None:
    only_tree_errors("load_config(env)", load_config, env=env)
    only_tree_errors("parse_store_url", parse_store_url, store)
