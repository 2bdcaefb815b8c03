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
process may use. Any other congestion control is left as it is. Where the socket option
does not exist (not Linux), nothing is done.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)

#: the socket option (Linux only)
TCP_CONGESTION: int | None = getattr(socket, "TCP_CONGESTION", None)
#: congestion controls that size their window from a minimum RTT kept across the handshake
KEEPS_HANDSHAKE_MIN_RTT = ("bbr",)
#: what a punched connection gets instead, in order of preference
INSTEAD = ("cubic", "reno")
_NAME_MAX = 16  # TCP_CA_NAME_MAX


def congestion_control(sock: socket.socket) -> str | None:
    """The socket's congestion control, or None where it cannot be read."""
    if TCP_CONGESTION is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, _NAME_MAX)
    except OSError:
        return None
    return raw.split(b"\0", 1)[0].decode("ascii", "replace") or None


def settle_punched(sock: socket.socket) -> str | None:
    """Give an established punched connection a congestion control that its simultaneous
    open cannot mislead (module docstring). Returns the congestion control switched to, or
    None if the socket kept its own (not one of :data:`KEEPS_HANDSHAKE_MIN_RTT`, or no
    other could be set). Never raises: the connection works either way."""
    current = congestion_control(sock)
    if current is None or not current.startswith(KEEPS_HANDSHAKE_MIN_RTT):
        return None
    assert TCP_CONGESTION is not None
    for name in INSTEAD:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, name.encode())
        except OSError:
            continue
        log.debug("punched connection: congestion control %s instead of %s", name, current)
        return name
    return None
