"""Benchmark: the examples over plain MPyC, MPyC --ssl, didmesh direct and didmesh relayed.

    python bench/bench_mesh.py [--parties 3 5] [--repeats 3] [--matrix-n 200] [--budget 1500]
    python bench/bench_mesh.py --startup [--startup-m 10] [--repeats 3]
    python bench/bench_mesh.py --resume [--resume-pings 2000] [--repeats 3]
    python bench/bench_mesh.py --via-cli [--startup] [--examples ...] [--parties ...]

For each example and each m, every mode runs ``--repeats`` times on loopback (all
parties as local processes); the figure is the median of MPyC's own "elapsed time"
(from the end of ``mpc.start()`` to ``mpc.shutdown()``, the slowest party), so process
start-up and connection set-up are not counted; the median wall time of the whole run is
shown too. Ratios are to plain MPyC (a). ``cpu`` is the total user+sys CPU seconds of all
party processes of a run (from the kernel's accounting of reaped children, plus the
relay process's CPU during the run in mode (d)), which start-up and set-up are part of;
on a machine shared with other jobs it is a steadier guide than wall time. Then the
mesh set-up time (connect every pair, handshake, connectivity check) for m = 10
parties in one process (``--no-setup`` skips it). Bounded: every run has a timeout and
the whole benchmark stops starting new runs after ``--budget`` s.

``cnn_layer`` (examples/cnn_layer.py) is the large-message example: one input message of
over 5 MB to every party, through the relay on its default ``link_max_frame`` too (the
relay of mode (d) is started with default settings unless ``--big-relay-frames``).
``--startup`` measures start-up instead: a trivial program (hello world) at m = 10 (``--
startup-m``), whole processes from launch to exit, plain MPyC against didmesh direct and
relayed, interleaved; wall time and the CPU of all parties. ``--resume`` measures what a
relay restart mid-run adds (SIGKILL, started again at once on the same port and store):
two parties' loop of channel round trips through the relay with and without the restart.

``--via-cli`` measures what a user waits for: it adds the modes ``cli-direct`` and
``cli-relayed``, in which every party is a whole ``didmesh run SESSION --direct-only``
(``--relay-only``) ``-- PROGRAM`` process, from launch to exit, with the command line's
own work (identity, session state, the agreed roster verified again, the program's
digest, the receipt), where the modes (c) and (d) start the runner with a launch document.
The session is agreed once per program and m, before any clock starts, through the real
CLI (``bench/cli_session.py``: m homes, ``--no-passphrase`` identities, invites by DID on
the benchmark's relay, a loopback endpoint per party). With ``--startup`` too, and with
``--baseline REV`` as ``cli-direct@REV`` (and ``cli-relayed@REV`` for the examples).

Modes: (a) ``plain`` MPyC TCP (``-P``/``-I``); (b) ``ssl`` MPyC ``--ssl`` with throwaway
certificates made here (``.config/party_<i>.crt``, ``party_<i>.key``, ``mpyc_ca.crt`` in
the working directory, where MPyC looks); (c) ``direct`` didmesh over direct TCP;
(d) ``relayed`` didmesh through a relay process on loopback (``--relay-only``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from didmesh.session.lab.procs import stop
from didmesh.session.mesh.connect import ConnectOptions, MeshConnector
from didmesh.session.mesh.loopback import free_ports, loopback_plans
from didmesh.session.mesh.mesh import Mesh
from didmesh.session.mesh.runner import launch_document, spawn_party

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli_session  # noqa: E402
from proc_stats import process_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Without PYTHONDONTWRITEBYTECODE: MPyC's modules come with compiled bytecode from pip, so
# didmesh's must not be recompiled in every party process (~0.1 s CPU each) either.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONUNBUFFERED"] = "1"
ELAPSED = re.compile(r"elapsed time: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
PROGRAM_CPU = re.compile(r"^program cpu: (\S+) (\S+) (\d+)$", re.M)
WRAPPER = Path(__file__).resolve().parent / "program_cpu.py"
RUN_TIMEOUT = 600.0


def parse_elapsed(text: str) -> float:
    m = ELAPSED.search(text)
    if not m:
        raise RuntimeError("no MPyC elapsed time in output:\n" + text[-800:])
    h, mi, s = m.groups()
    return int(h) * 3600 + int(mi) * 60 + float(s)


def make_ssl_config(workdir: Path, m: int) -> None:
    """Throwaway CA and party certificates where MPyC --ssl looks for them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cfg = workdir / ".config"
    cfg.mkdir(exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MPyC bench CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (cfg / "mpyc_ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for i in range(m):
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"MPyC party {i}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (cfg / f"party_{i}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (cfg / f"party_{i}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))


def children_cpu() -> float:
    """User+sys CPU seconds of all reaped child processes of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Run:
    """One run's figures: MPyC's elapsed time, wall time, CPU of all parties, output."""

    def __init__(self, elapsed: float, wall: float, cpu: float, output: str,
                 program_cpu: float | None = None, loops: int | None = None) -> None:
        self.elapsed, self.wall, self.cpu, self.output = elapsed, wall, cpu, output
        self.program_cpu, self.loops = program_cpu, loops


def _collect(procs: list[subprocess.Popen[bytes]], t0: float, cpu0: float) -> Run:
    deadline = t0 + RUN_TIMEOUT
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if p.returncode != 0:
                raise RuntimeError(f"party exited {p.returncode}: {err.decode()[-1500:]}")
            outs.append(out.decode() + err.decode())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    wall = time.monotonic() - t0
    cpu = children_cpu() - cpu0
    result_lines = [ln for ln in outs[0].splitlines() if ":" in ln and "MPyC" not in ln
                    and not ln.startswith(("20", "  ", "connectivity", "program cpu",
                                           "running ", "run complete", "note: "))]
    run = Run(max(parse_elapsed(o) for o in outs), wall, cpu, "\n".join(result_lines))
    pcpu = [PROGRAM_CPU.search(o) for o in outs]
    if all(pcpu):
        run.program_cpu = sum(float(x[1]) + float(x[2]) for x in pcpu if x)
        run.loops = sum(int(x[3]) for x in pcpu if x)
    return run


def run_mpyc(program: Path, args: list[str], m: int, *, ssl: bool, workdir: Path) -> Run:
    ports = free_ports(m)
    plist = [a for p in ports for a in ("-P", f"127.0.0.1:{p}")]
    cpu0 = children_cpu()
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(program), *args, *plist, "-I", str(i),
             *(["--ssl"] if ssl else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=workdir)
        for i in range(m)
    ]
    return _collect(procs, t0, cpu0)


def run_didmesh(program: Path, args: list[str], m: int, *, relay: str | None,
                relay_pid: int | None = None, env: dict[str, str] = ENV) -> Run:
    plans, ids = loopback_plans(m, relays=[relay] if relay else [])
    opts: dict[str, Any] = {"timeout": 60, "connect_timeout": 60, "receipt": False}
    if relay:
        opts["relay_only"] = True
    relay_cpu0 = process_cpu(relay_pid) if relay_pid else 0.0
    cpu0 = children_cpu()
    t0 = time.monotonic()
    procs = [
        spawn_party(launch_document(plans[i], ids[i], str(program), args, **opts),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for i in range(m)
    ]
    run = _collect(procs, t0, cpu0)
    if relay_pid:
        run.cpu += process_cpu(relay_pid) - relay_cpu0
    return run


class CliSessions:
    """Sessions agreed once through the real CLI (:mod:`cli_session`), one per program and
    m, for the modes ``cli-direct`` and ``cli-relayed``: every party runs as
    ``didmesh run SESSION [--direct-only | --relay-only] -- PROGRAM`` in its own home."""

    def __init__(self, relay: str, workdir: Path) -> None:
        self.relay, self.workdir = relay, workdir
        self.agreed: dict[tuple[str, int], tuple[str, list[Path]]] = {}

    def session(self, program: Path, args: list[str], m: int) -> tuple[str, list[Path]]:
        key = (str(program), m)
        if key not in self.agreed:
            folder = self.workdir / f"cli-{program.stem}-m{m}"
            folder.mkdir()
            self.agreed[key] = cli_session.agree(m, self.relay, program, args, folder, ENV)
        return self.agreed[key]

    def spawn(self, program: Path, args: list[str], m: int, *, relay_only: bool,
              env: dict[str, str] = ENV) -> list[subprocess.Popen[bytes]]:
        sid, homes = self.session(program, args, m)
        return [subprocess.Popen(cli_session.run_command(sid, program, relay_only=relay_only),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=cli_session.env_of(h, env))
                for h in homes]


def run_cli(sessions: CliSessions, program: Path, args: list[str], m: int, *,
            relay_only: bool, relay_pid: int | None = None, env: dict[str, str] = ENV) -> Run:
    """One run of every party through ``didmesh run`` (whole processes)."""
    sessions.session(program, args, m)  # agreed before the clock starts
    relay_cpu0 = process_cpu(relay_pid) if relay_pid else 0.0
    cpu0 = children_cpu()
    t0 = time.monotonic()
    run = _collect(sessions.spawn(program, args, m, relay_only=relay_only, env=env), t0, cpu0)
    if relay_pid:
        run.cpu += process_cpu(relay_pid) - relay_cpu0
    return run


def baseline_tree(rev: str, into: Path) -> dict[str, str]:
    """didmesh as of git revision ``rev`` under ``into``; the environment that runs it.

    Mode ``direct@REV`` runs the parties with ``PYTHONPATH`` pointing there (a path entry
    is found before the editable install), so two versions of the mesh can be compared
    in one interleaved benchmark.
    """
    pkg = into / "didmesh"
    pkg.mkdir(parents=True)
    for folder in ("identity", "session", "relay"):
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, folder],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(pkg)], input=archive, check=True)
    # compiled once here, as the working tree's modules are: no party pays for it
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(pkg)], check=True)
    return {**ENV, "PYTHONPATH": str(into)}


def start_relay(big_frames: bool = False) -> tuple[str, subprocess.Popen[bytes]]:
    [port] = free_ports(1)
    frames = ["--link-max-frame", str(64 << 20)] if big_frames else []  # default: 1 MiB
    proc = subprocess.Popen(
        [sys.executable, "-m", "didmesh.relay", "--host", "127.0.0.1", "--port", str(port),
         "--link-max-bytes", str(1 << 40), *frames,
         # MPyC blocks its event loop for many seconds in large numpy steps; the relay's
         # link pings (20 s, pong within 10 s) would drop such a party's links. The mesh
         # has its own liveness with stall grace (specs/mesh.md section 7).
         "--link-heartbeat-s", "0", "--ws-idle-timeout-s", "3600",
         # every party connects from 127.0.0.1 here (on the Internet each has its own
         # address): at m = 10 one run makes ~120 requests within a second, over the
         # relay's per-address rate (50/s, burst 100), and a refused party fails the run
         "--rate-ip-per-s", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return f"http://127.0.0.1:{port}", proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("relay did not start")


async def _setup_once(m: int) -> float:
    plans, ids = loopback_plans(m)
    opts = ConnectOptions(connect_timeout=30)
    t0 = time.perf_counter()
    peers = await asyncio.gather(*(MeshConnector(p, i, opts).connect_all()
                                   for p, i in zip(plans, ids, strict=True)))
    meshes = [Mesh(plans[i], peers[i], identity=ids[i], timeout=30) for i in range(m)]
    for mesh in meshes:
        mesh.start()
    await asyncio.gather(*(mesh.check(timeout=30) for mesh in meshes))
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*(mesh.finish(10) for mesh in meshes))
    return elapsed


HELLO = """from mpyc.runtime import mpc
mpc.run(mpc.start())
print("hello from party", mpc.pid)
mpc.run(mpc.shutdown())
"""


def startup_benchmark(m: int, repeats: int, relay: str | None, relay_pid: int | None,
                      workdir: Path, receipts: bool = True,
                      baseline: tuple[str, dict[str, str]] | None = None,
                      cli: CliSessions | None = None) -> dict[str, Any]:
    """Whole processes of a trivial program at m parties: plain vs didmesh, interleaved
    (with each party's signed run receipt, as ``didmesh run`` makes one, unless not
    ``receipts``); with ``baseline`` (revision, environment) also ``direct@REV``."""
    program = workdir / "hello.py"
    program.write_text(HELLO)
    modes = ["plain", "direct"] + (["relayed"] if relay else [])
    if cli is not None:
        modes += ["cli-direct", "cli-relayed"]
        cli.session(program, ["--no-log"], m)  # agreed before the clock starts
    envs = {mode: ENV for mode in modes}
    if baseline:
        modes.append(f"direct@{baseline[0]}")
        envs[modes[-1]] = baseline[1]
        if cli is not None:
            modes.append(f"cli-direct@{baseline[0]}")
            envs[modes[-1]] = baseline[1]
    figures: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in modes}
    for _ in range(repeats):
        for mode in modes:
            if mode == "plain":
                ports = free_ports(m)
                plist = [a for p in ports for a in ("-P", f"127.0.0.1:{p}")]
                cpu0, t0 = children_cpu(), time.monotonic()
                procs = [subprocess.Popen([sys.executable, str(program), "--no-log", *plist,
                                           "-I", str(i)], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env=ENV)
                         for i in range(m)]
                _wait_all(procs, t0)
                wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
            elif mode.startswith("cli-"):
                assert cli is not None
                relay_cpu0 = process_cpu(relay_pid) if mode == "cli-relayed" and relay_pid else 0.0
                cpu0, t0 = children_cpu(), time.monotonic()
                _wait_all(cli.spawn(program, ["--no-log"], m,
                                    relay_only=mode == "cli-relayed", env=envs[mode]), t0)
                wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
                if mode == "cli-relayed" and relay_pid:
                    cpu += process_cpu(relay_pid) - relay_cpu0
            else:
                plans, ids = loopback_plans(m, relays=[relay] if mode == "relayed" and relay
                                            else [])
                opts: dict[str, Any] = {"timeout": 60, "connect_timeout": 60,
                                        "relay_only": mode == "relayed",
                                        "receipt": receipts}
                relay_cpu0 = process_cpu(relay_pid) if mode == "relayed" and relay_pid else 0.0
                cpu0, t0 = children_cpu(), time.monotonic()
                procs = [spawn_party(launch_document(plans[i], ids[i], str(program),
                                                     ["--no-log"], **opts),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=envs[mode])
                         for i in range(m)]
                _wait_all(procs, t0)
                wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
                if mode == "relayed" and relay_pid:
                    cpu += process_cpu(relay_pid) - relay_cpu0
            figures[mode]["wall"].append(wall)
            figures[mode]["cpu"].append(cpu)
    base = statistics.median(figures["plain"]["wall"])
    out: dict[str, Any] = {}
    for mode, f in figures.items():
        wall, cpu = statistics.median(f["wall"]), statistics.median(f["cpu"])
        out[mode] = {"median_wall_s": round(wall, 3), "wall_ratio_to_plain": round(wall / base, 3),
                     "median_cpu_s": round(cpu, 3), "cpu_per_party_s": round(cpu / m, 3),
                     "walls": [round(w, 3) for w in f["wall"]]}
    return out


def _wait_all(procs: list[subprocess.Popen[bytes]], t0: float) -> None:
    deadline = t0 + RUN_TIMEOUT
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if p.returncode != 0:
                raise RuntimeError(f"party exited {p.returncode}: {err.decode()[-1500:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


def mesh_setup_seconds(m: int, repeats: int) -> list[float]:
    return [asyncio.run(_setup_once(m)) for _ in range(repeats)]


def _ratio(x: float, base: float | None) -> float | None:
    return round(x / base, 3) if base else None


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    """Medians per mode of elapsed, wall and CPU time, and their ratios to plain MPyC."""
    plain = row.get("plain", {})
    base = {k: statistics.median(plain[k]) if plain.get(k) else None
            for k in ("elapsed", "wall", "cpu")}
    summary: dict[str, Any] = {}
    for mode, v in row.items():
        if not v["elapsed"]:
            summary[mode] = {"failed": v["failed"]}
            continue
        med = {k: statistics.median(v[k]) for k in ("elapsed", "wall", "cpu")}
        summary[mode] = {
            "median_elapsed_s": round(med["elapsed"], 4),
            "median_wall_s": round(med["wall"], 3),
            "median_cpu_s": round(med["cpu"], 3),
            "runs": len(v["elapsed"]),
            "ratio_to_plain": _ratio(med["elapsed"], base["elapsed"]),
            "wall_ratio_to_plain": _ratio(med["wall"], base["wall"]),
            "cpu_ratio_to_plain": _ratio(med["cpu"], base["cpu"]),
            "failed": v["failed"],
        }
        if v.get("program_cpu"):
            pmed = statistics.median(v["program_cpu"])
            pbase = statistics.median(plain["program_cpu"]) if plain.get("program_cpu") else None
            summary[mode]["median_program_cpu_s"] = round(pmed, 3)
            summary[mode]["program_cpu_ratio_to_plain"] = _ratio(pmed, pbase)
            summary[mode]["median_loop_turns"] = statistics.median(v["loops"])
    return summary


def format_mode(mode: str, s: dict[str, Any]) -> str:
    if "median_elapsed_s" not in s:
        return f"{mode:11} failed ({s['failed']} runs)"
    return (f"{mode:11} elapsed {s['median_elapsed_s']:8.3f} s (x{s['ratio_to_plain']})  "
            f"wall {s['median_wall_s']:8.3f} s (x{s['wall_ratio_to_plain']})  "
            f"cpu {s['median_cpu_s']:8.3f} s (x{s['cpu_ratio_to_plain']})  "
            + (f"program cpu {s['median_program_cpu_s']:8.3f} s "
               f"(x{s['program_cpu_ratio_to_plain']})  loop turns {s['median_loop_turns']:g}  "
               if "median_program_cpu_s" in s else "")
            + f"runs {s['runs']}" + (f", {s['failed']} failed" if s["failed"] else ""))

# ------------------------------------------------------------------ link resumption


def _resume_once(chaos: str, pings: int, workdir: Path, redis_url: str = ""
                 ) -> dict[str, Any]:
    """Two parties (threads) on one relayed link: party 0 runs ``pings`` sequential channel
    pings (each a round trip through the relay, as an MPyC run's rounds are). ``chaos``:
    ``"none"``; ``"restart"``: the relay is SIGKILLed after a third of them and started
    again at once on the same port and store; ``"failover"``: two relay processes on the
    Redis at ``redis_url``, both in the session, and the one carrying the link is SIGKILLed.
    Returns the loop's wall time and the link's resume figures."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from didmesh.session.mesh.mesh import Mesh
    from didmesh.session.mesh.transport import RelayedLink
    from relay_helpers import free_port, spawn_relay

    port = free_port()
    store = redis_url or f"sqlite:{workdir / f'resume-{port}.sqlite3'}"
    args = ["--rate-ip-per-s", "0", "--link-heartbeat-s", "0", "--no-access-log",
            "--port", str(port)]
    relays = [spawn_relay(store, args, home=workdir)]
    if chaos == "failover":
        relays.append(spawn_relay(store, args[:-2], home=workdir))
    done = threading.Event()
    third = threading.Event()
    out: dict[str, Any] = {}
    restart = chaos != "none"
    try:
        plans, ids = loopback_plans(2, relays=[r.url for r in relays], endpoints=False)
        options = ConnectOptions(relay_only=True, connect_timeout=20, handshake_timeout=5)

        async def party(i: int) -> dict[str, Any]:
            connector = MeshConnector(plans[i], ids[i], options)
            try:
                peers = await connector.connect_all()
                mesh = Mesh(plans[i], peers, identity=ids[i], timeout=30.0)
                mesh.start()
                peer = peers[1 - i]
                res: dict[str, Any] = {}
                try:
                    await mesh.check(timeout=10)
                    if i == 0:
                        t0 = time.perf_counter()
                        for n in range(pings):
                            if n == pings // 3:
                                third.set()
                            try:
                                await peer.ping(20)
                            except TimeoutError:
                                raise RuntimeError(
                                    f"ping {n} unanswered: {mesh.fatal!r}") from None
                        res["loop_s"] = time.perf_counter() - t0
                        done.set()
                    else:
                        while not done.is_set():
                            await asyncio.sleep(0.02)
                    await mesh.finish(20)
                finally:
                    mesh.close()
                link = peer.link
                if isinstance(link, RelayedLink):
                    res["resumes"] = link.stream.resumes
                    res["resume_s"] = list(link.resume_seconds)
                res["fatal"] = mesh.fatal
                return res
            finally:
                await connector.aclose()

        def disrupt() -> None:
            if not third.wait(60):
                return
            t0 = time.perf_counter()
            relays[0].kill()
            if chaos == "restart":
                relays.append(spawn_relay(store, args, home=workdir))
            out["relay_restart_s"] = time.perf_counter() - t0

        killer = threading.Thread(target=disrupt) if restart else None
        if killer is not None:
            killer.start()
        with ThreadPoolExecutor(2) as pool:
            futs = [pool.submit(lambda i=i: asyncio.run(asyncio.wait_for(party(i), 90)))
                    for i in range(2)]
            res = [f.result(timeout=100) for f in futs]
        third.set()
        if killer is not None:
            killer.join(30)
        if any(r["fatal"] is not None for r in res):
            raise RuntimeError(f"the run failed: {[r['fatal'] for r in res]}")
        out["loop_s"] = res[0]["loop_s"]
        out["resumes"] = [r.get("resumes", 0) for r in res]
        out["resume_s"] = [s for r in res for s in r.get("resume_s", [])]
        return out
    finally:
        for r in relays:
            if r.alive():
                r.proc.kill()
            r.proc.wait(10)
            with contextlib.suppress(OSError):
                r.log_path.unlink()


def resume_benchmark(repeats: int, pings: int) -> dict[str, Any]:
    """What a relay restart adds to a relayed run (issue 12's target: at most 1 s), and
    what the SIGKILL of one of two relay processes on one Redis adds (if redis-server is
    installed). ``link_outage_s``: from the link's loss to its resumption (the later end);
    ``resumed_after_relay_up_s``: that minus the relay's own restart (kill to listening);
    ``added_to_run_s``: the difference of the runs' medians (noisier)."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from relay_helpers import start_redis

    base: list[float] = []
    hit: list[float] = []
    restarts: list[float] = []
    outages: list[float] = []
    fail: list[float] = []
    fail_outages: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        redis = stack.enter_context(start_redis()) if shutil.which("redis-server") else None
        for n in range(repeats):  # interleaved
            base.append(_resume_once("none", pings, Path(tmp))["loop_s"])
            r = _resume_once("restart", pings, Path(tmp))
            hit.append(r["loop_s"])
            restarts.append(r["relay_restart_s"])
            outages.append(max(r["resume_s"]))
            if redis is not None:
                f = _resume_once("failover", pings, Path(tmp), redis.url(n % 16))
                fail.append(f["loop_s"])
                fail_outages.append(max(f["resume_s"]))
    med = statistics.median
    failover = {} if not fail else {
        "failover_link_outage_s": round(med(fail_outages), 3),
        "failover_added_to_run_s": round(med(fail) - med(base), 3),
    }
    return {
        "pings": pings,
        "run_without_restart_s": round(med(base), 3),
        "run_with_restart_s": round(med(hit), 3),
        "added_to_run_s": round(med(hit) - med(base), 3),
        "relay_restart_s": round(med(restarts), 3),
        "link_outage_s": round(med(outages), 3),
        "resumed_after_relay_up_s": round(
            med([o - r for o, r in zip(outages, restarts, strict=True)]), 3),
        "link_outages_s": [round(x, 3) for x in outages],
        **failover,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parties", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--matrix-n", type=int, default=200)
    ap.add_argument("--santa-n", type=int, default=24)
    ap.add_argument("--modes", nargs="+", default=["plain", "ssl", "direct", "relayed"])
    ap.add_argument("--examples", nargs="+",
                    default=["secure_sum", "secret_santa", "matrix_product", "cnn_layer"])
    ap.add_argument("--cnn-images", type=int, default=24,
                    help="cnn_layer batch (24: an input message of over 5 MB per party)")
    ap.add_argument("--big-relay-frames", action="store_true",
                    help="start the relay with a 64 MiB link_max_frame (default: its 1 MiB)")
    ap.add_argument("--startup", action="store_true",
                    help="only the start-up benchmark: hello world at --startup-m parties")
    ap.add_argument("--startup-m", type=int, default=10)
    ap.add_argument("--no-receipts", action="store_true",
                    help="start-up benchmark: the parties sign no run receipt")
    ap.add_argument("--via-cli", action="store_true",
                    help="add modes cli-direct and cli-relayed: each party a whole "
                    "`didmesh run SESSION -- PROGRAM` process, in a session agreed once "
                    "through the CLI (not timed); --modes may name them too")
    ap.add_argument("--budget", type=float, default=1500.0, help="stop starting runs after (s)")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--setup-only", action="store_true", help="only the m=10 set-up time")
    ap.add_argument("--no-setup", action="store_true", help="skip the m=10 set-up time")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run")
    ap.add_argument("--baseline", metavar="REV", default=None,
                    help="also run mode direct@REV (and relayed@REV if relayed is a mode): "
                         "didmesh as of git revision REV "
                         "(A/B against the working tree)")
    ap.add_argument("--program-cpu", action="store_true",
                    help="run the examples under bench/program_cpu.py and also report the "
                         "CPU of the program itself (no start-up, imports or mesh set-up)")
    ap.add_argument("--resume", action="store_true",
                    help="only what a relay restart (SIGKILL, started again) adds to a "
                         "relayed run of --resume-pings channel round trips")
    ap.add_argument("--resume-pings", type=int, default=2000)
    a = ap.parse_args(argv)
    if a.resume:
        res = resume_benchmark(a.repeats, a.resume_pings)
        print("relay restart mid-run (2 parties, one relayed link; medians of "
              f"{a.repeats} interleaved):")
        for k, v in res.items():
            print(f"    {k:30} {v}")
        if a.json:
            Path(a.json).write_text(json.dumps({"resume": res}, indent=2))
        return 0
    programs = {
        "secure_sum": (EXAMPLES / "secure_sum.py", []),
        "secret_santa": (EXAMPLES / "secret_santa.py", ["-n", str(a.santa_n), "--seed", "1"]),
        "matrix_product": (EXAMPLES / "matrix_product.py",
                           ["-n", str(a.matrix_n), "--seed", "1"]),
        "cnn_layer": (EXAMPLES / "cnn_layer.py", ["--images", str(a.cnn_images), "--seed", "1"]),
    }
    if a.program_cpu:
        programs = {k: (WRAPPER, [str(p), *args]) for k, (p, args) in programs.items()}
    started = time.monotonic()
    if a.via_cli:
        a.modes += [m for m in ("cli-direct", "cli-relayed") if m not in a.modes]
    relay, relay_proc = (start_relay(a.big_relay_frames)
                         if "relayed" in a.modes or any(m.startswith("cli-") for m in a.modes)
                         else (None, None))
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            make_ssl_config(workdir, max(a.parties))
            cli = CliSessions(relay, workdir) if relay else None
            modes = list(a.modes)
            alt_env = ENV
            if a.baseline:
                alt_env = baseline_tree(a.baseline, workdir / "baseline")
                modes.append(f"direct@{a.baseline}")
                if "relayed" in a.modes and not a.startup:
                    modes.append(f"relayed@{a.baseline}")
                for mode in ("cli-direct", "cli-relayed"):
                    if mode in a.modes and not a.startup:
                        modes.append(f"{mode}@{a.baseline}")
            if a.startup:
                res = startup_benchmark(a.startup_m, a.repeats, relay,
                                        relay_proc.pid if relay_proc else None, workdir,
                                        receipts=not a.no_receipts,
                                        baseline=(a.baseline, alt_env) if a.baseline else None,
                                        cli=cli if a.via_cli else None)
                results[f"startup hello m={a.startup_m}"] = res
                print(f"start-up, hello world, m={a.startup_m} (whole processes, medians of "
                      f"{a.repeats} interleaved):")
                for mode, s in res.items():
                    print(f"    {mode:11} wall {s['median_wall_s']:7.3f} s "
                          f"(x{s['wall_ratio_to_plain']})  cpu {s['median_cpu_s']:7.3f} s "
                          f"({s['cpu_per_party_s']:.3f} s per party)  walls {s['walls']}",
                          flush=True)
            for ex in ([] if a.setup_only or a.startup else a.examples):
                program, args = programs[ex]
                for m in a.parties:
                    row: dict[str, Any] = {}
                    outputs = set()
                    for rep in range(a.repeats):
                        for mode in modes:  # interleaved: drift hits every mode alike
                            if time.monotonic() - started > a.budget:
                                break
                            row.setdefault(mode, {"elapsed": [], "wall": [], "cpu": [],
                                                  "program_cpu": [], "loops": [],
                                                  "failed": 0})
                            try:
                                if mode in ("plain", "ssl"):
                                    run = run_mpyc(program, args, m, ssl=mode == "ssl",
                                                   workdir=workdir)
                                elif mode.startswith("cli-"):
                                    assert cli is not None
                                    relayed = mode.startswith("cli-relayed")
                                    run = run_cli(cli, program, args, m, relay_only=relayed,
                                                  env=alt_env if "@" in mode else ENV,
                                                  relay_pid=(relay_proc.pid if relay_proc
                                                             and relayed else None))
                                else:
                                    run = run_didmesh(
                                        program, args, m,
                                        relay=relay if mode.startswith("relayed") else None,
                                        env=alt_env if "@" in mode else ENV,
                                        relay_pid=(relay_proc.pid if relay_proc is not None
                                                   and mode.startswith("relayed") else None))
                            except RuntimeError as exc:  # report it, keep benchmarking
                                row[mode]["failed"] += 1
                                print(f"  {ex} m={m} {mode}: run failed: "
                                      f"{str(exc).splitlines()[-1][:300]}", flush=True)
                                continue
                            outputs.add(run.output)
                            row[mode]["elapsed"].append(run.elapsed)
                            row[mode]["wall"].append(run.wall)
                            row[mode]["cpu"].append(run.cpu)
                            if run.program_cpu is not None:
                                row[mode]["program_cpu"].append(run.program_cpu)
                                row[mode]["loops"].append(run.loops)
                            if a.verbose:
                                print(f"    {ex} m={m} {mode}: elapsed {run.elapsed:.3f} s, "
                                      f"wall {run.wall:.3f} s, cpu {run.cpu:.3f} s"
                                      + (f", program cpu {run.program_cpu:.3f} s, "
                                         f"{run.loops} loop turns"
                                         if run.program_cpu is not None else ""), flush=True)
                        del rep
                    summary = summarize(row)
                    summary["outputs_identical"] = len(outputs) == 1
                    results[f"{ex} m={m}"] = summary
                    print(f"{ex:15} m={m}  same output: {summary['outputs_identical']}")
                    for mode, s in summary.items():
                        if isinstance(s, dict):
                            print("    " + format_mode(mode, s), flush=True)
        if not a.no_setup and not a.startup:
            setups = mesh_setup_seconds(10, 3)
            results["mesh_setup_m10_s"] = {"median": round(statistics.median(setups), 4),
                                           "all": [round(s, 4) for s in setups]}
            print(f"mesh set-up, m=10, one process: median {statistics.median(setups):.3f} s "
                  f"({', '.join(f'{s:.3f}' for s in setups)})")
    finally:
        if relay_proc is not None:
            stop(relay_proc, 10)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
