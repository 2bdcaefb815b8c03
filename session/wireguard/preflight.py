"""What ``didmesh run --transport wireguard`` needs before it touches anything
(specs/wireguard.md, "Running over the tunnel"): CAP_NET_ADMIN over this network
namespace, the ``wg`` and ``ip`` programs, and a WireGuard: the kernel's (``--wg-impl
kernel``), or a usable ``/dev/net/tun`` and the ``wireguard-go`` program (``--wg-impl
userspace``), or either (``auto``, the default).

:func:`missing` changes nothing on the machine, but for one probe: where the kernel's
WireGuard must be known (``--wg-impl kernel``, or ``auto`` without ``wireguard-go``) and
``/sys/module/wireguard`` does not show it loaded, :func:`kernel_probe` creates a WireGuard
link with a throw-away name and deletes it at once (the only reliable test: the kernel may
load the module on demand). A capability held in a
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
import subprocess
from collections.abc import Callable
from pathlib import Path

from .errors import WgUnavailable
from .impl import AUTO, KERNEL, MODULE_HINT, USERSPACE, kernel_absent

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


def kernel_probe() -> str | None:
    """None if the kernel has WireGuard, else what ``ip link add`` said."""
    if Path("/sys/module/wireguard").exists():
        return None
    name = f"dmk{os.getpid() % 10**9}"
    try:
        res = subprocess.run(["ip", "link", "add", "dev", name, "type", "wireguard"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ip link add failed: {exc}"
    if res.returncode == 0:
        subprocess.run(["ip", "link", "del", "dev", name], capture_output=True, timeout=10)
        return None
    return res.stderr.strip()[-200:] or f"ip link add exited {res.returncode}"


def _userspace_gaps(which: Callable[[str], str | None]) -> list[str]:
    out: list[str] = []
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
    if which("wireguard-go") is None:
        out.append("the wireguard-go program (install it: sudo apt-get install wireguard-go)")
    return out


def _admin_gaps(which: Callable[[str], str | None]) -> list[str]:
    out: list[str] = []
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    if not _cap_eff(status) >> CAP_NET_ADMIN & 1 or not _owns_netns():
        out.append("the CAP_NET_ADMIN capability in this network namespace (run as root: "
                   "sudo didmesh run ..., or grant it: sudo setcap cap_net_admin+ep on the "
                   "python running didmesh)")
    for tool, pkg in (("wg", "wireguard-tools"), ("ip", "iproute2")):
        if which(tool) is None:
            out.append(f"the {tool} program (install it: sudo apt-get install {pkg})")
    return out


def missing(*, which: object = shutil.which, impl: str = AUTO,
            probe: Callable[[], str | None] = kernel_probe) -> list[str]:
    """What is missing for ``impl`` (``auto``, ``kernel``, ``userspace``), each with how to
    get it; empty if the run can go ahead. ``probe`` (None: the kernel has WireGuard, else
    why not) is asked only when the answer matters and CAP_NET_ADMIN and ``ip`` are there."""
    find: Callable[[str], str | None] = which  # type: ignore[assignment]
    out = _admin_gaps(find)
    can_probe = not out or all("the wg program" in g for g in out)
    if impl == USERSPACE:
        return out + _userspace_gaps(find)
    if impl == KERNEL:
        if can_probe:
            why = probe()
            if why is not None:
                said = f"; ip link add says: {why}" if kernel_absent(why) else f"; {why}"
                out.append(f"{MODULE_HINT}{said}")
        return out
    user = _userspace_gaps(find)
    if user and can_probe and probe() is None:
        return out  # auto: the kernel's WireGuard will do
    return out + user


def admin_missing(*, which: object = shutil.which) -> list[str]:
    """What removing an interface needs (``didmesh wg down``): CAP_NET_ADMIN and ``ip``."""
    find: Callable[[str], str | None] = which  # type: ignore[assignment]
    return [g for g in _admin_gaps(find) if "the wg program" not in g]


def check(impl: str = AUTO) -> None:
    """Raise :class:`WgUnavailable` naming everything that is missing for ``impl``."""
    gaps = missing(impl=impl)
    if gaps:
        what = "--transport wireguard" + (f" --wg-impl {impl}" if impl != AUTO else "")
        raise WgUnavailable(
            f"{what} cannot run here; missing: " + "; ".join(gaps)
            + " (or use the default transport, which needs none of these)"
        )


def check_admin() -> None:
    gaps = admin_missing()
    if gaps:
        raise WgUnavailable("cannot remove a WireGuard interface here; missing: "
                            + "; ".join(gaps))
