"""A pair's handshake on any byte link: hello, Noise KK, SELECT (specs/mesh.md, "Paths").

Every path — direct, punched or relayed — opens a :class:`~.transport.ByteLink` and then
runs the same exchange on it, here. The initiator (lower id) writes a cleartext *hello*
(:data:`HELLO_LEN` bytes: ``b"DMSH" || version 1 || tag || u32 initiator || u32
responder`` with ``tag = BLAKE2s("didmesh/mesh/hello" || roster_hash)[:16]``) so that a
listener serving several peers knows which roster entry to use, then the Noise KK
handshake (:class:`~.channel.MeshHandshake`). The hello is only a hint: the prologue binds
the roster hash and both ids, so a wrong claim fails the handshake. A responder that
rejects a hello or a handshake writes ``b"DMSX" || code`` (an unauthenticated diagnostic)
and closes. The initiator commits to a path by sending SELECT as the channel's first
message; on a relayed link that may punch, the first message may be a punch CONNECT
instead (:mod:`.punch`).

:class:`PairHandshake` is the small public interface the paths use:
:meth:`~PairHandshake.initiate` and :meth:`~PairHandshake.respond`.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .channel import MeshHandshake, SecureChannel
from .errors import HandshakeFailed
from .peer import SELECT
from .plan import MeshPlan
from .punch import is_connect
from .transport import ByteLink

HELLO_MAGIC: Final = b"DMSH"
HELLO_VERSION: Final = 1
HELLO_LEN: Final = 4 + 1 + 16 + 4 + 4
REJECT_MAGIC: Final = b"DMSX"
REJECT_ROSTER: Final = b"R"  # hello tag differs: another roster
REJECT_PARTY: Final = b"P"  # ids not in the roster / not us
REJECT_AUTH: Final = b"A"  # handshake did not authenticate
_REJECT_TEXT: Final = {
    REJECT_ROSTER: "its roster hash differs from ours (it agreed another roster)",
    REJECT_PARTY: "it does not accept our party ids (another roster or a stale endpoint)",
    REJECT_AUTH: "our handshake did not authenticate at its end: altered in transit, or it "
    "holds another roster or key for us",
}


def reason_of(exc: BaseException) -> str:
    """A failure's reason for a message, never empty (``str(TimeoutError())`` is ``""``)."""
    text = getattr(exc, "message", None) or str(exc)
    if text:
        return str(text)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionError | EOFError):
        return f"the connection closed ({type(exc).__name__})"
    return type(exc).__name__


def hello_tag(roster_hash: bytes) -> bytes:
    return hashlib.blake2s(b"didmesh/mesh/hello" + roster_hash).digest()[:16]


def encode_hello(roster_hash: bytes, initiator: int, responder: int) -> bytes:
    return (
        HELLO_MAGIC + bytes((HELLO_VERSION,)) + hello_tag(roster_hash)
        + struct.pack(">II", initiator, responder)
    )


class Rejected(Exception):
    """Responder side: a hello or handshake from ``claimed`` (if known) was refused; the
    diagnostic was written, the caller closes the link."""

    def __init__(self, claimed: int | None, error: HandshakeFailed) -> None:
        super().__init__(error.message)
        self.claimed = claimed
        self.error = error


@dataclass
class Attempt:
    """Responder side: what an inbound connection has claimed so far."""

    claimed: int | None = None
    #: on a relayed link, whether a punch CONNECT may come instead of SELECT
    punch: bool = False
    #: on a relayed link: the initiator's first channel message, if it is a punch CONNECT
    first: bytes = b""
    #: on a relayed link: our punch CONNECT to send right after handshake message 2, in
    #: the channel it opens (the initiator then has it as the handshake completes: no
    #: round trip of its own, specs/mesh.md 6.1); called once, None: send nothing early
    early: Callable[[], bytes | None] | None = None
    #: whether ``early`` gave a message that was sent
    sent_early: bool = False


async def read_exact(link: ByteLink, n: int, buf: bytearray, deadline: float) -> bytes:
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        data = await link.read_some(remaining)
        if not data:
            raise ConnectionError("the connection closed")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


async def next_message(link: ByteLink, ch: SecureChannel, deadline: float, *,
                       closed: str = "the relayed link closed during hole punching") -> bytes:
    """The next whole message on ``ch`` read from ``link`` before ``deadline``
    (``TimeoutError`` after it; ``ConnectionError(closed)`` if the link ends first)."""
    while True:
        msg = ch.next_message()
        if msg is not None:
            return msg
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        data = await link.read_some(remaining)
        if not data:
            raise ConnectionError(closed)
        ch.receive_data(data)


async def run_handshake(
    link: ByteLink, hs: MeshHandshake, first: bytes, deadline: float, buf: bytearray
) -> SecureChannel:
    out = hs.step(bytes(buf)) if buf else b""
    buf.clear()
    if first or out:
        link.write(first + out)
    while not hs.complete:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        data = await link.read_some(remaining)
        if not data:
            raise ConnectionError("the connection closed during the handshake")
        if data.startswith(REJECT_MAGIC):
            code = data[4:5]
            raise HandshakeFailed(
                f"it rejected the handshake: {_REJECT_TEXT.get(code, 'no reason given')}",
                reason="rejected",
            )
        out = hs.step(data)
        if out:
            link.write(out)
    return hs.into_channel()


class PairHandshake:
    """This party's side of the hello and Noise KK handshake with any roster peer."""

    def __init__(self, plan: MeshPlan, handshake_timeout: float) -> None:
        self.plan = plan
        self.handshake_timeout = handshake_timeout

    def _noise(self, peer_id: int) -> MeshHandshake:
        plan = self.plan
        return MeshHandshake.for_parties(
            local_id=plan.my_party_id,
            remote_id=peer_id,
            local_static_private=plan.my_static_private,
            remote_static_public=plan.party(peer_id).static_public,
            roster_hash=plan.roster_hash,
        )

    async def initiate(self, link: ByteLink, peer_id: int, deadline: float) -> SecureChannel:
        """Hello and KK as the initiator, within ``handshake_timeout`` (and ``deadline``).
        The caller then sends SELECT (or a punch CONNECT) as the first message."""
        plan = self.plan
        hs = self._noise(peer_id)
        hd = min(deadline, time.monotonic() + self.handshake_timeout)
        first = encode_hello(plan.roster_hash, plan.my_party_id, peer_id) + hs.step()
        sent = time.monotonic()
        ch = await run_handshake(link, hs, first, hd, bytearray())
        link.handshake_rtt = time.monotonic() - sent  # message 1 out, message 2 in
        return ch

    async def respond(self, link: ByteLink, deadline: float, expect: int | None,
                      attempt: Attempt | None = None) -> tuple[int, SecureChannel]:
        """Read a hello, run the responder handshake, wait for SELECT; returns the
        initiator's id and the channel. ``expect`` is the peer a link is for (None: a
        listener, any lower roster id). ``attempt.claimed`` is set to the initiator id the
        hello claims, once read; with ``attempt.punch`` a punch CONNECT may come instead of
        SELECT (then in ``attempt.first``). Raises :class:`Rejected` after writing the
        diagnostic."""
        plan = self.plan
        buf = bytearray()
        hd = min(deadline, time.monotonic() + self.handshake_timeout)
        hello = await read_exact(link, HELLO_LEN, buf, hd)
        if hello[:4] != HELLO_MAGIC or hello[4] != HELLO_VERSION:
            link.write(REJECT_MAGIC + REJECT_PARTY)
            raise Rejected(None, HandshakeFailed(
                "a connection did not start with a didmesh hello", reason="malformed"))
        ini, resp = struct.unpack(">II", hello[21:29])
        if attempt is not None and resp == plan.my_party_id:
            attempt.claimed = ini
        if hello[5:21] != hello_tag(plan.roster_hash):
            link.write(REJECT_MAGIC + REJECT_ROSTER)
            who = plan.describe(ini) if ini < plan.m else f"a party claiming id {ini}"
            raise Rejected(ini, HandshakeFailed(
                f"{who} uses another roster (its roster hash differs from ours)",
                reason="roster",
            ))
        if resp != plan.my_party_id or not ini < resp or (expect is not None and ini != expect):
            link.write(REJECT_MAGIC + REJECT_PARTY)
            raise Rejected(None, HandshakeFailed(
                f"hello names parties {ini} -> {resp}, not a pair of ours", reason="party"))
        try:
            ch = await run_handshake(link, self._noise(ini), b"", hd, buf)
        except HandshakeFailed as exc:
            link.write(REJECT_MAGIC + REJECT_AUTH)
            raise Rejected(ini, HandshakeFailed(
                f"{plan.describe(ini)}: {exc.message}", reason=exc.reason
            )) from None
        sent = time.monotonic()  # message 2 went out as the handshake completed
        if attempt is not None and attempt.early is not None:
            early = attempt.early()
            if early:
                link.write(ch.send(early))
                attempt.sent_early = True
        msg = await next_message(
            link, ch, hd, closed="the connection closed before the path was selected")
        link.handshake_rtt = time.monotonic() - sent  # message 2 out, the first message in
        if attempt is not None and attempt.punch and is_connect(msg):
            attempt.first = msg  # the initiator would punch a hole: the caller goes on
            return ini, ch
        if msg != bytes((SELECT,)):
            raise Rejected(ini, HandshakeFailed(
                f"{plan.describe(ini)} did not select the path", reason="malformed"))
        return ini, ch


__all__ = [
    "HELLO_LEN", "HELLO_MAGIC", "HELLO_VERSION", "REJECT_MAGIC", "Attempt", "PairHandshake",
    "Rejected", "encode_hello", "hello_tag", "next_message", "reason_of", "read_exact",
    "run_handshake",
]
