"""The STUN Binding codec and the relay's UDP responder (relay/stun.py).

Known answers: the RFC 5769 vectors (tests/data/stun_rfc5769.json) parse, verify
(MESSAGE-INTEGRITY short- and long-term, FINGERPRINT), give the RFC's mapped addresses,
and re-encode byte for byte; one flipped bit fails them. Fuzzed: random and mutated
datagrams only ever raise ``StunError`` from the parser, and ``answer`` never raises.
The responder answers on a real loopback socket, only Binding requests, under its rate.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from pathlib import Path
from typing import Any

import pytest
from didmesh.relay import stun
from didmesh.relay.stun import StunError
from hypothesis import given, settings
from hypothesis import strategies as st

VECTORS = json.loads((Path(__file__).parent / "data" / "stun_rfc5769.json").read_text())
HEX_ATTRS = {0x0024, 0x8029}  # PRIORITY, ICE-CONTROLLED: binary values, given in hex


def _key(v: dict[str, Any]) -> bytes:
    if "password" in v:
        return str(v["password"]).encode()
    return stun.long_term_key(*v["long_term"])


def _expected_attrs(v: dict[str, Any]) -> list[tuple[int, bytes]]:
    return [(k, bytes.fromhex(x) if k in HEX_ATTRS else x.encode()) for k, x in v["attrs"]]


@pytest.mark.parametrize("v", VECTORS["vectors"], ids=[v["id"] for v in VECTORS["vectors"]])
def test_rfc5769_vectors_parse_verify_and_reencode(v: dict[str, Any]) -> None:
    raw = bytes.fromhex(v["hex"])
    msg = stun.parse(raw)
    assert msg.type == v["type"]
    assert stun.check_integrity(msg, _key(v))
    assert not stun.check_integrity(msg, b"wrong password")
    if msg.fingerprint_at is not None:
        assert stun.check_fingerprint(msg)
    got = [(k, val) for k, val in msg.attrs
           if k not in (stun.MESSAGE_INTEGRITY, stun.FINGERPRINT, stun.XOR_MAPPED_ADDRESS)]
    assert sorted(got) == sorted(_expected_attrs(v))
    if v["mapped"] is not None:
        assert stun.mapped_address(msg) == tuple(v["mapped"])
    # our encoder gives the same bytes (2.1-2.3 pad with spaces, 2.4 with zeros)
    body = [(k, val) for k, val in msg.attrs if k not in (stun.MESSAGE_INTEGRITY, stun.FINGERPRINT)]
    again = stun.encode(msg.type, msg.txid, body, integrity_key=_key(v),
                        fingerprint=msg.fingerprint_at is not None,
                        pad=bytes.fromhex(v["pad"]))
    assert again == raw


@pytest.mark.parametrize("v", VECTORS["vectors"], ids=[v["id"] for v in VECTORS["vectors"]])
def test_one_flipped_bit_fails_integrity_or_parsing(v: dict[str, Any]) -> None:
    raw = bytes.fromhex(v["hex"])
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        try:
            msg = stun.parse(bytes(bad))
        except StunError:
            continue
        ok = stun.check_integrity(msg, _key(v))
        if msg.fingerprint_at is not None:
            ok = ok and stun.check_fingerprint(msg)
        assert not ok, i


@pytest.mark.parametrize(("source", "family"), [
    (("198.51.100.7", 40000), 1),
    (("2001:db8::7", 1), 2),
    (("::ffff:203.0.113.9", 65535), 1),  # an IPv4-mapped source answers as IPv4
], ids=["ipv4", "ipv6", "v4-mapped"])
def test_answer_reports_the_source_xored(source: tuple[str, int], family: int) -> None:
    txid, req = stun.binding_request()
    resp = stun.parse(stun.answer(req, source) or b"")
    assert resp.type == stun.BINDING_SUCCESS and resp.txid == txid
    assert stun.check_fingerprint(resp)
    host, port = stun.mapped_address(resp)
    assert (host, port) == (source[0].removeprefix("::ffff:"), source[1])
    assert (resp.get(stun.XOR_MAPPED_ADDRESS) or b"")[1] == family


def test_unknown_required_attribute_gets_420_and_others_are_dropped() -> None:
    txid = bytes(range(12))
    req = stun.encode(stun.BINDING_REQUEST, txid, [(0x7FFF, b"abcd"), (0x8000, b"ok!!")])
    err = stun.parse(stun.answer(req, ("192.0.2.1", 5)) or b"")
    assert err.type == stun.BINDING_ERROR
    assert err.get(stun.UNKNOWN_ATTRIBUTES) == b"\x7f\xff"
    assert (err.get(stun.ERROR_CODE) or b"")[2:4] == bytes((4, 20))
    success = stun.encode(stun.BINDING_SUCCESS, txid)  # a response is never answered
    indication = stun.encode(stun.BINDING_INDICATION, txid)
    bad_crc = bytearray(stun.binding_request(txid)[1])
    bad_crc[-1] ^= 1
    for dgram in (success, indication, bytes(bad_crc), b"", b"GET / HTTP/1.1\r\n\r\n" * 2):
        assert stun.answer(dgram, ("192.0.2.1", 5)) is None


_FP = stun.encode(1, bytes(12), fingerprint=True)
_MI = stun.encode(1, bytes(12), integrity_key=b"k")


@pytest.mark.parametrize(("raw", "why"), [
    (b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12), "length"),
    (b"\x00\x01\x00\x00\x21\x12\xa4\x43" + bytes(12), "magic"),
    (b"\xc0\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), "header"),
    (b"\x00\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x80\x22\x00\x08abcd", "past"),
    (_FP[:2] + b"\x00\x10" + _FP[4:] + b"\x00\x06\x00\x00" * 2, "after FINGERPRINT"),
    (_MI[:2] + b"\x00\x1c" + _MI[4:] + b"\x00\x06\x00\x00", "after MESSAGE-INTEGRITY"),
    (stun.encode(1, bytes(12), [(stun.MESSAGE_INTEGRITY, bytes(8))]), "20 bytes"),
    (stun.encode(1, bytes(12)) + bytes(2000), "size"),
], ids=["length", "magic", "class-bits", "attr-past-end", "after-fingerprint",
        "after-integrity", "short-integrity", "huge"])
def test_malformed_messages_are_refused_by_name(raw: bytes, why: str) -> None:
    with pytest.raises(StunError, match=why):
        stun.parse(raw)


@pytest.mark.parametrize("value", [b"", b"\x00\x03\x00\x01abcd", b"\x00\x01\x00\x01abc"],
                         ids=["empty", "family", "v4-length"])
def test_malformed_address_values_are_refused(value: bytes) -> None:
    with pytest.raises(StunError):
        stun.decode_address(value, bytes(12))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_datagrams_only_raise_stun_errors(data: bytes) -> None:
    _fuzz_one(data)


def _fuzz_one(data: bytes) -> None:
    try:
        msg = stun.parse(data)
    except StunError:
        pass
    else:
        stun.check_fingerprint(msg)
        stun.check_integrity(msg, b"k")
        try:
            stun.mapped_address(msg)
        except StunError:
            pass
    assert stun.answer(data, ("192.0.2.1", 9)) is None or stun.is_stun(data)


def test_mutated_vectors_only_raise_stun_errors() -> None:
    rng = random.Random(5769)
    seeds = [bytes.fromhex(v["hex"]) for v in VECTORS["vectors"]]
    seeds.append(stun.binding_request(bytes(12))[1])
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            i = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(i, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                del data[i:i + rng.randint(1, 8)]
        _fuzz_one(bytes(data))


async def test_responder_answers_on_a_real_socket_within_its_rate() -> None:
    transports, ports = await stun.serve_stun("127.0.0.1", [0, 0], rate=5, burst=3)
    try:
        assert len(set(ports)) == 2 and all(ports)
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            mine = s.getsockname()
            for port in ports:  # one local port seen the same from both server ports
                txid, req = stun.binding_request()
                s.sendto(req, ("127.0.0.1", port))
                resp = stun.parse(await asyncio.wait_for(loop.sock_recv(s, 1500), 5))
                assert resp.txid == txid and stun.mapped_address(resp) == mine
            s.sendto(b"not stun at all, not answered", ("127.0.0.1", ports[0]))
            for _ in range(10):  # a burst: at most `burst` more answers
                s.sendto(stun.binding_request()[1], ("127.0.0.1", ports[0]))
            got = 0
            with pytest.raises(TimeoutError):
                while True:
                    await asyncio.wait_for(loop.sock_recv(s, 1500), 0.5)
                    got += 1
            assert 1 <= got <= 3
    finally:
        for t in transports:
            t.close()


async def test_an_independent_stun_client_gets_its_mapping() -> None:
    """Interop: aiostun (another implementation, RFC 5389) asks our responder."""
    import aiostun

    transports, ports = await stun.serve_stun("127.0.0.1", [0])
    try:
        local = _free_udp_ports(1)[0]
        async with aiostun.Client(host="127.0.0.1", port=ports[0], local_addr="127.0.0.1",
                                  local_port=local, timeout=5) as client:
            resp = await client.bind_request()
        assert resp is not None and resp.get_class() == "Success Response"
        mapped = resp.get_attribute(aiostun.attribute.AttrXorMappedAddr)
        assert mapped.params == {"family": "IPv4", "port": local, "ip": "127.0.0.1"}
        assert resp.get_attribute(aiostun.attribute.AttrFingerPrint) is not None
    finally:
        for t in transports:
            t.close()


def _free_udp_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_a_relay_process_with_stun_ports_answers_and_announces_them() -> None:
    """``--stun-port``/``--stun-alt-port``: /info lists the ports, and the session's
    mapping client (session/wireguard/udpmap.py) learns one local port's mapping from both."""
    import urllib.request

    from didmesh.session.wireguard.udpmap import learn_mapping
    from relay_helpers import spawn_relay

    ports = _free_udp_ports(2)
    relay = spawn_relay("memory", ["--stun-port", str(ports[0]),
                                   "--stun-alt-port", str(ports[1])])
    try:
        with urllib.request.urlopen(relay.url + "/info", timeout=5) as r:  # noqa: S310
            info = json.loads(r.read())
        assert info["stun"] == {"ports": ports}
        local = _free_udp_ports(1)[0]
        seen = learn_mapping(local, [("127.0.0.1", p) for p in ports], timeout=3.0)
        assert seen.mapped == [("127.0.0.1", local), ("127.0.0.1", local)]
    finally:
        assert relay.terminate() == 0
