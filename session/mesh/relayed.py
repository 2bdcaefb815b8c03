"""Relayed paths: a forwarding link on one of the session's relays, and from there the
hole punch (specs/mesh.md, "Paths" and 6.1).

:class:`RelayedPath` opens a link to the peer through each relay in turn and runs the
pair's handshake on it (:class:`~.handshake.PairHandshake`; the relay forwards only
ciphertext). A pair that may punch then lets the :class:`~.puncher.Puncher` coordinate a
TCP simultaneous open over that authenticated channel before SELECT: the pair ends on the
punched link or, with the reason in its description, on the relayed one. A handshake that
fails on a relayed link (whose ends the relay authenticated) ends relayed attempts for
the pair. :class:`RelayLinks` opens the links, one client per relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from didmesh.identity.errors import DidmeshError
from didmesh.identity.keys import IdentityKey

from .errors import HandshakeFailed
from .faults import RelayLost
from .handshake import Attempt, PairHandshake, Rejected, reason_of
from .paths import Pair
from .plan import MeshPlan
from .resume import DEFAULT_MAX_UNACKED, ResumeStream, resume_link_id
from .transport import ByteLink, RelayedLink

if TYPE_CHECKING:
    from .connect import ConnectOptions
    from .puncher import Puncher

#: ``(relay_url, peer_did) -> link`` with ``send``/``recv``/``close`` coroutines.
RelayOpener = Callable[[str, str], Awaitable[Any]]


class RelayedPath:
    """A pair's relayed path (and, if a puncher is given, its upgrade to a punched one).
    It starts ``grace`` seconds late (direct attempts first)."""

    kind = "relay"

    def __init__(self, plan: MeshPlan, handshake: PairHandshake, opener: RelayOpener,
                 puncher: Puncher | None, grace: float, *,
                 options: ConnectOptions | None = None) -> None:
        self.plan = plan
        self.handshake = handshake
        self.opener = opener
        self.puncher = puncher
        self.grace = grace
        self.resume_timeout = options.resume_timeout if options is not None else 0.0
        self.resume_buffer = options.resume_buffer if options is not None \
            else DEFAULT_MAX_UNACKED

    async def run(self, pair: Pair, deadline: float) -> None:
        if self.grace:
            await asyncio.sleep(self.grace)
        peer_did = self.plan.party(pair.peer_id).did
        errors = []
        for url in self.plan.relays:
            if pair.done or time.monotonic() >= deadline:
                return
            try:
                raw = await asyncio.wait_for(self.opener(url, peer_did),
                                             max(0.01, deadline - time.monotonic()))
            except (OSError, TimeoutError, DidmeshError) as exc:
                errors.append(f"{url}: {reason_of(exc)}")
                continue
            relayed = RelayedLink(raw, f"relay {url}",
                                  stream=ResumeStream(max_unacked=self.resume_buffer))
            link: ByteLink = relayed
            try:
                link, ch = await self._handshake(pair, link, deadline)
            except (HandshakeFailed, Rejected) as exc:
                if isinstance(exc, Rejected):
                    link.close()  # after our diagnostic: the initiator learns why
                else:
                    link.abort()
                err = exc.error if isinstance(exc, Rejected) else exc
                pair.failed(self.kind, f"{url}: {err.message}")
                return
            except (OSError, ConnectionError, TimeoutError, DidmeshError) as exc:
                link.abort()
                errors.append(f"{url}: {reason_of(exc)}")
                continue
            except BaseException:  # cancelled: another path won (the relay frees the link)
                link.abort()
                raise
            if link is relayed:  # not punched: resumable if the relay loses it
                self._arm_resume(relayed, pair, url, ch)
            pair.won(link, ch)
            return
        pair.failed(self.kind, "; ".join(errors) or "no relay")

    def _arm_resume(self, link: RelayedLink, pair: Pair, url: str, ch: Any) -> None:
        """Let ``link`` be resumed through the session's relays if the relay loses it
        (specs/mesh.md 6.2): ``reopen`` tries the relay the link was on, then the others,
        in the same order at both ends, until the resume deadline."""
        opener = self.opener
        timeout = self.resume_timeout
        exporter = getattr(ch, "exporter", b"")
        if not isinstance(opener, RelayLinks) or timeout <= 0 or not exporter:
            return
        peer_did = self.plan.party(pair.peer_id).did
        link_id = resume_link_id(exporter)
        name = self.plan.describe(pair.peer_id)
        relays = list(self.plan.relays)
        current = [url]

        async def reopen(deadline: float) -> tuple[Any, str]:
            loop = asyncio.get_running_loop()
            urls = [current[0], *(u for u in relays if u != current[0])]
            last: dict[str, str] = {}
            delay = 0.05
            while True:
                for u in urls:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        tried = "; ".join(f"{k}: {v}" for k, v in last.items()) or "no attempt"
                        where = "it" if len(urls) == 1 else "any relay of the session"
                        raise RelayLost(
                            f"relay {current[0]} lost the link to {name} and it could not be "
                            f"resumed within {timeout:g} s on {where} ({tried})",
                            relay=current[0])
                    # one relay at a time; long enough for the peer to come to the same one
                    per = remaining if len(urls) == 1 else min(remaining, max(2.0, timeout / 3))
                    try:
                        raw = await asyncio.wait_for(
                            opener.open(u, peer_did, link_id=link_id, timeout=per), per + 0.5)
                    except (OSError, TimeoutError, DidmeshError) as exc:
                        last[u] = reason_of(exc)
                        continue
                    current[0] = u
                    return raw, u
                await asyncio.sleep(delay)  # every relay refused at once: it may be restarting
                delay = min(delay * 2, 0.1)  # as MPyC retries: a relay back costs <= 0.1 s

        link.arm_resume(exporter, pair.initiator, reopen, timeout)

    async def _handshake(self, pair: Pair, link: ByteLink, deadline: float
                         ) -> tuple[ByteLink, Any]:
        """The handshake on the relayed ``link``, then the punch if any: the link (relayed
        or punched) and channel the pair ends with."""
        punch = self.puncher
        if punch is not None:
            punch.start_observing()
        if pair.initiator:
            ch = await self.handshake.initiate(link, pair.peer_id, deadline)
            if punch is not None:
                return await punch.as_initiator(pair.peer_id, link, ch, deadline)
            return link, ch
        attempt = Attempt(punch=punch is not None)
        if punch is not None:  # our CONNECT goes with handshake message 2 if it is ready
            attempt.early = functools.partial(punch.early_offer, pair.peer_id)
        try:
            _, ch = await self.handshake.respond(link, deadline, pair.peer_id, attempt)
        except BaseException:
            if punch is not None:
                punch.drop_early(pair.peer_id)
            raise
        if attempt.first and punch is not None:
            return await punch.as_responder(pair.peer_id, link, ch, attempt.first, deadline)
        if punch is not None:
            punch.drop_early(pair.peer_id)
            punch.describe_plain(pair.peer_id, link)
        return link, ch


class RelayLinks:
    """Opens relayed links, one client per relay: :class:`didmesh.relay.linkclient.LinkClient`
    (asyncio streams) unless ``link_heartbeat`` asks for client pings, then
    :class:`didmesh.relay.client.RelayClient` (aiohttp)."""

    def __init__(self, plan: MeshPlan, identity: IdentityKey, options: ConnectOptions) -> None:
        self.plan = plan
        self.identity = identity
        self.options = options
        self._clients: dict[str, Any] = {}

    async def __call__(self, url: str, peer_did: str) -> Any:
        return await self.open(url, peer_did)

    async def open(self, url: str, peer_did: str, *, link_id: str = "",
                   timeout: float | None = None) -> Any:
        """A link to ``peer_did`` through the relay at ``url`` (``link_id``: a resumed
        link's, see resume.py), waiting at most ``timeout`` s (default: connect_timeout)."""
        client = self._client(url)
        timeout = self.options.connect_timeout if timeout is None else timeout
        if self.options.link_heartbeat is None:
            return await client.open_link(
                self.plan.session_id, peer_did, link_id=link_id, timeout=timeout)
        return await client.open_link(
            self.plan.session_id, peer_did, link_id=link_id, timeout=timeout,
            heartbeat=self.options.link_heartbeat,
        )

    def _client(self, url: str) -> Any:
        client = self._clients.get(url)
        if client is not None:
            return client
        if self.options.link_heartbeat is None:
            # no pings of our own: the asyncio link client, which spares every relayed
            # party the import of aiohttp (about 0.25 s of CPU)
            from didmesh.relay.linkclient import LinkClient

            client = LinkClient(url, self.identity, timeout=self.options.handshake_timeout)
        else:
            from didmesh.relay.client import RelayClient

            client = RelayClient(url, self.identity, timeout=self.options.handshake_timeout,
                                 heartbeat=self.options.link_heartbeat)
        self._clients[url] = client
        return client

    async def observe(self, url: str, local_port: int) -> tuple[str, int | None]:
        """Our address and ``local_port``'s port as the relay at ``url`` sees them now."""
        seen = await self._client(url).observed(local_port=local_port)
        return seen.address, seen.port

    async def aclose(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5.0)
        self._clients.clear()


def default_relay_opener(
    plan: MeshPlan, identity: IdentityKey, options: ConnectOptions
) -> RelayLinks | None:
    """Links through the relay client, if this installation has it (not imported here:
    it brings in aiohttp, which a run whose pairs all connect directly never needs)."""
    import importlib.util

    try:
        if importlib.util.find_spec("didmesh.relay.client") is None:
            return None
    except (ImportError, ValueError):
        return None
    return RelayLinks(plan, identity, options)


__all__ = ["RelayLinks", "RelayOpener", "RelayedPath", "default_relay_opener"]
