"""A direct (TCP) link whose write fails after the peer closed still delivers what the
peer sent before closing (session/mesh/transport.py, ``TcpLink``).

When this party's event loop was blocked (a long ``input()`` or local step), a peer may
have sent its signed abort notice and closed meanwhile. The first write afterwards draws
a reset, the next fails with EPIPE, and asyncio stops reading at once: without draining
the kernel's receive queue the notice was lost and the party reported only "disconnected
([Errno 32] Broken pipe)". Real sockets on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import time

from didmesh.session.mesh.transport import open_tcp


class Receiver:
    def __init__(self) -> None:
        self.data = b""
        self.eof: list[BaseException | None] = []
        self.ended = asyncio.Event()

    def link_data(self, data: bytes) -> None:
        assert not self.eof, "data after the end"
        self.data += bytes(data)

    def link_eof(self, exc: BaseException | None) -> None:
        self.eof.append(exc)
        self.ended.set()


async def _failed_write_after_the_peer_left(last_words: bytes) -> Receiver:
    with socket.create_server(("127.0.0.1", 0)) as server:
        link = await open_tcp("127.0.0.1", server.getsockname()[1], 5)
        rec = Receiver()
        link.set_receiver(rec)
        peer, _ = server.accept()
        # from here on this party's event loop does not run (it is "blocked")
        peer.sendall(last_words)
        peer.close()
        time.sleep(0.2)
        link.write(b"x")  # accepted by the kernel; the peer's answers with a reset
        time.sleep(0.2)
        link.write(b"y")  # EPIPE: asyncio closes the transport, reading no more
        await asyncio.wait_for(rec.ended.wait(), 5)
        return rec


def test_what_the_peer_sent_before_closing_arrives_before_the_end() -> None:
    last_words = b"signed abort notice " * 500  # ~10 kB
    rec = asyncio.run(_failed_write_after_the_peer_left(last_words))
    assert rec.data == last_words
    assert len(rec.eof) == 1 and isinstance(rec.eof[0], OSError)
