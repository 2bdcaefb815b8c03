"""``didmesh run --transport wireguard`` for real (issue 11; needs root, marked ``netns``):
three parties in network namespaces of a :class:`~didmesh.session.wireguard.testing.WgLab`
(namespaces only: didmesh itself starts ``wireguard-go``, configures and removes it) run
examples/secure_sum.py from a really agreed roster.

* the output equals plain MPyC's, every receipt names the transport ``wireguard``, and
  afterwards no interface, ``wireguard-go``, route, UAPI socket or state file remains;
* a party whose MPyC announces another party's id over the tunnel is refused and named;
* Ctrl-C and SIGTERM while waiting for handshakes, SIGKILL (the next run clears what is
  left), and a program crash all leave nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mpyc_helpers
import pytest
from didmesh.identity.keystore import Keystore
from didmesh.session.lab.lab import Lab
from didmesh.session.lab.lab import available as internet_available
from didmesh.session.lab.topology import Topology
from didmesh.session.testing import World
from didmesh.session.wireguard import load_plan, tunnel_addresses
from didmesh.session.wireguard.testing import UAPI_DIR, WgLab, available
from didmesh.session.wireguard.tunnel import run_interface, wireguard_go_pids
from wg_helpers import agreed_world

_WHY = available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_WHY is not None, reason=str(_WHY))]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "secure_sum.py"
PORTS = [51820 + i for i in range(3)]
NAT_PORTS = [51830 + i for i in range(3)]

# Loaded into a "rogue" party's interpreter: its MPyC client announces party id 1,
# whatever its own id is (a roster member claiming another member's id).
ROGUE = '''
import importlib.abc, importlib.machinery, sys
class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "mpyc.asyncoro":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        exec_module = spec.loader.exec_module
        def patched(module):
            exec_module(module)
            made = module.MessageExchanger.connection_made
            def connection_made(self, transport):
                if self.peer_pid is not None:
                    write = transport.writelines
                    def lie(parts):
                        parts = list(parts)
                        parts[0] = (1).to_bytes(2, "little")
                        write(parts)
                    transport.writelines = lie
                made(self, transport)
            module.MessageExchanger.connection_made = connection_made
        spec.loader.exec_module = patched
        return spec
sys.meta_path.insert(0, _Finder())
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("wgrun")
    program = root / "secure_sum.py"
    shutil.copy(EXAMPLE, program)
    w = asyncio.run(agreed_world(root, lambda i: f"tcp://10.215.0.{i + 1}:{PORTS[i]}",
                                 program=program))
    for p in w.parties:  # the CLI loads the identity from the party's home
        Keystore(w.root / p.name).create(passphrase=None, key=p.key)
    yield w


_labs = iter(range(1000))

#: the Internet lab: party 0 (it announces no endpoint) behind an endpoint-independent NAT,
#: parties 1 and 2 public hosts; one-way access-link delays of 5, 2 and 3 ms
NAT_TOPOLOGY = ["eim:h0:p0@5", "public:q1@2", "public:q2@3"]
NAT_NODES = ["p0", "q1", "q2"]


@pytest.fixture(scope="module")
def nat_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("wgnat")
    program = root / "secure_sum.py"
    shutil.copy(EXAMPLE, program)
    topo = Topology.parse(NAT_TOPOLOGY)
    w = asyncio.run(agreed_world(
        root, lambda i: f"tcp://{topo.public_address(NAT_NODES[i])}:{NAT_PORTS[i]}",
        program=program))
    for p in w.parties:
        Keystore(w.root / p.name).create(passphrase=None, key=p.key)
    yield w


@pytest.fixture
def lab() -> Iterator[WgLab]:
    with WgLab(3, prefix=f"dm{os.getpid() % 10000}r{next(_labs)}") as lab:
        yield lab


def names(world: World) -> list[str]:
    return [run_interface(world.sid, i) for i in range(3)]


def spawn(lab: WgLab | Lab, world: World, i: int, *extra: str,
          env: dict[str, str] | None = None, program: Path | None = None
          ) -> subprocess.Popen[str]:
    """Party ``i``'s ``didmesh run --transport wireguard`` in its lab node."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    full["DIDMESH_HOME"] = str(world.root / world.parties[i].name)
    full.update(env or {})
    cmd = [sys.executable, "-m", "didmesh.session.cli.main", "run", world.sid[:8],
           "--transport", "wireguard", "--handshake-timeout", "30", "--connect-timeout", "30",
           "--timeout", "10", *extra, "--", str(program or world.program), "--no-log"]
    popen: dict[str, Any] = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, env=full)
    if isinstance(lab, Lab):
        return lab.spawn(NAT_NODES[i], *cmd, text=True, **popen)
    return lab.spawn(i, *cmd, **popen)


def finish(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        out.append((p.returncode, o, e))
    return out


def assert_nothing_left(lab: WgLab | Lab, world: World) -> None:
    session_v4 = str(tunnel_addresses(bytes.fromhex(_roster_hash(world)), 0).ipv4)
    prefix = session_v4.rsplit(".", 2)[0]
    for i, name in enumerate(names(world)):
        node: Any = NAT_NODES[i] if isinstance(lab, Lab) else i
        links = lab.run(node, "ip", "-o", "link", "show")
        assert name not in links, links
        routes = lab.run(node, "ip", "route", "show") + lab.run(node, "ip", "-6", "route",
                                                                  "show")
        assert prefix not in routes and "fd" not in routes.split("fe80")[0], routes
        assert not wireguard_go_pids(name)
        assert not (UAPI_DIR / f"{name}.sock").exists()
        assert not Path("/run/didmesh/wg", f"{name}.json").exists()


def _roster_hash(world: World) -> str:
    return load_plan(world.parties[0].engine.store, world.sid).roster_hash.hex()


def plain_mpyc(program: Path) -> str:
    return mpyc_helpers.plain_mpyc(program, ["--no-log"], 3)[0]


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


# Samples party 1's namespace's TCP listeners on MPyC's port and the control port every
# few ms until stdin closes; prints the local addresses seen listening.
SAMPLER = """
import select, sys
seen = set()
while not select.select([sys.stdin], [], [], 0.003)[0]:
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[1].split(":")[1], 16) in (11365, 11366):
            a, port = f[1].split(":")
            ip = ".".join(str(b) for b in reversed(bytes.fromhex(a)))
            seen.add(f"{ip}:{int(port, 16)}")
for line in open("/proc/net/tcp6").read().splitlines()[1:]:
    f = line.split()
    if f[3] == "0A" and int(f[1].split(":")[1], 16) in (11365, 11366):
        seen.add("v6 " + f[1])
print(" ".join(sorted(seen)))
"""


# --------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_three_parties_run_over_wireguard_like_plain_mpyc(world: World, lab: WgLab) -> None:
    sampler = lab.spawn(1, sys.executable, "-c", SAMPLER, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)
    results = finish([spawn(lab, world, i) for i in range(3)])
    listening = sampler.communicate("", timeout=10)[0].split()
    assert [rc for rc, _, _ in results] == [0, 0, 0], [e[-2500:] for _, _, e in results]
    expected = plain_mpyc(world.program)
    assert "sum: 51" in expected
    assert [o for _, o, _ in results] == [expected] * 3
    for i, (_, _, err) in enumerate(results):
        assert "WireGuard handshakes with all peers complete" in err, err
        # --wg-impl auto: which WireGuard serves it, said (here: no kernel module)
        assert ("(kernel WireGuard)" in err
                or "(wireguard-go (the kernel has no WireGuard: " in err), err
        assert f"WireGuard interface {names(world)[i]} removed" in err, err
        receipt_path = err.rpartition("run complete; receipt: ")[2].split("\n")[0]
        receipt = json.loads(Path(receipt_path).read_text())
        claims = receipt["credentialSubject"]["claims"]
        assert claims["transport"] == "wireguard"
        peers = claims["bytesPerPeer"]
        assert len(peers) == 2 and all(v["sent"] > 0 and v["received"] > 0
                                       for v in peers.values()), peers
    # party 1 listened (for party 0) on its tunnel address only, never on another one
    me = str(tunnel_addresses(bytes.fromhex(_roster_hash(world)), 1).ipv4)
    assert listening and all(a.startswith(me + ":") for a in listening), listening
    assert_nothing_left(lab, world)


@pytest.mark.slow
def test_a_party_announcing_another_partys_id_over_the_tunnel_is_refused(
    world: World, lab: WgLab, tmp_path: Path
) -> None:
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    (rogue / "sitecustomize.py").write_text(ROGUE)
    env0 = {"PYTHONPATH": os.pathsep.join([str(rogue), *sys.path[1:]])}
    procs = [spawn(lab, world, 0, env=env0), spawn(lab, world, 1), spawn(lab, world, 2)]
    results = finish(procs)
    assert all(rc != 0 for rc, _, _ in results), [e[-1500:] for _, _, e in results]
    plan = load_plan(world.parties[0].engine.store, world.sid)
    rogue_addr = tunnel_addresses(plan.roster_hash, 0).ipv4
    for i in (1, 2):  # both servers refuse party 0's connection claiming id 1, and name it
        err = results[i][2]
        assert "Traceback" not in err, err
        assert f"refused an MPyC connection from {rogue_addr} (party 0" in err, err
        assert "that announced party id 1" in err, err
        assert err.strip().splitlines()[-1].startswith("didmesh: "), err
    assert all("sum" not in o for _, o, _ in results), results  # nothing was computed
    assert_nothing_left(lab, world)


@pytest.mark.slow
def test_interrupts_kill_and_crash_leave_nothing_behind(world: World, lab: WgLab) -> None:
    name = names(world)[1]

    def up(p: subprocess.Popen[str]) -> None:  # party 1 alone: it waits for handshakes
        wait_for(lambda: name in lab.run(1, "ip", "-o", "link", "show")
                 or p.poll() is not None, 20, "the interface comes up")
        assert p.poll() is None
        time.sleep(0.5)

    for sig in (signal.SIGINT, signal.SIGTERM):
        p = spawn(lab, world, 1)
        up(p)
        p.send_signal(sig)
        _, err = p.communicate(timeout=30)
        assert p.returncode != 0, err
        assert f"WireGuard interface {name} removed" in err, err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("didmesh:")
        assert_nothing_left(lab, world)

    # SIGKILL: wireguard-go ends 1 s after the run (its keeper's grace); the state file
    # that remains is cleared by the next run, which then completes
    p = spawn(lab, world, 1)
    up(p)
    p.kill()
    p.communicate(timeout=10)
    wait_for(lambda: not wireguard_go_pids(name), 10, "wireguard-go ends after its keeper's grace")
    assert Path("/run/didmesh/wg", f"{name}.json").exists()
    results = finish([spawn(lab, world, i) for i in range(3)])
    assert [rc for rc, _, _ in results] == [0, 0, 0], [e[-2000:] for _, _, e in results]
    assert f"removing what a stopped run left behind: {name}" in results[1][2]
    assert_nothing_left(lab, world)

    # a program crash (party 2's private input is not a number): everyone stops, cleanly
    crash = [spawn(lab, world, 0), spawn(lab, world, 1),
             spawn(lab, world, 2, "--input", "VALUE=not-a-number")]
    results = finish(crash)
    assert all(rc != 0 for rc, _, _ in results), [e[-1500:] for _, _, e in results]
    assert "ValueError" in results[2][2]
    for _, _, err in results[:2]:
        assert "party 2" in err.strip().splitlines()[-1], err[-1500:]
    assert_nothing_left(lab, world)

    # SIGKILL again, then `didmesh wg down SESSION` clears what is left (and says so)
    p = spawn(lab, world, 1)
    up(p)
    p.kill()
    p.communicate(timeout=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    env["DIDMESH_HOME"] = str(world.root / world.parties[1].name)
    for want in (f"removed {name}", f"nothing of {name} to remove"):
        down = subprocess.run(lab.exec(1, sys.executable, "-m", "didmesh.session.cli.main",
                                       "wg", "down", world.sid[:8]),
                              capture_output=True, text=True, timeout=30, env=env)
        assert down.returncode == 0 and want in down.stdout, (down.stdout, down.stderr)
    assert_nothing_left(lab, world)


@pytest.mark.slow
def test_a_party_with_another_program_starts_nothing_and_tells_the_others(
    world: World, lab: WgLab, tmp_path: Path
) -> None:
    changed = tmp_path / "secure_sum.py"
    changed.write_text(world.program.read_text() + "\n# changed\n")
    results = finish([spawn(lab, world, 0), spawn(lab, world, 1, program=changed),
                      spawn(lab, world, 2)])
    assert all(rc != 0 for rc, _, _ in results), [e[-1500:] for _, _, e in results]
    assert "secure_sum.py" in results[1][2].strip().splitlines()[-1]
    for i in (0, 2):  # told over the tunnel, by a signed abort, why nothing starts
        last = results[i][2].strip().splitlines()[-1]
        assert "party 1" in last and "its copy of the program differs" in last, last
    assert all("sum" not in o for _, o, _ in results)
    assert_nothing_left(lab, world)


@pytest.mark.slow
@pytest.mark.skipif(internet_available() is not None, reason=str(internet_available()))
def test_a_party_behind_a_nat_runs_over_wireguard_like_plain_mpyc(nat_world: World) -> None:
    """Party 0 sits behind an endpoint-independent NAT and announces no endpoint: it
    initiates to the public parties, which learn its mapped endpoint from the handshake."""
    with Lab(NAT_TOPOLOGY) as internet:
        results = finish([spawn(internet, nat_world, i) for i in range(3)])
        assert [rc for rc, _, _ in results] == [0, 0, 0], [e[-2500:] for _, _, e in results]
        expected = plain_mpyc(nat_world.program)
        assert [o for _, o, _ in results] == [expected] * 3
        home = Topology.parse(NAT_TOPOLOGY).public_address("h0")
        for i in (1, 2):  # the public parties reached party 0 at its NAT's public address
            assert f"party 0 at {home}:" in results[i][2], results[i][2]
        assert f"party 1 at {internet.public_address('q1')}:{NAT_PORTS[1]}" in results[0][2]
        assert_nothing_left(internet, nat_world)


TWO_TUNNELS = """
import json, subprocess, sys
from didmesh.session.store import SessionStore
from didmesh.session.wireguard import build_config, load_plan
from didmesh.session.wireguard.errors import WgTunnelFailed
from didmesh.session.wireguard.tunnel import Tunnel
cfgs = [build_config(load_plan(SessionStore(h), s)) for h, s in zip(sys.argv[1::2], sys.argv[2::2])]
out = {}
# another interface holding an address in the first session's range
other = str(cfgs[0].networks[0][200]) + "/32"
subprocess.run(["ip", "address", "add", other, "dev", "lo"], check=True)
try:
    Tunnel(cfgs[0]).up()
except WgTunnelFailed as exc:
    out["refused"] = exc.message
subprocess.run(["ip", "address", "del", other, "dev", "lo"], check=True)
tunnels = [Tunnel(c) for c in cfgs]
try:
    for t in tunnels:
        t.up()
    out["names"] = [t.name for t in tunnels]
    out["addrs"] = subprocess.run(["ip", "-j", "-4", "address", "show"], capture_output=True,
                                  text=True, check=True).stdout
finally:
    for t in tunnels:
        t.down()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_two_sessions_on_one_machine_do_not_collide(world: World, nat_world: World,
                                                    lab: WgLab) -> None:
    args = [a for w in (world, nat_world) for a in (str(w.root / w.parties[1].name), w.sid)]
    out = json.loads(lab.run(1, sys.executable, "-c", TWO_TUNNELS, *args, timeout=60))
    assert "already used by interface lo (" in out["refused"], out
    assert out["names"] == [run_interface(world.sid, 1), run_interface(nat_world.sid, 1)]
    addrs = {a["ifname"]: [i["local"] + "/" + str(i["prefixlen"]) for i in a["addr_info"]]
             for a in json.loads(out["addrs"])}
    ranges = [str(load_plan(w.parties[1].engine.store, w.sid).roster_hash.hex()) for w in
              (world, nat_world)]
    assert len(set(ranges)) == 2
    for w, name in zip((world, nat_world), out["names"], strict=True):
        mine = tunnel_addresses(load_plan(w.parties[1].engine.store, w.sid).roster_hash, 1)
        assert addrs[name] == [f"{mine.ipv4}/22"], addrs
    assert_nothing_left(lab, world)
    assert_nothing_left(lab, nat_world)
