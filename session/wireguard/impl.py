"""Which WireGuard a run uses, and the commands that bring its interface up and down
(specs/wireguard.md, "Kernel or user space"). Sans-IO: nothing here runs a command.

``auto`` (the default) uses the kernel's WireGuard where the kernel has it and
``wireguard-go`` in user space otherwise; ``kernel`` and ``userspace`` insist on one. The
choice comes from ``--wg-impl`` or else ``DIDMESH_WG_IMPL`` (:func:`choose`).

:class:`BringUp` is the bring-up as a state machine: :meth:`BringUp.next` gives the next
action (:class:`Run` a command, :class:`StartUserspace` start ``wireguard-go`` and wait
for its UAPI socket, :class:`Up` done), :meth:`BringUp.result` takes what the last action
gave. Detection is the first command itself: ``ip link add dev NAME type wireguard``;
"Unknown device type" or "Operation not supported" (EOPNOTSUPP) mean the kernel has no
WireGuard, so ``auto`` starts ``wireguard-go`` instead and ``kernel`` fails naming the
module. Either way the interface is then configured by the same ``wg setconf`` (``wg``
talks netlink to a kernel interface and the UAPI socket to ``wireguard-go``), addressed
and set up. :func:`tear_down` gives the removal: ``ip link del dev NAME`` for both kinds
(``wireguard-go`` also ends when its interface goes; the adapter stops it in any case).
:func:`link_kind` tells the two kinds apart in ``ip -details -json link show``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import WgTunnelFailed, WgUnavailable, WgUsageError

AUTO, KERNEL, USERSPACE = "auto", "kernel", "userspace"
IMPLS = (AUTO, KERNEL, USERSPACE)
ENV = "DIDMESH_WG_IMPL"
#: what ``ip link add ... type wireguard`` says when the kernel has no WireGuard
_ABSENT = ("unknown device type", "operation not supported", "eopnotsupp",
           "not supported", "no such device")
MODULE_HINT = ("the kernel's WireGuard module 'wireguard' (Linux 5.6 or later has it: sudo "
               "modprobe wireguard; or use --wg-impl userspace or auto, which run "
               "wireguard-go)")


def choose(flag: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """``--wg-impl`` if given, else ``DIDMESH_WG_IMPL``, else ``auto``."""
    env = os.environ if env is None else env
    value = flag if flag is not None else env.get(ENV, "") or AUTO
    if value not in IMPLS:
        where = "--wg-impl" if flag is not None else ENV
        raise WgUsageError(f"{where} {value!r}: choose one of {', '.join(IMPLS)}")
    return value


def kernel_absent(stderr: str) -> bool:
    """True if a failed ``ip link add ... type wireguard`` says the kernel lacks it."""
    text = stderr.lower()
    return any(s in text for s in _ABSENT)


def link_kind(ip_json: str) -> str | None:
    """``kernel`` or ``userspace`` from ``ip -details -json link show dev NAME`` (a
    ``wireguard`` link, or the ``tun`` device of ``wireguard-go``); None if neither or
    unreadable."""
    try:
        links = json.loads(ip_json or "[]")
    except ValueError:
        return None
    if not isinstance(links, list) or not links or not isinstance(links[0], dict):
        return None
    info = links[0].get("linkinfo")
    kind = info.get("info_kind") if isinstance(info, dict) else None
    return {"wireguard": KERNEL, "tun": USERSPACE}.get(kind) if isinstance(kind, str) else None


@dataclass(frozen=True)
class Run:
    """Run ``argv`` (with ``stdin``), bounded; feed its return code and stderr back."""

    argv: tuple[str, ...]
    stdin: str | None = None


@dataclass(frozen=True)
class StartUserspace:
    """Start ``wireguard-go -f NAME`` and wait for its UAPI socket; feed back 0 or the
    failure text."""

    name: str


@dataclass(frozen=True)
class Up:
    """The interface is up, served by ``impl`` (``kernel`` or ``userspace``); ``note``
    says why, for the run's report."""

    impl: str
    note: str


Action = Run | StartUserspace | Up


class BringUp:
    """The bring-up of interface ``name`` with implementation ``impl`` (see module)."""

    def __init__(self, name: str, impl: str, setconf: str, addresses: tuple[str, str],
                 listen_port: int | None = None) -> None:
        if impl not in IMPLS:
            raise WgUsageError(f"WireGuard implementation {impl!r}: one of {', '.join(IMPLS)}")
        self.name, self.impl, self.setconf = name, impl, setconf
        self.addresses, self.listen_port = addresses, listen_port
        self.using: str | None = None  # the implementation once the link exists
        self.note = ""
        self._steps = self._configure()
        self._pending: Action | None = None
        self._state = "create"

    def _configure(self) -> list[Run]:
        v4, v6 = self.addresses
        return [Run(("wg", "setconf", self.name, "/dev/stdin"), self.setconf),
                Run(("ip", "address", "add", v4, "dev", self.name)),
                Run(("ip", "address", "add", v6, "dev", self.name, "nodad")),
                Run(("ip", "link", "set", "dev", self.name, "up"))]

    def next(self) -> Action:
        """The next action; the same one again until :meth:`result` is given."""
        if self._pending is not None:
            return self._pending
        if self._state == "create":
            if self.impl == USERSPACE:
                self._state, self.using = "userspace", USERSPACE
                self.note = "wireguard-go (--wg-impl userspace)"
                self._pending = StartUserspace(self.name)
            else:
                self._pending = Run(("ip", "link", "add", "dev", self.name, "type", "wireguard"))
        elif self._steps:
            self._pending = self._steps[0]
        else:
            assert self.using is not None
            self._state = "up"
            return Up(self.using, self.note)
        return self._pending

    def result(self, returncode: int, stderr: str = "") -> None:
        """What the action from :meth:`next` gave; raises if the bring-up cannot go on."""
        action, self._pending = self._pending, None
        if action is None:
            raise WgUsageError("BringUp.result without an action pending")
        err = stderr.strip()[-300:]
        if isinstance(action, StartUserspace):
            if returncode != 0:
                raise WgTunnelFailed(f"wireguard-go {self.name}: {err or 'did not start'}")
            self._state = "configure"
            return
        if self._state == "create":  # ip link add ... type wireguard
            if returncode == 0:
                self._state, self.using = "configure", KERNEL
                self.note = "kernel WireGuard" + (" (--wg-impl kernel)"
                                                  if self.impl == KERNEL else "")
                return
            if not kernel_absent(err):
                raise WgTunnelFailed(f"ip link add dev {self.name} type wireguard failed: {err}")
            if self.impl == KERNEL:
                raise WgUnavailable(
                    f"--wg-impl kernel cannot run here; missing: {MODULE_HINT} (ip link add "
                    f"says: {err})")
            self._state, self.using = "userspace", USERSPACE
            self.note = f"wireguard-go (the kernel has no WireGuard: {err})"
            self._pending = StartUserspace(self.name)
            return
        step = self._steps.pop(0)
        if returncode == 0:
            return
        if step.argv[:2] == ("wg", "setconf") and "Address already in use" in err:
            raise WgTunnelFailed(
                f"UDP port {self.listen_port} (your announced endpoint's port) is in use on "
                "this machine, by another program or another session's tunnel")
        raise WgTunnelFailed(f"{' '.join(step.argv[:4])} failed: {err}")


def tear_down(name: str) -> list[Run]:
    """The commands that remove interface ``name``, of either kind (routes and addresses
    go with the link; ``wireguard-go`` ends when its interface is deleted)."""
    return [Run(("ip", "link", "del", "dev", name))]
