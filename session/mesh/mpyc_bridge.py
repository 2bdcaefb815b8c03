"""THE one module coupled to MPyC (specs/mesh.md, "Running MPyC").

MPyC's :class:`mpyc.asyncoro.MessageExchanger` is a plain :class:`asyncio.Protocol`.
Plain MPyC's ``Runtime.start()`` connects it to TCP sockets (the lower party id is the
client and first sends its pid and PRSS keys, in clear). didmesh replaces exactly that
one coroutine, on the one runtime instance, with :func:`_mesh_start`: for every peer it
makes the same ``MessageExchanger`` (client for higher peer ids, server for lower, as
MPyC does) and hands it a :class:`MeshTransport` of ours instead of a socket transport.

``MeshTransport.write()`` only buffers; once per event-loop turn (``loop.call_soon``) the
buffered bytes go to the peer's secure channel as one application message, which the
channel encrypts into as few Noise records as it can. Received, decrypted messages go
straight to ``protocol.data_received``. So all of MPyC's traffic, including the PRSS
keys of the start-up, is encrypted, and many small writes cost one record.

The hook, and everything else this module relies on, exists unchanged in MPyC 0.10 and
0.11 (the versions pyproject.toml allows): ``mpyc.runtime.Runtime.start`` (coroutine
method), ``mpyc.runtime.setup()`` and the module attribute ``mpyc.runtime.mpc``,
``Runtime.parties[i].protocol`` / ``.pid``, ``Runtime.set_protocol`` /
``unset_protocol``, ``Runtime._loop``, ``Runtime.start_time``, and
``mpyc.asyncoro.MessageExchanger(rt, peer_pid=None)`` with ``connection_made``,
``data_received``, ``connection_lost``. :func:`check_compat` asserts all of it.

MPyC is imported lazily: ``import mpyc`` parses ``sys.argv``, so :func:`install` sets
``sys.argv`` to the program's arguments (plus ``-M m -I id``) first.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
import types
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from .faults import MpycIncompatible, PeerMisbehaved, ReservedOption
from .mpyc_start import started_alone

#: MPyC versions this bridge is written and tested for (pyproject: mpyc>=0.10,<0.12).
SUPPORTED_MPYC = ("0.10", "0.11")

#: MPyC options that didmesh sets itself; a program's arguments must not set them.
RESERVED_OPTIONS = (
    "-M",
    "-I",
    "--index",
    "-P",
    "-C",
    "--config",
    "-B",
    "--base-port",
    "--ssl",
    "--output-windows",
    "--output-file",
)


class AppReceiver(Protocol):
    def app_data(self, data: bytes | memoryview) -> None:
        """Application bytes from the peer (a view: copy what must outlive the call)."""
    def app_closed(self) -> None: ...


class AppPort(Protocol):
    """What the mesh offers the bridge for one peer (a secure channel's application side)."""

    def attach(self, receiver: AppReceiver) -> None: ...
    def send_app_parts(self, parts: Sequence[bytes]) -> None:
        """Send the concatenation of ``parts`` as one application message."""
    def close_app(self) -> None: ...
    def send_start(self) -> None:
        """Tell the peer this party's program reached ``mpc.start()``."""
    @property
    def peer_started(self) -> asyncio.Event:
        """Set once the peer's program reached ``mpc.start()``."""


#: Buffered bytes at which ``MeshTransport.write`` sends at once instead of at the end of
#: the loop turn: one full record's worth gains nothing from waiting, and a large message
#: should leave before MPyC goes on computing in the same turn.
FLUSH_AT = 65519


def mpyc_argv(program: str, args: Sequence[str], *, party_id: int, m: int) -> list[str]:
    """``sys.argv`` for the program: its own arguments, then ``-M m -I party_id``."""
    for a in args:
        if a == "--":
            break
        for opt in RESERVED_OPTIONS:
            long_form = opt.startswith("--")
            if a == opt or a.startswith(opt + "=" if long_form else opt):
                raise ReservedOption(
                    f"the program's arguments set MPyC option {opt!r}; didmesh sets the "
                    "parties, this party's index and the transport itself (remove it)"
                )
    return [program, *args, "-M", str(m), "-I", str(party_id)]


def check_compat(runtime_module: Any, asyncoro_module: Any, version: str) -> None:
    """Raise :class:`MpycIncompatible` unless MPyC has every hook this bridge uses."""
    problems = []
    rt_cls = getattr(runtime_module, "Runtime", None)
    if rt_cls is None or not inspect.iscoroutinefunction(getattr(rt_cls, "start", None)):
        problems.append("mpyc.runtime.Runtime.start is not a coroutine method")
    for name in ("set_protocol", "unset_protocol", "shutdown"):
        if rt_cls is None or not callable(getattr(rt_cls, name, None)):
            problems.append(f"mpyc.runtime.Runtime.{name} is missing")
    if not callable(getattr(runtime_module, "setup", None)):
        problems.append("mpyc.runtime.setup is missing")
    mx = getattr(asyncoro_module, "MessageExchanger", None)
    if mx is None or not issubclass(mx, asyncio.Protocol):
        problems.append("mpyc.asyncoro.MessageExchanger is not an asyncio.Protocol")
    else:
        for name in ("connection_made", "data_received", "connection_lost", "close_connection"):
            if not callable(getattr(mx, name, None)):
                problems.append(f"MessageExchanger.{name} is missing")
        params = list(inspect.signature(mx.__init__).parameters)
        if params[:3] != ["self", "rt", "peer_pid"]:
            problems.append(f"MessageExchanger.__init__ takes {params}, expected (rt, peer_pid)")
    if problems:
        raise MpycIncompatible(
            f"MPyC {version} lacks what didmesh needs ({'; '.join(problems)}); "
            f"install a supported version: pip install 'mpyc>=0.10,<0.12'"
        )
    if not version.startswith(SUPPORTED_MPYC):
        logging.getLogger(__name__).warning(
            "MPyC %s is not a tested version (tested: %s)", version, ", ".join(SUPPORTED_MPYC)
        )


class MeshTransport(asyncio.Transport):
    """The transport MPyC's ``MessageExchanger`` writes into, for one peer.

    Writes of one event-loop turn are handed to the peer's channel as one application
    message (gathered into records, not joined first) at the end of the turn, or at once
    when a record's worth (:data:`FLUSH_AT` bytes) is buffered. After a turn that wrote
    only once (a round of a latency-bound program: the peer waits for that message), the
    next turn's first write goes at once instead, as a socket transport's would.

    On the server side (peer id below ours) the first two bytes MPyC receives are the
    peer's claimed pid: they must equal the roster-authenticated id, else
    :class:`PeerMisbehaved`.
    """

    def __init__(
        self,
        port: AppPort,
        loop: asyncio.AbstractEventLoop,
        peer_id: int,
        *,
        expect_hello: bool,
        on_error: Callable[[BaseException], None],
    ) -> None:
        super().__init__()
        self._port = port
        self._loop = loop
        self.peer_id = peer_id
        self._buf: list[bytes] = []
        self._buffered = 0
        self._scheduled = False
        #: whether the last loop turn with writes wrote only once (then the next turn's
        #: first write goes at once), and how many writes this turn made
        self._alone = True
        self._turn_writes = 0
        self._closing = False
        self._lost = False
        self._protocol: asyncio.Protocol | None = None
        self._hello = bytearray() if expect_hello else None
        self._on_error = on_error
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- asyncio.Transport (what MPyC calls) ------------------------------------------

    def write(self, data: Any) -> None:
        if self._closing:
            return
        data = bytes(data)  # MPyC writes bytes: then this is no copy
        self._buf.append(data)
        self._buffered += len(data)
        self._turn_writes += 1
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)
            if self._alone:
                # the last turn wrote one message (a round: the peer waits for it): the
                # first write of this turn goes at once, as a socket transport's would,
                # not after whatever else MPyC does in the turn
                self._flush()
                return
        if self._buffered >= FLUSH_AT:
            self._flush()

    def writelines(self, list_of_data: Any) -> None:
        for d in list_of_data:
            self.write(d)

    def _flush_soon(self) -> None:
        self._scheduled = False
        # a turn of several writes (a program sending many messages at once) makes the
        # next turn gather all of its writes into one message: one record, one send
        self._alone = self._turn_writes <= 1
        self._turn_writes = 0
        self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        parts = self._buf
        self._buf = []
        self.bytes_sent += self._buffered
        self._buffered = 0
        try:
            self._port.send_app_parts(parts)
        except Exception as exc:  # the channel failed: the mesh reports it
            self._on_error(exc)

    def close(self) -> None:
        if self._closing:
            return
        self._flush()
        self._closing = True
        try:
            self._port.close_app()
        except Exception as exc:
            self._on_error(exc)
        self._loop.call_soon(self._connection_lost)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("didmesh-party", self.peer_id)
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    # -- AppReceiver (what the mesh calls) --------------------------------------------

    def app_data(self, data: bytes | memoryview) -> None:
        if self._lost or self._protocol is None:
            return
        self.bytes_received += len(data)
        hello = self._hello
        if hello is not None:
            hello += data
            if len(hello) < 2:
                return
            claimed = int.from_bytes(hello[:2], "little")
            if claimed != self.peer_id:
                self._on_error(
                    PeerMisbehaved(
                        f"party {self.peer_id} claimed to be MPyC party {claimed} "
                        "(the roster authenticates it as the former)",
                        party=self.peer_id,
                    )
                )
                return
            data = bytes(hello)
            self._hello = None
        # MPyC's MessageExchanger extends a bytearray with it: any buffer will do.
        self._protocol.data_received(data)  # type: ignore[arg-type]

    def app_closed(self) -> None:
        if not self._closing:
            self._closing = True
            self._connection_lost()

    def _connection_lost(self) -> None:
        if self._lost or self._protocol is None:
            return
        self._lost = True
        self._protocol.connection_lost(None)


class MpycBridge:
    """Installs the mesh under one MPyC runtime and remembers the transports it made."""

    def __init__(
        self,
        ports: Mapping[int, AppPort],
        *,
        party_id: int,
        m: int,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.ports = dict(ports)
        self.party_id = party_id
        self.m = m
        self.on_error = on_error
        self.transports: list[MeshTransport] = []
        self.runtime: Any = None
        #: awaited with the start barrier: the end of the connectivity check (every
        #: party's READY), which the runner no longer awaits before the program
        self.gate: Awaitable[Any] | None = None
        #: called as this party's program reaches the start barrier (before any wait)
        self.on_start: Callable[[], None] | None = None
        #: whether the program's ``mpc.start()`` was called, and whether its
        #: ``mpc.shutdown()`` completed (MPyC's own end of the joint run: every party
        #: passed its barrier, the connections are closed)
        self.started = False
        self.shut_down = False

    async def start_barrier(self, then: Callable[[], None] | None = None) -> None:
        """Tell every peer this party reached ``mpc.start()`` (START), call ``then`` (what
        it writes follows START), and wait until every peer did and :attr:`gate` is done
        (its error is raised)."""
        self.started = True
        if self.on_start is not None:
            self.on_start()
        for port in self.ports.values():
            port.send_start()
        if then is not None:
            then()
        waits: list[Awaitable[Any]] = [port.peer_started.wait() for port in self.ports.values()]
        if self.gate is not None:
            waits.append(self.gate)
        await asyncio.gather(*waits)

    def bytes_per_peer(self) -> dict[int, dict[str, int]]:
        """MPyC's bytes per peer if the bridge counts them itself; empty: the mesh's
        channels carry (and count) them."""
        return {}

    def install(
        self, program: str, args: Sequence[str], loop: asyncio.AbstractEventLoop
    ) -> Any:
        """Set ``sys.argv``, set up (or re-set up) ``mpyc.runtime.mpc``, hook its start()."""
        argv = mpyc_argv(program, args, party_id=self.party_id, m=self.m)
        sys.argv = list(argv)
        asyncio.set_event_loop(loop)  # this thread's: MPyC's runtime adopts it
        fresh = "mpyc.runtime" not in sys.modules
        import mpyc
        import mpyc.asyncoro
        import mpyc.runtime

        check_compat(mpyc.runtime, mpyc.asyncoro, mpyc.__version__)
        rt = getattr(mpyc.runtime, "mpc", None) if fresh else None
        if rt is None:
            # not the first run in this process; or MPyC's set-up on import failed (it
            # prints the error and goes on): once more, to raise that error here
            sys.argv = list(argv)
            rt = mpyc.runtime.setup()
            mpyc.runtime.mpc = rt
        if rt.pid != self.party_id or len(rt.parties) != self.m:
            raise MpycIncompatible(
                f"MPyC set itself up as party {rt.pid} of {len(rt.parties)}, expected "
                f"{self.party_id} of {self.m}"
            )
        if rt._loop is not loop:
            raise MpycIncompatible("MPyC did not adopt the mesh's event loop")
        bridge = self
        exchanger = mpyc.asyncoro.MessageExchanger

        async def _mesh_start(rt: Any) -> None:
            await bridge._start(rt, exchanger)

        rt.start = types.MethodType(_mesh_start, rt)
        shutdown = rt.shutdown

        async def _shutdown(rt: Any) -> None:
            await shutdown()
            bridge.shut_down = True

        rt.shutdown = types.MethodType(_shutdown, rt)
        self.runtime = rt
        return rt

    async def _start(self, rt: Any, exchanger: Any) -> None:
        """Replacement for ``Runtime.start()``: MPyC's protocol objects over the mesh."""
        start_line = f"Start MPyC runtime v{rt.version} over the didmesh mesh"
        m = len(rt.parties)
        if started_alone(rt, start_line):
            self.started = True
            return
        loop = rt._loop
        for peer in rt.parties:
            peer.protocol = asyncio.Future(loop=loop) if peer.pid == rt.pid else None

        def connect(client: bool) -> None:
            for peer in rt.parties:
                if peer.pid == rt.pid or (peer.pid > rt.pid) != client:
                    continue
                proto = exchanger(rt, peer.pid) if client else exchanger(rt)
                tr = MeshTransport(
                    self.ports[peer.pid], loop, peer.pid, expect_hello=not client,
                    on_error=self.on_error,
                )
                tr.set_protocol(proto)
                self.transports.append(tr)
                proto.connection_made(tr)  # a client writes its pid and PRSS keys here
                self.ports[peer.pid].attach(tr)  # delivers whatever the peer sent already

        # the start barrier: as with plain MPyC (whose start() connects to every party),
        # start() returns once every party's program has called it. As the client of the
        # pairs where MPyC's lower pid connects, this party's hello (pid, PRSS keys) goes
        # out right behind START, in the same write, as plain MPyC's follows its connect:
        # a peer gets it with START, not one trip after the barrier.
        await self.start_barrier(then=lambda: connect(client=True))
        # MPyC's start line only now: a run that stops in the barrier (a peer refused its
        # copy of the program, or never finished its check) prints nothing on stdout
        logging.info(start_line)
        connect(client=False)
        await rt.parties[rt.pid].protocol
        logging.info(f"All {m} parties connected via didmesh (Noise).")
        rt.start_time = time.time()
