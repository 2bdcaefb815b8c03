"""Network namespaces for path-cut tests (needs root and iproute2; see tests/test_adv_netns.py).

:func:`three_namespaces` builds, for one test, namespaces ``<p>r`` (the relay), ``<p>a``
and ``<p>b`` (two parties) joined by veth pairs, addresses only from 10.213.0.0/16 and
only inside these namespaces (the host's own network is not touched)::

    <p>a 10.213.0.2 --- 10.213.0.1 <p>r 10.213.1.1 --- 10.213.1.2 <p>b
    <p>a 10.213.2.1 ------------- direct ------------- 10.213.2.2 <p>b

Namespaces are deleted on exit, whatever happens (deleting one removes its veths).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from didmesh.session.lab.netns import available as ns_available

RELAY_FROM_A, A_TO_RELAY = "10.213.0.1", "10.213.0.2"
RELAY_FROM_B, B_TO_RELAY = "10.213.1.1", "10.213.1.2"
A_DIRECT, B_DIRECT = "10.213.2.1", "10.213.2.2"


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    return ns_available()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Namespaces:
    relay: str
    a: str
    b: str
    direct_a: str  # the veth end in ``a`` of the direct link
    direct_b: str

    def exec(self, ns: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *cmd]

    def cut_direct(self) -> None:
        ip("-n", self.a, "link", "set", self.direct_a, "down")
        ip("-n", self.b, "link", "set", self.direct_b, "down")


@contextlib.contextmanager
def three_namespaces(prefix: str | None = None) -> Iterator[Namespaces]:
    p = prefix or f"dm{os.getpid() % 100000}"
    ns = Namespaces(f"{p}r", f"{p}a", f"{p}b", f"{p}ab", f"{p}ba")
    made: list[str] = []
    try:
        for name in (ns.relay, ns.a, ns.b):
            ip("netns", "add", name)
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        links = [
            (ns.relay, f"{p}ra", RELAY_FROM_A, ns.a, f"{p}ar", A_TO_RELAY),
            (ns.relay, f"{p}rb", RELAY_FROM_B, ns.b, f"{p}br", B_TO_RELAY),
            (ns.a, ns.direct_a, A_DIRECT, ns.b, ns.direct_b, B_DIRECT),
        ]
        for n1, if1, addr1, n2, if2, addr2 in links:
            ip("link", "add", if1, "netns", n1, "type", "veth", "peer", "name", if2, "netns", n2)
            ip("-n", n1, "addr", "add", f"{addr1}/30", "dev", if1)
            ip("-n", n2, "addr", "add", f"{addr2}/30", "dev", if2)
            ip("-n", n1, "link", "set", if1, "up")
            ip("-n", n2, "link", "set", if2, "up")
        yield ns
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
