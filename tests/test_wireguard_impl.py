"""Kernel WireGuard or ``wireguard-go`` (session/wireguard/impl.py, preflight.py, tunnel.py;
specs/wireguard.md, "Kernel or user space").

What runs for real here (root, a network namespace of the test's own; this machine's
kernel has no WireGuard module): ``auto`` falls back to ``wireguard-go`` on the real
``ip``'s "Unknown device type" and the interface comes up and goes; ``--wg-impl kernel``
(and ``DIDMESH_WG_IMPL=kernel``) stops ``didmesh run`` before anything exists, in one
``didmesh:`` line naming the module; the leftover of a killed run is recognised by its
kind and removed.

What cannot run here is the kernel branch's own bring-up: its command sequence is checked
on the sans-IO :class:`BringUp` (the commands it yields for each answer), not against a
kernel. The ``ip -json`` sample of a kernel link below is written by hand in iproute2's
format; the ``tun`` one was printed by ``ip -details -json link show`` for a real
``wireguard-go`` interface.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from didmesh.session.wireguard import impl, preflight
from didmesh.session.wireguard.errors import WgTunnelFailed, WgUnavailable, WgUsageError
from didmesh.session.wireguard.impl import BringUp, Run, StartUserspace, Up
from didmesh.session.wireguard.testing import available

ABSENT = "Error: Unknown device type."  # what this machine's ip says
SETCONF = "[Interface]\nPrivateKey = x\n"
ADDRS = ("10.99.0.1/22", "fd00::1/64")


# --------------------------------------------------------------------------- choice


@pytest.mark.parametrize(("flag", "env", "want"), [
    (None, {}, "auto"),
    (None, {"DIDMESH_WG_IMPL": ""}, "auto"),
    (None, {"DIDMESH_WG_IMPL": "kernel"}, "kernel"),
    ("userspace", {"DIDMESH_WG_IMPL": "kernel"}, "userspace"),  # the flag wins
    ("kernel", {}, "kernel"),
])
def test_the_flag_then_the_environment_then_auto(flag: str | None, env: dict[str, str],
                                                 want: str) -> None:
    assert impl.choose(flag, env) == want


@pytest.mark.parametrize(("flag", "env", "names"), [
    (None, {"DIDMESH_WG_IMPL": "kernal"}, "DIDMESH_WG_IMPL 'kernal'"),
    ("go", {}, "--wg-impl 'go'"),
])
def test_an_unknown_choice_is_refused_by_name(flag: str | None, env: dict[str, str],
                                              names: str) -> None:
    with pytest.raises(WgUsageError, match=names):
        impl.choose(flag, env)


@pytest.mark.parametrize(("stderr", "absent"), [
    (ABSENT, True),
    ("RTNETLINK answers: Operation not supported", True),
    ("Error: EOPNOTSUPP", True),
    ("RTNETLINK answers: Operation not permitted", False),
    ("RTNETLINK answers: File exists", False),
    ("", False),
])
def test_which_failures_mean_no_kernel_wireguard(stderr: str, absent: bool) -> None:
    assert impl.kernel_absent(stderr) is absent


TUN_LINK = ('[{"ifindex":2,"ifname":"wgcap0","flags":["POINTOPOINT","MULTICAST","NOARP"],'
            '"mtu":1420,"linkinfo":{"info_kind":"tun","info_data":{"type":"tun","pi":true,'
            '"vnet_hdr":false,"multi_queue":false,"persist":false}}}]')
KERNEL_LINK = ('[{"ifindex":3,"ifname":"dmab12cd34p0","flags":["POINTOPOINT","NOARP","UP"],'
               '"mtu":1420,"linkinfo":{"info_kind":"wireguard"}}]')


@pytest.mark.parametrize(("text", "kind"), [
    (TUN_LINK, "userspace"), (KERNEL_LINK, "kernel"),
    ('[{"ifname":"eth0"}]', None), ('[{"linkinfo":{"info_kind":"veth"}}]', None),
    ("", None), ("not json", None), ("[]", None), ('{"a":1}', None),
], ids=["tun", "wireguard", "no-linkinfo", "veth", "empty", "garbage", "none", "object"])
def test_the_kind_of_a_link(text: str, kind: str | None) -> None:
    assert impl.link_kind(text) == kind


# --------------------------------------------------------------------------- BringUp


def _drive(plan: BringUp, answers: dict[str, tuple[int, str]]) -> list[object]:
    """Run the plan to its end; ``answers`` by the first words of a command (default 0)."""
    seen: list[object] = []
    for _ in range(20):
        action = plan.next()
        seen.append(action)
        if isinstance(action, Up):
            return seen
        if isinstance(action, StartUserspace):
            plan.result(*answers.get("wireguard-go", (0, "")))
        else:
            assert isinstance(action, Run)
            key = " ".join(action.argv[:3])
            plan.result(*answers.get(key, (0, "")))
    raise AssertionError("no end")


CONFIGURE = [
    Run(("wg", "setconf", "dmx", "/dev/stdin"), SETCONF),
    Run(("ip", "address", "add", ADDRS[0], "dev", "dmx")),
    Run(("ip", "address", "add", ADDRS[1], "dev", "dmx", "nodad")),
    Run(("ip", "link", "set", "dev", "dmx", "up")),
]
LINK_ADD = Run(("ip", "link", "add", "dev", "dmx", "type", "wireguard"))


@pytest.mark.parametrize(("choice", "answers", "want", "using"), [
    ("auto", {}, [LINK_ADD, *CONFIGURE], "kernel"),
    ("kernel", {}, [LINK_ADD, *CONFIGURE], "kernel"),
    ("auto", {"ip link add": (2, ABSENT)}, [LINK_ADD, StartUserspace("dmx"), *CONFIGURE],
     "userspace"),
    ("userspace", {}, [StartUserspace("dmx"), *CONFIGURE], "userspace"),
], ids=["auto-kernel", "kernel", "auto-fallback", "userspace"])
def test_the_commands_of_each_bring_up(choice: str, answers: dict[str, tuple[int, str]],
                                       want: list[object], using: str) -> None:
    plan = BringUp("dmx", choice, SETCONF, ADDRS, 51820)
    seen = _drive(plan, answers)
    assert seen[:-1] == want
    end = seen[-1]
    assert isinstance(end, Up) and end.impl == using == plan.using
    if choice == "auto" and using == "userspace":
        assert "the kernel has no WireGuard: Error: Unknown device type." in end.note
    assert impl.tear_down("dmx") == [Run(("ip", "link", "del", "dev", "dmx"))]


def test_kernel_insisted_on_but_absent_names_the_module() -> None:
    plan = BringUp("dmx", "kernel", SETCONF, ADDRS)
    assert plan.next() == LINK_ADD
    with pytest.raises(WgUnavailable, match="--wg-impl kernel cannot run here; missing: the "
                       "kernel's WireGuard module 'wireguard'") as err:
        plan.result(2, ABSENT)
    assert "sudo modprobe wireguard" in err.value.message
    assert "Unknown device type" in err.value.message


@pytest.mark.parametrize(("choice", "failing", "answer", "phrase"), [
    ("auto", "ip link add", (2, "RTNETLINK answers: File exists"), "File exists"),
    ("auto", "wg setconf dmx", (1, "Unable to modify interface: Address already in use"),
     "UDP port 51820 (your announced endpoint's port) is in use"),
    ("kernel", "ip address add", (2, "RTNETLINK answers: Permission denied"),
     "ip address add 10.99.0.1/22 failed: RTNETLINK answers: Permission denied"),
    ("userspace", "wireguard-go", (1, "exited: bad things"), "wireguard-go dmx: exited"),
], ids=["link-exists-no-fallback", "port-in-use", "address", "wireguard-go"])
def test_a_failed_step_stops_the_bring_up_by_name(choice: str, failing: str,
                                                  answer: tuple[int, str],
                                                  phrase: str) -> None:
    plan = BringUp("dmx", choice, SETCONF, ADDRS, 51820)
    with pytest.raises(WgTunnelFailed) as err:
        _drive(plan, {failing: answer})
    assert phrase in err.value.message


def test_bring_up_misuse() -> None:
    with pytest.raises(WgUsageError):
        BringUp("dmx", "both", SETCONF, ADDRS)
    plan = BringUp("dmx", "auto", SETCONF, ADDRS)
    with pytest.raises(WgUsageError):
        plan.result(0)  # nothing asked yet
    assert plan.next() == plan.next() == LINK_ADD  # the same action until answered


# --------------------------------------------------------------------------- preflight


def _which(*gone: str) -> object:
    return lambda tool: None if tool in gone else f"/usr/bin/{tool}"


def _probe(answer: str | None) -> object:
    calls: list[int] = []

    def probe() -> str | None:
        calls.append(1)
        return answer
    probe.calls = calls  # type: ignore[attr-defined]
    return probe


@pytest.mark.parametrize(("choice", "gone", "kernel", "want", "probed"), [
    ("kernel", ("wireguard-go",), None, [], True),
    ("kernel", (), ABSENT, ["module 'wireguard'"], True),
    ("auto", ("wireguard-go",), None, [], True),
    ("auto", ("wireguard-go",), ABSENT, ["the wireguard-go program"], True),
    ("auto", (), ABSENT, [], False),  # wireguard-go is there: no need to ask the kernel
    ("userspace", ("wireguard-go",), None, ["the wireguard-go program"], False),
])
def test_what_each_choice_needs(choice: str, gone: tuple[str, ...], kernel: str | None,
                                want: list[str], probed: bool) -> None:
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        pytest.skip("needs root (CAP_NET_ADMIN) and /dev/net/tun")
    probe = _probe(kernel)
    gaps = preflight.missing(which=_which(*gone), impl=choice, probe=probe)  # type: ignore[arg-type]
    assert len(gaps) == len(want), gaps
    for gap, phrase in zip(gaps, want, strict=True):
        assert phrase in gap
    assert bool(probe.calls) is probed  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- for real

_WHY = available()
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "secure_sum.py"


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"dmi{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


def _kernel_has_wireguard(ns: str) -> bool:
    res = subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "add", "dev", "dmkt",
                          "type", "wireguard"], capture_output=True, text=True, timeout=10)
    return res.returncode == 0


UP_THEN = """
import json, os, sys
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.wireguard.config import build_config
from didmesh.session.wireguard.tunnel import Tunnel, find_leftover
plans, _ = loopback_plans(2, endpoints=False, session_id=sys.argv[1])
t = Tunnel(build_config(plans[0], listen_port=int(sys.argv[2]), keepalive=None),
           impl=sys.argv[3])
try:
    t.up()
    left = find_leftover(t.name)
    print(json.dumps({"name": t.name, "using": t.using, "note": t.note, "kind": left.kind,
                      "state": left.state["using"], "wg": len(left.wireguard_go)}), flush=True)
    if sys.argv[4] == "crash":
        os._exit(9)  # no teardown: the state file stays behind
finally:
    t.down()
print(json.dumps({"after": bool(find_leftover(t.name))}), flush=True)
"""


def _up(ns: str, state: Path, *args: str) -> tuple[int, list[dict[str, object]], str]:
    env = {**os.environ, "DIDMESH_WG_STATE_DIR": str(state)}
    res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", UP_THEN, *args],
                         capture_output=True, text=True, timeout=60, env=env)
    return res.returncode, [json.loads(ln) for ln in res.stdout.splitlines()], res.stderr


@pytest.mark.netns
def test_auto_falls_back_to_wireguard_go_where_the_kernel_lacks_it(netns: str,
                                                                   tmp_path: Path) -> None:
    if _WHY is not None:
        pytest.skip(str(_WHY))
    if _kernel_has_wireguard(netns):
        pytest.skip("this kernel has WireGuard: the fallback cannot be seen here")
    sid = os.urandom(8).hex()
    code, out, err = _up(netns, tmp_path, sid, "51999", "auto", "clean")
    assert code == 0, err
    up, after = out
    assert up["using"] == up["kind"] == up["state"] == "userspace" and up["wg"] == 1, up
    assert "the kernel has no WireGuard: Error: Unknown device type." in str(up["note"])
    assert after == {"after": False}
    links = subprocess.run(["ip", "netns", "exec", netns, "ip", "-o", "link"],
                           capture_output=True, text=True, timeout=10).stdout
    assert str(up["name"]) not in links and not list(tmp_path.iterdir())


@pytest.mark.netns
def test_a_killed_runs_leftover_is_recognised_by_kind_and_swept(netns: str,
                                                                tmp_path: Path) -> None:
    """A run killed with its interface up leaves its state file (``wireguard-go`` ends 1 s after
    it); the sweep (``find_leftover`` + ``remove``, as the next run and ``didmesh wg down``
    do) names the kind and removes everything. A state file naming a kernel link is
    recognised as such (no kernel link can be made here)."""
    if _WHY is not None:
        pytest.skip(str(_WHY))
    from didmesh.session.wireguard import tunnel

    sid = os.urandom(8).hex()
    code, out, err = _up(netns, tmp_path, sid, "51998", "userspace", "crash")
    assert code == 9, err
    name = str(out[0]["name"])
    assert out[0]["note"] == "wireguard-go (--wg-impl userspace)"
    state = tmp_path / f"{name}.json"
    assert json.loads(state.read_text())["using"] == "userspace"
    sweep = f"""
import json, sys
from didmesh.session.wireguard.tunnel import find_leftover, remove
left = find_leftover({name!r})
print(json.dumps({{"kind": left.kind, "link": left.link, "any": bool(left)}}))
remove({name!r}, state=left.state)
print(json.dumps({{"any": bool(find_leftover({name!r}))}}))
"""
    env = {**os.environ, "DIDMESH_WG_STATE_DIR": str(tmp_path)}
    res = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", sweep],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    first, second = (json.loads(ln) for ln in res.stdout.splitlines())
    assert first["kind"] == "userspace" and first["any"], first
    assert second == {"any": False} and not state.exists()
    assert not tunnel.wireguard_go_pids(name)
    # a kernel link's state file (its run dead): recognised as kernel, removed
    kname = f"dm{sid[:8]}p7"
    (tmp_path / f"{kname}.json").write_text(json.dumps({
        "session": sid, "party": 7, "interface": kname, "impl": "kernel", "using": "kernel",
        "run_pid": 1 << 30, "run_start": 1, "wg_pid": None, "wg_start": None}))
    res = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c",
                          sweep.replace(repr(name), repr(kname))],
                         capture_output=True, text=True, timeout=60, env=env)
    first, second = (json.loads(ln) for ln in res.stdout.splitlines())
    assert first == {"kind": "kernel", "link": False, "any": True}
    assert second == {"any": False}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    from wg_helpers import invitee_home

    return invitee_home(tmp_path_factory.mktemp("wgimpl"), EXAMPLE)


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.netns
def test_kernel_insisted_on_fails_early_in_one_line_naming_the_module(
        how: str, netns: str, home: tuple[Path, str, Path]) -> None:
    if _WHY is not None:
        pytest.skip(str(_WHY))
    if _kernel_has_wireguard(netns):
        pytest.skip("this kernel has WireGuard")
    path, sid, program = home
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    env["DIDMESH_HOME"] = str(path)
    extra = ["--wg-impl", "kernel"] if how == "flag" else []
    if how == "env":
        env["DIDMESH_WG_IMPL"] = "kernel"
    res = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "didmesh.session.cli.main",
         "run", sid[:8], "--transport", "wireguard", *extra, "--", str(program)],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("didmesh: --transport wireguard --wg-impl kernel cannot run "
                               "here; missing: the kernel's WireGuard module 'wireguard'"), lines
    assert "Unknown device type" in lines[0] and "--wg-impl userspace" in lines[0]
    links = subprocess.run(["ip", "netns", "exec", netns, "ip", "-o", "link"],
                           capture_output=True, text=True, timeout=10).stdout
    assert len(links.splitlines()) == 1 and ": lo: " in links, links  # the probe left nothing


def test_wg_impl_without_the_wireguard_transport_is_refused(home: tuple[Path, str, Path]
                                                            ) -> None:
    path, sid, program = home
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    env["DIDMESH_HOME"] = str(path)
    res = subprocess.run(
        [sys.executable, "-m", "didmesh.session.cli.main", "run", sid[:8], "--wg-impl",
         "kernel", "--", str(program)],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == "didmesh: --wg-impl goes with --transport wireguard"
