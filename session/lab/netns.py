"""Network-namespace plumbing shared by the labs (this one and the WireGuard lab).

Small blocking helpers around ``ip``: every command has a timeout, every failure raises
:class:`LabError` naming the command and what it printed. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")


class LabError(RuntimeError):
    """A lab could not be built, driven or torn down (test and experiment code only)."""


def run(*cmd: str, timeout: float = 10, input: str | None = None) -> str:
    """Run ``cmd``; its stdout, or :class:`LabError` with its stderr."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(cmd)} did not finish within {timeout} s") from exc
    if res.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed: {res.stderr.strip()[-800:]}")
    return res.stdout


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until true; ``TimeoutError(what ...)`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.02)


def available(*tools: str, tun: bool = False) -> str | None:
    """None if namespaces (and ``tools``, and TUN devices) can be used here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed"
    if tun and not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing"
    name = f"dmprobe{os.getpid()}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return None


def add_namespace(name: str) -> None:
    """Create namespace ``name`` with its loopback up."""
    run("ip", "netns", "add", name)
    run("ip", "-n", name, "link", "set", "lo", "up")


def delete_namespaces(names: Iterable[str]) -> list[str]:
    """Delete each namespace (ignoring ones already gone); the names that failed."""
    failed = []
    for name in names:
        if not (NETNS_DIR / name).exists():
            continue
        res = subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        if res.returncode != 0 and (NETNS_DIR / name).exists():
            failed.append(name)
    return failed


def existing_namespaces(names: Iterable[str]) -> list[str]:
    return [n for n in names if (NETNS_DIR / n).exists()]


def veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """A veth pair created directly inside the two namespaces (never in the host's)."""
    run("ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b,
        "netns", ns_b)


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """Whether ``pid`` runs (and, given ``marker``, has it in its command line)."""
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    if not argv:  # a zombie
        return False
    return marker is None or marker.encode() in argv


def end_pid(pid: int, marker: str, timeout: float = 5) -> None:
    """SIGTERM ``pid`` if it still carries ``marker``, SIGKILL after ``timeout`` s."""
    end_pids([pid], lambda p: pid_alive(p, marker), timeout)


def end_pids(pids: Iterable[int], still: Callable[[int], bool], timeout: float = 5) -> None:
    """SIGTERM each pid for which ``still(pid)`` holds; SIGKILL those left after ``timeout``."""
    pids = [p for p in pids if p != os.getpid() and still(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        try:
            wait_until(lambda: not any(still(p) for p in pids), timeout,
                       f"pids {pids} did not end on {sig.name}")
            return
        except TimeoutError:
            if sig == signal.SIGKILL:
                raise


def namespace_inodes(names: Iterable[str]) -> set[int]:
    inodes = set()
    for name in names:
        with contextlib.suppress(OSError):
            inodes.add((NETNS_DIR / name).stat().st_ino)
    return inodes


def pids_in(inodes: set[int]) -> list[int]:
    """Pids of the processes (other than this one) inside one of these network namespaces."""
    if not inodes:
        return []
    me = os.getpid()
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and int(e.name) != me and in_namespaces(int(e.name), inodes)]


def in_namespaces(pid: int, inodes: set[int]) -> bool:
    """Whether ``pid`` runs (not a zombie) inside one of these network namespaces."""
    try:
        return (Path("/proc") / str(pid) / "ns" / "net").stat().st_ino in inodes \
            and pid_alive(pid)
    except OSError:
        return False
