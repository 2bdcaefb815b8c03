"""User-space link emulation: one-way delay, jitter and loss between two namespaces.

The kernel's ``netem`` qdisc is not available everywhere (not on our CI machines), but
TUN devices are. One forwarder process joins two namespaces: it opens a TUN device in
each (``setns`` then ``/dev/net/tun``), reads every IP packet the kernel routes into one,
and writes it into the other once its one-way delay has passed. TCP, UDP and ICMP alike.

The timing core is :class:`DelayLine`, sans-IO: a FIFO of ``(due, packet)`` per
direction. :func:`serve` waits in one ``select`` until the earliest due time or a
readable device, reads what is there in a burst, and releases everything due — one timer
for the whole queue, never a sleep per packet, so a long delay does not cut throughput
(the queue just holds a bandwidth-delay product of packets). The timer wakes a little
early, by its own measured lateness tracked high (the largest recent one, decaying
slowly; at most 0.5 ms), and spins to the due time; and a packet that woke the forwarder
is stamped the average lateness earlier (never before the forwarder went to sleep). So
the scheduler's wake-up latency, 0.1 to 0.2 ms on a busy virtual machine, does not
lengthen every delay. Last, the forwarder measures its own release cost (from a packet's
due time until its ``write`` returned: :class:`ReleaseCost`, a moving average, at most
0.1 ms) and schedules each delayed packet that much earlier, so it *leaves* at its arrival
plus the configured delay. The guarantee: no packet is released before its arrival stamp
plus the configured delay minus the measured release cost (and never before its arrival
stamp, which is not earlier than the moment the forwarder went to sleep before reading it).
Jitter never reorders: a packet is never due before the one ahead
of it. A full queue drops at the tail, like a
router's buffer.

Run as ``python -m didmesh.session.lab.delay NS_A DEV_A NS_B DEV_B [--delay-ms ...]``
(root); it prints ``ready`` once both devices exist and forwards until killed. The TUN
devices are not persistent: they vanish with the process.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import fcntl
import os
import random
import select
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_TIMERSLACK = 29
BURST = 128  # packets read from one device before the queue is serviced again
MAX_PACKET = 65535
NICE = -10  # the forwarder's scheduling priority (it sleeps whenever no packet is due)
MAX_LEAD = 0.0005  # never wake (and spin) more than 0.5 ms early
MAX_COST = 0.0001  # the forwarder's own release latency credited to a packet: at most 0.1 ms


@dataclass(frozen=True)
class LinkShape:
    """What one direction of a link does to packets (``delay_ms`` is one way)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # probability in [0, 1)
    limit: int = 20000  # packets queued at most; beyond, the tail is dropped

    def __post_init__(self) -> None:
        if not 0 <= self.delay_ms <= 10_000:
            raise ValueError(f"delay {self.delay_ms} ms is outside 0..10000")
        if not 0 <= self.jitter_ms <= self.delay_ms:
            raise ValueError(f"jitter {self.jitter_ms} ms must be within 0..delay")
        if not 0 <= self.loss < 1:
            raise ValueError(f"loss {self.loss} must be a probability below 1")
        if self.limit < 1:
            raise ValueError("the queue limit must be at least one packet")


class DelayLine:
    """One direction of an emulated link: packets in with a time stamp, out when due."""

    def __init__(self, shape: LinkShape, rng: random.Random | None = None) -> None:
        self.shape = shape
        self._delay = shape.delay_ms / 1000
        self._jitter = shape.jitter_ms / 1000
        self._rng = rng or random.Random()  # noqa: S311 - emulated loss, not secrecy
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._last_due = 0.0
        self.last_popped = 0.0  # the due time of the last packet released
        self.passed = 0
        self.lost = 0
        self.overflowed = 0

    def push(self, now: float, packet: bytes, credit: float = 0.0) -> bool:
        """Queue ``packet`` arriving at ``now``; False if lost or the queue is full.

        ``credit``: the forwarder's own measured latency past a due time (its release
        cost, :class:`ReleaseCost`), taken off the delay so the packet *leaves* on time;
        never more than the delay, so no packet is due before it arrived."""
        if self.shape.loss and self._rng.random() < self.shape.loss:
            self.lost += 1
            return False
        if len(self._queue) >= self.shape.limit:
            self.overflowed += 1
            return False
        due = now + self._delay - min(max(credit, 0.0), self._delay)
        if self._jitter:
            due = max(now, due + self._rng.uniform(-self._jitter, self._jitter))
        due = max(due, self._last_due)  # in order: never before the packet ahead
        self._last_due = due
        self._queue.append((due, packet))
        return True

    def pop_due(self, now: float) -> list[bytes]:
        """Every packet due at ``now``, in arrival order."""
        out = []
        q = self._queue
        while q and q[0][0] <= now:
            self.last_popped, packet = q.popleft()
            out.append(packet)
        self.passed += len(out)
        return out

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)


class ReleaseCost:
    """The forwarder's own latency in releasing a packet: from its due time until the write
    into the other device returned (the timer's remaining error, the queue's bookkeeping, the
    ``write`` system call that hands the packet to the kernel). A moving average of what was
    measured, at most :data:`MAX_COST`; :meth:`DelayLine.push` schedules each packet that
    much earlier, so it leaves at (about) its arrival plus the configured delay instead of
    one release cost later. Only packets that waited (delay > 0) are measured: a zero-delay
    packet is written at once and credited nothing."""

    def __init__(self, limit: float = MAX_COST, weight: float = 1 / 16) -> None:
        self.limit = limit
        self.weight = weight
        self.value = 0.0

    def observe(self, due: float, left: float) -> None:
        """A packet due at ``due`` had been written by ``left``."""
        sample = min(max(left - due, 0.0), self.limit)
        self.value += (sample - self.value) * self.weight


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def open_tun(netns: str, name: str) -> int:
    """A non-blocking fd of a new TUN device ``name`` created inside ``netns``.

    Switches this process's network namespace (``setns``); call it before any thread.
    """
    if len(name.encode()) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 bytes")
    libc = _libc()
    ns_fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(ns_fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
    finally:
        os.close(ns_fd)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def serve(
    fd_a: int,
    fd_b: int,
    a_to_b: DelayLine,
    b_to_a: DelayLine,
    *,
    clock: Callable[[], float] = time.monotonic,
    running: Callable[[], bool] = lambda: True,
) -> None:
    """Forward between the two devices until ``running()`` is false."""
    routes = {fd_a: (fd_b, a_to_b), fd_b: (fd_a, b_to_a)}
    outs = ((fd_b, a_to_b), (fd_a, b_to_a))
    fds = [fd_a, fd_b]
    read, write = os.read, os.write
    lead = 0.0  # how late select's timer fires here (moving average)
    costs = {id(a_to_b): ReleaseCost(), id(b_to_a): ReleaseCost()}
    # how early we wake for a due packet and spin: the timer's lateness tracked high (it
    # rises at once and decays slowly), so a wake-up later than average is still on time
    early = 0.0
    while running():
        now = clock()
        due = [d for d in (a_to_b.next_due(), b_to_a.next_due()) if d is not None]
        first = min(due) if due else None
        timeout = max(0.0, first - now - early) if first is not None else 1.0
        ready, _, _ = select.select(fds, [], [], timeout)
        woke = clock()
        # a packet that woke us arrived about one wake-up latency ago (not before we slept)
        arrived = max(now, woke - lead)
        if not ready and first is not None and timeout > 0:
            late = min(max(woke - now - timeout, 0.0), MAX_LEAD)
            lead += (late - lead) / 8
            early = late if late > early else early + (late - early) / 32
            while woke < first:  # the last few tens of microseconds: spin, bounded by lead
                woke = clock()
        for fd in ready:
            line = routes[fd][1]
            for _ in range(BURST):
                try:
                    packet = read(fd, MAX_PACKET)
                except BlockingIOError:
                    break
                line.push(arrived, packet, costs[id(line)].value)
            arrived = woke  # what more a burst reads came in while we were awake
        for dst, line in outs:
            released = line.pop_due(clock())
            for packet in released:
                try:
                    write(dst, packet)
                except OSError:  # device down or kernel queue full: the packet is lost
                    line.overflowed += 1
            if released and line.shape.delay_ms:
                costs[id(line)].observe(line.last_popped, clock())


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m didmesh.session.lab.delay",
                                description="Forward IP packets between two namespaces "
                                            "with a one-way delay, jitter and loss.")
    p.add_argument("ns_a")
    p.add_argument("dev_a")
    p.add_argument("ns_b")
    p.add_argument("dev_b")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--loss", type=float, default=0.0, help="loss probability, each direction")
    p.add_argument("--limit", type=int, default=20000, help="queue limit in packets")
    p.add_argument("--die-with-parent", action="store_true",
                   help="end when the process that started it ends")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        shape = LinkShape(args.delay_ms, args.jitter_ms, args.loss, args.limit)
    except ValueError as exc:
        print(f"didmesh: {exc}", file=sys.stderr)
        return 2
    libc = _libc()
    if args.die_with_parent:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:
            return 1
    libc.prctl(PR_SET_TIMERSLACK, 1000)  # 1 µs: wake-ups on time, not 50 µs late
    with contextlib.suppress(OSError):  # a link is served ahead of busy programs on a busy host
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the lab's terminal: the lab ends us
    try:
        fd_a = open_tun(args.ns_a, args.dev_a)
        fd_b = open_tun(args.ns_b, args.dev_b)
    except OSError as exc:
        print(f"didmesh: cannot open the TUN devices: {exc}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    serve(fd_a, fd_b, DelayLine(shape), DelayLine(shape))
    return 0


if __name__ == "__main__":
    sys.exit(main())
