"""A punched connection does not keep BBR (session/mesh/congestion.py, specs/mesh.md 6.1).

A simultaneous open gives the kernel's minimum-RTT filter a sample far below the path's
round trip and BBR sizes its window from it for 10 s. These tests check the choice on the
real kernel (a BBR socket becomes Cubic where allowed, else Reno; as root and as an
unprivileged user) and the rules on a socket double (what is left alone, what happens when
nothing may be set).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from didmesh.session.mesh import congestion, predial
from didmesh.session.mesh.congestion import congestion_control, settle_punched
from didmesh.session.mesh.loopback import free_ports
from didmesh.session.mesh.puncher import dial_from

PROC = Path("/proc/sys/net/ipv4")
linux_only = pytest.mark.skipif(congestion.TCP_CONGESTION is None,
                                reason="TCP_CONGESTION is Linux's socket option")


def _proc_list(name: str) -> list[str]:
    return (PROC / name).read_text().split()


def _bbr_socket() -> socket.socket:
    """A TCP socket set to BBR (root may load the module; the kernel must have it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"bbr")
    except OSError as exc:
        sock.close()
        pytest.fail(f"this kernel cannot give a socket BBR ({exc}); the test needs tcp_bbr")
    return sock


class FakeSocket:
    """getsockopt of TCP_CONGESTION and TCP_INFO (its minimum RTT), setsockopt of
    TCP_CONGESTION; ``allowed`` is what may be set."""

    def __init__(self, current: str | None, allowed: tuple[str, ...] = ("cubic", "reno"),
                 min_rtt: float = 0.005) -> None:
        self.current, self.allowed, self.tried = current, allowed, []
        self.min_rtt = min_rtt

    def getsockopt(self, level: int, opt: int, size: int) -> bytes:
        assert level == socket.IPPROTO_TCP
        if opt == congestion.TCP_INFO:
            info = bytearray(size)
            struct.pack_into("=I", info, 148, round(self.min_rtt * 1e6))
            return bytes(info)
        assert (opt, size) == (congestion.TCP_CONGESTION, 16)
        if self.current is None:
            raise OSError(95, "Operation not supported")
        return self.current.encode().ljust(16, b"\0")

    def setsockopt(self, level: int, opt: int, value: bytes) -> None:
        name = value.decode()
        self.tried.append(name)
        if name not in self.allowed:
            raise PermissionError(1, "Operation not permitted")
        self.current = name


@linux_only
@pytest.mark.parametrize("current,allowed,expect,tried", [
    ("bbr", ("cubic", "reno"), "cubic", ["cubic"]),
    ("bbr", ("reno",), "reno", ["cubic", "reno"]),  # an unprivileged process on some hosts
    ("bbr", (), None, ["cubic", "reno"]),  # nothing may be set: the connection keeps BBR
    ("bbr2", ("cubic",), "cubic", ["cubic"]),
    ("cubic", ("cubic", "reno"), None, []),  # Cubic starts after the handshake: left alone
    ("reno", ("cubic", "reno"), None, []),
    ("dctcp", ("cubic", "reno"), None, []),
    (None, ("cubic", "reno"), None, []),  # the option cannot be read
])
def test_only_bbr_is_replaced_and_by_what_may_be_set(current: str | None,
                                                      allowed: tuple[str, ...],
                                                      expect: str | None,
                                                      tried: list[str]) -> None:
    sock = FakeSocket(current, allowed, min_rtt=0.005)  # a sample 16 times too short
    assert settle_punched(sock, 0.080) == expect  # type: ignore[arg-type]
    assert sock.tried == tried
    assert sock.current == (expect or current)


@linux_only
@pytest.mark.parametrize("sample,connect_rtt,switched", [
    (0.0049, 0.080, True),  # the lab's worst punched sample on an 80 ms path
    (0.041, 0.080, True),
    (0.063, 0.080, True),  # under 80 % of the path
    (0.065, 0.080, False),  # close enough: BBR sized right
    (0.079, 0.080, False),
    (0.0001, 0.0003, False),  # a short path: the error costs nothing, BBR does better
    (0.001, 0.0099, False),
    (0.001, 0.0101, True),
    (0.08, 1.08, True),  # our first SYN was resent (the connect took an RTO more)
    (0.001, None, False),  # the connect's round trip unknown: left alone
])
def test_bbr_is_replaced_only_when_its_sample_is_well_below_the_connects_round_trip(
        sample: float, connect_rtt: float | None, switched: bool) -> None:
    sock = FakeSocket("bbr", min_rtt=sample)
    assert settle_punched(sock, connect_rtt) == ("cubic" if switched else None)  # type: ignore[arg-type]
    assert sock.current == ("cubic" if switched else "bbr")


@linux_only
def test_a_bbr_socket_gets_cubic_or_reno_on_the_real_kernel() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    sock = _bbr_socket()
    try:
        sock.connect(srv.getsockname())
        assert congestion_control(sock) == "bbr"
        sample = congestion.min_rtt(sock)
        assert sample is not None and 0 < sample < 0.010  # loopback
        assert settle_punched(sock, 0.0005) is None  # a loopback connect: BBR stays
        assert congestion_control(sock) == "bbr"
        expect = "cubic" if os.geteuid() == 0 or "cubic" in _proc_list(
            "tcp_allowed_congestion_control") else "reno"
        assert settle_punched(sock, 0.080) == expect  # as if the path were 80 ms
        assert congestion_control(sock) == expect
        sock.sendall(b"still a working connection")
        conn, _ = srv.accept()
        with conn:
            assert conn.recv(100) == b"still a working connection"
    finally:
        sock.close()
        srv.close()


@linux_only
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_an_unprivileged_process_falls_back_to_what_it_may_use() -> None:
    """Without CAP_NET_ADMIN only ``tcp_allowed_congestion_control`` may be set: Cubic if
    listed, else Reno (always allowed)."""
    allowed = _proc_list("tcp_allowed_congestion_control")
    code = (
        "import os, socket\n"
        "from didmesh.session.mesh.congestion import settle_punched, congestion_control\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)  # imports done: /root unread\n"
        "srv = socket.create_server(('127.0.0.1', 0))\n"
        "s = socket.socket()\n"
        "try:\n"
        "    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b'bbr')\n"
        "except OSError:\n"
        "    print('no-bbr'); raise SystemExit\n"
        "s.connect(srv.getsockname())\n"
        "print(settle_punched(s, 0.08), congestion_control(s))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, cwd="/")
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "no-bbr":
        assert "bbr" not in allowed  # an unprivileged process may not pick BBR either
        return
    expect = "cubic" if "cubic" in allowed else "reno"
    assert out.stdout.split() == [expect, expect]


@linux_only
async def test_a_punched_connection_made_with_bbr_leaves_dial_from_without_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-dialed socket (begun with BBR here, as on a host whose default is BBR) is
    adopted by dial_from and comes out with another congestion control when its connect
    took a path's round trip (40 ms here: the pre-dial's send time set back) and its
    sample is the loopback's; with the loopback's own connect time it keeps BBR."""
    for took, expect in ((0.040, ("cubic", "reno")), (0.0, ("bbr",))):
        assert await _adopt_bbr_predial(took) in expect, took


async def _adopt_bbr_predial(took: float) -> str | None:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.setblocking(False)
    target = srv.getsockname()
    port = free_ports(1)[0]
    sock = _bbr_socket()
    predial.bind_for_punch(sock, port)
    err = sock.connect_ex(target)
    assert err in (0, 115)  # EINPROGRESS
    pre = predial.PreDialed(port)
    pre._socks[target] = sock
    pre.sent -= took
    try:
        link = await asyncio.wait_for(dial_from(port, [target], 3.0, pre), 5)
        try:
            assert link.transport is not None
            used = link.transport.get_extra_info("socket")
            assert used.fileno() == sock.fileno()
            return congestion_control(used)
        finally:
            link.abort()
    finally:
        pre.close()
        srv.close()
