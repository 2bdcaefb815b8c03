"""The run-time exchange of UDP endpoints between roster parties (specs/wireguard.md,
section 6.3), through the session's relays, authenticated end to end.

Every pair opens one relay link (``link_id`` :data:`LINK_ID`) and each side sends

1. ``HELLO``: :data:`MAGIC` and a fresh 16-byte challenge;
2. ``OFFER``: a 12-byte nonce and ChaCha20-Poly1305 over the JSON
   ``{"udp": ["host:port", ...], "nat": "eim"}`` under the pair's *endpoint key*
   (HKDF-SHA256 of the pair's roster-bound PresharedKey, section 3, with the label
   :data:`KEY_LABEL`), with associated data: the label, the session id, the roster hash,
   the sender's and the receiver's party ids and the *receiver's* challenge.

Only the two parties hold the key, the ids give the direction and the challenge makes an
offer good for this run only: a relay (or anyone on the path) cannot forge, alter,
reflect or replay an offer; it can withhold it (the pair then uses the endpoints signed
at accept time, and fails the handshake wait if those do not connect). What a party
offers are UDP endpoints, at most :data:`MAX_ENDPOINTS`; a lying roster member can make a
peer send WireGuard handshake initiations to addresses of its choice, at WireGuard's own
rate (one per 5 s), for at most the handshake wait.

:class:`Offer` and :func:`seal`/:func:`open_offer` are sans-IO; :func:`exchange` is the
asyncio adapter over :class:`~didmesh.relay.linkclient.LinkClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from didmesh.identity.keys import IdentityKey
from didmesh.identity.strict_json import loads_strict
from didmesh.session.mesh.faults import PeerMisbehaved
from didmesh.session.mesh.plan import MeshPlan

from .keys import derive_psk
from .udpmap import NATS

LINK_ID: Final = "wg-endpoints"
MAGIC: Final = b"DMWG1"
KEY_LABEL: Final = b"didmesh/wireguard/endpoints/v1"
CHALLENGE_LEN: Final = 16
NONCE_LEN: Final = 12
MAX_ENDPOINTS: Final = 4
MAX_OFFER: Final = 1024


class OfferRefused(PeerMisbehaved):
    """A peer's endpoint offer did not decrypt under the pair's key, or is malformed."""

    code = "wireguard_offer_refused"


def parse_udp_endpoint(text: str) -> tuple[str, int]:
    """``"198.51.100.7:51820"`` or ``"[2001:db8::7]:51820"`` (IP literals only)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port: {text[:80]!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"not a usable address: {text[:80]!r}")
    return str(ip), int(port)


def format_udp_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Offer:
    udp: tuple[str, ...]  # "host:port", best first
    nat: str

    def to_bytes(self) -> bytes:
        return json.dumps({"udp": list(self.udp), "nat": self.nat},
                          separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Offer:
        doc = loads_strict(data, max_bytes=MAX_OFFER, error=OfferRefused,
                           what="a WireGuard endpoint offer")
        if not isinstance(doc, dict) or set(doc) != {"udp", "nat"}:
            raise OfferRefused("a WireGuard endpoint offer with unexpected fields")
        udp, nat = doc["udp"], doc["nat"]
        if nat not in NATS or not isinstance(udp, list) or len(udp) > MAX_ENDPOINTS:
            raise OfferRefused("a WireGuard endpoint offer with a bad NAT kind or too many "
                               "endpoints")
        out = []
        for e in udp:
            try:
                out.append(format_udp_endpoint(*parse_udp_endpoint(e if isinstance(e, str)
                                                                   else "")))
            except ValueError:
                raise OfferRefused(f"a WireGuard endpoint offer with a bad endpoint "
                                   f"{str(e)[:80]!r}") from None
        return cls(tuple(out), nat)


def endpoint_key(plan: MeshPlan, peer: int) -> bytes:
    """The pair's key for offers: HKDF-SHA256(PSK, info = KEY_LABEL)."""
    psk = derive_psk(plan.my_static_private, plan.party(peer).static_public,
                     plan.roster_hash, plan.my_party_id, peer)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_LABEL).derive(psk)


def _ad(plan: MeshPlan, sender: int, receiver: int, challenge: bytes) -> bytes:
    return b"\0".join((KEY_LABEL, plan.session_id.encode(), plan.roster_hash,
                       sender.to_bytes(4, "big") + receiver.to_bytes(4, "big"), challenge))


def hello(challenge: bytes) -> bytes:
    return MAGIC + challenge


def parse_hello(data: bytes) -> bytes:
    if len(data) != len(MAGIC) + CHALLENGE_LEN or not data.startswith(MAGIC):
        raise OfferRefused("a malformed WireGuard endpoint hello")
    return data[len(MAGIC):]


def seal(plan: MeshPlan, peer: int, offer: Offer, peer_challenge: bytes,
         nonce: bytes | None = None) -> bytes:
    nonce = nonce if nonce is not None else os.urandom(NONCE_LEN)
    box = ChaCha20Poly1305(endpoint_key(plan, peer))
    return nonce + box.encrypt(nonce, offer.to_bytes(),
                               _ad(plan, plan.my_party_id, peer, peer_challenge))


def open_offer(plan: MeshPlan, peer: int, data: bytes, my_challenge: bytes) -> Offer:
    """The peer's offer, if it was sealed by the peer for this party and this run."""
    if not NONCE_LEN + 16 <= len(data) <= NONCE_LEN + 16 + MAX_OFFER:
        raise OfferRefused(f"a WireGuard endpoint offer of {len(data)} bytes from "
                           f"{plan.describe(peer)}", party=peer)
    box = ChaCha20Poly1305(endpoint_key(plan, peer))
    try:
        plain = box.decrypt(data[:NONCE_LEN], data[NONCE_LEN:],
                            _ad(plan, peer, plan.my_party_id, my_challenge))
    except InvalidTag:
        raise OfferRefused(f"the WireGuard endpoint offer from {plan.describe(peer)} does "
                           "not verify (not sealed by it, for us, in this run)",
                           party=peer) from None
    return Offer.from_bytes(plain)


# --------------------------------------------------------------------------- adapter


async def _one(plan: MeshPlan, peer: int, offer: Offer, client: Any, url: str,
               deadline: float) -> Offer:
    link = await client.open_link(plan.session_id, plan.party(peer).did, link_id=LINK_ID,
                                  timeout=max(0.1, deadline - time.monotonic()))
    try:
        mine = os.urandom(CHALLENGE_LEN)
        await link.send(hello(mine))
        theirs = parse_hello(await link.recv(max(0.1, deadline - time.monotonic())))
        await link.send(seal(plan, peer, offer, theirs))
        return open_offer(plan, peer, await link.recv(max(0.1, deadline - time.monotonic())),
                          mine)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(link.close(), 2.0)


async def exchange(plan: MeshPlan, identity: IdentityKey, offer: Offer, *,
                   timeout: float = 20.0, peers: Sequence[int] | None = None,
                   ) -> tuple[dict[int, Offer], list[str]]:
    """Exchange offers with every peer (in parallel) over the first of the session's
    relays that works for the pair; within ``timeout``. Returns the offers received and
    a note per peer that gave none (why)."""
    from didmesh.relay.linkclient import LinkClient

    deadline = time.monotonic() + timeout
    clients = {url: LinkClient(url, identity, timeout=min(timeout, 10.0))
               for url in plan.relays}
    got: dict[int, Offer] = {}
    notes: list[str] = []

    async def pair(peer: int) -> None:
        why = "the session names no relay"
        for url, client in clients.items():
            try:
                got[peer] = await asyncio.wait_for(
                    _one(plan, peer, offer, client, url, deadline),
                    max(0.1, deadline - time.monotonic()))
                return
            except OfferRefused:
                raise
            except Exception as exc:  # noqa: BLE001 - this relay failed the pair: a note
                why = f"{url}: {getattr(exc, 'message', None) or type(exc).__name__}"
        notes.append(f"no UDP endpoints from {plan.describe(peer)} ({why})")

    try:
        await asyncio.gather(*(pair(p) for p in (peers if peers is not None else
                                                 [q.party_id for q in plan.peers()])))
    finally:
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.close()
    return got, notes
