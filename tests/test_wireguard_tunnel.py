"""WireGuard for real (needs root; marked ``netns``): userspace ``wireguard-go`` interfaces in
network namespaces (didmesh.session.wireguard.testing.WgLab), configured from configs that
``didmesh wg config`` derived from a really agreed 3-party roster.

* ``wg setconf`` accepts every rendered config (setconf, and wg-quick through
  ``wg-quick strip``) and ``wg showconf`` gives back the same keys, PSKs, allowed IPs,
  endpoints and keepalives;
* TCP works over the tunnel between all pairs, IPv4 and IPv6, and the source address a
  party sees is the sender's tunnel address;
* plain MPyC (examples/secure_sum.py) with ``didmesh wg mpyc-args`` inside the three
  namespaces prints what the same program prints over loopback;
* a party configured from another roster hash completes no handshake (only its PSKs are
  wrong: giving it the right ones lets the handshake through).

Underlay addresses are only those of the lab's namespaces; nothing touches the host's
network. Every process is ended in the lab's teardown, which checks that no
``wireguard-go`` is left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mpyc_helpers
import pytest
from cli_helpers import run_cli
from didmesh.identity.paths import write_private
from didmesh.session.testing import World
from didmesh.session.wireguard import (
    build_config,
    encode_key,
    load_plan,
    parse_conf,
    render_setconf,
    render_wg_quick,
    tunnel_addresses,
)
from didmesh.session.wireguard.testing import UAPI_DIR, WgLab, available
from wg_helpers import agreed_world

_WHY = available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_WHY is not None, reason=str(_WHY))]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "secure_sum.py"
ECHO_PORT = 7000


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("wgtunnel")
    yield asyncio.run(agreed_world(root, lambda i: f"tcp://10.215.0.{i + 1}:{51820 + i}"))


_labs = iter(range(1000))


@pytest.fixture
def lab3() -> Iterator[WgLab]:
    yield from _lab(3)


@pytest.fixture
def lab1() -> Iterator[WgLab]:
    yield from _lab(1)


def _lab(n: int) -> Iterator[WgLab]:
    lab = WgLab(n, prefix=f"dm{os.getpid() % 10000}t{next(_labs)}")
    try:
        with lab:
            assert lab.underlay == [f"10.215.0.{i + 1}" for i in range(n)]
            yield lab
    finally:
        assert lab.leftovers() == [], "wireguard-go processes left behind"
        assert not any((UAPI_DIR / f"{i}.sock").exists() for i in lab.interfaces)


def home(world: World, i: int) -> Path:
    return world.root / world.parties[i].name


def cli_json(world: World, i: int, *args: str) -> Any:
    res = run_cli(home(world, i), *args, "--json", timeout=60)
    assert res.rc == 0, res.err[-2000:]
    return res.json()


def configure_from_cli(lab: WgLab, world: World, tmp: Path) -> list[dict[str, Any]]:
    docs = []
    for i in range(3):
        lab.start_wireguard(i)
        path = tmp / f"party{i}.setconf"
        doc = cli_json(world, i, "wg", "config", world.sid[:8], "--format", "setconf",
                       "--out", str(path))
        lab.configure(i, path, doc["addresses"])
        docs.append(doc)
    return docs


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


# --------------------------------------------------------------------------- interop


def test_wg_setconf_accepts_every_rendered_config_and_showconf_round_trips(
    world: World, lab1: WgLab, tmp_path: Path
) -> None:
    iface = lab1.start_wireguard(0)
    for i in range(3):
        cfg = build_config(load_plan(world.parties[i].engine.store, world.sid))
        setconf = tmp_path / f"p{i}.setconf"
        write_private(setconf, render_setconf(cfg).encode())
        quick = tmp_path / f"q{i}" / f"{cfg.interface}.conf"  # wg-quick wants NAME.conf
        write_private(quick, render_wg_quick(cfg).encode())
        stripped = subprocess.run(["wg-quick", "strip", str(quick)], capture_output=True,
                                  text=True, timeout=10, check=True).stdout
        assert "Address" not in stripped
        from_quick = tmp_path / f"p{i}.stripped"
        write_private(from_quick, stripped.encode())
        for path in (setconf, from_quick):
            text = path.read_text()
            lab1.run(0, "wg", "setconf", iface, str(path))
            shown = parse_conf(lab1.showconf(0))
            want = parse_conf(text)
            assert shown.private_key == want.private_key == cfg.private_key
            assert shown.peers_by_key() == want.peers_by_key()
            assert [p.public_key for p in want.peers] == [p.public_key for p in cfg.peers]
            if cfg.listen_port is not None:
                assert shown.listen_port == cfg.listen_port
        assert lab1.wg(0, "show", iface, "public-key").strip() == encode_key(cfg.public_key)


# --------------------------------------------------------------------------- the tunnel


@pytest.mark.slow
def test_tcp_and_mpyc_over_the_tunnel(world: World, lab3: WgLab, tmp_path: Path) -> None:
    docs = configure_from_cli(lab3, world, tmp_path)
    addrs = [tunnel_addresses(bytes.fromhex(docs[0]["rosterHash"]), i) for i in range(3)]
    assert [d["addresses"][0].split("/")[0] for d in docs] == [str(a.ipv4) for a in addrs]
    for i in range(3):
        lab3.serve_echo(i, [str(addrs[i].ipv4), str(addrs[i].ipv6)], ECHO_PORT)
    for i in range(3):
        targets = [f"{getattr(addrs[j], fam)}:{ECHO_PORT}" for j in range(3) if j != i
                   for fam in ("ipv4", "ipv6")]
        got = lab3.probe(i, targets, timeout=5)
        for target, reply in got.items():
            fam = "ipv6" if target.count(":") > 1 else "ipv4"
            # the receiver sees the sender's tunnel address: AllowedIPs bind it to its key
            assert reply == f"echo {target.rpartition(':')[0]} from "\
                            f"{getattr(addrs[i], fam)} ping", (i, target, reply)
    for i in range(3):
        shakes = lab3.latest_handshakes(i)
        assert len(shakes) == 2 and all(t > 0 for t in shakes.values()), (i, shakes)

    # plain MPyC inside the namespaces, arguments from `didmesh wg mpyc-args`
    args = [cli_json(world, i, "wg", "mpyc-args", world.sid)["args"] for i in range(3)]
    procs = [lab3.spawn(i, sys.executable, str(EXAMPLE), "--no-log", *args[i],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    tunnel = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-1500:] for _, e in tunnel]
    expected = plain_mpyc()
    assert [o for o, _ in tunnel] == [expected] * 3
    assert "sum: 51" in expected  # 7 + 17 + 27


def plain_mpyc() -> str:
    outs = mpyc_helpers.plain_mpyc(EXAMPLE, ["--no-log"], 3)
    assert outs[0] == outs[1] == outs[2]
    return outs[0]


# --------------------------------------------------------------------------- another view


@pytest.mark.slow
def test_a_party_with_another_roster_hash_gets_no_handshake(
    world: World, lab3: WgLab, tmp_path: Path
) -> None:
    plans = [load_plan(p.engine.store, world.sid) for p in world.parties]
    other = dataclasses.replace(plans[2], roster_hash=hashlib.sha256(b"another view").digest())
    cfgs = [build_config(plans[0]), build_config(plans[1]), build_config(other)]
    for i, cfg in enumerate(cfgs):
        lab3.start_wireguard(i)
        path = tmp_path / f"p{i}.setconf"
        write_private(path, render_setconf(cfg).encode())
        lab3.configure(i, path, cfg.interface_addresses())
    honest = [tunnel_addresses(plans[0].roster_hash, i).ipv4 for i in range(3)]
    lab3.serve_echo(1, [str(honest[1])], ECHO_PORT)
    key2 = encode_key(cfgs[2].public_key)

    t0 = time.monotonic()
    assert lab3.probe(0, [f"{honest[2]}:{ECHO_PORT}"], timeout=3)[f"{honest[2]}:{ECHO_PORT}"] \
        .startswith("error: ")
    assert lab3.probe(1, [f"{honest[2]}:{ECHO_PORT}"], timeout=1)[f"{honest[2]}:{ECHO_PORT}"] \
        .startswith("error: ")
    # the honest pair works meanwhile
    assert lab3.probe(0, [f"{honest[1]}:{ECHO_PORT}"], timeout=5)[f"{honest[1]}:{ECHO_PORT}"] \
        == f"echo {honest[1]} from {honest[0]} ping"
    assert time.monotonic() - t0 < 15
    assert lab3.latest_handshakes(0)[key2] == 0
    assert lab3.latest_handshakes(1)[key2] == 0
    assert set(lab3.latest_handshakes(2).values()) == {0}

    # only the PSKs stood in the way: party 2 given the honest ones completes a handshake
    for peer in build_config(plans[2]).peers:
        psk = tmp_path / f"psk{peer.party_id}"
        write_private(psk, encode_key(peer.preshared_key).encode())
        lab3.wg(2, "set", lab3.interfaces[2], "peer", encode_key(peer.public_key),
                "preshared-key", str(psk))
    wait_for(lambda: lab3.latest_handshakes(1)[key2] > 0, 15, "a handshake with party 2")
