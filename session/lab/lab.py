"""An Internet lab in network namespaces: build it, run things in it, tear it all down.

:class:`Lab` turns a :class:`~.topology.Topology` into namespaces (``dml<name>-<node>``):
the internet router, one per site (a public host or a home router) and one per home
party. Each site's access link is a pair of TUN devices joined by a
:mod:`~.delay` forwarder process (delay, jitter, loss; a rate via ``tc tbf``); a
home's parties sit on a bridge behind their router's nftables NAT (:mod:`.nat`).

Nothing touches the host's own network: every interface and address lives in the lab's
namespaces. Every process the lab starts is tracked and ended by its pid; every namespace
is deleted by :meth:`Lab.close` (also on a failed build and, for a lab built in-process,
at interpreter exit); :meth:`Lab.leftovers` lists whatever of this lab still exists.
Every wait is bounded. Needs root, iproute2, nft and /dev/net/tun.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import nat
from .netns import (
    NETNS_DIR,
    LabError,
    add_namespace,
    delete_namespaces,
    end_pid,
    end_pids,
    in_namespaces,
    namespace_inodes,
    pid_alive,
    pids_in,
    run,
    veth,
)
from .topology import DEFAULT, INTERNET, INTERNET_ADDRESS, Site, Topology

FORWARDER = "didmesh.session.lab.delay"
PROBE = "didmesh.session.lab.probe"
_COUNTER = itertools.count()
_NAME = re.compile(r"^[a-z0-9]{1,24}$")
READY_TIMEOUT = 10.0
#: a relay imports more than a forwarder: its bound to say it listens, on a loaded machine
RELAY_READY_TIMEOUT = 30.0


def available() -> str | None:
    """None if a lab can be built here, else why not."""
    from .netns import available as ns_available

    return ns_available("nft", "tc", tun=True)


def _read_line(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise LabError(f"{what} did not start within {timeout} s")
    return proc.stdout.readline()


_STALE = re.compile(r"^dmlt(\d+)x\d+-")


def _fresh_name() -> str:
    """``t<pid>x<n>``, skipping names a dead process with our pid may have left behind."""
    while True:
        name = f"t{os.getpid()}x{next(_COUNTER)}"
        try:
            if not any(p.name.startswith(f"dml{name}-") for p in NETNS_DIR.iterdir()):
                return name
        except OSError:
            return name


def stale_labs() -> list[str]:
    """Names of in-process labs whose process is gone (killed before it could clean up)."""
    try:
        names = [p.name for p in NETNS_DIR.iterdir()]
    except OSError:
        return []
    out = set()
    for ns in names:
        m = _STALE.match(ns)
        if m and not pid_alive(int(m.group(1))):
            out.add(ns[3:].split("-", 1)[0])
    return sorted(out)


def clean_stale() -> list[str]:
    """Take down every stale in-process lab (processes inside ended, namespaces deleted)."""
    names = stale_labs()
    for name in names:
        Lab(["relay"], name).close()
    return names


class Lab:
    """One Internet lab; use it as a context manager or call :meth:`up` / :meth:`close`."""

    def __init__(self, topology: Topology | Sequence[str] | None = None,
                 name: str | None = None) -> None:
        if topology is None:
            topology = Topology.parse(DEFAULT)
        elif not isinstance(topology, Topology):
            topology = Topology.parse(topology)
        self.topology = topology
        self.name = name or _fresh_name()
        if not _NAME.match(self.name):
            raise LabError(f"lab name {self.name!r}: use 1 to 24 lowercase letters and digits")
        self.prefix = f"dml{self.name}-"
        self._made: list[str] = []
        self._pids: list[int] = []  # forwarders, ended by pid (they may outlive `up`)
        self._children: list[subprocess.Popen[Any]] = []
        self._atexit = False

    # ------------------------------------------------------------------ names

    def ns(self, node: str) -> str:
        """The namespace of ``node`` (``inet``, a site or a home's party)."""
        if node != INTERNET:
            self.topology.site_of(node)  # raises on an unknown node
        return self.prefix + node

    def address(self, node: str) -> str:
        return self.topology.address(node)

    def public_address(self, node: str) -> str:
        return self.topology.public_address(node)

    def parties(self) -> list[str]:
        """Every host that is not the relay: public parties and home parties."""
        return [h for s in self.topology.sites for h in s.hosts if h != "relay"]

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self, *, persistent: bool = False) -> Lab:
        """Build the lab. ``persistent``: forwarders outlive this process (the CLI's ``up``)."""
        if self._made:
            raise LabError(f"lab {self.name} is already up")
        clash = [n for n in self.topology.nodes() if (NETNS_DIR / self.ns(n)).exists()]
        if clash:
            raise LabError(f"lab {self.name} already exists ({self.ns(clash[0])}); "
                           f"take it down first: python -m didmesh.session.lab down "
                           f"--name {self.name}")
        if not persistent and not self._atexit:
            atexit.register(self.close)
            self._atexit = True
        try:
            self._build(persistent)
        except BaseException:
            self.close()
            raise
        return self

    def _build(self, persistent: bool) -> None:
        top = self.topology
        inet = self._namespace(INTERNET)
        self._sysctl(inet, "net.ipv4.ip_forward=1")
        run("ip", "-n", inet, "addr", "add", f"{INTERNET_ADDRESS}/32", "dev", "lo")
        site_ns = [self._namespace(site.name) for site in top.sites]
        starting = [self._start_forwarder(i, site, persistent) for i, site in enumerate(top.sites)]
        for proc, site in zip(starting, top.sites, strict=True):
            line = _read_line(proc, READY_TIMEOUT, f"the link forwarder of {site.name}")
            if line.strip() != "ready":
                raise LabError(f"the link forwarder of {site.name} failed: "
                               f"{line.strip() or 'no output'}")
        for i, (site, ns) in enumerate(zip(top.sites, site_ns, strict=True)):
            pub = top.public_address(site.name)
            run("ip", "-n", inet, "link", "set", f"s{i}", "up")
            run("ip", "-n", inet, "route", "add", f"{pub}/32", "dev", f"s{i}")
            run("ip", "-n", ns, "addr", "add", f"{pub}/32", "dev", nat.WAN)
            run("ip", "-n", ns, "link", "set", nat.WAN, "up")
            run("ip", "-n", ns, "route", "add", "default", "dev", nat.WAN)
            if site.link.rate_mbit is not None:
                for where, dev in ((inet, f"s{i}"), (ns, nat.WAN)):
                    self._rate(where, dev, site.link.rate_mbit)
            if site.is_home:
                self._home(site, ns)

    def _namespace(self, node: str) -> str:
        name = self.ns(node)
        add_namespace(name)
        self._made.append(name)
        return name

    @staticmethod
    def _sysctl(ns: str, setting: str) -> None:
        run("ip", "netns", "exec", ns, "sysctl", "-qw", setting)

    @staticmethod
    def _rate(ns: str, dev: str, mbit: float) -> None:
        burst = max(1600, int(mbit * 1e6 / 8 / 250))  # 4 ms worth, at least one packet
        run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{mbit}mbit",
            "burst", str(burst), "latency", "200ms")

    def _start_forwarder(self, i: int, site: Site, persistent: bool) -> subprocess.Popen[str]:
        link = site.link
        cmd = [sys.executable, "-m", FORWARDER, self.ns(INTERNET), f"s{i}", self.ns(site.name),
               nat.WAN, "--delay-ms", str(link.delay_ms), "--jitter-ms", str(link.jitter_ms),
               "--loss", str(link.loss)]
        if not persistent:
            cmd.append("--die-with-parent")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL if persistent else None, text=True,
                                start_new_session=persistent)
        self._pids.append(proc.pid)
        self._children.append(proc)
        return proc

    def _home(self, site: Site, ns: str) -> None:
        top = self.topology
        self._sysctl(ns, "net.ipv4.ip_forward=1")
        lan = top.lan(site)
        run("ip", "-n", ns, "link", "add", nat.LAN, "type", "bridge")
        run("ip", "-n", ns, "addr", "add", f"{top.router_lan_address(site)}/{lan.prefixlen}",
            "dev", nat.LAN)
        run("ip", "-n", ns, "link", "set", nat.LAN, "up")
        for j, host in enumerate(site.hosts):
            hns = self._namespace(host)
            veth(ns, f"l{j}", hns, "eth0")
            run("ip", "-n", ns, "link", "set", f"l{j}", "master", nat.LAN)
            run("ip", "-n", ns, "link", "set", f"l{j}", "up")
            run("ip", "-n", hns, "addr", "add", f"{top.address(host)}/{lan.prefixlen}",
                "dev", "eth0")
            run("ip", "-n", hns, "link", "set", "eth0", "up")
            run("ip", "-n", hns, "route", "add", "default", "via", top.router_lan_address(site))
        run("ip", "netns", "exec", ns, "nft", "-f", "-", input=nat.ruleset(site.kind, str(lan)))

    def close(self) -> None:
        """End every process of this lab (by pid: those it started, then any other still
        inside its namespaces) and delete its namespaces. Idempotent."""
        for proc in self._children:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._children:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        for pid in self._pids:  # the CLI's forwarders are not our children any more
            end_pid(pid, self.prefix)
        for proc in self._children:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self._children.clear()
        self._pids.clear()
        names = set(self._made) | set(self._own_namespaces())
        inodes = namespace_inodes(names)  # what else runs in the lab (started by hand, say)
        end_pids(pids_in(inodes), lambda pid: in_namespaces(pid, inodes))
        failed = delete_namespaces(sorted(names))
        self._made.clear()
        if self._atexit:
            atexit.unregister(self.close)
            self._atexit = False
        if failed:
            raise LabError(f"could not delete namespaces {', '.join(failed)}")

    def _own_namespaces(self) -> list[str]:
        try:
            return [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(self.prefix)]
        except OSError:
            return []

    def leftovers(self) -> list[str]:
        """What of this lab still exists: namespaces, processes inside them, processes
        tagged with its name."""
        found = [f"namespace {n}" for n in self._own_namespaces()]
        found += [f"pid {p}" for p in pids_in(namespace_inodes(self._own_namespaces()))]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid() \
                    and pid_alive(int(entry.name), self.prefix):
                found.append(f"pid {entry.name}")
        found += [f"pid {p.pid}" for p in self._children if p.poll() is None]
        return sorted(set(found))

    # ------------------------------------------------------------------ running things

    def exec(self, node: str, *cmd: str) -> list[str]:
        """``cmd`` as run inside ``node``'s namespace."""
        return ["ip", "netns", "exec", self.ns(node), *cmd]

    def run(self, node: str, *cmd: str, timeout: float = 10, input: str | None = None) -> str:
        return run(*self.exec(node, *cmd), timeout=timeout, input=input)

    def spawn(self, node: str, *cmd: str, **popen: Any) -> subprocess.Popen[Any]:
        """A process in ``node`` that :meth:`close` ends (by pid) if it still runs."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.exec(node, *cmd), **popen)
        self._children.append(proc)
        return proc

    def python(self, node: str, code: str, *args: str, timeout: float = 10) -> str:
        """Run a Python snippet in ``node``; its stdout."""
        return self.run(node, sys.executable, "-c", code, *args, timeout=timeout)

    def serve_probe(self, node: str, port: int = 7000) -> subprocess.Popen[str]:
        """:mod:`.probe`'s echo server (UDP and TCP on ``port``, a TCP sink on ``port + 1``)."""
        proc = self.spawn(node, sys.executable, "-m", PROBE, "serve", str(port),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        line = _read_line(proc, READY_TIMEOUT, f"the probe server in {node}")
        if line.strip() != "ready":
            raise LabError(f"the probe server in {node} did not start")
        return proc

    def serve_relay(self, home: str | Path, port: int = 8470, *args: str,
                    env: dict[str, str] | None = None) -> str:
        """A didmesh relay in node ``relay`` (in-memory store, no per-address rate limit,
        ``args`` added), its home ``home``; its URL once it listens. ``env`` (default: this
        process's) is the relay's environment, ``DIDMESH_HOME`` set to ``home``."""
        proc = self.spawn(
            "relay", sys.executable, "-m", "didmesh.relay", "--host", "0.0.0.0",  # noqa: S104
            "--port", str(port), "--store", "memory", "--rate-ip-per-s", "0", *args,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env={**(os.environ if env is None else env), "DIDMESH_HOME": str(home)})
        line = _read_line(proc, RELAY_READY_TIMEOUT, "the lab's relay")
        if "listening" not in line:
            raise LabError(f"the lab's relay did not start (it said {line.strip()!r})")
        return f"http://{self.public_address('relay')}:{port}"

    def probe(self, node: str, *args: str, timeout: float = 30) -> Any:
        """Run a :mod:`.probe` client in ``node``; its JSON answer."""
        return json.loads(self.run(node, sys.executable, "-m", PROBE, *args, timeout=timeout))

    # ------------------------------------------------------------------ state (the CLI)

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "topology": self.topology.render(), "pids": self._pids,
                "namespaces": self._made, "created": time.time()}

    @classmethod
    def from_state(cls, doc: dict[str, Any]) -> Lab:
        lab = cls(Topology.parse(doc["topology"]), doc["name"])
        lab._pids = [int(p) for p in doc.get("pids", [])]
        lab._made = [str(n) for n in doc.get("namespaces", []) if str(n).startswith(lab.prefix)]
        return lab


@contextlib.contextmanager
def lab(topology: Topology | Sequence[str] | None = None,
        name: str | None = None) -> Iterator[Lab]:
    with Lab(topology, name) as built:
        yield built


def write_state(lab: Lab, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{lab.name}.json"
    path.write_text(json.dumps(lab.state(), indent=1))
    return path
