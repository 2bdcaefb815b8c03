"""Bring one session's WireGuard interface up for a run and take it down again
(specs/wireguard.md, "Running over the tunnel").

:class:`Tunnel` is the adapter that owns everything the run sets up on the machine:

* the interface ``dm<session id[:8]>p<party id>`` (per session and party, so two sessions,
  or two parties of one session in two network namespaces, never share a name or the
  UAPI socket ``/var/run/wireguard/<name>.sock``): a kernel WireGuard link where the
  kernel has it, else (or with ``--wg-impl userspace``) served by ``wireguard-go -f`` in
  user space, started by a keeper (:mod:`.keeper`) that ends it with the run process: at
  once on an orderly teardown, :data:`KILLED_RUN_GRACE` s after the run if it is killed;
  the commands and the choice are :class:`.impl.BringUp`'s (sans-IO), run here;
* its configuration, given to ``wg setconf <name> /dev/stdin`` (no config file is written;
  ``wg`` speaks netlink to a kernel link and UAPI to ``wireguard-go``);
* its two addresses, the session's /22 and /64 (routes come with them and go with the
  link);
* a state file ``/run/didmesh/wg/<name>.json`` (pid and start time of the run process and
  of ``wireguard-go``'s keeper, and which implementation serves the link), by which the
  next run or ``didmesh wg down`` finds and removes a leftover of a run that was killed: a
  kernel link outlives a killed run (nothing ends it), a ``wireguard-go`` one only by the
  keeper's grace.

Before anything is created, an interface of another process with an address in the
session's ranges is refused (naming it), and a leftover of this session is removed.
Every command and wait is bounded.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import _IFACE_RE, DEFAULT_KEEPALIVE, WgConfig
from .errors import WgTunnelFailed
from .impl import AUTO, BringUp, Run, StartUserspace, Up, link_kind, tear_down
from .keys import encode_key
from .paths import endpoint_choice
from .render import render_setconf

UAPI_DIR = Path("/var/run/wireguard")
STATE_DIR = Path(os.environ.get("DIDMESH_WG_STATE_DIR", "/run/didmesh/wg"))
#: a UDP port nothing listens on: datagrams to a peer's tunnel address there only make
#: WireGuard start a handshake
POKE_PORT = 9
#: seconds ``wireguard-go`` outlives a killed run (:mod:`.keeper`): the kernel's FIN or RST
#: for the run's connections get through the tunnel, so its peers see them close at once
KILLED_RUN_GRACE = 1.0
KEEPER = Path(__file__).with_name("keeper.py")


def run_interface(session_id: str, party_id: int) -> str:
    """``dm`` + the session id's first 8 characters + ``p`` + the party id (<= 15)."""
    name = f"dm{session_id[:8]}p{party_id}"
    if not _IFACE_RE.match(name):
        raise WgTunnelFailed(f"session {session_id[:12]!r}, party {party_id}: no interface name")
    return name


def _cmd(*cmd: str, timeout: float = 10, input: str | None = None, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise WgTunnelFailed(f"{' '.join(cmd[:3])} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise WgTunnelFailed(f"cannot run {cmd[0]}: {exc.strerror}") from None
    if check and res.returncode != 0:
        raise WgTunnelFailed(f"{' '.join(cmd[:4])} failed: {res.stderr.strip()[-300:]}")
    return res


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (pid reuse check), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def is_alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and _start_time(pid) == start


def _netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def wireguard_go_pids(*names: str) -> list[int]:
    """Pids of ``wireguard-go`` processes serving one of interfaces ``names`` (any namespace)."""
    wanted = {name.encode() for name in names}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"wireguard-go") and not wanted.isdisjoint(argv[1:]):
            found.append(int(entry.name))
    return found


def _owner_of_addresses(cfg: WgConfig, skip: str) -> str | None:
    """The interface (not ``skip``) that holds an address in the session's ranges."""
    out = _cmd("ip", "-j", "address", "show", check=False).stdout
    try:
        links = json.loads(out or "[]")
    except ValueError:
        return None
    for link in links:
        if link.get("ifname") == skip:
            continue
        for a in link.get("addr_info", []):
            try:
                addr = ipaddress.ip_address(a.get("local", ""))
            except ValueError:
                continue
            if any(addr in net for net in cfg.networks if addr.version == net.version):
                return f"{link.get('ifname')} ({addr})"
    return None


def interface_kind(name: str) -> str | None:
    """``kernel`` (a WireGuard link) or ``userspace`` (``wireguard-go``'s tun device)."""
    res = _cmd("ip", "-details", "-json", "link", "show", "dev", name, check=False)
    return link_kind(res.stdout) if res.returncode == 0 else None


@dataclass
class Leftover:
    interface: str
    state: dict[str, Any] | None
    wireguard_go: list[int]
    link: bool
    #: ``kernel`` or ``userspace``: what serves the link (the link's own kind first, else
    #: what the state file says), None if unknown
    kind: str | None = None

    def __bool__(self) -> bool:
        return bool(self.state or self.wireguard_go or self.link
                    or (UAPI_DIR / f"{self.interface}.sock").exists())


def find_leftover(name: str) -> Leftover:
    state = None
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((STATE_DIR / f"{name}.json").read_text())
    link = link_exists(name)
    kind = interface_kind(name) if link else None
    if kind is None and state:
        kind = state.get("using")
    return Leftover(name, state, wireguard_go_pids(name), link, kind)


def remove(name: str, *, state: dict[str, Any] | None = None, timeout: float = 5.0) -> None:
    """Remove everything of interface ``name``: its ``wireguard-go``, the link (in this
    network namespace), the UAPI socket and the state file. Safe to repeat."""
    pids = set(wireguard_go_pids(name))
    if state and is_alive(state.get("wg_pid"), state.get("wg_start")):
        pids.add(int(state["wg_pid"]))
    _delete_link(name)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p}").exists() and _start_time(p) is not None and
              _zombie(p) is False for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if _zombie(pid) is False:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        (UAPI_DIR / f"{name}.sock").unlink()
    with contextlib.suppress(OSError):
        (STATE_DIR / f"{name}.json").unlink()
    if link_exists(name):
        raise WgTunnelFailed(f"interface {name} is still there after removing it; "
                             f"remove it by hand: sudo ip link del {name}")


def _delete_link(name: str) -> None:
    """Delete the interface, of either kind, if it is there."""
    if link_exists(name):
        for step in tear_down(name):
            _cmd(*step.argv, check=False)


def _zombie(pid: int) -> bool | None:
    """None: gone; True: a zombie (dead, not yet reaped); False: running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0] == "Z"


class Tunnel:
    """One party's WireGuard interface for one run. ``up()``, ``wait_handshakes()``, and
    ``down()`` in a ``finally`` (``down()`` is idempotent)."""

    def __init__(self, cfg: WgConfig, *, report: Callable[[str], None] = lambda _: None,
                 impl: str = AUTO) -> None:
        self.cfg = cfg
        self.name = run_interface(cfg.session_id, cfg.party_id)
        self.report = report
        self.impl = impl
        #: what serves the interface once up (``kernel`` or ``userspace``), and why
        self.using: str | None = None
        self.note = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._touched = False

    @property
    def address(self) -> str:
        return str(self.cfg.addresses.ipv4)

    # ------------------------------------------------------------------ bring-up

    def clear_leftover(self) -> None:
        """Remove a leftover of a killed run of this session and party; refuse if a live
        run still holds the interface."""
        left = find_leftover(self.name)
        if not left:
            return
        st = left.state or {}
        run_pid = st.get("run_pid")
        if is_alive(run_pid, st.get("run_start")) and run_pid != os.getpid():
            raise WgTunnelFailed(
                f"interface {self.name} is in use by another didmesh run (pid "
                f"{st['run_pid']}); wait for it, or stop it first")
        if left.state is None and left.link:
            raise WgTunnelFailed(
                f"interface {self.name} exists and was not set up by didmesh run; remove it "
                f"with: didmesh wg down {self.cfg.session_id[:8]}")
        what = [w for w, there in ((f"{left.kind or ''} interface".strip(), left.link),
                                   ("wireguard-go",
                left.wireguard_go), ("state file", left.state)) if there]
        self.report(f"removing what a stopped run left behind: {self.name} "
                    f"({', '.join(what) or 'socket'})")
        remove(self.name, state=left.state)

    def up(self, timeout: float = 10.0) -> None:
        self.clear_leftover()
        other = _owner_of_addresses(self.cfg, self.name)
        if other is not None:
            raise WgTunnelFailed(
                f"the session's tunnel range {self.cfg.networks[0]} is already used by "
                f"interface {other} on this machine; take that down first")
        self._touched = True
        STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write_state()  # before anything exists: a crash from here on is found
        plan = BringUp(self.name, self.impl, render_setconf(self.cfg),
                       self.cfg.interface_addresses(), self.cfg.listen_port)
        while True:
            action = plan.next()
            if isinstance(action, Up):
                self.using, self.note = action.impl, action.note
                return
            if isinstance(action, StartUserspace):
                err = self._start_wireguard_go(timeout)
                plan.result(1 if err else 0, err)
            else:
                assert isinstance(action, Run)
                res = _cmd(*action.argv, input=action.stdin, check=False)
                plan.result(res.returncode, res.stderr)
            if plan.using != self.using:
                self.using = plan.using
                self._write_state()

    def _start_wireguard_go(self, timeout: float) -> str:
        """Start ``wireguard-go`` for the interface, under its keeper; "" once its UAPI
        socket is there, else what went wrong."""
        env = {**os.environ, "LOG_LEVEL": "error",
               "WG_PROCESS_FOREGROUND": "1"}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(KEEPER), str(os.getpid()),
                 f"{KILLED_RUN_GRACE:g}", "wireguard-go", "-f", self.name],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, env=env, start_new_session=True,
            )
        except OSError as exc:
            return f"cannot start wireguard-go: {exc.strerror}"
        self._write_state()
        sock = UAPI_DIR / f"{self.name}.sock"
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr \
                    else ""
                return f"exited: {err.strip()[-300:]}"
            if time.monotonic() > deadline:
                return f"did not open its socket within {timeout:g} s"
            time.sleep(0.02)
        return ""

    def _write_state(self) -> None:
        pid = self._proc.pid if self._proc is not None else None
        doc = {"session": self.cfg.session_id, "party": self.cfg.party_id,
               "interface": self.name, "netns": _netns(), "impl": self.impl,
               "using": self.using,
               "run_pid": os.getpid(), "run_start": _start_time(os.getpid()),
               "wg_pid": pid, "wg_start": _start_time(pid) if pid else None}
        path = STATE_DIR / f"{self.name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)

    def latest_handshakes(self) -> dict[int, int]:
        """Party id -> time of its latest handshake (0: none yet)."""
        out = _cmd("wg", "show", self.name, "latest-handshakes").stdout
        by_key = {encode_key(p.public_key): p.party_id for p in self.cfg.peers}
        shakes: dict[int, int] = {}
        for line in out.splitlines():
            key, _, when = line.partition("\t")
            if key in by_key and when.strip().isdigit():
                shakes[by_key[key]] = int(when)
        return shakes

    def endpoints(self) -> dict[int, str]:
        """Party id -> the UDP endpoint WireGuard uses for it now (learned or configured)."""
        out = _cmd("wg", "show", self.name, "endpoints").stdout
        by_key = {encode_key(p.public_key): p.party_id for p in self.cfg.peers}
        found: dict[int, str] = {}
        for line in out.splitlines():
            key, _, where = line.partition("\t")
            if key in by_key and where.strip() not in ("", "(none)"):
                found[by_key[key]] = where.strip()
        return found

    def set_peer(self, party_id: int, endpoint: str | None = None,
                 keepalive: int | None = DEFAULT_KEEPALIVE) -> None:
        """``wg set``: the peer's endpoint and persistent keepalive. Turning the keepalive
        on sends one at once (a handshake initiation if there is no session yet)."""
        peer = next(p for p in self.cfg.peers if p.party_id == party_id)
        args = ["endpoint", endpoint] if endpoint else []
        if keepalive:
            args += ["persistent-keepalive", str(keepalive)]
        _cmd("wg", "set", self.name, "peer", encode_key(peer.public_key), *args)

    def wait_handshakes(self, timeout: float, describe: Callable[[int], str] = str,
                        candidates: dict[int, list[str]] | None = None,
                        deferred: frozenset[int] = frozenset()) -> float:
        """Wait until a handshake with every peer has completed; the seconds it took.
        Datagrams to the peers' tunnel addresses make WireGuard initiate (where it knows
        the peer's endpoint).

        A peer in ``candidates`` (best first; configured with no endpoint and no
        keepalive) gets them in turn (:func:`.paths.endpoint_choice`), each with the
        keepalive, which makes WireGuard initiate at once; a ``deferred`` peer (it
        initiates to us) only after a grace period. Such a peer is not poked before it
        has an endpoint (WireGuard would count a failed initiation and hold the next one
        back 5 s). Once a peer's handshake is in, it gets the keepalive if it has none.
        Raises naming the peers not reached."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last_poke = 0.0
        candidates = candidates or {}
        current: dict[int, int | None] = dict.fromkeys(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while True:
                shakes = self.latest_handshakes()
                waiting = [p for p in self.cfg.peers if not shakes.get(p.party_id)]
                if not waiting:
                    for pid, chosen in current.items():  # answered only: keepalive too
                        if chosen is None:
                            with contextlib.suppress(WgTunnelFailed, StopIteration):
                                self.set_peer(pid)
                    return time.monotonic() - t0
                now = time.monotonic()
                if now > deadline:
                    break
                poke_now = now - last_poke >= 1.0
                for p in waiting:
                    if p.party_id not in candidates:
                        continue
                    options = candidates[p.party_id]
                    want = endpoint_choice(now - t0, len(options), p.party_id in deferred)
                    if want is not None and want != current[p.party_id]:
                        current[p.party_id] = want
                        with contextlib.suppress(WgTunnelFailed):
                            self.set_peer(p.party_id, options[want])
                if poke_now:
                    last_poke = now
                    for p in waiting:
                        if p.party_id in candidates and current[p.party_id] is None:
                            continue
                        with contextlib.suppress(OSError):
                            s.sendto(b"didmesh", (str(p.addresses.ipv4), POKE_PORT))
                time.sleep(0.05)
        names = []
        for p in waiting:
            tried_here = candidates.get(p.party_id) or ([p.endpoint] if p.endpoint else [])
            how = f"tried {', '.join(tried_here)}" if tried_here else "no endpoint known; it " \
                "must reach this party"
            names.append(f"{describe(p.party_id)} ({how})")
        raise WgTunnelFailed(
            f"no WireGuard handshake within {timeout:g} s with: {'; '.join(names)}. Check "
            "that UDP reaches them (firewall, NAT), or use the default transport, which can "
            "relay")

    # ------------------------------------------------------------------ teardown

    def down(self) -> None:
        """Take everything down (idempotent). Raises only if the link survives."""
        if not self._touched:
            return
        proc, self._proc = self._proc, None
        try:
            _delete_link(self.name)  # a kernel link, or wireguard-go's (it then ends)
            if proc is not None:
                if proc.poll() is None:
                    proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(5)
                if proc.stderr is not None:
                    proc.stderr.close()
        finally:  # whatever failed above, the socket and state file go, the link is checked
            remove(self.name)
            self._touched = False
