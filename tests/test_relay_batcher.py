"""FrameBatcher (relay/links.py): frames written by gathering writes, partial writes and
the transport's own buffer arrive whole and in order, over a real loopback TCP socket."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from didmesh.relay.links import FrameBatcher


def expected(frames: list[bytes]) -> bytes:
    return b"".join(FrameBatcher.header(len(f)) + f for f in frames)


async def _pair() -> tuple[asyncio.Transport, socket.socket]:
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    client = socket.socket()
    client.setblocking(False)
    await loop.sock_connect(client, listener.getsockname())
    server_side, _ = await loop.sock_accept(listener)
    listener.close()
    server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # fill up quickly
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_side)
    return transport, client  # type: ignore[return-value]


async def _read(sock: socket.socket, n: int, slow_reads: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    async with asyncio.timeout(10):
        while len(out) < n:
            if slow_reads > 0:  # a slow reader at first: the writer sees partial writes
                slow_reads -= 1
                await asyncio.sleep(0.002)
            out += await loop.sock_recv(sock, 262144)
    return bytes(out)


@pytest.mark.parametrize("sizes", [
    [64] * 2000,  # small frames: first one at once, the rest gathered per loop turn
    [65536] * 40,  # big frames: gathered, written with writev, partial writes
    [10, 70000, 5, 16384, 200, 65536, 1, 300000, 7] * 5,  # mixed, all header forms
], ids=["small", "big", "mixed"])
async def test_frames_arrive_whole_and_in_order(sizes: list[int]) -> None:
    transport, reader = await _pair()
    try:
        batcher = FrameBatcher(transport)
        assert batcher.fd is not None  # the writev path is the one under test
        frames = [os.urandom(n) for n in sizes]
        want = expected(frames)
        reading = asyncio.create_task(_read(reader, len(want), 30))
        for i, frame in enumerate(frames):
            batcher.add(frame)
            if i % 7 == 0:
                await asyncio.sleep(0)  # end of a loop turn: pending frames leave
            if batcher.backlog() > 256 * 1024:
                batcher.flush()
                while transport.get_write_buffer_size() > 64 * 1024:
                    await asyncio.sleep(0.001)
        batcher.flush()
        assert await reading == want
    finally:
        transport.close()
        reader.close()


async def test_nothing_is_written_after_the_transport_closes() -> None:
    transport, reader = await _pair()
    try:
        batcher = FrameBatcher(transport)
        batcher.add(b"a" * 100)  # leaves at once
        batcher.add(b"b" * 100_000)  # pending until the end of the turn
        transport.close()
        batcher.flush()
        got = await _read(reader, 102, 0)
        assert got == expected([b"a" * 100])
        await asyncio.sleep(0.05)
        reader.setblocking(False)
        with pytest.raises((BlockingIOError, ConnectionError)):
            extra = reader.recv(1)
            assert extra == b""  # EOF, not frame bytes
            raise ConnectionError
    finally:
        reader.close()
