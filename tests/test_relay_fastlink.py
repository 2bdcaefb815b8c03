"""Link forwarding after pairing (relay/fastlink.py) against a real relay process: the relay
answers pings itself, pings silent ends (``link_heartbeat_s``) and cuts the ones that do not
answer, and a raw client that breaks RFC 6455 on the wire is closed with the protocol's code
while its peer learns why. Raw frames come from wsproto (an independent implementation)."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.relay.protocol import CloseCode, LinkRequest
from relay_helpers import RelayProcess, start_relay
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode

BEAT_S = 0.5
WS = aiohttp.ClientWebSocketResponse


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    with start_relay(args=["--link-heartbeat-s", str(BEAT_S), "--rate-ip-per-s", "0",
                           "--rate-did-per-s", "0"]) as r:
        yield r


class RawEnd:
    """A link end speaking WebSocket by hand over a plain TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.fp = FrameProtocol(client=True, extensions=[])

    @classmethod
    async def open(cls, url: str, token: str) -> RawEnd:
        host, port = url.split("//")[1].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /v1/link HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send_text(self, text: str) -> None:
        self.writer.write(self.fp.send_data(text, fin=True))

    async def next_frame(self, timeout: float = 5.0) -> tuple[Opcode, bytes]:
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.fp.received_frames():
                    payload = frame.payload
                    if frame.opcode is Opcode.CLOSE:
                        return frame.opcode, payload[0].to_bytes(2, "big")
                    if isinstance(payload, str):
                        return frame.opcode, payload.encode()
                    return frame.opcode, bytes(payload)
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed without a close frame")
                self.fp.receive_bytes(data)


@pytest.fixture
async def raw_pair(relay: RelayProcess) -> AsyncIterator[tuple[RawEnd, WS]]:
    """A raw end for alice and an aiohttp end for bob, linked."""
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(relay.url, alice) as ca, RelayClient(relay.url, bob) as cb, \
            aiohttp.ClientSession() as s:
        raw = await RawEnd.open(relay.url, await ca.token())
        raw.send_text(LinkRequest("fast", bob.did).to_json())
        ws = await s.ws_connect(
            relay.url + "/v1/link", headers={"Authorization": "Bearer " + await cb.token()},
            autoping=False,
        )
        await ws.send_str(LinkRequest("fast", alice.did).to_json())
        opcode, linked = await raw.next_frame()
        assert opcode is Opcode.TEXT and b'"linked"' in linked
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT
        try:
            yield raw, ws
        finally:
            raw.writer.close()
            await ws.close()


async def test_relay_answers_pings_on_a_link(raw_pair: tuple[RawEnd, WS]) -> None:
    raw, ws = raw_pair
    raw.writer.write(raw.fp.ping(b"are you there"))
    assert await raw.next_frame() == (Opcode.PONG, b"are you there")
    await ws.ping(b"bob asks")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"bob asks")


async def test_fragmented_message_arrives_whole(
    raw_pair: tuple[RawEnd, WS],
) -> None:
    raw, ws = raw_pair
    parts = [os.urandom(1000), os.urandom(5), os.urandom(70000)]
    for i, p in enumerate(parts):
        raw.writer.write(raw.fp.send_data(p, fin=i == len(parts) - 1))
        if i == 0:
            raw.writer.write(raw.fp.ping(b"between"))
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"".join(parts))
    assert await raw.next_frame() == (Opcode.PONG, b"between")


async def test_unmasked_frame_closes_both_ends_with_1002(
    raw_pair: tuple[RawEnd, WS],
) -> None:
    raw, ws = raw_pair
    code = 1002  # RFC 6455 protocol error: client frames must be masked
    raw.writer.write(raw.fp.send_data(b"fine", fin=True) + b"\x82\x03abc")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"fine")
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == code
    assert await raw.next_frame() == (Opcode.CLOSE, code.to_bytes(2, "big"))


async def test_frame_too_big_closes_both_ends(
    raw_pair: tuple[RawEnd, WS],
) -> None:
    raw, ws = raw_pair
    # only the header of a 2 MiB frame (the default link_max_frame is 1 MiB): refused at once
    raw.writer.write(bytes((0x82, 0x80 | 127)) + (2 * 1024 * 1024).to_bytes(8, "big"))
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == CloseCode.MESSAGE_TOO_BIG
    assert await raw.next_frame() == (Opcode.CLOSE, (1009).to_bytes(2, "big"))


async def test_client_close_reaches_the_peer_as_4000(
    raw_pair: tuple[RawEnd, WS],
) -> None:
    raw, ws = raw_pair
    raw.writer.write(raw.fp.close(CloseReason.NORMAL_CLOSURE, "done"))
    assert await raw.next_frame() == (Opcode.CLOSE, (1000).to_bytes(2, "big"))
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == CloseCode.PEER_CLOSED
    assert await asyncio.wait_for(raw.reader.read(), 5) == b""  # the relay closed TCP


async def test_heartbeat_cuts_an_end_that_never_answers(
    raw_pair: tuple[RawEnd, WS],
) -> None:
    raw, ws = raw_pair
    t0 = time.monotonic()
    # bob (aiohttp, autoping off) answers by hand; the raw end reads pings and never answers
    pings = 0
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type is aiohttp.WSMsgType.PING:
            assert msg.data == b"didmesh"  # the relay's own ping, not aiohttp's
            await ws.pong(msg.data)
            continue
        break
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == CloseCode.PEER_GONE
    elapsed = time.monotonic() - t0
    assert BEAT_S < elapsed < BEAT_S * 1.5 + 2.0, elapsed
    while True:  # the raw end saw pings, then the connection was cut
        try:
            opcode, _ = await raw.next_frame()
        except (ConnectionError, asyncio.IncompleteReadError):
            break
        assert opcode is Opcode.PING
        pings += 1
    assert pings >= 1


async def test_an_answering_idle_end_stays_linked(relay: RelayProcess) -> None:
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(relay.url, alice, heartbeat=None) as ca, \
            RelayClient(relay.url, bob, heartbeat=None) as cb:
        la, lb = await asyncio.gather(
            ca.open_link("idle", bob.did), cb.open_link("idle", alice.did)
        )
        # both ends read (aiohttp answers pings only while reading); nobody sends
        got_a = asyncio.create_task(la.recv(timeout=10))
        got_b = asyncio.create_task(lb.recv(timeout=10))
        await asyncio.sleep(BEAT_S * 5)
        await la.send(b"still here")
        await lb.send(b"me too")
        assert await got_b == b"still here" and await got_a == b"me too"
        await la.close()
