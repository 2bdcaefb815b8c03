"""The files an operator deploys (relay/deploy/): the sample config documents every setting
and loads; the systemd unit verifies and its command serves; the container file's command,
config and environment serve. (The nginx site is run by tests/test_relay_deploy.py.)"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import fields
from pathlib import Path

import pytest
from didmesh.relay.config import RelayConfig, load_config, read_config_file
from relay_helpers import free_port, spawn_relay

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "relay" / "deploy"
SETTINGS = [f.name for f in fields(RelayConfig)]
#: the deployment's STUN (every address, UDP 3478/3479) moved to loopback and free ports
LOOPBACK_STUN = {"DIDMESH_RELAY_STUN_HOST": "127.0.0.1", "DIDMESH_RELAY_STUN_PORT": "0",
                 "DIDMESH_RELAY_STUN_ALT_PORT": "0"}


def test_sample_config_has_every_setting_and_loads() -> None:
    sample = DEPLOY / "relay.toml"
    values = read_config_file(sample)
    assert sorted(values) == sorted(SETTINGS), set(SETTINGS) ^ set(values)
    text = sample.read_text()
    for name in SETTINGS:  # each one explained on its line or in its section
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{name} ="))
        assert "#" in line or name in ("rate_did_burst", "rate_ip_burst", "challenge_ttl_s"), line
    cfg = load_config(config_file=sample, env={})
    defaults = RelayConfig()
    deployment = {"store", "trusted_proxies", "metrics_listen", "stun_host", "stun_port",
                  "stun_alt_port"}
    for name in SETTINGS:  # everything else is the default, as the header says
        if name not in deployment:
            assert getattr(cfg, name) == getattr(defaults, name), name


def test_every_setting_is_documented_in_the_spec() -> None:
    spec = (ROOT / "specs" / "relay.md").read_text()
    missing = [n for n in SETTINGS if f"`{n}`" not in spec]
    assert not missing


def _didmesh() -> list[str]:
    return [sys.executable, "-m", "didmesh.session.cli.main"]


def _serve(argv: list[str], env: dict[str, str], home: Path, store: str = "memory") -> None:
    """Start ``argv`` (a deployed command line; the helper adds loopback, port 0 and
    ``store``), check /healthz and /metrics, SIGTERM it."""
    relay = spawn_relay(store, [], env=env, home=home, command=argv)
    try:
        with urllib.request.urlopen(relay.url + "/healthz", timeout=5) as r:  # noqa: S310
            assert r.status == 200
        mport = env["DIDMESH_RELAY_METRICS_LISTEN"].rsplit(":", 1)[1]
        with urllib.request.urlopen(  # noqa: S310
                f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            assert b"didmesh_relay_process_open_fds" in r.read()
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.proc.wait(30) == 0
    finally:
        if relay.alive():
            relay.proc.kill()
        relay.proc.wait(10)
        if relay.proc.stdout:
            relay.proc.stdout.close()


def test_systemd_unit_verifies_and_its_command_serves(tmp_path: Path) -> None:
    unit = (DEPLOY / "didmesh-relay.service").read_text()
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes",
                   "StateDirectoryMode=0700", "UMask=0077", "CapabilityBoundingSet=",
                   "SystemCallFilter=@system-service", "LimitNOFILE=", "PrivateTmp=yes"):
        assert option in unit, option
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))  # type: ignore[union-attr]
    sample = load_config(config_file=DEPLOY / "relay.toml", env={})
    assert stop > sample.drain_timeout_s + sample.shutdown_timeout_s
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M).group(1)  # type: ignore[union-attr]
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/local/bin/didmesh" and argv[1:3] == ["relay", "serve"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    exe = tmp_path / "didmesh"  # the unit's ExecStart must exist for verify
    exe.write_text(f"#!/bin/sh\nexec {shlex.join(_didmesh())} \"$@\"\n")
    exe.chmod(0o755)
    unit_file = tmp_path / "didmesh-relay.service"
    unit_file.write_text(unit.replace("/usr/local/bin/didmesh", str(exe)))
    r = subprocess.run([analyze, "verify", str(unit_file)], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    problems = [ln for ln in r.stderr.splitlines()
                if "didmesh-relay.service" in ln and "network-online" not in ln
                and "redis-server.service" not in ln]
    assert r.returncode == 0 and not problems, r.stderr
    # its command, with the sample config; only where it listens and stores changes here
    env = {"DIDMESH_RELAY_PORT": "0", "DIDMESH_RELAY_STORE": "memory",
           "DIDMESH_RELAY_METRICS_LISTEN": f"127.0.0.1:{free_port()}", **LOOPBACK_STUN}
    cfg = tmp_path / "relay.toml"
    shutil.copy(DEPLOY / "relay.toml", cfg)
    _serve([*_didmesh(), *argv[1:-1], str(cfg)], env, tmp_path / "state")


def test_container_file_command_config_and_environment_serve(tmp_path: Path) -> None:
    text = (DEPLOY / "Containerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path
    entry = re.search(r'^ENTRYPOINT (\[.+\])$', text, re.M).group(1)  # type: ignore[union-attr]
    import json

    argv = json.loads(entry)
    assert argv[:3] == ["didmesh", "relay", "serve"] and argv[-1] == "/etc/didmesh/relay.toml"
    block = re.search(r"^ENV (.+?)\n\n", text, re.M | re.S).group(1)  # type: ignore[union-attr]
    env = dict(re.findall(r"(\w+)=(\S+)", block))
    assert env["DIDMESH_RELAY_HOST"] == "0.0.0.0"  # noqa: S104 (inside the container)
    assert "STOPSIGNAL SIGTERM" in text
    assert "USER didmesh-relay" in text
    # run it as the image would, on loopback only (tests use no other interface)
    env.update({"DIDMESH_RELAY_HOST": "127.0.0.1", "DIDMESH_RELAY_PORT": "0",
                "DIDMESH_RELAY_STORE": f"sqlite:{tmp_path / 'state' / 'relay.sqlite3'}",
                "DIDMESH_RELAY_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
                "DIDMESH_HOME": str(tmp_path / "state"), **LOOPBACK_STUN})
    cfg = tmp_path / "relay.toml"
    shutil.copy(DEPLOY / "relay.toml", cfg)
    _serve([*_didmesh(), *argv[1:-1], str(cfg)], env, tmp_path / "state",
           env["DIDMESH_RELAY_STORE"])
    assert (tmp_path / "state" / "relay.secret").stat().st_mode & 0o777 == 0o600
