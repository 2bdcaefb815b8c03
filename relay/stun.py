"""STUN Binding (RFC 8489, formerly RFC 5389): a small sans-IO codec and the relay's UDP
responder (specs/relay.md, "STUN").

A party that runs WireGuard behind a NAT must learn the public mapping of the UDP port
``wireguard-go`` will use; ``GET /v1/observed`` tells TCP mappings only. Unless turned off
(``--no-stun``), the relay answers STUN Binding requests on two UDP ports (by default the
HTTP port's number and a free one), so that a client can see whether its NAT maps one
local port to one public port whatever the destination (endpoint-independent mapping,
RFC 4787), and announces the ports in ``GET /info`` as ``stun.ports``.

Codec (no I/O): :func:`parse` (strict: header, magic cookie, lengths, attribute padding,
nothing after FINGERPRINT, only FINGERPRINT after MESSAGE-INTEGRITY; every failure one
:class:`StunError`), :func:`encode` (with optional MESSAGE-INTEGRITY, HMAC-SHA1, and
FINGERPRINT, CRC-32 xor ``0x5354554E``), :func:`check_integrity`,
:func:`check_fingerprint`, the (XOR-)MAPPED-ADDRESS transforms, and :func:`answer` (a
request datagram and its source in, the response datagram out, or None). Checked
against the RFC 5769 test vectors (tests/data/stun_rfc5769.json).

:class:`StunResponder` is the asyncio adapter: one datagram in, at most one out, to the
datagram's own source only, no larger than the request plus :data:`MAX_GROWTH` bytes (no
amplification worth the name), under a per-address token bucket and one bucket for all
sources together (a flood of spoofed sources gets no more than :data:`GLOBAL_RATE`
answers a second out of the relay).
"""

from __future__ import annotations

import asyncio
import binascii
import errno
import hashlib
import hmac
import ipaddress
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .errors import RelayProtocolError

log = logging.getLogger("didmesh.relay.stun")

MAGIC: Final = 0x2112A442
HEADER: Final = 20
BINDING_REQUEST: Final = 0x0001
BINDING_SUCCESS: Final = 0x0101
BINDING_ERROR: Final = 0x0111
BINDING_INDICATION: Final = 0x0011

MAPPED_ADDRESS: Final = 0x0001
USERNAME: Final = 0x0006
MESSAGE_INTEGRITY: Final = 0x0008
ERROR_CODE: Final = 0x0009
UNKNOWN_ATTRIBUTES: Final = 0x000A
REALM: Final = 0x0014
NONCE: Final = 0x0015
XOR_MAPPED_ADDRESS: Final = 0x0020
SOFTWARE: Final = 0x8022
FINGERPRINT: Final = 0x8028
#: comprehension-required attributes a Binding request may carry that we understand
KNOWN_REQUIRED: Final = frozenset({MAPPED_ADDRESS, USERNAME, MESSAGE_INTEGRITY, ERROR_CODE,
                                   UNKNOWN_ATTRIBUTES, REALM, NONCE, XOR_MAPPED_ADDRESS,
                                   0x001C})  # MESSAGE-INTEGRITY-SHA256 (RFC 8489)
FINGERPRINT_XOR: Final = 0x5354554E
MAX_DATAGRAM: Final = 1500
FAMILY_V4, FAMILY_V6 = 0x01, 0x02


class StunError(RelayProtocolError):
    """A datagram that is not a well-formed STUN message."""

    code = "stun_malformed"


@dataclass(frozen=True)
class Message:
    type: int
    txid: bytes  # 12 bytes
    attrs: tuple[tuple[int, bytes], ...]
    raw: bytes
    #: offset in ``raw`` of the MESSAGE-INTEGRITY and FINGERPRINT attributes (None: absent)
    integrity_at: int | None = None
    fingerprint_at: int | None = None

    def get(self, kind: int) -> bytes | None:
        return next((v for k, v in self.attrs if k == kind), None)


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def is_stun(data: bytes) -> bool:
    """Cheap test (RFC 8489 section 5): top two bits zero and the magic cookie."""
    return len(data) >= HEADER and data[0] & 0xC0 == 0 and \
        int.from_bytes(data[4:8], "big") == MAGIC


def parse(data: bytes) -> Message:
    """One STUN message; :class:`StunError` for anything else."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_DATAGRAM:
        raise StunError("not a STUN message (size)")
    data = bytes(data)
    if not is_stun(data):
        raise StunError("not a STUN message (header or magic cookie)")
    mtype, length = struct.unpack_from("!HH", data)
    if length % 4 or HEADER + length != len(data):
        raise StunError(f"STUN length {length} does not match the datagram ({len(data)} bytes)")
    attrs: list[tuple[int, bytes]] = []
    pos, integrity_at, fingerprint_at = HEADER, None, None
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError("truncated STUN attribute header")
        kind, alen = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + alen
        if end + _pad(alen) > len(data):
            raise StunError(f"STUN attribute 0x{kind:04x} runs past the message")
        if fingerprint_at is not None:
            raise StunError("a STUN attribute after FINGERPRINT")
        if integrity_at is not None and kind != FINGERPRINT:
            raise StunError("a STUN attribute other than FINGERPRINT after MESSAGE-INTEGRITY")
        if kind == MESSAGE_INTEGRITY:
            if alen != 20:
                raise StunError("MESSAGE-INTEGRITY is not 20 bytes")
            integrity_at = pos
        elif kind == FINGERPRINT:
            if alen != 4:
                raise StunError("FINGERPRINT is not 4 bytes")
            fingerprint_at = pos
        attrs.append((kind, data[pos + 4:end]))
        pos = end + _pad(alen)
    return Message(mtype, data[8:20], tuple(attrs), data, integrity_at, fingerprint_at)


def _with_length(head: bytes, length: int) -> bytes:
    return head[:2] + struct.pack("!H", length) + head[4:]


def _hmac(key: bytes, covered: bytes) -> bytes:
    return hmac.new(key, covered, hashlib.sha1).digest()


def _crc(covered: bytes) -> int:
    return (binascii.crc32(covered) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def check_integrity(msg: Message, key: bytes) -> bool:
    """MESSAGE-INTEGRITY verifies under ``key`` (short-term: the password; long-term:
    :func:`long_term_key`); False if absent. Constant-time comparison."""
    at = msg.integrity_at
    if at is None:
        return False
    covered = _with_length(msg.raw[:HEADER], at + 24 - HEADER) + msg.raw[HEADER:at]
    return hmac.compare_digest(_hmac(key, covered), msg.raw[at + 4:at + 24])


def check_fingerprint(msg: Message) -> bool:
    at = msg.fingerprint_at
    if at is None:
        return False
    return _crc(msg.raw[:at]) == int.from_bytes(msg.raw[at + 4:at + 8], "big")


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 section 9.2.2 (MD5; the password already SASLprep'd)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode(),  # noqa: S324 - the RFC's
                       usedforsecurity=False).digest()


def encode(mtype: int, txid: bytes, attrs: Sequence[tuple[int, bytes]] = (), *,
           integrity_key: bytes | None = None, fingerprint: bool = False,
           pad: bytes = b"\0") -> bytes:
    """A STUN message; ``pad`` is the padding byte (RFC 5769's vectors use spaces)."""
    if len(txid) != 12 or not 0 <= mtype < 0x4000:
        raise ValueError("a STUN message needs a 12-byte transaction id and a 14-bit type")
    body = bytearray()
    for kind, value in attrs:
        body += struct.pack("!HH", kind, len(value)) + value + pad * _pad(len(value))
    head = struct.pack("!HHI", mtype, 0, MAGIC) + txid
    if integrity_key is not None:
        mac = _hmac(integrity_key, _with_length(head, len(body) + 24) + bytes(body))
        body += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac
    if fingerprint:
        crc = _crc(_with_length(head, len(body) + 8) + bytes(body))
        body += struct.pack("!HHI", FINGERPRINT, 4, crc)
    return _with_length(head, len(body)) + bytes(body)


def _xor_key(txid: bytes) -> bytes:
    return MAGIC.to_bytes(4, "big") + txid


def encode_address(host: str, port: int, txid: bytes | None = None) -> bytes:
    """(XOR-)MAPPED-ADDRESS value: XORed with the cookie (and txid) when ``txid`` is given."""
    ip = ipaddress.ip_address(host)
    raw = ip.packed
    family = FAMILY_V4 if ip.version == 4 else FAMILY_V6
    if txid is not None:
        port ^= MAGIC >> 16
        raw = bytes(a ^ b for a, b in zip(raw, _xor_key(txid), strict=False))
    return struct.pack("!BBH", 0, family, port) + raw


def decode_address(value: bytes, txid: bytes | None = None) -> tuple[str, int]:
    """The inverse of :func:`encode_address`; :class:`StunError` if malformed."""
    if len(value) < 4:
        raise StunError("a STUN address attribute is too short")
    _, family, port = struct.unpack_from("!BBH", value)
    raw = value[4:]
    if (family, len(raw)) not in ((FAMILY_V4, 4), (FAMILY_V6, 16)):
        raise StunError("a STUN address attribute has a bad family or length")
    if txid is not None:
        port ^= MAGIC >> 16
        raw = bytes(a ^ b for a, b in zip(raw, _xor_key(txid), strict=False))
    return str(ipaddress.ip_address(raw)), port


def mapped_address(msg: Message) -> tuple[str, int]:
    """The address a Binding success response reports (XOR-MAPPED-ADDRESS preferred)."""
    if msg.type != BINDING_SUCCESS:
        raise StunError(f"not a Binding success response (type 0x{msg.type:04x})")
    xor = msg.get(XOR_MAPPED_ADDRESS)
    if xor is not None:
        return decode_address(xor, msg.txid)
    plain = msg.get(MAPPED_ADDRESS)
    if plain is not None:
        return decode_address(plain)
    raise StunError("a Binding response without a mapped address")


def binding_request(txid: bytes | None = None) -> tuple[bytes, bytes]:
    """``(txid, datagram)``: a Binding request with FINGERPRINT."""
    txid = txid if txid is not None else os.urandom(12)
    return txid, encode(BINDING_REQUEST, txid, fingerprint=True)


def _unmap(host: str) -> str:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


#: the most a response may exceed its request by (reflection bound, specs/relay.md 12.1)
MAX_GROWTH: Final = 32


def _fitting(mtype: int, txid: bytes, required: Sequence[tuple[int, bytes]],
             software: bytes, limit: int) -> bytes | None:
    """The response with ``required`` and as many of FINGERPRINT, then SOFTWARE, as keep
    it within ``limit`` bytes; None if even ``required`` alone does not fit."""
    for fp, soft in ((True, True), (True, False), (False, False)):
        attrs = [*required, (SOFTWARE, software)] if soft else list(required)
        out = encode(mtype, txid, attrs, fingerprint=fp)
        if len(out) <= limit:
            return out
    return None


def answer(data: bytes, source: tuple[str, int], software: str = "didmesh-relay"
           ) -> bytes | None:
    """The response to one datagram from ``source`` (None: not a Binding request, or not
    STUN at all: dropped silently, RFC 8489 section 6.3). A request with a
    comprehension-required attribute we do not know gets 420 with UNKNOWN-ATTRIBUTES.

    A response is never more than :data:`MAX_GROWTH` bytes longer than its request:
    FINGERPRINT, then SOFTWARE, are left out where they would not fit (a 20-byte request
    gets XOR-MAPPED-ADDRESS and FINGERPRINT: 40 bytes over IPv4, 52 over IPv6)."""
    try:
        msg = parse(data)
    except StunError:
        return None
    if msg.type != BINDING_REQUEST:
        return None
    if msg.fingerprint_at is not None and not check_fingerprint(msg):
        return None
    unknown = [k for k, _ in msg.attrs if k < 0x8000 and k not in KNOWN_REQUIRED]
    soft = software.encode()[:128]
    limit = len(msg.raw) + MAX_GROWTH
    if unknown:
        err = struct.pack("!HBB", 0, 4, 20)  # 420, no reason phrase (size bound)
        listed = b"".join(struct.pack("!H", k) for k in unknown[:16])
        return _fitting(BINDING_ERROR, msg.txid, [(ERROR_CODE, err),
                                                  (UNKNOWN_ATTRIBUTES, listed)], soft, limit)
    try:
        host = _unmap(source[0])
        port = int(source[1])
    except (ValueError, TypeError, IndexError):
        return None
    return _fitting(BINDING_SUCCESS, msg.txid,
                    [(XOR_MAPPED_ADDRESS, encode_address(host, port, msg.txid))], soft, limit)


#: answers per second (and burst) for all sources of one relay process together: what a
#: flood of spoofed source addresses can make the relay send, whatever their number
GLOBAL_RATE: Final = 500.0
GLOBAL_BURST: Final = 1000


class StunResponder(asyncio.DatagramProtocol):
    """Answers Binding requests on one UDP socket, ``rate`` per second per source address
    (burst ``burst``) and at most what the shared ``overall`` bucket allows for all
    sources together; everything else is dropped without an answer."""

    def __init__(self, *, rate: float = 20.0, burst: int = 40,
                 clock: Callable[[], float] = time.monotonic, max_sources: int = 100_000,
                 overall: Any = None) -> None:
        from .limits import TokenBucket

        self._bucket = TokenBucket
        self.rate, self.burst, self.clock, self.max_sources = rate, burst, clock, max_sources
        self.overall = overall
        self.buckets: dict[str, Any] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _allowed(self, host: str) -> bool:
        now = self.clock()
        if self.rate > 0:
            if len(self.buckets) >= self.max_sources and host not in self.buckets:
                self.buckets.clear()  # bounded memory; the overall bucket still bounds output
            bucket = self.buckets.setdefault(host, self._bucket(self.rate, float(self.burst)))
            if bucket.take(now) != 0.0:
                return False
        return self.overall is None or bool(self.overall.take(now) == 0.0)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.transport is None or not is_stun(data) or not self._allowed(str(addr[0])):
            self.dropped += 1
            return
        out = answer(data, (str(addr[0]), int(addr[1])))
        if out is None:
            self.dropped += 1
            return
        self.answered += 1
        self.transport.sendto(out, addr)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        log.debug("stun socket error: %s", exc)


async def serve_stun(host: str, ports: Sequence[int], *, rate: float = 20.0, burst: int = 40,
                     overall_rate: float = GLOBAL_RATE, overall_burst: int = GLOBAL_BURST,
                     explicit: Sequence[bool] = ()
                     ) -> tuple[list[asyncio.DatagramTransport], list[int]]:
    """Open a responder on each of ``ports`` (0: a free one) on ``host``, all under one
    overall bucket; returns the transports and the ports actually bound.

    A port the operator chose (``explicit``) is bound with ``SO_REUSEPORT``, so that the
    processes of one relay on one machine (several on one Redis) all answer on it (the
    responder keeps no state); a port chosen by default (not ``explicit``: the HTTP
    port's number) falls back to a free port if it is in use."""
    from .limits import TokenBucket

    loop = asyncio.get_running_loop()
    overall = TokenBucket(overall_rate, float(overall_burst)) if overall_rate > 0 else None
    transports: list[asyncio.DatagramTransport] = []
    bound: list[int] = []

    def factory() -> StunResponder:
        return StunResponder(rate=rate, burst=burst, overall=overall)

    try:
        for i, port in enumerate(ports):
            chosen = i < len(explicit) and explicit[i] and port != 0
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    factory, local_addr=(host, port), reuse_port=chosen or None)
            except OSError as exc:
                if chosen or not port or exc.errno != errno.EADDRINUSE:
                    raise
                log.info("stun port %d is in use; using a free port instead", port)
                transport, _ = await loop.create_datagram_endpoint(
                    factory, local_addr=(host, 0))
            transports.append(transport)
            bound.append(int(transport.get_extra_info("sockname")[1]))
    except BaseException:
        for t in transports:
            t.close()
        raise
    return transports, bound


__all__ = [
    "BINDING_REQUEST", "BINDING_SUCCESS", "MAGIC", "Message", "StunError", "StunResponder",
    "answer", "binding_request", "check_fingerprint", "check_integrity", "decode_address",
    "encode", "encode_address", "is_stun", "long_term_key", "mapped_address", "parse",
    "serve_stun",
]
