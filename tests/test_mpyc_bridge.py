"""The MPyC bridge: hooks present in the supported MPyC versions, the transport's behaviour."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from didmesh.session.mesh.faults import MpycIncompatible, PeerMisbehaved, ReservedOption
from didmesh.session.mesh.mpyc_bridge import FLUSH_AT, MeshTransport, check_compat, mpyc_argv

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _mpyc_dir() -> Path:
    spec = importlib.util.find_spec("mpyc")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def source_hooks(runtime_src: str, asyncoro_src: str) -> dict[str, Any]:
    """What the bridge relies on, read from MPyC's source without importing it."""
    found: dict[str, Any] = {}
    for tree, cls in ((ast.parse(runtime_src), "Runtime"),
                      (ast.parse(asyncoro_src), "MessageExchanger")):
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == cls:
                for f in node.body:
                    if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef):
                        found[f"{cls}.{f.name}"] = (
                            isinstance(f, ast.AsyncFunctionDef), [a.arg for a in f.args.args])
            if isinstance(node, ast.FunctionDef) and node.name == "setup":
                found["setup"] = True
    return found


def assert_hooks(found: dict[str, Any]) -> None:
    assert found["Runtime.start"][0] is True  # async def start(self)
    for name in ("set_protocol", "unset_protocol"):
        assert found[f"Runtime.{name}"][1] == ["self", "peer_pid", "protocol"][: 2 + (
            name == "set_protocol")]
    assert found["MessageExchanger.__init__"][1] == ["self", "rt", "peer_pid"]
    for name in ("connection_made", "data_received", "connection_lost", "close_connection"):
        assert f"MessageExchanger.{name}" in found
    assert found["setup"]


def test_hooks_in_installed_mpyc() -> None:
    d = _mpyc_dir()
    assert_hooks(source_hooks((d / "runtime.py").read_text(), (d / "asyncoro.py").read_text()))


def test_hooks_in_mpyc_010_wheel() -> None:
    """Runs when DIDMESH_MPYC010_WHEEL names an mpyc-0.10 wheel (pip download mpyc==0.10)."""
    wheel = os.environ.get("DIDMESH_MPYC010_WHEEL")
    if not wheel:
        pytest.skip("set DIDMESH_MPYC010_WHEEL to an mpyc-0.10 wheel to check it")
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        assert_hooks(source_hooks(z.read("mpyc/runtime.py").decode(),
                                  z.read("mpyc/asyncoro.py").decode()))


@pytest.mark.slow
def test_run_with_another_mpyc_interpreter() -> None:
    """Runs when DIDMESH_MPYC_PYTHON names a Python with another MPyC (e.g. 0.10) installed."""
    python = os.environ.get("DIDMESH_MPYC_PYTHON")
    if not python:
        pytest.skip("set DIDMESH_MPYC_PYTHON to a python with mpyc 0.10 and didmesh")
    from didmesh.session.mesh.loopback import loopback_plans
    from didmesh.session.mesh.runner import launch_document

    plans, ids = loopback_plans(3)
    procs = []
    for i in range(3):
        p = subprocess.Popen([python, "-m", "didmesh.session.mesh.runner"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        doc = launch_document(plans[i], ids[i], str(EXAMPLES / "secure_sum.py"), ["--no-log"])
        assert p.stdin is not None
        p.stdin.write(json.dumps(doc).encode())
        p.stdin.close()
        p.stdin = None
        procs.append(p)
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(b"sum: 51" in o for o in outs), outs


def test_check_compat_accepts_installed_and_rejects_missing_hook() -> None:
    import mpyc
    import mpyc.asyncoro
    import mpyc.runtime

    check_compat(mpyc.runtime, mpyc.asyncoro, mpyc.__version__)
    fake_rt = types.SimpleNamespace(Runtime=type("Runtime", (), {"start": lambda self: None}))
    with pytest.raises(MpycIncompatible, match="not a coroutine method"):
        check_compat(fake_rt, mpyc.asyncoro, "9.9")


@pytest.mark.parametrize(
    "args", [["-M", "3"], ["-I1"], ["--index=2"], ["-P", "h:1"], ["--ssl"], ["-C", "x.ini"]]
)
def test_reserved_options_are_refused(args: list[str]) -> None:
    with pytest.raises(ReservedOption):
        mpyc_argv("p.py", args, party_id=0, m=3)


def test_argv_appends_party() -> None:
    assert mpyc_argv("p.py", ["--seed", "1", "-n", "5"], party_id=2, m=3) == [
        "p.py", "--seed", "1", "-n", "5", "-M", "3", "-I", "2"]


class FakePort:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = 0
        self.starts = 0
        self._peer_started = asyncio.Event()
        self._peer_started.set()  # the fake peers have always started

    def attach(self, receiver: Any) -> None:
        self.receiver = receiver

    def send_app_parts(self, parts: list[bytes]) -> None:
        self.sent.append(b"".join(parts))

    def close_app(self) -> None:
        self.closed += 1

    def send_start(self) -> None:
        self.starts += 1

    @property
    def peer_started(self) -> asyncio.Event:
        return self._peer_started


class FakeProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost: list[Any] = []

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def test_writes_of_one_loop_turn_become_one_message() -> None:
    """After a turn of several writes, a turn's writes are gathered into one message."""
    port, errors = FakePort(), []
    tr = MeshTransport(port, asyncio.get_running_loop(), 1, expect_hello=False,
                       on_error=errors.append)
    tr.set_protocol(FakeProtocol())
    tr._alone = False  # as after a turn of several writes
    tr.write(b"a")
    tr.writelines([b"b", b"c"])
    tr.write(b"d")
    assert port.sent == []
    await asyncio.sleep(0)
    assert port.sent == [b"abcd"]
    tr.write(b"e")
    tr.write(b"f")
    tr.close()  # flushes first, then the close
    assert port.sent == [b"abcd", b"ef"] and port.closed == 1
    tr.write(b"ignored")
    await asyncio.sleep(0)
    assert port.sent == [b"abcd", b"ef"] and errors == []


async def test_after_a_turn_of_one_write_the_next_first_write_goes_at_once() -> None:
    """A latency-bound program writes one message a turn and waits for the answer: that
    message leaves at once, as a socket transport's write would, not after what MPyC does
    next in the turn; once a turn writes several, the next one is gathered again."""
    port, errors = FakePort(), []
    tr = MeshTransport(port, asyncio.get_running_loop(), 1, expect_hello=False,
                       on_error=errors.append)
    tr.set_protocol(FakeProtocol())
    tr.write(b"a")  # the first turn: nothing was gathered before
    assert port.sent == [b"a"]
    await asyncio.sleep(0)
    tr.write(b"b")
    assert port.sent == [b"a", b"b"]
    tr.write(b"c")
    tr.write(b"d")  # this turn writes three: gathered after the first
    assert port.sent == [b"a", b"b"]
    await asyncio.sleep(0)
    assert port.sent == [b"a", b"b", b"cd"]
    tr.write(b"e")
    tr.write(b"f")  # the turn after a busy one: all gathered
    assert port.sent == [b"a", b"b", b"cd"]
    await asyncio.sleep(0)
    assert port.sent == [b"a", b"b", b"cd", b"ef"] and errors == []
    await asyncio.sleep(0)
    tr.write(b"g")  # still after a busy turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    tr.write(b"h")  # after a turn of one write: at once
    assert port.sent == [b"a", b"b", b"cd", b"ef", b"g", b"h"]


async def test_a_record_worth_of_writes_goes_at_once_in_order() -> None:
    port, errors = FakePort(), []
    tr = MeshTransport(port, asyncio.get_running_loop(), 1, expect_hello=False,
                       on_error=errors.append)
    tr.set_protocol(FakeProtocol())
    tr.write(b"first")  # the first turn's first write goes at once
    tr.write(b"small")
    assert port.sent == [b"first"] and tr.get_write_buffer_size() == 5
    big = bytes(FLUSH_AT)
    tr.write(big)  # no waiting for the end of the loop turn
    assert port.sent == [b"first", b"small" + big] and tr.get_write_buffer_size() == 0
    tr.write(bytearray(b"tail"))
    await asyncio.sleep(0)
    assert port.sent == [b"first", b"small" + big, b"tail"] and errors == []
    assert tr.bytes_sent == 5 + 5 + FLUSH_AT + 4


async def test_server_side_checks_the_claimed_pid() -> None:
    loop = asyncio.get_running_loop()
    errors: list[BaseException] = []
    proto = FakeProtocol()
    tr = MeshTransport(FakePort(), loop, 2, expect_hello=True, on_error=errors.append)
    tr.set_protocol(proto)
    tr.app_data(b"\x02")  # the pid arrives in pieces
    assert proto.data == []
    tr.app_data(b"\x00rest")
    assert proto.data == [b"\x02\x00rest"] and errors == []

    proto2 = FakeProtocol()
    tr2 = MeshTransport(FakePort(), loop, 2, expect_hello=True, on_error=errors.append)
    tr2.set_protocol(proto2)
    tr2.app_data(b"\x01\x00keys")  # claims to be party 1
    assert proto2.data == []
    assert isinstance(errors[0], PeerMisbehaved) and "claimed to be MPyC party 1" in str(errors[0])


async def test_peer_close_reaches_mpyc_once() -> None:
    proto = FakeProtocol()
    tr = MeshTransport(FakePort(), asyncio.get_running_loop(), 0, expect_hello=False,
                       on_error=lambda e: None)
    tr.set_protocol(proto)
    tr.app_closed()
    tr.app_closed()
    tr.close()
    await asyncio.sleep(0)
    assert proto.lost == [None]


class LogPort(FakePort):
    """A port that logs START and application writes in order; its peer starts late."""

    def __init__(self, log: list[tuple[int, str]], pid: int) -> None:
        super().__init__()
        self._peer_started.clear()
        self.log, self.pid = log, pid

    def send_start(self) -> None:
        self.log.append((self.pid, "START"))

    def send_app_parts(self, parts: list[bytes]) -> None:
        self.log.append((self.pid, b"".join(parts).decode()))


def _fake_runtime(pid: int, m: int) -> Any:
    loop = asyncio.get_running_loop()
    return types.SimpleNamespace(
        pid=pid, _loop=loop, version="x",
        parties=[types.SimpleNamespace(pid=i, protocol=None) for i in range(m)])


class HelloExchanger(asyncio.Protocol):
    """MPyC's exchanger as far as the bridge sees it: a client writes its hello."""

    def __init__(self, rt: Any, peer_pid: int | None = None) -> None:
        self.rt, self.peer_pid = rt, peer_pid

    def connection_made(self, transport: Any) -> None:
        if self.peer_pid is not None:
            transport.write(f"hello from {self.rt.pid}".encode())


async def test_start_sends_the_client_hello_right_behind_start_and_waits_for_the_gate() -> None:
    """START, then (where this party is MPyC's client) its hello, both before the barrier
    is passed: a peer gets the hello with START, not one trip after the barrier. The
    barrier also waits for the bridge's gate (the connectivity check's end)."""
    from didmesh.session.mesh.mpyc_bridge import MpycBridge

    log: list[tuple[int, str]] = []
    ports = {0: LogPort(log, 0), 2: LogPort(log, 2)}
    bridge = MpycBridge(ports, party_id=1, m=3, on_error=lambda e: None)
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    bridge.gate = gate
    rt = _fake_runtime(1, 3)
    start = asyncio.ensure_future(bridge._start(rt, HelloExchanger))
    await asyncio.sleep(0.01)
    # party 1 is the client of party 2 (the lower pid connects), the server of party 0
    assert log == [(0, "START"), (2, "START"), (2, "hello from 1")]
    for port in ports.values():
        port._peer_started.set()
    await asyncio.sleep(0.01)
    assert not start.done()  # the gate is not done yet
    gate.set_result(None)
    await asyncio.sleep(0.01)
    assert not start.done()  # now MPyC's own: every peer's hello
    rt.parties[1].protocol.set_result(None)
    await asyncio.wait_for(start, 1)
    assert log == [(0, "START"), (2, "START"), (2, "hello from 1")]


async def test_an_error_of_the_gate_is_raised_by_start() -> None:
    from didmesh.session.mesh.faults import PeerUnresponsive
    from didmesh.session.mesh.mpyc_bridge import MpycBridge

    log: list[tuple[int, str]] = []
    ports = {1: LogPort(log, 1)}
    ports[1]._peer_started.set()
    bridge = MpycBridge(ports, party_id=0, m=2, on_error=lambda e: None)
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    gate.set_exception(PeerUnresponsive("not every party finished its connectivity check"))
    bridge.gate = gate
    with pytest.raises(PeerUnresponsive, match="connectivity check"):
        await asyncio.wait_for(bridge._start(_fake_runtime(0, 2), HelloExchanger), 1)


def test_runner_module_is_importable_without_mpyc_side_effects() -> None:
    code = "import sys, didmesh.session.mesh.runner; print('mpyc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"
