"""A real WireGuard lab in network namespaces, shipped as code (STYLE.md, point 11).

:class:`WgLab` builds, for one test or one local experiment, ``n`` namespaces joined by
veth pairs to a bridge in a namespace of its own, with underlay addresses only inside
these namespaces (the host's network is not touched)::

    <p>n0 10.215.0.1 ──┐
    <p>n1 10.215.0.2 ──┼── bridge in <p>br
    <p>n2 10.215.0.3 ──┘

and runs one userspace ``wireguard-go -f`` per node (the kernel module is not needed).
Every process it starts is tracked by its Popen object and ended by its pid in
:meth:`WgLab.close`, which also deletes the namespaces; :meth:`WgLab.leftovers` lists
any ``wireguard-go`` process still serving one of this lab's interfaces. Needs root,
iproute2, ``wg`` and ``wireguard-go``. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from didmesh.session.lab.netns import available as _ns_available
from didmesh.session.lab.netns import run as _run
from didmesh.session.lab.netns import wait_until as _wait

from .tunnel import wireguard_go_pids

UAPI_DIR = Path("/var/run/wireguard")
UNDERLAY = "10.215.0."

_ECHO_SERVER = """
import socket, sys, threading
def serve(host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(16)
    while True:
        c, peer = s.accept()
        with c:
            c.settimeout(5)
            data = c.recv(64)
            c.sendall(b"echo " + host.encode() + b" from " + peer[0].encode() + b" " + data)
port = int(sys.argv[1])
for h in sys.argv[2:]:
    threading.Thread(target=serve, args=(h, port), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

_PROBE = """
import json, socket, sys
timeout = float(sys.argv[1]); out = {}
for target in sys.argv[2:]:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as c:
            c.settimeout(timeout)
            c.sendall(b"ping")
            out[target] = c.recv(256).decode()
    except OSError as exc:
        out[target] = "error: " + type(exc).__name__
print(json.dumps(out))
"""


def available() -> str | None:
    """None if a lab can be built here, else why not."""
    return _ns_available("wg", "wireguard-go", tun=True)


class WgLab:
    """``n`` namespaces on one bridge, each with a ``wireguard-go`` interface."""

    def __init__(self, n: int, prefix: str | None = None) -> None:
        self.n = n
        self.prefix = prefix or f"dmw{os.getpid() % 100000}"
        self.bridge_ns = f"{self.prefix}br"
        self.namespaces = [f"{self.prefix}n{i}" for i in range(n)]
        self.interfaces = [f"{self.prefix}w{i}" for i in range(n)]
        self.underlay = [f"{UNDERLAY}{i + 1}" for i in range(n)]
        self._made: list[str] = []
        self._procs: list[subprocess.Popen[str]] = []
        self._wg: dict[int, subprocess.Popen[str]] = {}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> WgLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        br = f"{self.prefix}b"
        _run("ip", "netns", "add", self.bridge_ns)
        self._made.append(self.bridge_ns)
        _run("ip", "-n", self.bridge_ns, "link", "add", br, "type", "bridge")
        _run("ip", "-n", self.bridge_ns, "link", "set", br, "up")
        for i, ns in enumerate(self.namespaces):
            _run("ip", "netns", "add", ns)
            self._made.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            inner, outer = f"{self.prefix}v{i}", f"{self.prefix}p{i}"
            _run("ip", "link", "add", inner, "netns", ns, "type", "veth",
                 "peer", "name", outer, "netns", self.bridge_ns)
            _run("ip", "-n", self.bridge_ns, "link", "set", outer, "master", br)
            _run("ip", "-n", self.bridge_ns, "link", "set", outer, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.underlay[i]}/24", "dev", inner)
            _run("ip", "-n", ns, "link", "set", inner, "up")

    def close(self) -> None:
        """End every process this lab started (by pid) and delete its namespaces."""
        for proc in [*self._procs, *self._wg.values()]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self._procs, *self._wg.values()]:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._made.clear()
        for iface in self.interfaces:  # a killed wireguard-go leaves its socket behind
            with contextlib.suppress(OSError):
                (UAPI_DIR / f"{iface}.sock").unlink()

    def leftovers(self) -> list[int]:
        """Pids of ``wireguard-go`` processes still serving one of this lab's interfaces."""
        return wireguard_go_pids(*self.interfaces)

    # ------------------------------------------------------------------ running things

    def exec(self, i: int, *cmd: str) -> list[str]:
        """``cmd`` as run inside node ``i``'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[i], *cmd]

    def run(self, i: int, *cmd: str, timeout: float = 10) -> str:
        return _run(*self.exec(i, *cmd), timeout=timeout)

    def spawn(self, i: int, *cmd: str, **kw: object) -> subprocess.Popen[str]:
        """A process in node ``i`` that :meth:`close` ends if it is still running."""
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            self.exec(i, *cmd), text=True, **kw)
        self._procs.append(proc)
        return proc

    # ------------------------------------------------------------------ WireGuard

    def start_wireguard(self, i: int, timeout: float = 10) -> str:
        """Start ``wireguard-go -f`` in node ``i``; returns the interface name."""
        iface = self.interfaces[i]
        proc: subprocess.Popen[str] = subprocess.Popen(
            self.exec(i, "wireguard-go", "-f", iface), text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "LOG_LEVEL": "error"},
        )
        self._wg[i] = proc

        def up() -> bool:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"wireguard-go {iface} exited: {err.strip()[-500:]}")
            return (UAPI_DIR / f"{iface}.sock").exists()

        _wait(up, timeout, f"wireguard-go did not open {iface}")
        return iface

    def configure(self, i: int, conf: Path, addresses: Sequence[str]) -> None:
        """``wg setconf`` node ``i``'s interface from ``conf``, add ``addresses``, bring it up."""
        iface = self.interfaces[i]
        self.run(i, "wg", "setconf", iface, str(conf))
        for addr in addresses:
            extra = ["nodad"] if ":" in addr else []
            _run("ip", "-n", self.namespaces[i], "address", "add", addr, "dev", iface, *extra)
        _run("ip", "-n", self.namespaces[i], "link", "set", iface, "up")

    def wg(self, i: int, *args: str) -> str:
        return self.run(i, "wg", *args)

    def showconf(self, i: int) -> str:
        return self.wg(i, "showconf", self.interfaces[i])

    def latest_handshakes(self, i: int) -> dict[str, int]:
        """Peer public key (base64) -> time of its latest handshake (0: none yet)."""
        out = self.wg(i, "show", self.interfaces[i], "latest-handshakes")
        return {k: int(v) for k, v in (line.split("\t") for line in out.splitlines() if line)}

    # ------------------------------------------------------------------ TCP probes

    def serve_echo(self, i: int, hosts: Sequence[str], port: int, timeout: float = 10) -> None:
        """A TCP echo server in node ``i`` on ``hosts`` (each reply names both ends)."""
        proc = self.spawn(i, sys.executable, "-c", _ECHO_SERVER, str(port), *hosts,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded: the server prints it or exits
        if line.strip() != "ready":
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"echo server in node {i} did not start: {err[-500:]}")

    def probe(self, i: int, targets: Sequence[str], timeout: float = 3) -> dict[str, str]:
        """Connect from node ``i`` to each ``host:port``; the reply or ``error: ...``."""
        out = self.run(i, sys.executable, "-c", _PROBE, str(timeout), *targets,
                       timeout=timeout * len(targets) + 10)
        result: dict[str, str] = json.loads(out)
        return result


@contextlib.contextmanager
def wg_lab(n: int, prefix: str | None = None) -> Iterator[WgLab]:
    with WgLab(n, prefix) as lab:
        yield lab
