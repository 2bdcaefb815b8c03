"""Start real relay processes and a real redis-server on loopback, for tests.

Reusable by every layer's tests::

    from relay_helpers import start_relay, start_redis, relay_url, redis_server  # noqa: F401

    def test_x(relay_url):                 # a fresh memory-store relay per test
        ...

    with start_relay(store="memory", args=["--rate-ip-per-s", "0"]) as relay:
        relay.url                          # http://127.0.0.1:PORT
        relay.terminate()                  # SIGTERM, returns the exit code

Every wait has a timeout; processes are killed at teardown whatever happens. A relay's
stderr (JSON logs) goes to a file readable with :meth:`RelayProcess.log_lines`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from didmesh.session.lab.procs import stop

try:
    import pytest
except ImportError:  # the benchmarks use these helpers with the base install (no pytest)
    pytest = None  # type: ignore[assignment]

LISTENING = "didmesh relay listening on "


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class RelayProcess:
    proc: subprocess.Popen[str]
    url: str
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait (graceful shutdown); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def kill(self) -> None:
        """SIGKILL: no cleanup at all (for durability tests)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc.poll() is None


def spawn_relay(
    store: str = "memory",
    args: list[str] | None = None,
    *,
    env: dict[str, str] | None = None,
    home: str | Path | None = None,
    timeout: float = 20.0,
    command: list[str] | None = None,
) -> RelayProcess:
    """Start ``python -m didmesh.relay --port 0`` and wait for its "listening" line.

    Tests run every client from 127.0.0.1, so the per-address connection cap is off, and
    SIGTERM stops at once (no drain of running links), unless ``args`` sets
    ``--conns-per-address`` or ``--drain-timeout-s`` (later flags win)."""
    args = ["--conns-per-address", "0", "--drain-timeout-s", "0", *(args or [])]
    cmd = command or [sys.executable, "-m", "didmesh.relay"]
    full = [*cmd, "--host", "127.0.0.1", "--port", "0", "--store", store, *args]
    penv = dict(os.environ)
    penv.pop("DIDMESH_RELAY_CONFIG", None)
    if home is not None:
        penv["DIDMESH_HOME"] = str(home)
    penv.update(env or {})
    fd, log_name = tempfile.mkstemp(prefix="relay-", suffix=".log")
    log = os.fdopen(fd, "w")
    proc = subprocess.Popen(
        full, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=penv
    )
    log.close()
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    buf = ""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            proc.wait(5)
            raise RuntimeError(
                f"relay did not start ({full}): {Path(log_name).read_text()[-2000:]}"
            )
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            buf = proc.stdout.readline()
            if buf.startswith(LISTENING):
                url = buf[len(LISTENING) :].strip()
                return RelayProcess(proc, url, Path(log_name), full)


@contextlib.contextmanager
def start_relay(
    store: str = "memory",
    args: list[str] | None = None,
    **kw: Any,
) -> Iterator[RelayProcess]:
    relay = spawn_relay(store, args, **kw)
    try:
        yield relay
    finally:
        if relay.alive():
            relay.proc.kill()
        relay.proc.wait(10)
        if relay.proc.stdout:
            relay.proc.stdout.close()
        with contextlib.suppress(OSError):
            relay.log_path.unlink()


@dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    port: int
    dir: str
    argv: list[str] = field(default_factory=list)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def restart(self, down_s: float = 0.0, timeout: float = 15.0) -> None:
        """SIGTERM (a persisting server writes its data), ``down_s`` s down, then the same
        server again on the same port and directory, answering PING."""
        stop(self.proc)
        time.sleep(down_s)
        self.proc = _popen_redis(self.argv)
        if not _redis_up(self.proc, self.port, timeout):
            stop(self.proc)
            raise RuntimeError("redis-server did not come back after its restart")


def _popen_redis(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)


def _redis_up(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Wait until redis-server answers PING with PONG (not -LOADING)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
                time.sleep(0.05)
        except OSError:
            time.sleep(0.05)
    return False


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


@contextlib.contextmanager
def start_redis(timeout: float = 15.0, *, persist: bool = False) -> Iterator[RedisServer]:
    """A throw-away redis-server on a free loopback port: no persistence, or with
    ``persist`` an append-only file (what specs/relay.md section 13 requires of a relay's
    Redis), so that :meth:`RedisServer.restart` keeps the data."""
    exe = shutil.which("redis-server")
    if exe is None:
        if pytest is None:
            raise RuntimeError("redis-server is not installed")
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    tmp = tempfile.mkdtemp(prefix="redis-")
    keep = ["--appendonly", "yes", "--appendfsync", "everysec"] if persist \
        else ["--appendonly", "no"]
    for _ in range(5):
        port = free_port()
        argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *keep,
                "--dir", tmp, "--protected-mode", "yes", "--daemonize", "no"]
        proc = _popen_redis(argv)
        if _redis_up(proc, port, timeout):
            break
        proc.kill()
        proc.wait(5)
    else:
        raise RuntimeError("could not start redis-server")
    server = RedisServer(proc, port, tmp, argv)
    try:
        yield server
    finally:
        stop(server.proc)  # the current one (restart() replaces it)
        shutil.rmtree(tmp, ignore_errors=True)


# -- pytest fixtures (import them into a test module to use them) ----------------------------

if pytest is not None:
    @pytest.fixture(scope="session")
    def redis_server() -> Iterator[RedisServer]:
        with start_redis() as server:
            yield server

    @pytest.fixture
    def relay_url(tmp_path: Path) -> Iterator[str]:
        """A fresh relay (memory store, no IP rate limit) for one test."""
        with start_relay("memory", ["--rate-ip-per-s", "0"], home=tmp_path) as relay:
            yield relay.url

    @pytest.fixture(scope="module")
    def shared_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
        """One relay (memory store) for a whole test module; tests use fresh identities."""
        home = tmp_path_factory.mktemp("relay-home")
        with start_relay(
            "memory",
            ["--rate-ip-per-s", "0", "--rate-did-per-s", "1000", "--rate-did-burst", "1000"],
            home=home,
        ) as relay:
            yield relay


def exchange(port: int, *parts: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send ``parts`` to the relay on loopback ``port`` over one raw TCP connection (0.2 s
    apart) and read until the relay closes: (bytes, seconds)."""
    t0 = time.monotonic()
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for i, part in enumerate(parts):
            if i:
                time.sleep(0.2)
            sock.sendall(part)
        while chunk := sock.recv(65536):
            out += chunk
    return out, time.monotonic() - t0
