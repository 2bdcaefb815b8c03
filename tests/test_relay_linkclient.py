"""The aiohttp-free link client (relay/linkclient.py): its frames against RFC 6455's examples
and wsproto (an independent implementation), its HTTP head parser on bad input, and links
through a real relay process, with an aiohttp :class:`RelayClient` at the other end."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.relay.errors import LinkClosed, RelayError, RelayProtocolError, RelayUnreachable
from didmesh.relay.linkclient import (
    DEFAULT_LINK_LIMITS,
    LIMITS_REFRESH_S,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameError,
    LinkClient,
    LinkLimitsCache,
    ServerFrameReader,
    accept_key,
    client_frame,
    link_limits,
    mask,
    parse_head,
)
from didmesh.relay.protocol import CloseCode
from relay_helpers import start_relay
from wsproto.frame_protocol import FrameProtocol, Opcode

SIZES = [0, 1, 125, 126, 65535, 65536, 300_001]


def test_rfc_examples() -> None:
    # RFC 6455 5.7: "A single-frame masked text message", key 37 fa 21 3d
    assert client_frame(OP_TEXT, b"Hello", bytes.fromhex("37fa213d")) == bytes.fromhex(
        "8185" "37fa213d" "7f9f4d5158")
    # RFC 6455 1.3: the handshake's example key and accept value
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    # "Unmasked Ping request" and a 256-byte unmasked binary message
    got = ServerFrameReader().feed(bytes.fromhex("890548656c6c6f") + b"\x82\x7e\x01\x00"
                                   + bytes(256))
    assert got == [(OP_PING, b"Hello"), (OP_BINARY, bytes(256))]


@pytest.mark.parametrize("n", SIZES)
def test_client_frames_read_by_wsproto(n: int) -> None:
    payload = os.urandom(n)
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(client_frame(OP_BINARY, payload))
    (frame,) = list(server.received_frames())
    assert frame.opcode is Opcode.BINARY and frame.message_finished
    assert bytes(frame.payload) == payload
    key = os.urandom(4)
    assert mask(key, mask(key, payload)) == payload


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 1000, 1 << 20])
def test_server_frames_from_wsproto_however_cut(cut: int) -> None:
    wire = FrameProtocol(client=False, extensions=[])
    messages = [os.urandom(n) for n in SIZES]
    data = b"".join(wire.send_data(m, fin=True) for m in messages)
    # a fragmented message with a ping in between
    big = os.urandom(5000)
    data += wire.send_data(big[:100], fin=False) + wire.ping(b"x") + wire.send_data(
        big[100:], fin=True)
    reader = ServerFrameReader()
    got = []
    for i in range(0, len(data), cut):
        got += reader.feed(data[i:i + cut])
    assert got == [(OP_BINARY, m) for m in messages] + [(OP_PING, b"x"), (OP_BINARY, big)]


@pytest.mark.parametrize("data, why", [
    (b"\x82\x85abcdhello", "masked"),
    (b"\xc2\x00", "RSV"),
    (b"\x09\x00", "control"),  # a fragmented ping
    (b"\x80\x00", "continuation"),
    (b"\x02\x00\x82\x00", "inside another"),
    (b"\x83\x00", "opcode"),
    (b"\x82\x7f" + (1 << 40).to_bytes(8, "big"), "over"),
])
def test_bad_server_frames(data: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        ServerFrameReader(max_message=1 << 20).feed(data)


@pytest.mark.parametrize("head", [b"garbage\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n",
                                  b"SPDY/3 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
                                  b"\xff\xfe\r\n\r\n"])
def test_bad_http_heads(head: bytes) -> None:
    with pytest.raises(RelayProtocolError):
        parse_head(head)


def test_http_head_and_limits() -> None:
    status, headers = parse_head(b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n"
                                 b"X-Didmesh-Error: auth_invalid\r\n\r\n")
    assert status == 101 and headers["x-didmesh-error"] == "auth_invalid"
    assert link_limits({"limits": {"link_max_frame": 4096, "link_max_bytes": True}}) == {
        "link_max_frame": 4096, "link_max_bytes": 1 << 30, "link_max_duration_s": 3600.0}
    assert link_limits("not an object")["link_max_frame"] == 1 << 20


def test_links_through_a_relay_with_the_aiohttp_client_at_the_other_end() -> None:
    a, b = IdentityKey.generate(), IdentityKey.generate()

    async def main(url: str) -> None:
        mine = LinkClient(url, a, timeout=10)
        theirs = RelayClient(url, b, heartbeat=None)
        try:
            la, lb = await asyncio.gather(
                mine.open_link("s1", b.did, timeout=20),
                theirs.open_link("s1", a.did, timeout=20, heartbeat=None))
            assert la.linked is not None and la.linked.peer == b.did
            assert la.max_frame == 1 << 20  # the relay's default, from its /info
            for n in [1, 125, 70_000, 1 << 20]:
                data = os.urandom(n)
                await la.send(data)
                assert await lb.recv(timeout=10) == data
                await lb.send(data[::-1])
                assert await la.recv(timeout=10) == data[::-1]
            with pytest.raises(LinkClosed, match="link_max_frame"):
                await la.send(bytes((1 << 20) + 1))
            # a second link to the same peer in the same session is refused by the relay
            with pytest.raises(LinkClosed, match="refused"):
                await mine.open_link("s1", b.did, timeout=20)
            await lb.close()
            with pytest.raises(LinkClosed) as closed:
                await la.recv(timeout=10)
            assert closed.value.close_code == CloseCode.PEER_CLOSED
            await la.close()
        finally:
            await mine.close()
            await theirs.close()

    with start_relay(args=["--link-pair-timeout-s", "3"]) as relay:
        asyncio.run(asyncio.wait_for(main(relay.url), 60))


def test_the_token_connection_is_kept_alive_and_the_first_link_upgrades_on_it() -> None:
    """Challenge, token and the first link's upgrade travel on one TCP connection (two
    relay round trips fewer than a connection each); /info is fetched once per relay."""
    a, b = IdentityKey.generate(), IdentityKey.generate()

    class Counting(LinkClient):
        conns: list[object]

        async def _connect(self):  # type: ignore[no-untyped-def]
            conn = await super()._connect()
            self.conns.append(conn)
            return conn

    async def main(url: str) -> None:
        mine, theirs = Counting(url, a, timeout=10), LinkClient(url, b, timeout=10)
        mine.conns = []
        try:
            await mine.token()
            assert len(mine.conns) == 1  # the challenge and the token on one connection
            la, lb = await asyncio.gather(mine.open_link("s1", b.did, timeout=20),
                                          theirs.open_link("s1", a.did, timeout=20))
            assert la._conn is mine.conns[0]  # the upgrade reused it
            assert len(mine.conns) == 2  # and /info went on a connection of its own
            await la.send(b"over the reused connection")
            assert await lb.recv(timeout=10) == b"over the reused connection"
            # a second client of this process for this relay: /info is not asked again
            again = Counting(url, a, timeout=10)
            again.conns = []
            assert (await again.link_limits())["link_max_frame"] == 1 << 20
            assert again.conns == []
            await again.close()
            # an idle connection the relay has closed is not reused: a new one is opened
            await mine.info()  # on the /info connection, kept alive
            assert len(mine.conns) == 2 and mine._idle is not None
            mine._idle[0].writer.transport.abort()
            await mine.info()
            assert len(mine.conns) == 3
            await la.close()
            await lb.close()
        finally:
            await mine.close()
            await theirs.close()

    with start_relay(args=["--link-pair-timeout-s", "3"]) as relay:
        asyncio.run(asyncio.wait_for(main(relay.url), 60))


def test_unreachable_and_not_a_relay() -> None:
    from didmesh.session.mesh.loopback import free_ports

    async def main() -> None:
        [port] = free_ports(1)
        with pytest.raises(RelayUnreachable, match="cannot reach"):
            await LinkClient(f"http://127.0.0.1:{port}", IdentityKey.generate(),
                             timeout=2).open_link("s", "did:key:z", timeout=5)
        for bad in ("ftp://example.org", "http://127.0.0.1:99999", "http://[::1", "relay"):
            with pytest.raises(RelayError, match="not a relay URL"):
                LinkClient(bad, IdentityKey.generate())

    asyncio.run(main())
    assert OP_CLOSE == 0x8


def test_the_link_client_does_not_import_aiohttp() -> None:
    """The point of the module: a relayed party's start-up without aiohttp (~0.25 s CPU)."""
    import subprocess
    import sys

    code = ("import sys, didmesh.relay.linkclient, didmesh.session.mesh.runner; "
            "assert 'aiohttp' not in sys.modules, 'aiohttp was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_mesh_opens_links_with_the_link_client_unless_it_wants_pings() -> None:
    from didmesh.session.mesh.connect import ConnectOptions, RelayLinks
    from didmesh.session.mesh.loopback import loopback_plans

    async def main(url: str, heartbeat: float | None) -> tuple[type, type]:
        plans, ids = loopback_plans(2, relays=[url])
        openers = [RelayLinks(p, i, ConnectOptions(link_heartbeat=heartbeat))
                   for p, i in zip(plans, ids, strict=True)]
        try:
            la, lb = await asyncio.gather(openers[0](url, ids[1].did),
                                          openers[1](url, ids[0].did))
            await la.send(b"ping")
            assert await lb.recv(timeout=10) == b"ping"
            await la.close()
            await lb.close()
            return type(openers[0]._clients[url]), type(la)
        finally:
            for o in openers:
                await o.aclose()

    with start_relay() as relay:
        client, link = asyncio.run(asyncio.wait_for(main(relay.url, None), 60))
        assert client is LinkClient and link.__module__ == "didmesh.relay.linkclient"
        client, link = asyncio.run(asyncio.wait_for(main(relay.url, 5.0), 60))
        assert client is RelayClient


def test_links_over_tls_with_a_private_ca_and_an_untrusted_relay(tmp_path: Path) -> None:
    """https relays: the CA from ``ca_file`` (or $DIDMESH_RELAY_CA, as the aiohttp client);
    a certificate from a CA not trusted here is RelayUntrusted, naming --relay-ca."""
    from didmesh.relay.errors import RelayUntrusted
    from tls_helpers import make_pki

    pki = make_pki(tmp_path)
    a, b = IdentityKey.generate(), IdentityKey.generate()

    async def main(url: str) -> None:
        mine = LinkClient(url, a, ca_file=str(pki.ca))
        theirs = RelayClient(url, b, ca_file=str(pki.ca), heartbeat=None)
        try:
            la, lb = await asyncio.gather(mine.open_link("s-tls", b.did, timeout=20),
                                          theirs.open_link("s-tls", a.did, timeout=20))
            big = os.urandom(300_000)
            await la.send(big)
            assert await lb.recv(timeout=10) == big
            await lb.send(b"pong")
            assert await la.recv(timeout=10) == b"pong"
            await la.close()
            await lb.close()
        finally:
            await mine.close()
            await theirs.close()
        with pytest.raises(RelayUntrusted, match="--relay-ca FILE"):
            await LinkClient(url, a, ca_file=str(pki.other_ca)).open_link(
                "s-tls", b.did, timeout=10)

    with start_relay("memory", ["--rate-ip-per-s", "0", "--tls-cert", str(pki.cert),
                                "--tls-key", str(pki.key)]) as relay:
        asyncio.run(asyncio.wait_for(main(relay.url), 60))


def _ws_ok(request: bytes, extra: bytes = b"") -> bytes:
    key = next(ln.split(b":", 1)[1].strip().decode() for ln in request.split(b"\r\n")
               if ln.lower().startswith(b"sec-websocket-key:"))
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n" + extra)


_CHALLENGE = b'{"challenge": "c1.x.y", "relay_id": "r"}'
_TOKEN = b'{"token": "t1.x.y", "expires_ms": 1}'


def _http(body: bytes, status: bytes = b"200 OK") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


HOSTILE = {
    "garbage-head": lambda req: b"SSH-2.0-OpenSSH\r\n\r\n",
    "huge-content-length": lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
    "bad-content-length": lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: -x\r\n\r\n",
    "not-json": lambda req: _http(b"<html>"),
    "endless-head": lambda req: b"HTTP/1.1 200 OK\r\nX: " + b"a" * (2 << 20),
    "cut-mid-body": lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{",
    "wrong-accept": lambda req: (b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: AAAA\r\n\r\n"
                                 if req.startswith(b"GET /v1/link") else None),
    "refused-401": lambda req: (_http(b'{"error": {"code": "auth_invalid", "message": "no"}}',
                                      b"401 Unauthorized")
                                if req.startswith(b"GET /v1/link") else None),
    "masked-frame": lambda req: (_ws_ok(req, b"\x81\x85abcdefghi")
                                 if req.startswith(b"GET /v1/link") else None),
    "linked-garbage": lambda req: (_ws_ok(req, b"\x81\x03{x}")
                                   if req.startswith(b"GET /v1/link") else None),
    "close-at-once": lambda req: (_ws_ok(req, b"\x88\x02\x0f\xa0")
                                  if req.startswith(b"GET /v1/link") else None),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_relay_gives_one_relay_error(case: str) -> None:
    """Whatever a relay answers, the link client raises a RelayError at once: no other
    exception escapes its parsers, and nothing waits for a timeout."""
    answer = HOSTILE[case]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            req = await reader.readuntil(b"\r\n\r\n")
            n = next((int(ln.split(b":")[1]) for ln in req.split(b"\r\n")
                      if ln.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(n)
            out = answer(req)
            if out is None:  # this case is about another request: play a good relay
                path = req.split(b" ")[1]
                out = _http(_CHALLENGE if path.endswith(b"challenge") else
                            _TOKEN if path.endswith(b"token") else b"{}")
            writer.write(out)
            await writer.drain()
            await asyncio.sleep(0.2)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            client = LinkClient(f"http://127.0.0.1:{port}", IdentityKey.generate(), timeout=3)
            with pytest.raises(RelayError):
                link = await client.open_link("s", "did:key:z6Mkpeer", timeout=5)
                await link.recv(timeout=2)
            await client.close()
        finally:
            server.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_requests_refused_as_too_many_are_tried_again_then_given_up() -> None:
    """Parties behind one address that start at once exceed a relay's per-address burst
    for a moment: the link client waits and tries again (bounded) instead of failing the
    run; a relay that keeps refusing still ends in RateLimited, within seconds."""
    from didmesh.relay.errors import RateLimited

    a, b = IdentityKey.generate(), IdentityKey.generate()

    async def pair(url: str) -> None:
        mine, theirs = LinkClient(url, a, timeout=10), LinkClient(url, b, timeout=10)
        try:  # 8 requests (challenge, token, /info, upgrade each) against a burst of 4
            la, lb = await asyncio.gather(mine.open_link("s1", b.did, timeout=20),
                                          theirs.open_link("s1", a.did, timeout=20))
            await la.send(b"ping")
            assert await lb.recv(timeout=10) == b"ping"
            await la.close()
            await lb.close()
        finally:
            await mine.close()
            await theirs.close()

    async def refused(url: str) -> float:
        client = LinkClient(url, a, timeout=10)
        t0 = asyncio.get_running_loop().time()
        try:
            with pytest.raises(RateLimited):
                for _ in range(3):  # the first request passes, then the bucket is empty
                    await client._json("POST", "/v1/auth/challenge", {"did": a.did})
        finally:
            await client.close()
        return asyncio.get_running_loop().time() - t0

    with start_relay(args=["--rate-ip-per-s", "20", "--rate-ip-burst", "4"]) as relay:
        asyncio.run(asyncio.wait_for(pair(relay.url), 60))
    with start_relay(args=["--rate-ip-per-s", "0.01", "--rate-ip-burst", "1"]) as relay:
        took = asyncio.run(asyncio.wait_for(refused(relay.url), 60))
    assert 1.0 < took < 10


async def test_link_limits_cache_asks_again_after_a_failure_and_for_a_resumed_link() -> None:
    """Asked once; a failed ask gives the defaults and is asked again next time; a resumed
    link (``fresh``) asks again unless the limits are under LIMITS_REFRESH_S old, so the
    links of one relay restart share one request."""
    now = [100.0]
    answers: list[Any] = [RelayUnreachable("down"), {"limits": {"link_max_frame": 4096}},
                          {"limits": {"link_max_frame": 2048}}]
    asked: list[int] = []

    async def fetch() -> Any:
        asked.append(1)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cache = LinkLimitsCache("http://relay.invalid", fetch, clock=lambda: now[0])
    assert (await cache.get())["link_max_frame"] == DEFAULT_LINK_LIMITS["link_max_frame"]
    assert (await cache.get())["link_max_frame"] == 4096  # the failure was not kept
    assert (await cache.get(fresh=True))["link_max_frame"] == 4096  # just asked
    assert len(asked) == 2
    now[0] += LIMITS_REFRESH_S + 0.1
    assert (await cache.get())["link_max_frame"] == 4096  # a new link: no need to ask
    frames = await asyncio.gather(*(cache.get(fresh=True) for _ in range(5)))
    assert [f["link_max_frame"] for f in frames] == [2048] * 5 and len(asked) == 3


def test_the_link_request_rides_with_the_upgrade() -> None:
    """The link request frame goes in the same write as the upgrade request, without
    waiting for the 101: this relay reads it before it answers the upgrade (a client
    that waited for the 101 would time out here), then links."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await reader.readuntil(b"\r\n\r\n")
                n = next((int(ln.split(b":")[1]) for ln in req.split(b"\r\n")
                          if ln.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(n)
                path = req.split(b" ")[1]
                if not path.startswith(b"/v1/link"):
                    writer.write(_http(_CHALLENGE if path.endswith(b"challenge") else
                                       _TOKEN if path.endswith(b"token") else b"{}"))
                    continue
                head = await asyncio.wait_for(reader.readexactly(2), 2)  # before the 101
                size = head[1] & 0x7F
                if size == 126:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                key = await reader.readexactly(4)
                body = mask(key, await reader.readexactly(size))
                seen.append(body.decode())
                linked = (b'{"type": "linked", "session": "s", "peer": "did:key:z6Mkpeer", '
                          b'"link_id": "l", "max_bytes": 1000, "max_duration_s": 60, '
                          b'"max_frame": 1000}')
                frame = bytes((0x81, 126)) + len(linked).to_bytes(2, "big") + linked
                writer.write(_ws_ok(req, frame))
                await writer.drain()
                await asyncio.sleep(0.5)
                return
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = LinkClient(f"http://127.0.0.1:{port}", IdentityKey.generate(), timeout=3)
        try:
            link = await client.open_link("s", "did:key:z6Mkpeer", timeout=5)
            assert link.linked is not None and link.linked.link_id == "l"
            assert len(seen) == 1 and '"session": "s"' in seen[0].replace('":"', '": "')
        finally:
            await client.close()
            server.close()

    asyncio.run(asyncio.wait_for(main(), 30))
