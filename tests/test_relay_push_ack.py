"""Acknowledging over the push socket (RelayClient.ack_over_push, RelayMailbox.commit),
against a real relay process."""

from __future__ import annotations

import asyncio

from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.session.mailbox import RelayMailbox
from relay_helpers import RelayProcess, shared_relay  # noqa: F401


async def _drained(client: RelayClient) -> None:
    """The acks travel asynchronously over the socket: wait (bounded) until they land."""
    async with asyncio.timeout(10):
        while await client.fetch():
            await asyncio.sleep(0.05)


async def test_ack_over_push_needs_an_open_push_socket(
    shared_relay: RelayProcess,  # noqa: F811
) -> None:
    a, b = IdentityKey.generate(), IdentityKey.generate()
    async with RelayClient(shared_relay.url, a) as ca, RelayClient(shared_relay.url, b) as cb:
        await ca.send(b.did, "s", b"x")
        assert await cb.ack_over_push(["whatever"]) is False  # no socket yet: use ack()
        async with asyncio.timeout(10):
            async for item in cb.inbox():
                assert item.open(b) == b"x"
                assert await cb.ack_over_push([item.id]) is True
                break
        await _drained(cb)


async def test_mailbox_commit_deletes_only_what_was_received(
    shared_relay: RelayProcess,  # noqa: F811
) -> None:
    a, b = IdentityKey.generate(), IdentityKey.generate()
    async with RelayMailbox([shared_relay.url], a) as sender, RelayMailbox(
        [shared_relay.url], b
    ) as box:
        for i in range(3):
            await sender.send(b.did, "s", b"%d" % i)
        got = [await box.receive(10) for _ in range(3)]
        assert [g[1] for g in got if g] == [b"0", b"1", b"2"]
        await box.commit()  # over the push socket the receive loop opened
        await _drained(box.clients[0])
        await sender.send(b.did, "s", b"later")  # received, not committed: stays
        assert await box.receive(10) == (a.did, b"later")
        await asyncio.sleep(0.2)
        left = await box.clients[0].fetch()
        assert len(left) == 1 and left[0].open(b) == b"\x00later"  # RAW frame
