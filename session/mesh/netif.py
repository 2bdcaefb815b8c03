"""This machine's interface addresses (Linux): the one question the mesh asks the kernel
about its own addresses (the host candidates, specs/mesh.md 6). Light to import: the party
process asks it before its heavy imports (:mod:`.predial`)."""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFADDR = 0x8915


def interface_addresses() -> list[tuple[str, str]]:
    """``(interface, IPv4 address)`` of this machine's interfaces that have one (Linux)."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            req = struct.pack("256s", name.encode()[:15])
            try:
                res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)
            except OSError:  # no IPv4 address on it
                continue
            out.append((name, socket.inet_ntoa(res[20:24])))
    return out


__all__ = ["SIOCGIFADDR", "interface_addresses"]
