"""The STUN Binding codec and the relay's UDP responder (relay/stun.py).

Known answers: the RFC 5769 vectors (tests/data/stun_rfc5769.json) parse, verify
(MESSAGE-INTEGRITY short- and long-term, FINGERPRINT), give the RFC's mapped addresses,
and re-encode byte for byte; one flipped bit fails them. Fuzzed: random and mutated
datagrams only ever raise ``StunError`` from the parser, and ``answer`` never raises.
The responder answers on a real loopback socket, only Binding requests, under its rate
per source and its overall rate, never more than 32 bytes more than it was sent. A relay
process answers STUN by default (the HTTP port's number and a free port, announced in
/info; many relays on port 0 never collide), not with ``--no-stun``.
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
    for source in (("192.0.2.1", 9), ("2001:db8::1", 9)):
        out = stun.answer(data, source)
        assert out is None or (stun.is_stun(data)
                               and len(out) <= len(data) + stun.MAX_GROWTH)


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


_REQUESTS = {
    "bare": stun.encode(stun.BINDING_REQUEST, bytes(12)),
    "fingerprint": stun.binding_request(bytes(12))[1],
    "software": stun.encode(stun.BINDING_REQUEST, bytes(12), [(stun.SOFTWARE, b"x" * 40)],
                            fingerprint=True),
    "unknown-1": stun.encode(stun.BINDING_REQUEST, bytes(12), [(0x7FFF, b"")]),
    "unknown-16": stun.encode(stun.BINDING_REQUEST, bytes(12),
                              [(0x7000 + i, b"") for i in range(20)]),
}


@pytest.mark.parametrize("source", [("198.51.100.7", 40000), ("2001:db8::7", 1)],
                         ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("name", sorted(_REQUESTS))
def test_an_answer_is_at_most_32_bytes_longer_than_its_request(name: str,
                                                               source: tuple[str, int]) -> None:
    """The reflection bound (specs/relay.md 12.1): FINGERPRINT, then SOFTWARE, are left
    out where they would not fit; the address (or the error) is always there."""
    req = _REQUESTS[name]
    out = stun.answer(req, source)
    assert out is not None
    assert len(out) <= len(req) + stun.MAX_GROWTH
    resp = stun.parse(out)
    if name.startswith("unknown"):
        assert resp.type == stun.BINDING_ERROR and resp.get(stun.UNKNOWN_ATTRIBUTES)
    else:
        assert stun.mapped_address(resp) == source
        assert resp.fingerprint_at is not None and stun.check_fingerprint(resp)
    if name == "software":  # a large enough request gets SOFTWARE too
        assert resp.get(stun.SOFTWARE) == b"didmesh-relay"


class _Sent:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def test_spoofed_sources_get_no_more_than_the_overall_rate() -> None:
    """A flood from many (spoofed) source addresses, each under its own rate, is capped
    by the bucket all sources share: what the relay sends to third parties is bounded."""
    from didmesh.relay.limits import TokenBucket

    now = [0.0]
    overall = TokenBucket(100.0, 50.0)
    responders = [stun.StunResponder(rate=20, burst=40, clock=lambda: now[0],
                                     overall=overall) for _ in range(2)]
    sinks = [_Sent() for _ in responders]
    for r, sink in zip(responders, sinks, strict=True):
        r.connection_made(sink)  # type: ignore[arg-type]
    req = stun.binding_request()[1]
    for i in range(2000):  # 2000 sources in one instant: the burst only
        responders[i % 2].datagram_received(req, (f"10.{i // 250}.{i % 250}.1", 9))
    assert sum(len(s.sent) for s in sinks) == 50
    now[0] = 1.0  # one second later: the rate's worth more
    for i in range(2000):
        responders[i % 2].datagram_received(req, (f"10.9.{i % 250}.{i // 250}", 9))
    assert sum(len(s.sent) for s in sinks) == 100
    assert all(len(d) <= len(req) + stun.MAX_GROWTH for s in sinks for d, _ in s.sent)


def _info(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(url + "/info", timeout=5) as r:  # noqa: S310
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def _udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_relays_answer_stun_by_default_on_their_http_port_number_and_a_free_port() -> None:
    """README's relay (no STUN flag), four at once on port 0: each answers STUN on UDP with
    its HTTP port's number and on a free alt port, announced in /info, no two colliding;
    the mapping client sees one mapping from both ports."""
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlsplit

    from didmesh.session.wireguard.udpmap import judge, learn_mapping
    from relay_helpers import spawn_relay

    with ThreadPoolExecutor(4) as pool:
        relays = list(pool.map(lambda _: spawn_relay("memory"), range(4)))
    try:
        seen: list[int] = []
        for relay in relays:
            ports = _info(relay.url)["stun"]["ports"]
            http_port = urlsplit(relay.url).port
            assert len(ports) == 2 and ports[0] != ports[1], ports
            if ports[0] != http_port:  # only when that UDP number was someone else's
                assert _udp_port_taken(http_port), (ports, http_port)
            seen += ports
            local = _free_udp_ports(1)[0]
            got = learn_mapping(local, [("127.0.0.1", p) for p in ports], timeout=3.0)
            assert got.mapped == [("127.0.0.1", local)] * 2, got.notes
            assert judge(got.mapped, local, ["127.0.0.1"]) == "open"
        assert len(set(seen)) == 8
    finally:
        for relay in relays:
            assert relay.terminate() == 0


def test_no_stun_turns_it_off() -> None:
    from urllib.parse import urlsplit

    from didmesh.session.wireguard.udpmap import learn_mapping
    from relay_helpers import spawn_relay

    relay = spawn_relay("memory", ["--no-stun"])
    try:
        assert _info(relay.url)["stun"] == {"ports": []}
        port = urlsplit(relay.url).port
        assert port is not None
        got = learn_mapping(_free_udp_ports(1)[0], [("127.0.0.1", port)], timeout=0.6)
        assert got.mapped == [] and "no STUN answer" in got.notes[0]
    finally:
        assert relay.terminate() == 0


def test_a_default_stun_port_in_use_moves_an_operators_port_fails_in_one_line(
        tmp_path: Path) -> None:
    """The HTTP port's number taken in UDP: a relay with the default STUN port answers on
    a free one instead (and says which in /info); with ``--stun-port`` set to a taken
    port it does not start, in one line naming the UDP port and the options."""
    import subprocess
    import sys

    from didmesh.session.mesh.loopback import free_ports
    from relay_helpers import spawn_relay

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        http = free_ports(1)[0]
        # a TCP port free whose UDP number we hold: bind our UDP socket to it instead
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
            try:
                held.bind(("127.0.0.1", http))
            except OSError:
                pytest.skip("the chosen port's UDP number is in use already")
            relay = spawn_relay("memory", ["--port", str(http)])
            try:
                ports = _info(relay.url)["stun"]["ports"]
                assert len(ports) == 2 and http not in ports, ports
            finally:
                assert relay.terminate() == 0
        env = {k: v for k, v in __import__("os").environ.items()
               if not k.startswith("DIDMESH_")}
        env["DIDMESH_HOME"] = str(tmp_path)
        res = subprocess.run(
            [sys.executable, "-m", "didmesh.relay", "--port", "0", "--store", "memory",
             "--stun-port", str(busy)], capture_output=True, text=True, timeout=30, env=env,
            stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("didmesh relay:")]
    assert len(lines) == 1, res.stderr
    assert f"UDP 127.0.0.1 {busy}/any" in lines[0] and "--no-stun" in lines[0], lines


def test_processes_of_one_relay_share_the_operators_stun_ports() -> None:
    """Several processes of one relay (one Redis, behind one proxy) given the same
    ``--stun-port``/``--stun-alt-port`` all start and announce them (SO_REUSEPORT: the
    responder keeps no state, so any process may answer)."""
    from didmesh.session.wireguard.udpmap import learn_mapping
    from relay_helpers import spawn_relay

    ports = _free_udp_ports(2)
    flags = ["--stun-port", str(ports[0]), "--stun-alt-port", str(ports[1])]
    relays = [spawn_relay("memory", flags) for _ in range(2)]
    try:
        assert [_info(r.url)["stun"]["ports"] for r in relays] == [ports, ports]
        local = _free_udp_ports(1)[0]
        got = learn_mapping(local, [("127.0.0.1", p) for p in ports], timeout=3.0)
        assert got.mapped == [("127.0.0.1", local)] * 2, got.notes
    finally:
        for relay in relays:
            assert relay.terminate() == 0
