"""The keeper of one ``wireguard-go`` (specs/wireguard.md 6.1, step 3): a tiny process
between the run and ``wireguard-go`` that ties the tunnel's life to the run's, with a
short grace after the run dies.

    python -I -S keeper.py RUN_PID GRACE wireguard-go -f IFACE

A standalone script (standard library only, started with ``-I -S`` so that it starts in
a few milliseconds); :class:`.tunnel.Tunnel` starts it in its own session. It starts the
command as its child, with a parent-death signal (SIGTERM) bound to itself, then waits:

* the child ends (e.g. its interface was deleted): the keeper ends with its status;
* SIGTERM, SIGINT or SIGHUP (an orderly teardown, ``didmesh wg down``): it ends the child
  at once (SIGTERM, SIGKILL after :data:`STOP_WAIT` s);
* the run process ``RUN_PID`` dies (its parent-death signal, SIGUSR1, or the parent pid
  seen changed, checked once a second): the child lives on for ``GRACE`` seconds, then is
  ended as above. The kernel closes a killed run's sockets before it signals, so their
  FIN or RST are in the tunnel's queue already: the grace lets ``wireguard-go`` carry
  them to the peers, which then see the links close at once instead of waiting for
  their liveness timeout.

If the keeper itself is killed, the child gets SIGTERM from the kernel at once.
Every wait is bounded: the child is gone at most ``GRACE`` + 2 * STOP_WAIT s after the run.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
#: how long the child has to end on SIGTERM before SIGKILL
STOP_WAIT = 5.0
#: the run's death; a signal nothing else sends the keeper
PARENT_DIED = signal.SIGUSR1
STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WATCHED = {signal.SIGCHLD, PARENT_DIED, *STOP}


def _prctl_pdeathsig(sig: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _reap(pid: int) -> int | None:
    """The child's exit status once it has ended (reaped), None while it runs."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 1
    if not done:
        return None
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


def _wait(pid: int, limit: float) -> int | None:
    """Wait at most ``limit`` s for the child to end; its exit code, or None."""
    left = limit
    while (code := _reap(pid)) is None and left > 0:
        signal.sigtimedwait({signal.SIGCHLD}, min(left, 0.2))
        left -= 0.2
    return code


def _stop(pid: int) -> int:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        code = _wait(pid, STOP_WAIT)
        if code is not None:
            return code
    return 1


def main(argv: list[str]) -> int:
    run_pid, grace, cmd = int(argv[1]), float(argv[2]), argv[3:]
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    _prctl_pdeathsig(PARENT_DIED)
    if os.getppid() != run_pid:  # the run died before the line above: start nothing
        return 1
    me = os.getpid()
    child = os.fork()
    if child == 0:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            _prctl_pdeathsig(signal.SIGTERM)
            if os.getppid() != me:
                os._exit(1)
            os.execvp(cmd[0], cmd)  # noqa: S606 (the command is ours: wireguard-go)
        except OSError as exc:
            os.write(2, f"cannot start {cmd[0]}: {exc.strerror}\n".encode())
        os._exit(127)
    while True:
        info = signal.sigtimedwait(WATCHED, 1.0)
        code = _reap(child)
        if code is not None:
            return code
        if info is not None and info.si_signo in STOP:
            return _stop(child)
        if (info is not None and info.si_signo == PARENT_DIED) or os.getppid() != run_pid:
            code = _wait(child, grace)
            return code if code is not None else _stop(child)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
