"""The session port is picked below the ephemeral range (session/mesh/candidates.py).

A port in the range the kernel gives outgoing connections can be held, between ``accept``
and the run, by any connection of the machine, and stays held for a minute in TIME_WAIT
after one: the run's listener then cannot bind it, reuse flags or not (shown here on the
real kernel). So the session port comes from below that range.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import pytest
from didmesh.session.mesh import candidates
from didmesh.session.mesh.candidates import PORT_RANGE, choose_port, port_range


@pytest.mark.parametrize("text,expect", [
    ("32768\t60999\n", (20000, 32767)),  # Linux's default
    ("49152 65535\n", (20000, 49151)),  # the IANA dynamic range
    ("10000 65535\n", PORT_RANGE),  # nothing left below it
    ("20500 65535\n", PORT_RANGE),  # fewer than MIN_SPAN ports below it
    ("", PORT_RANGE),
    ("garbage\n", PORT_RANGE),
    ("9" * 5000 + " 1\n", PORT_RANGE),  # too many digits to read
    ("9" * 4000 + " 1\n", (20000, 65535)),  # a huge number: no port above 65535
    ("70000 80000\n", (20000, 65535)),
])
def test_the_range_ends_below_the_ephemeral_one(tmp_path: Path, text: str,
                                                expect: tuple[int, int]) -> None:
    f = tmp_path / "ip_local_port_range"
    f.write_text(text)
    assert port_range(str(f)) == expect


def test_an_unreadable_range_gives_the_fixed_one(tmp_path: Path) -> None:
    assert port_range(str(tmp_path / "missing")) == PORT_RANGE


def test_chosen_ports_are_below_this_machines_ephemeral_range() -> None:
    lo, hi = port_range()
    path = Path(candidates.EPHEMERAL_RANGE)
    if path.exists():
        assert hi < int(path.read_text().split()[0])
    rng = random.Random(7)
    assert all(lo <= choose_port(rng) <= hi for _ in range(50))


def test_a_time_wait_from_an_outgoing_connection_blocks_the_listener() -> None:
    """Why: the kernel gave an outgoing connection an ephemeral port; closed first on our
    side, it sits in TIME_WAIT, and a listener on that port cannot bind, though it sets
    SO_REUSEADDR and SO_REUSEPORT (the run's listener does)."""
    srv = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(srv.getsockname())
    port = client.getsockname()[1]
    conn, _ = srv.accept()
    client.close()  # our side closes first: our side keeps the TIME_WAIT
    time.sleep(0.05)
    conn.close()
    srv.close()
    time.sleep(0.05)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError):
            listener.bind(("", port))
    finally:
        listener.close()
    lo, hi = port_range()
    assert not lo <= port <= hi  # the session port is never such a port
