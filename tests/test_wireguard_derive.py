"""WireGuard keys, PSKs, addresses and configs derived from an agreed roster
(specs/wireguard.md): the documented byte layouts recomputed independently, agreement
between the parties of a real agreed session (session.testing.World), strict parsing,
no secrets in reprs or public views, and interop of keys with the real ``wg`` tool."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from didmesh.identity.errors import LocalError, RemoteError
from didmesh.session.mesh.plan import MeshPlan
from didmesh.session.testing import World
from didmesh.session.wireguard import (
    SessionNotAgreed,
    WgConfigInvalid,
    WgPeerKeyInvalid,
    WgUsageError,
    build_config,
    decode_key,
    derive_psk,
    encode_key,
    load_plan,
    mpyc_args,
    parse_conf,
    render_setconf,
    render_wg_quick,
    session_networks,
    tunnel_addresses,
    wg_private_key,
    wg_public_key,
)
from hypothesis import given
from hypothesis import strategies as st

WG = shutil.which("wg")


# --------------------------------------------------------------------------- helpers


def rfc5869(salt: bytes, ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 written out from RFC 5869 (independent of the implementation's)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, i = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
        i += 1
    return okm[:length]


def keypair(seed: int) -> tuple[bytes, bytes]:
    priv = hashlib.sha256(b"wg-test-key" + bytes([seed])).digest()
    pub = X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()
    return priv, pub


async def _agree(root: Path, m: int, endpoints: bool) -> World:
    world = World(root, m)
    world.invite_all()
    await world.deliver_invites()
    for i, p in enumerate(world.parties[1:], 1):
        eps = [f"tcp://10.215.0.{i + 1}:{51820 + i}"] if endpoints else []
        p.engine.accept(world.sid, endpoints=eps)
    await world.settle()
    await world.close()
    return world


@pytest.fixture(scope="module")
def world3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield asyncio.run(_agree(tmp_path_factory.mktemp("wg3"), 3, endpoints=True))


def plans(world: World) -> list[MeshPlan]:
    return [load_plan(p.engine.store, world.sid) for p in world.parties]


# --------------------------------------------------------------------------- PSK


def test_psk_is_the_documented_hkdf_and_symmetric() -> None:
    (a, pa), (b, pb) = keypair(1), keypair(2)
    roster = hashlib.sha256(b"roster").digest()
    dh = X25519PrivateKey.from_private_bytes(a).exchange(
        X25519PrivateKey.from_private_bytes(b).public_key())
    # party 5 holds a, party 2 holds b: the lower id comes first in info
    info = (b"didmesh/wireguard/psk/v1\x00" + (2).to_bytes(4, "big") + (5).to_bytes(4, "big")
            + pb + pa)
    expected = rfc5869(roster, dh, info)
    assert derive_psk(a, pb, roster, 5, 2) == expected
    assert derive_psk(b, pa, roster, 2, 5) == expected


def test_psk_binds_the_roster_hash_the_ids_and_the_keys() -> None:
    a, (_, pb), (_, pc) = keypair(1)[0], keypair(2), keypair(3)
    roster = hashlib.sha256(b"roster").digest()
    base = derive_psk(a, pb, roster, 0, 1)
    others = {
        derive_psk(a, pb, hashlib.sha256(b"other roster").digest(), 0, 1),
        derive_psk(a, pb, roster, 0, 2),
        derive_psk(a, pb, roster, 1, 0),  # roles swapped: another pair layout
        derive_psk(a, pc, roster, 0, 1),
    }
    assert base not in others and len(others) == 4


@pytest.mark.parametrize(
    "bad", [bytes(32), (1).to_bytes(32, "little")], ids=["zero", "order-1"]
)
def test_low_order_peer_key_is_refused(bad: bytes) -> None:
    a, _ = keypair(1)
    with pytest.raises(WgPeerKeyInvalid, match="party 7") as info:
        derive_psk(a, bad, bytes(32), 0, 7)
    assert isinstance(info.value, RemoteError)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((bytes(31), 0, 1), "roster hash is 32 bytes"),
        ((bytes(32), 3, 3), "must differ"),
        ((bytes(32), -1, 3), "fit in 32 bits"),
    ],
)
def test_psk_input_checks(args: tuple[bytes, int, int], match: str) -> None:
    a, _ = keypair(1)
    _, pb = keypair(2)
    with pytest.raises(WgUsageError, match=match):
        derive_psk(a, pb, *args)


# --------------------------------------------------------------------------- keys


def test_key_encoding_is_strict() -> None:
    raw = bytes(range(32))
    text = encode_key(raw)
    assert len(text) == 44 and decode_key(text) == raw
    for bad in ("", text[:-1], text[:-2] + "B=", "!" + text[1:], text + "A"):
        with pytest.raises(WgConfigInvalid):
            decode_key(bad, "PublicKey")


def test_private_key_is_the_session_key_clamped() -> None:
    sk = bytes([0xFF]) * 32
    wg = wg_private_key(sk)
    assert wg[0] & 7 == 0 and wg[31] & 0x80 == 0 and wg[31] & 0x40
    same = X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()
    assert wg_public_key(wg) == same


@pytest.mark.skipif(WG is None, reason="wg (wireguard-tools) is not installed")
@pytest.mark.parametrize("seed", range(6))
def test_wg_pubkey_gives_the_roster_key(seed: int) -> None:
    sk, pk = keypair(seed)
    if seed == 5:
        sk, pk = bytes([0xFF]) * 32, X25519PrivateKey.from_private_bytes(
            bytes([0xFF]) * 32).public_key().public_bytes_raw()
    out = subprocess.run(["wg", "pubkey"], input=encode_key(wg_private_key(sk)) + "\n",
                         capture_output=True, text=True, timeout=10, check=True)
    assert out.stdout.strip() == encode_key(pk)


@pytest.mark.skipif(WG is None, reason="wg (wireguard-tools) is not installed")
def test_wg_genkey_keys_give_our_public_key() -> None:
    for _ in range(3):
        sk = subprocess.run(["wg", "genkey"], capture_output=True, text=True, timeout=10,
                            check=True).stdout.strip()
        pk = subprocess.run(["wg", "pubkey"], input=sk + "\n", capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
        assert encode_key(wg_public_key(decode_key(sk))) == pk


# --------------------------------------------------------------------------- addresses


def test_addresses_follow_the_documented_layout() -> None:
    roster = hashlib.sha256(b"roster").digest()
    d = hashlib.sha256(b"didmesh/wireguard/addresses/v1\x00" + roster).digest()
    v4, v6 = session_networks(roster)
    assert v6 == ipaddress.IPv6Network((int.from_bytes(b"\xfd" + d[:5] + bytes(10), "big"), 64))
    index = int.from_bytes(d[5:7], "big") % 4096
    assert v4 == ipaddress.IPv4Network((0x64400000 + index * 1024, 22))
    a = tunnel_addresses(roster, 4)
    assert a.ipv4 == v4.network_address + 5 and a.ipv6 == v6.network_address + 5
    assert a.allowed_ips() == (f"{a.ipv4}/32", f"{a.ipv6}/128")


@given(st.binary(min_size=32, max_size=32))
def test_no_collisions_between_parties_of_a_session(roster: bytes) -> None:
    v4, v6 = session_networks(roster)
    assert v4.subnet_of(ipaddress.IPv4Network("100.64.0.0/10"))
    assert v6.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    addrs = [tunnel_addresses(roster, i) for i in range(1000)]  # MeshPlan's MAX_PARTIES
    assert len({a.ipv4 for a in addrs}) == len({a.ipv6 for a in addrs}) == 1000
    for a in addrs:
        assert a.ipv4 in v4 and a.ipv4 not in (v4.network_address, v4.broadcast_address)
        assert a.ipv6 in v6 and a.ipv6 != v6.network_address


def test_party_ids_beyond_the_ipv4_subnet_are_refused() -> None:
    tunnel_addresses(bytes(32), 1021)
    with pytest.raises(WgUsageError, match="outside 0..1021"):
        tunnel_addresses(bytes(32), 1022)
    with pytest.raises(WgUsageError):
        session_networks(bytes(16))


# --------------------------------------------------------------------------- configs


def test_every_pair_derives_the_same_psk_and_the_roster_keys(world3: World) -> None:
    ps = plans(world3)
    cfgs = [build_config(p) for p in ps]
    roster = world3.parties[0].engine.store.load(world3.sid).agreed_roster
    assert roster is not None
    for i, cfg in enumerate(cfgs):
        assert cfg.party_id == i and cfg.did == world3.parties[i].did
        assert cfg.public_key == roster.parties[i].session_public_key
        assert [p.party_id for p in cfg.peers] == [j for j in range(3) if j != i]
        for peer in cfg.peers:
            assert peer.public_key == roster.parties[peer.party_id].session_public_key
            back = next(q for q in cfgs[peer.party_id].peers if q.party_id == i)
            assert peer.preshared_key == back.preshared_key
            assert peer.addresses == cfgs[peer.party_id].addresses
    psks = {p.preshared_key for c in cfgs for p in c.peers}
    assert len(psks) == 3  # one per pair


def test_endpoints_and_listen_ports_come_from_the_roster(world3: World) -> None:
    cfgs = [build_config(p) for p in plans(world3)]
    # the organizer (World) announced no endpoint: no Endpoint for it, no fixed port
    assert cfgs[0].listen_port is None
    assert cfgs[1].listen_port == 51821 and cfgs[2].listen_port == 51822
    assert {p.party_id: p.endpoint for p in cfgs[0].peers} == {
        1: "10.215.0.2:51821", 2: "10.215.0.3:51822"}
    assert {p.party_id: p.endpoint for p in cfgs[1].peers} == {0: None, 2: "10.215.0.3:51822"}
    assert all(not c.warnings for c in cfgs)
    moved = build_config(plans(world3)[1], listen_port=40000, keepalive=None)
    assert moved.listen_port == 40000 and "peers will send to 51821" in moved.warnings[0]
    assert all(p.keepalive is None for p in moved.peers)
    for bad in ({"listen_port": 0}, {"listen_port": 70000}, {"keepalive": 0}):
        with pytest.raises(WgUsageError):
            build_config(plans(world3)[1], **bad)  # type: ignore[arg-type]


async def test_pairs_without_any_endpoint_are_warned(tmp_path: Path) -> None:
    world = await _agree(tmp_path, 3, endpoints=False)
    cfg = build_config(plans(world)[1])
    assert len(cfg.warnings) == 2 and "cannot connect this pair" in cfg.warnings[0]


def test_another_roster_view_changes_only_psks_and_addresses(world3: World) -> None:
    plan = plans(world3)[2]
    honest = build_config(plan)
    other = build_config(dataclasses.replace(plan, roster_hash=hashlib.sha256(b"x").digest()))
    assert honest.private_key == other.private_key
    for h, o in zip(honest.peers, other.peers, strict=True):
        assert h.public_key == o.public_key and h.endpoint == o.endpoint
        assert h.preshared_key != o.preshared_key and h.allowed_ips != o.allowed_ips


def test_secrets_never_appear_in_reprs_or_public_views(world3: World) -> None:
    cfg = build_config(plans(world3)[1])
    secrets = [encode_key(cfg.private_key), *(encode_key(p.preshared_key) for p in cfg.peers)]
    shown = repr(cfg) + repr(cfg.peers) + repr(cfg.public_view()) + repr(plans(world3)[1])
    assert not any(s in shown for s in secrets)
    assert all(s in render_setconf(cfg) for s in secrets)


# --------------------------------------------------------------------------- render/parse


@pytest.mark.parametrize("fmt", ["setconf", "wg-quick"])
def test_rendered_configs_parse_back_to_the_config(world3: World, fmt: str) -> None:
    for plan in plans(world3):
        cfg = build_config(plan)
        text = render_setconf(cfg) if fmt == "setconf" else render_wg_quick(cfg)
        assert text == (render_setconf if fmt == "setconf" else render_wg_quick)(cfg)
        parsed = parse_conf(text, quick=fmt == "wg-quick")
        assert parsed.private_key == cfg.private_key and parsed.listen_port == cfg.listen_port
        assert parsed.addresses == (cfg.interface_addresses() if fmt == "wg-quick" else ())
        assert len(parsed.peers) == len(cfg.peers)
        for peer, got in zip(cfg.peers, parsed.peers, strict=True):
            assert got.public_key == peer.public_key
            assert got.preshared_key == peer.preshared_key
            assert got.allowed_ips == frozenset(peer.allowed_ips)
            assert got.endpoint == peer.endpoint and got.keepalive == peer.keepalive


KEY = encode_key(bytes(range(32)))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[Interface]\nPrivateKey = x\n", "not a base64"),
        ("[Interface]\nAddress = 10.0.0.1/24\n", "unknown key 'Address'"),
        ("[Interface]\nTypo = 1\n", "unknown key 'Typo'"),
        ("[Interface]\nListenPort = 1\nListenPort = 2\n", "given twice"),
        ("[Interface]\nListenPort = 70000\n", "ListenPort"),
        ("PrivateKey = " + KEY + "\n", "before any"),
        ("[Interface]\n[Interface]\n", "more than one"),
        ("[Peers]\n", "unknown section"),
        ("[Peer]\nAllowedIPs = 10.0.0.1/32\n", "no PublicKey"),
        (f"[Peer]\nPublicKey = {KEY}\nAllowedIPs = 10.0.0.1/33\n", "not an IP network"),
        (f"[Peer]\nPublicKey = {KEY}\n[Peer]\nPublicKey = {KEY}\n", "same PublicKey"),
        ("[Interface]\nListenPort\n", "Key = value"),
        ("#" * (1024 * 1024 + 1), "limit"),
    ],
)
def test_parse_is_strict(text: str, match: str) -> None:
    with pytest.raises(WgConfigInvalid, match=match) as info:
        parse_conf(text)
    assert isinstance(info.value, LocalError)


def test_parse_accepts_what_wg_writes() -> None:
    text = (f"[interface]\nlistenport = 51820 # comment\nFwMark = 0x1\n\n[Peer]\nPublicKey = "
            f"{KEY}\nAllowedIPs = 10.0.0.1/32,fd00::1/128\nAllowedIPs = 10.0.0.2/32\n"
            "PersistentKeepalive = off\n")
    conf = parse_conf(text)
    assert conf.listen_port == 51820 and conf.fwmark == "0x1"
    assert conf.peers[0].allowed_ips == {"10.0.0.1/32", "10.0.0.2/32", "fd00::1/128"}
    assert conf.peers[0].keepalive is None
    quick = parse_conf("[Interface]\nAddress = 10.1.2.3/22\nDNS = 1.1.1.1\n", quick=True)
    assert quick.addresses == ("10.1.2.3/22",) and quick.quick == {"DNS": ("1.1.1.1",)}


# --------------------------------------------------------------------------- MPyC args


def test_mpyc_args_list_every_tunnel_address_in_party_order(world3: World) -> None:
    ps = plans(world3)
    roster_hash = ps[0].roster_hash
    for plan in ps:
        args = mpyc_args(plan)
        want = [f"{tunnel_addresses(roster_hash, i).ipv4}:11365" for i in range(3)]
        assert args == [x for w in want for x in ("-P", w)] + ["-I", str(plan.my_party_id)]
    v6 = mpyc_args(ps[1], port=12000, ipv6=True)
    assert v6[1] == f"{tunnel_addresses(roster_hash, 0).ipv6}:12000"
    with pytest.raises(WgUsageError):
        mpyc_args(ps[1], port=0)


# --------------------------------------------------------------------------- loading


async def test_a_session_without_an_agreed_roster_is_refused(tmp_path: Path) -> None:
    world = World(tmp_path, 3)
    with pytest.raises(SessionNotAgreed, match="wait with: didmesh status"):
        load_plan(world.organizer.engine.store, world.sid[:8])
    world.organizer.engine.cancel(world.sid)
    with pytest.raises(SessionNotAgreed, match="ended"):
        load_plan(world.organizer.engine.store, world.sid)
    await world.close()
