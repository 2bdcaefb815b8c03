"""Candidates gathered without flags, across the Internet lab (needs root; ``netns``).

Five people use the README's commands only (no ``--endpoint``, no path flag): alice and
bob share one home LAN behind an endpoint-independent NAT, pat is public, carol sits
behind another endpoint-independent NAT and dave behind a symmetric one. Each party's
signed acceptance (the organizer's session) announces its LAN address and its address as
the public relay observes it, on one port picked for the session; the run's table is what
the topology predicts — the LAN pair direct over the LAN, every initiator direct to the
public party, NATed homes punched, pairs that must dial into the symmetric NAT relayed
with the reason — and the run's output is right. ``--no-direct`` announces nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from didmesh.session.lab import Lab, available
from didmesh.session.lab.procs import finish
from didmesh.session.mesh.candidates import Candidate, host_candidates, order, usable

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "secure_sum.py"
_WHY = available()
netns = [pytest.mark.netns, pytest.mark.skipif(_WHY is not None, reason=str(_WHY))]


# ---------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("address", "ok"), [
    ("10.1.0.2", True), ("198.51.100.12", True), ("2001:db8::1", True),
    ("127.0.0.1", False), ("::1", False), ("169.254.3.4", False), ("fe80::1", False),
    ("0.0.0.0", False), ("224.0.0.1", False), ("nonsense", False),  # noqa: S104
])
def test_which_addresses_are_announced(address: str, ok: bool) -> None:
    assert usable(address) is ok


def test_candidates_are_ordered_host_first_deduplicated_and_capped() -> None:
    hosts = host_candidates([("lo", "127.0.0.1"), ("eth0", "10.1.0.2"), ("wg0", "10.9.0.1")],
                            4000)
    assert [c.endpoint for c in hosts] == ["tcp://10.1.0.2:4000", "tcp://10.9.0.1:4000"]
    seen = [Candidate("observed", "198.51.100.12", 4000, "http://r1"),
            Candidate("observed", "198.51.100.12", 4000, "http://r2"),
            Candidate("observed", "2001:db8::5", 4100, "http://r3")]
    got = order([*seen, *hosts])
    assert [c.endpoint for c in got] == [
        "tcp://10.1.0.2:4000", "tcp://10.9.0.1:4000", "tcp://198.51.100.12:4000",
        "tcp://[2001:db8::5]:4100"]
    many = [Candidate("host", f"10.0.0.{i}", 1, "x") for i in range(1, 20)]
    assert len(order(many)) == 8


# ---------------------------------------------------------------------- in the lab


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    return {**env, "DIDMESH_HOME": str(home), "PYTHONUNBUFFERED": "1"}


class People:
    def __init__(self, lab: Lab, root: Path) -> None:
        self.lab, self.root = lab, root

    def cli(self, node: str, who: str, *args: str, timeout: float = 60) -> Any:
        res = subprocess.run(
            self.lab.exec(node, sys.executable, "-m", "didmesh.session.cli.main", *args,
                          "--json"),
            capture_output=True, text=True, env=_env(self.root / who), timeout=timeout,
            stdin=subprocess.DEVNULL)
        assert res.returncode == 0, f"{who} {args}: {res.stderr[-1500:]}"
        return json.loads(res.stdout), res.stderr

    def spawn(self, node: str, who: str, *args: str) -> subprocess.Popen[str]:
        return self.lab.spawn(node, sys.executable, "-m", "didmesh.session.cli.main", *args,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(self.root / who), stdin=subprocess.DEVNULL)


PEOPLE = ("alice", "bob", "pat", "carol", "dave")


def _expected_path(lab: Lab, pid: dict[str, int], a: str, b: str) -> tuple[str, str]:
    """What the topology predicts for the pair ``a``-``b``: the path and a text its row shows."""
    lo, hi = sorted((a, b), key=pid.__getitem__)
    if {a, b} == {"alice", "bob"}:  # one home: direct over the LAN
        return "direct", f"{lab.address('bob' if hi == 'bob' else 'alice')}:"
    if hi == "pat":  # a public responder: every initiator dials it
        return "direct", f"{lab.address('pat')}:"
    if "dave" in (a, b):  # a symmetric NAT that must be dialled into: relayed, and why
        return "relay", f"relayed: symmetric NAT at party {pid['dave']}"
    return "punched", f"{lab.public_address(hi)}:"  # another home's NAT: a hole punched


@pytest.mark.slow
@netns[0]
@netns[1]
def test_readme_commands_give_each_pair_the_path_its_topology_predicts(tmp_path: Path) -> None:
    # alice, bob: one home LAN (endpoint-independent NAT); pat: public; carol: another EIM
    # home; dave: behind a symmetric NAT. Nothing but the README's commands, no path flag.
    topology = ["relay@2", "eim:h1:alice,bob@2", "public:pat@2", "eim:h2:carol@3",
                "sym:h3:dave@2"]
    with Lab(topology) as lab:
        url = lab.serve_relay(tmp_path / "relayhome", 8470, env=_env(tmp_path / "relayhome"))
        people = People(lab, tmp_path)
        dids = {w: people.cli(w, w, "id", "new", "--no-passphrase")[0]["did"] for w in PEOPLE}
        new, note = people.cli("alice", "alice", "session", "new", "--program", str(EXAMPLE),
                               "--parties", str(len(PEOPLE)), "--relay", url, "--name", "lab")
        sid = new["sessionId"]
        assert "announcing to the roster's parties" in note
        for w in PEOPLE[1:]:
            people.cli("alice", "alice", "contacts", "add", w, dids[w])
            people.cli("alice", "alice", "invite", sid, "--to", w)
        organizer = people.spawn("alice", "alice", "session", "wait", sid, "--timeout", "90")
        waits = []
        for w in PEOPLE[1:]:
            people.cli(w, w, "invites", "--relay", url)
            accepted, _ = people.cli(w, w, "accept", sid, "--yes")
            assert accepted["endpoints"] and accepted["endpoints"][0].startswith(
                f"tcp://{lab.address(w)}:")
            waits.append(people.spawn(w, w, "status", sid, "--wait", "--timeout", "90"))
        for code, _, err in finish([organizer, *waits], 90):
            assert code == 0, err[-1500:]
        view, _ = people.cli("carol", "carol", "session", "show", sid)
        announced = {p["did"]: p["endpoints"] for p in view["roster"]["parties"]}
        pid = {w: next(p["partyId"] for p in view["roster"]["parties"] if p["did"] == dids[w])
               for w in dids}
        for w in PEOPLE:
            eps = announced[dids[w]]
            ports = {int(e.rpartition(":")[2]) for e in eps}
            port = int(eps[0].rpartition(":")[2])  # the session port: its LAN address first
            if w == "pat":  # public: the relay sees the interface's own address and port
                assert eps == [f"tcp://{lab.address(w)}:{port}"], (w, eps)
            elif w == "dave":  # a symmetric NAT gives the relay's connection another port
                assert eps[0] == f"tcp://{lab.address(w)}:{port}" and len(ports) == 2, eps
                assert eps[1].startswith(f"tcp://{lab.public_address(w)}:"), eps
            else:  # its LAN address, then the home's public address with the same port
                assert eps == [f"tcp://{lab.address(w)}:{port}",
                               f"tcp://{lab.public_address(w)}:{port}"], (w, eps)
        runs = [people.spawn(w, w, "run", sid, "--timeout", "30", "--connect-timeout", "60",
                             "--", str(EXAMPLE), "--no-log") for w in PEOPLE]
        results = finish(runs, 150)
    for code, out, err in results:
        assert code == 0, err[-2500:]
        assert out.splitlines() == ["parties: 5", "sum: 135", "average: 27.0000"]
    err = results[0][2]
    table = [line for line in err.splitlines() if " <-> " in line]
    assert len(table) == 10, err
    name = {v: k for k, v in pid.items()}
    for line in table:
        ids = [int(x) for x in re.findall(r"party (\d+)\b", line)]
        a, b = name[ids[0]], name[ids[1]]
        path, shows = _expected_path(lab, pid, a, b)
        assert f"  {path} " in line and shows in line, (a, b, path, shows, line)


@netns[0]
@netns[1]
def test_no_direct_announces_nothing(tmp_path: Path) -> None:
    with Lab(["relay", "eim:h1:alice"]) as lab:
        url = lab.serve_relay(tmp_path / "relayhome", 8470, env=_env(tmp_path / "relayhome"))
        people = People(lab, tmp_path)
        people.cli("alice", "alice", "id", "new", "--no-passphrase")
        new, note = people.cli("alice", "alice", "session", "new", "--program", str(EXAMPLE),
                               "--parties", "2", "--relay", url, "--no-direct")
        assert "announcing no address" in note
        sessions = list((tmp_path / "alice" / "sessions").glob(f"{new['sessionId']}*"))
        assert sessions
        text = "".join(p.read_text(errors="replace") for p in sessions[0].rglob("*.json"))
        assert "10.1.0.2" not in text and lab.public_address("alice") not in text


async def test_gathering_with_relays_that_answer_fail_or_see_loopback() -> None:
    from didmesh.session.mesh.candidates import gather

    async def observe(url: str, port: int) -> tuple[str, int | None]:
        if "down" in url:
            raise OSError("connection refused")
        if "slow" in url:
            await asyncio.sleep(10)
        if "local" in url:
            return "127.0.0.1", port
        return "198.51.100.12", port

    got = await gather(
        ["http://relay.invalid/", "http://down.invalid/", "http://slow.invalid/",
         "http://local.invalid/"], observe, port=4242, timeout=0.3,
        addresses=[("lo", "127.0.0.1"), ("eth0", "10.1.0.2"), ("eth1", "10.7.0.9")])
    assert got.port == 4242
    assert got.endpoints == ["tcp://10.1.0.2:4242", "tcp://10.7.0.9:4242",
                             "tcp://198.51.100.12:4242"]
    assert len(got.notes) == 3 and any("down.invalid" in n for n in got.notes)
    nothing = await gather([], None, port=4242, addresses=[])
    assert nothing.endpoints == [] and nothing.notes == []
    local = await gather(["http://127.0.0.1:8470", "http://localhost:9"], observe, port=4242,
                         addresses=[("eth0", "10.1.0.2")])
    assert local.endpoints == ["tcp://127.0.0.1:4242"]  # a single-machine session
