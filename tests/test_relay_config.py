"""Relay configuration and limits (relay/config.py, relay/limits.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from didmesh.relay.config import RelayConfig, load_config
from didmesh.relay.errors import LinkLimit, RateLimited, RelayConfigError
from didmesh.relay.limits import LinkSlots, RateLimiter, TokenBucket
from didmesh.relay.store.url import parse_store_url


def test_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text("inbox_max_envelopes = 10\nlink_max_bytes = 5\nport = 1\n")
    env = {"DIDMESH_RELAY_INBOX_MAX_ENVELOPES": "20", "DIDMESH_RELAY_ACCESS_LOG": "false"}
    c = load_config(flags={"port": "2", "store": None}, env=env, config_file=cfg)
    assert (c.inbox_max_envelopes, c.link_max_bytes, c.port, c.access_log) == (20, 5, 2, False)
    assert c.store == RelayConfig().store


def test_yaml_and_relay_table(tmp_path: Path) -> None:
    y = tmp_path / "relay.yaml"
    y.write_text("rate_ip_per_s: 0\nlink_max_duration_s: 1.5\n")
    assert load_config(env={}, config_file=y).link_max_duration_s == 1.5
    t = tmp_path / "relay.toml"
    t.write_text("[relay]\nlinks_total = 3\n")
    assert load_config(env={}, config_file=t).links_total == 3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("inbox_max_envelope = 3\n", "unknown relay setting 'inbox_max_envelope'"),
        ("links_total = 'many'\n", "links_total .* must be int"),
        ("links_total = 1.5\n", "must be int"),
        ("access_log = 1\n", "must be bool"),
        ("links_total = -1\n", "out of range"),
        ("max_request_bytes = 10\n", "at least max_envelope_bytes"),
        ("= broken", "malformed"),
        # a file has typed values: a string where a number or a switch belongs is refused,
        # not parsed as if it came from the environment
        ("port = '80'\n", "port .* must be int, got '80'"),
        ("link_max_duration_s = '1.5'\n", "must be float, got '1.5'"),
        ("stun = 'yes'\n", "stun .* must be bool, got 'yes'"),
        ("access_log = 'no'\n", "must be bool"),
        # huge but finite numbers: beyond 2**53 (what /info's JSON readers hold exactly)
        ("token_ttl_s = 99999999999999999999999\n", "token_ttl_s = .* is out of range"),
        ("header_timeout_s = 1e308\n", "header_timeout_s = .* is out of range"),
        ("links_total = 0\n", r"links_total = 0 is out of range \(1\.\.9007199254740992\)"),
        ("body_timeout_s = 0\n", r"body_timeout_s = 0.0 is out of range \(above 0\.\."),
        ("stun_port = 70000\n", r"stun_port = 70000 is out of range \(0\.\.65535\)"),
    ],
)
def test_bad_config_file(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "relay.toml"
    f.write_text(text)
    with pytest.raises(RelayConfigError, match=match):
        load_config(env={}, config_file=f)


def test_bad_env_and_extension(tmp_path: Path) -> None:
    with pytest.raises(RelayConfigError, match="DIDMESH_RELAY_LINKS_TOTAL"):
        load_config(env={"DIDMESH_RELAY_LINKS_TOTAL": "x"})
    f = tmp_path / "relay.ini"
    f.write_text("")
    with pytest.raises(RelayConfigError, match=".toml, .yaml"):
        load_config(env={}, config_file=f)


@pytest.mark.parametrize(
    ("url", "kind", "target"),
    [
        ("memory", "memory", ""),
        ("sqlite:/tmp/x.db", "sqlite", "/tmp/x.db"),
        ("sqlite:rel.db", "sqlite", "rel.db"),
        ("redis://127.0.0.1:6379/2", "redis", "redis://127.0.0.1:6379/2"),
    ],
)
def test_store_urls(url: str, kind: str, target: str) -> None:
    spec = parse_store_url(url)
    assert (spec.kind, spec.target) == (kind, target)


def test_default_store_under_didmesh_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DIDMESH_HOME", str(tmp_path))
    assert parse_store_url("").target == str(tmp_path / "relay" / "relay.sqlite3")
    with pytest.raises(RelayConfigError, match="unknown store"):
        parse_store_url("postgres://x")


def test_token_bucket() -> None:
    b = TokenBucket(rate=2.0, burst=3)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.5)
    assert b.take(0.5) == 0.0
    assert b.take(10.0) == 0.0 and b.tokens == 2.0  # refills to burst, not beyond


def test_rate_limiter_per_key_and_bounded() -> None:
    rl = RateLimiter(1.0, 2, "DID", max_keys=10)
    rl.check("a", 0.0)
    rl.check("a", 0.0)
    with pytest.raises(RateLimited, match="retry in 1.00 s"):
        rl.check("a", 0.0)
    rl.check("b", 0.0)  # another key is unaffected
    for i in range(50):
        rl.check(f"k{i}", 100.0 + i)
    assert len(rl) <= 10
    RateLimiter(0, 0, "IP").check("x", 0.0)  # disabled


def test_link_slots() -> None:
    s = LinkSlots(per_did=2, total=3)
    s.acquire("a")
    s.acquire("a")
    with pytest.raises(LinkLimit, match="per DID"):
        s.acquire("a")
    s.acquire("b")
    with pytest.raises(LinkLimit, match="maximum of 3"):
        s.acquire("c")
    s.release("a")
    s.acquire("c")
    assert s.active == 3


@pytest.mark.parametrize(
    ("name", "text"),
    [("deep.yaml", "[" * 3000 + "]" * 3000), ("inf.toml", "port = inf\n"),
     ("nan.toml", "rate_did_per_s = nan\n")],
)
def test_hostile_config_files(tmp_path: Path, name: str, text: str) -> None:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(RelayConfigError):
        load_config(env={}, config_file=f)
