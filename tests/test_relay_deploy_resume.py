"""Issue 12's done-when for running computations behind the deployed relay: three
``didmesh run --relay-only`` processes relayed through the shipped nginx config
(relay/deploy/nginx-relay.conf) over https, with a private CA, to two relay processes on one
real Redis — and mid-run (a) the relay process carrying most link ends is SIGKILLed,
(b) Redis (persisting, as specs/relay.md section 13 requires) is restarted, (c) that process
is restarted (SIGTERM with a short drain, then started again). Each run completes with plain
MPyC's output. And (fast) new links go around a process draining for a restart. The
session flow and chaos timing are tests/test_mesh_relay_resume_cli.py's, the nginx and CA
set-up tests/test_relay_deploy.py's.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import cli_helpers
import pytest
import test_mesh_relay_resume_cli as resume_cli
from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from relay_helpers import (
    RelayProcess,
    redis_available,
    spawn_relay,
    start_redis,
    start_relay,
)
from tls_helpers import Pki, make_pki, start_nginx

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")

ARGS = [*resume_cli.ARGS, "--trusted-proxies", "127.0.0.1"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def trust_ca(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CLI command of the session flow trusts the private CA (DIDMESH_RELAY_CA)."""
    ca = {"DIDMESH_RELAY_CA": str(pki.ca)}
    real_run_cli, real_env_for = cli_helpers.run_cli, cli_helpers.env_for
    monkeypatch.setattr(cli_helpers, "run_cli", lambda home, *a, env=None, **kw: real_run_cli(
        home, *a, env={**(env or {}), **ca}, **kw))
    monkeypatch.setattr(cli_helpers, "env_for", lambda home: {**real_env_for(home), **ca})


class _Both:
    """The log lines of both relay processes (what _run_with_chaos counts pairings in)."""

    def __init__(self, *relays: RelayProcess) -> None:
        self.relays = relays

    def log_lines(self) -> list[dict[str, Any]]:
        return [ln for r in self.relays for ln in r.log_lines()]


def _check(results: list[tuple[int, str, str]], expected: str) -> None:
    for rc, out, err in results:
        assert rc == 0, err[-2500:]
        assert out == expected


@pytest.mark.slow
@pytest.mark.usefixtures("trust_ca")
def test_run_through_nginx_survives_sigkill_of_a_relay_process(pki: Pki, tmp_path: Path
                                                               ) -> None:
    program = resume_cli._program(tmp_path)
    with start_redis() as redis:
        url = redis.url(12)
        with start_relay(url, ARGS, home=tmp_path / "r") as p1, \
                start_relay(url, ARGS, home=tmp_path / "r") as p2, \
                start_nginx(tmp_path / "nginx", pki, [p1.port, p2.port]) as https:
            sid, homes, expected = resume_cli.agreed_and_expected(tmp_path, [https], program)
            procs = [p1, p2]
            before = [resume_cli._paired(p) for p in procs]
            killed: list[int] = []

            def new_ends(i: int) -> int:
                return resume_cli._paired(procs[i]) - before[i]

            def kill_the_busier() -> None:
                # nginx spreads links over both processes by their route: kill the one
                # holding more of this run's link ends (at least one of the six)
                killed.append(max((0, 1), key=new_ends))
                procs[killed[0]].kill()

            results = resume_cli._run_with_chaos(sid, homes, program, _Both(p1, p2),
                                                 kill_the_busier)
            survivor = 1 - killed[0]
            assert procs[survivor].alive()
            resumed, lost = new_ends(survivor), new_ends(killed[0])
    _check(results, expected)
    assert lost >= 1
    # the survivor's own ends, plus the killed process's ends back on it
    assert resumed >= 6


@pytest.mark.slow
@pytest.mark.usefixtures("trust_ca")
def test_run_through_nginx_survives_a_redis_restart(pki: Pki, tmp_path: Path) -> None:
    """Redis (append-only file, as the operator guide requires) is stopped and started again
    mid-run, down for 0.5 s: the run completes and both relay processes stay up."""
    program = resume_cli._program(tmp_path)
    with start_redis(persist=True) as redis:
        url = redis.url(12)
        with start_relay(url, ARGS, home=tmp_path / "r") as p1, \
                start_relay(url, ARGS, home=tmp_path / "r") as p2, \
                start_nginx(tmp_path / "nginx", pki, [p1.port, p2.port]) as https:
            sid, homes, expected = resume_cli.agreed_and_expected(tmp_path, [https], program)
            restarted: list[float] = []

            def restart() -> None:
                redis.restart(down_s=0.5)
                restarted.append(time.monotonic())

            results = resume_cli._run_with_chaos(sid, homes, program, _Both(p1, p2), restart)
            # let each process run its 5 s agreement check against the restarted Redis
            time.sleep(max(0.0, restarted[0] + 6 - time.monotonic()))
            assert p1.alive() and p2.alive()
            logs = _Both(p1, p2).log_lines()
    _check(results, expected)
    # Redis was really gone while the relays ran, and came back with the same secret and
    # relay id: no process found its peers disagreeing
    assert any("Error 111 connecting" in str(ln.get("msg")) for ln in logs)
    assert len({ln["relay_id"] for ln in logs if ln.get("msg") == "started"}) == 1
    assert not [ln for ln in logs if ln.get("level") in ("error", "critical")], logs


@pytest.mark.slow
@pytest.mark.usefixtures("trust_ca")
def test_run_through_nginx_survives_a_rolling_restart(pki: Pki, tmp_path: Path) -> None:
    """The process carrying most of the run's link ends gets SIGTERM (drain 0.5 s, so its
    links are cut mid-run with 1001) and is started again on its port: the links resume
    on the other process (nginx goes around the stopping one) and the run completes."""
    program = resume_cli._program(tmp_path)
    args = [*ARGS, "--drain-timeout-s", "0.5"]
    later: list[RelayProcess] = []
    with start_redis() as redis:
        url = redis.url(14)
        with start_relay(url, args, home=tmp_path / "r") as p1, \
                start_relay(url, args, home=tmp_path / "r") as p2, \
                start_nginx(tmp_path / "nginx", pki, [p1.port, p2.port]) as https:
            sid, homes, expected = resume_cli.agreed_and_expected(tmp_path, [https], program)
            procs = [p1, p2]
            before = [resume_cli._paired(p) for p in procs]
            stopped: list[int] = []

            def restart_the_busier() -> None:
                i = max((0, 1), key=lambda i: resume_cli._paired(procs[i]) - before[i])
                stopped.append(i)
                assert procs[i].terminate() == 0
                later.append(spawn_relay(url, [*args, "--port", str(procs[i].port)],
                                         home=tmp_path / "r"))

            try:
                results = resume_cli._run_with_chaos(sid, homes, program, _Both(p1, p2),
                                                     restart_the_busier)
                other = procs[1 - stopped[0]]
                cut = [ln for ln in procs[stopped[0]].log_lines()
                       if ln.get("msg") == "link end closed" and ln.get("code") == 1001]
                back = resume_cli._paired(other) - before[1 - stopped[0]] + \
                    resume_cli._paired(later[0])
            finally:
                for r in later:
                    r.proc.kill()
                    r.proc.wait(10)
    _check(results, expected)
    assert cut  # the drain's end cut running links
    assert back >= 6  # the other process's own ends plus the cut ones, resumed

def test_nginx_sends_links_around_a_draining_process(pki: Pki, tmp_path: Path) -> None:
    """A rolling restart: one of two processes got SIGTERM and drains (its running link goes
    on; new links get 503 ``shutting_down``). nginx (``proxy_next_upstream ... http_503``)
    sends every new or resumed link whose route hashes to it to the other process, so
    none fails while it drains."""
    a, b = IdentityKey.from_seed(b"d" * 32), IdentityKey.from_seed(b"e" * 32)
    with start_redis() as redis:
        url = redis.url(13)
        with start_relay(url, [*ARGS, "--drain-timeout-s", "30"]) as p1, \
                start_relay(url, ARGS) as p2, \
                start_nginx(tmp_path / "nginx", pki, [p1.port, p2.port]) as https:

            opened = [0]

            def paired() -> tuple[int, int]:
                return resume_cli._paired(p1), resume_cli._paired(p2)

            async def logged() -> tuple[int, int]:
                """Both relays' paired counts once every end opened so far is logged (a
                relay may log it after the client used and closed the link)."""
                deadline = time.monotonic() + 10
                while sum(now := paired()) < 2 * opened[0]:
                    assert time.monotonic() < deadline, f"{now} of {opened[0]} links logged"
                    await asyncio.sleep(0.05)
                return now

            async def link(ca: RelayClient, cb: RelayClient, link_id: str) -> Any:
                la, lb = await asyncio.gather(
                    ca.open_link("drain", b.did, link_id=link_id, timeout=10),
                    cb.open_link("drain", a.did, link_id=link_id, timeout=10))
                opened[0] += 1
                await la.send(link_id.encode())
                assert await lb.recv(timeout=10) == link_id.encode()
                await lb.close()
                return la

            async def go() -> int:
                async with RelayClient(https, a, ca_file=str(pki.ca)) as ca, \
                        RelayClient(https, b, ca_file=str(pki.ca)) as cb:
                    held = None
                    for i in range(32):  # a link that nginx puts on p1, held open
                        la = await link(ca, cb, f"hold{i}")
                        if (await logged())[0]:
                            held = la
                            break
                        await la.close()
                    assert held is not None, "nginx put no link on p1"
                    p1.proc.send_signal(signal.SIGTERM)
                    deadline = time.monotonic() + 10
                    while not any(ln.get("msg") == "draining" for ln in p1.log_lines()):
                        assert time.monotonic() < deadline, "p1 did not start draining"
                        await asyncio.sleep(0.05)
                    for i in range(8):  # about half of these routes hash to p1
                        await (await link(ca, cb, f"new{i}")).close()
                    await held.close()
                    return (await logged())[0]

            # the held link only: no new one on p1 while it drained
            assert asyncio.run(go()) == 2
            # its last link closed, p1 ends its drain and exits on the SIGTERM it got
            assert p1.proc.wait(20) == 0
