"""What ``didmesh run --transport wireguard`` needs before it touches anything
(specs/wireguard.md, "Running over the tunnel"): CAP_NET_ADMIN over this network
namespace, a usable ``/dev/net/tun``, and the ``wireguard-go`` and ``wg`` binaries.

:func:`missing` is read-only: it changes nothing on the machine. A capability held in a
user namespace that does not own the network namespace (``unshare -U -r``) does not count,
because the kernel would refuse every ``ip link`` change; so the owner of the network
namespace is compared with this process's user namespace (``NS_GET_USERNS``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from pathlib import Path

from .errors import WgUnavailable

CAP_NET_ADMIN = 12
TUN = Path("/dev/net/tun")
_NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1), linux/nsfs.h
_NS_GET_PARENT = 0xB702


def _cap_eff(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _owns_netns() -> bool:
    """True if this process's user namespace is the network namespace's owner or one of
    the owner's ancestors (capabilities in it then reach the network namespace)."""
    try:
        mine = os.stat("/proc/self/ns/user")
        fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    except OSError:
        return True  # no nsfs to ask: let the capability bit decide
    try:
        try:
            owner = fcntl.ioctl(fd, _NS_GET_USERNS)
        except OSError as exc:  # EPERM: the owner lies outside this user namespace
            return exc.errno != errno.EPERM
        for _ in range(33):  # user namespaces nest at most 32 deep
            st = os.fstat(owner)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                os.close(owner)
                return True
            try:
                parent = fcntl.ioctl(owner, _NS_GET_PARENT)
            except OSError:  # the initial user namespace, or not ours to see
                os.close(owner)
                return False
            os.close(owner)
            owner = parent
        os.close(owner)
        return False
    finally:
        os.close(fd)


def missing(*, which: object = shutil.which) -> list[str]:
    """What is missing, each with how to get it; empty if the run can go ahead."""
    out: list[str] = []
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    if not _cap_eff(status) >> CAP_NET_ADMIN & 1 or not _owns_netns():
        out.append("the CAP_NET_ADMIN capability in this network namespace (run as root: "
                   "sudo didmesh run ..., or grant it: sudo setcap cap_net_admin+ep on the "
                   "python running didmesh)")
    if not TUN.exists():
        out.append(f"{TUN} (load the tun module: sudo modprobe tun; in a container: "
                   "--device /dev/net/tun)")
    else:
        try:
            fd = os.open(TUN, os.O_RDWR)
        except OSError as exc:
            out.append(f"access to {TUN} ({exc.strerror}; run as root or give the device)")
        else:
            with contextlib.suppress(OSError):
                os.close(fd)
    for tool, pkg in (("wireguard-go", "wireguard-go"), ("wg", "wireguard-tools"),
                      ("ip", "iproute2")):
        if which(tool) is None:  # type: ignore[operator]
            out.append(f"the {tool} program (install it: sudo apt-get install {pkg})")
    return out


def check() -> None:
    """Raise :class:`WgUnavailable` naming everything that is missing."""
    gaps = missing()
    if gaps:
        raise WgUnavailable(
            "--transport wireguard cannot run here; missing: " + "; ".join(gaps)
            + " (or use the default transport, which needs none of these)"
        )
