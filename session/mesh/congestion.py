"""The congestion control of a punched connection (specs/mesh.md section 6.1).

A punched connection is a TCP simultaneous open: both SYNs cross, each side answers the
peer's SYN with a SYN-ACK and takes, as its first round-trip sample, the time from its own
SYN-ACK to the peer's: anything from almost nothing to the path's round trip, depending on
how far apart the two SYNs left. Linux keeps that sample in the connection's minimum-RTT
filter. BBR starts from that filter and keeps its minimum for 10 s, so it sizes the bytes
in flight from a round trip several times too short, for the whole of a short run (on an
80 ms lab path: minima of 4.9-55 ms, and a multi-megabyte MPyC message up to twice as
slow). Cubic and Reno start after the handshake and keep no such minimum.

So a punched connection whose congestion control is BBR is switched, once it is
established and before any byte is sent, to Cubic where this process may use it
(``net.ipv4.tcp_allowed_congestion_control``, or CAP_NET_ADMIN), else to Reno, which every
process may use, when BBR was misled: its minimum RTT (``tcpi_min_rtt``) is under
:data:`TRUSTED_SHARE` of the connect's own round trip (from ``connect()`` to established:
the path's round trip when our SYN got through, more when it was resent), and that round
trip is at least :data:`MIN_PATH_RTT`. On a shorter path the error costs BBR nothing that
matters, and BBR does better there than Cubic (lab, 0 ms: a large message ×0.93 of plain
MPyC with BBR, ×1.11 with Cubic). Any other congestion control is left as it is. Where
the socket options do not exist (not Linux), nothing is done.
"""

from __future__ import annotations

import logging
import socket
import struct

log = logging.getLogger(__name__)

#: the socket option (Linux only)
TCP_CONGESTION: int | None = getattr(socket, "TCP_CONGESTION", None)
#: congestion controls that size their window from a minimum RTT kept across the handshake
KEEPS_HANDSHAKE_MIN_RTT = ("bbr",)
#: what a punched connection gets instead, in order of preference
INSTEAD = ("cubic", "reno")
#: seconds: a connect faster than this keeps BBR whatever its sample
MIN_PATH_RTT = 0.010
#: BBR is kept when its minimum RTT is at least this share of the connect's round trip
TRUSTED_SHARE = 0.8
_NAME_MAX = 16  # TCP_CA_NAME_MAX
TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
#: offsets in Linux's struct tcp_info: tcpi_last_ack_recv (ms), tcpi_min_rtt (us)
_LAST_ACK_RECV, _MIN_RTT, _INFO_SIZE = 56, 148, 152


def _tcp_option(sock: socket.socket, option: int | None, size: int) -> bytes | None:
    """A TCP socket option's raw value, or None where it cannot be read."""
    if option is None:
        return None
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, option, size)
    except OSError:
        return None


def congestion_control(sock: socket.socket) -> str | None:
    """The socket's congestion control, or None where it cannot be read."""
    raw = _tcp_option(sock, TCP_CONGESTION, _NAME_MAX)
    return None if raw is None else raw.split(b"\0", 1)[0].decode("ascii", "replace") or None


def _tcp_info_field(sock: socket.socket, offset: int) -> int | None:
    """One unsigned 32-bit field of the socket's ``struct tcp_info``; None: unknown."""
    raw = _tcp_option(sock, TCP_INFO, _INFO_SIZE)
    if raw is None or len(raw) < _INFO_SIZE:
        return None
    return int(struct.unpack_from("=I", raw, offset)[0])


def min_rtt(sock: socket.socket) -> float | None:
    """The kernel's minimum RTT of the connection in seconds (None: unknown)."""
    us = _tcp_info_field(sock, _MIN_RTT)
    return None if us is None else us / 1e6


def since_last_ack(sock: socket.socket) -> float | None:
    """Seconds since the connection last received an ACK (for a connection that has
    received nothing else yet: since it was established). None: unknown."""
    ms = _tcp_info_field(sock, _LAST_ACK_RECV)
    return None if ms is None else ms / 1e3


def settle_punched(sock: socket.socket, connect_rtt: float | None) -> str | None:
    """Give an established punched connection a congestion control that its simultaneous
    open did not mislead (module docstring); ``connect_rtt``: seconds from its
    ``connect()`` to established (None: unknown, then it is left alone). Returns the
    congestion control switched to, or None if the socket kept its own (not one of
    :data:`KEEPS_HANDSHAKE_MIN_RTT`, its sample trusted, a short path, or no other could
    be set). Never raises: the connection works either way."""
    current = congestion_control(sock)
    if current is None or not current.startswith(KEEPS_HANDSHAKE_MIN_RTT):
        return None
    if connect_rtt is None or connect_rtt < MIN_PATH_RTT:
        return None
    sample = min_rtt(sock)
    if sample is not None and sample >= TRUSTED_SHARE * connect_rtt:
        return None
    assert TCP_CONGESTION is not None
    for name in INSTEAD:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, name.encode())
        except OSError:
            continue
        log.debug("punched connection: congestion control %s instead of %s (minimum RTT "
                  "%s s, connect %.4f s)", name, current, sample, connect_rtt)
        return name
    return None
