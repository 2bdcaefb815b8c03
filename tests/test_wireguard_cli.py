"""``didmesh wg config`` and ``didmesh wg mpyc-args`` on homes that hold a really agreed
session (session.testing.World): files 0600, secrets only with --stdout, --json, errors
from the tree with their exit codes."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli
from didmesh.session.cli.main import main
from didmesh.session.testing import World
from didmesh.session.wireguard import (
    build_config,
    encode_key,
    load_plan,
    mpyc_args,
    parse_conf,
    render_setconf,
)
from wg_helpers import agreed_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("wgcli")
    yield asyncio.run(agreed_world(root, lambda i: f"tcp://[fd00::{i}]:{51820 + i}"))


def home(world: World, i: int) -> str:
    return str(world.root / world.parties[i].name)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def secrets_of(world: World, i: int) -> list[str]:
    cfg = build_config(load_plan(world.parties[i].engine.store, world.sid))
    return [encode_key(cfg.private_key), *(encode_key(p.preshared_key) for p in cfg.peers)]


def test_config_writes_a_private_file_and_prints_no_secret(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "wg0.conf"
    rc, out, err = cli(capsys, "wg", "config", world.sid[:8], "--home", home(world, 1),
                       "--out", str(out_file))
    assert rc == 0, err
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    text = out_file.read_text()
    secrets = secrets_of(world, 1)
    assert all(s in text for s in secrets)
    assert not any(s in out + err for s in secrets)
    assert "sudo wg-quick up" in out and "party 1 of 3" in out
    parsed = parse_conf(text, quick=True)
    assert parsed.listen_port == 51821
    assert {p.endpoint for p in parsed.peers} == {None, "[fd00::2]:51822"}


def test_config_default_path_json_and_setconf(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = cli(capsys, "wg", "config", world.sid, "--home", home(world, 2), "--json",
                       "--format", "setconf", "--listen-port", "40000")
    assert rc == 0, err
    doc: dict[str, Any] = json.loads(out)
    path = Path(doc["file"])
    assert path.parent == world.root / world.parties[2].name / "sessions" / world.sid
    assert path.name == f"dm{world.sid[:8]}.setconf"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert doc["party"] == 2 and doc["listenPort"] == 40000 and doc["format"] == "setconf"
    assert [p["party"] for p in doc["peers"]] == [0, 1]
    assert "peers will send to 51822" in err  # the warning goes to stderr
    assert not any(s in out + err for s in secrets_of(world, 2))
    assert "Address" not in path.read_text()
    plan = load_plan(world.parties[2].engine.store, world.sid)
    assert path.read_text() == render_setconf(build_config(plan, listen_port=40000))


def test_stdout_prints_the_config_only_when_asked(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = cli(capsys, "wg", "config", world.sid, "--home", home(world, 0), "--stdout")
    assert rc == 0 and all(s in out for s in secrets_of(world, 0))
    assert parse_conf(out, quick=True).listen_port is None
    rc, out, _ = cli(capsys, "wg", "config", world.sid, "--home", home(world, 0), "--stdout",
                     "--json", "--keepalive", "0")
    doc = json.loads(out)
    assert rc == 0 and "PersistentKeepalive" not in doc["config"]
    assert all(p["persistentKeepalive"] is None for p in doc["peers"])


def test_mpyc_args(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    plan = load_plan(world.parties[1].engine.store, world.sid)
    rc, out, _ = cli(capsys, "wg", "mpyc-args", world.sid[:6], "--home", home(world, 1))
    assert rc == 0 and out.split() == mpyc_args(plan)
    rc, out, _ = cli(capsys, "wg", "mpyc-args", world.sid, "--home", home(world, 1), "--json",
                     "--ipv6", "--port", "12000")
    assert json.loads(out)["args"] == mpyc_args(plan, port=12000, ipv6=True)


def test_errors_are_one_line_with_codes(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, out, err = cli(capsys, "wg", "config", "ffff0000", "--home", home(world, 1), "--json")
    assert rc == 2 and json.loads(out)["error"] == "session_not_found"
    assert err.startswith("didmesh: ") and err.count("\n") == 1
    (tmp_path / "pending").mkdir()
    pending = World(tmp_path / "pending", 3)  # created, never agreed
    rc, out, err = cli(capsys, "wg", "mpyc-args", pending.sid,
                       "--home", str(pending.root / pending.parties[0].name), "--json")
    assert rc == 2 and json.loads(out)["error"] == "wireguard_session_not_agreed"
    assert "didmesh status" in err
    rc, out, err = cli(capsys, "wg", "config", world.sid, "--home", home(world, 1),
                       "--listen-port", "0")
    assert rc == 2 and "outside 1..65535" in err


def test_the_installed_command_runs(world: World) -> None:
    res = run_cli(Path(home(world, 1)), "wg", "mpyc-args", world.sid, timeout=60)
    assert res.rc == 0 and res.out.split()[-2:] == ["-I", "1"]
