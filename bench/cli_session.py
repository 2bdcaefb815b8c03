"""A session agreed through the real ``didmesh`` CLI, for benchmarks of ``didmesh run``.

``agree(m, relay, program, args, workdir)`` makes ``m`` homes with passphrase-less
identities under ``workdir``, has the first create a session for ``program`` (agreed
arguments ``args``; every party announces a loopback endpoint, so pairs can connect
directly or, with ``--relay-only``, through ``relay``), invite the others by DID, and
waits until every home holds the agreed roster. ``run_command(home, sid, program)`` is
the command line of one party's ``didmesh run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from didmesh.session.mesh.loopback import free_ports

STEP_TIMEOUT = 120.0


def env_of(home: Path, base: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("DIDMESH_")}
    env["DIDMESH_HOME"] = str(home)
    return env


def _cli(home: Path, *args: str, base: dict[str, str]) -> Any:
    proc = subprocess.run([sys.executable, "-m", "didmesh.session.cli.main", *args, "--json"],
                          capture_output=True, text=True, env=env_of(home, base),
                          timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"didmesh {' '.join(args[:2])}: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout)


def _spawn(home: Path, *args: str, base: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "didmesh.session.cli.main", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env=env_of(home, base))


def agree(m: int, relay: str, program: Path, args: list[str], workdir: Path,
          base: dict[str, str] | None = None) -> tuple[str, list[Path]]:
    """(session id, homes of parties 0..m-1 in roster order is NOT implied)."""
    base = dict(os.environ) if base is None else base
    homes = [workdir / f"party{i}" for i in range(m)]
    dids = [_cli(h, "id", "new", "--no-passphrase", base=base)["did"] for h in homes]
    ports = free_ports(m)
    arg_opts = [f"--arg={a}" for a in args]
    sid = _cli(homes[0], "session", "new", "--program", str(program), "--parties", str(m),
               "--relay", relay, "--name", "bench", *arg_opts,
               "--endpoint", f"tcp://127.0.0.1:{ports[0]}", base=base)["sessionId"]
    _cli(homes[0], "invite", sid, *[a for d in dids[1:] for a in ("--to", d)], base=base)
    organizer = _spawn(homes[0], "session", "wait", sid, "--timeout", "120", "--json",
                       base=base)
    waits = []
    try:
        for i, home in enumerate(homes[1:], 1):
            _cli(home, "invites", "--relay", relay, base=base)
            _cli(home, "accept", sid, "--yes", "--endpoint", f"tcp://127.0.0.1:{ports[i]}",
                 base=base)
        waits = [_spawn(h, "status", sid, "--wait", "--timeout", "120", "--json", base=base)
                 for h in homes[1:]]
        for p in [organizer, *waits]:
            _, err = p.communicate(timeout=STEP_TIMEOUT)
            if p.returncode != 0:
                raise RuntimeError(f"agreement failed: {err[-1500:]}")
    finally:
        for p in [organizer, *waits]:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    return sid, homes


def run_command(sid: str, program: Path, *, relay_only: bool, receipt: Path | None = None
                ) -> list[str]:
    """One party's ``didmesh run`` (its home from the environment, see :func:`env_of`)."""
    return [sys.executable, "-m", "didmesh.session.cli.main", "run", sid,
            *(["--relay-only"] if relay_only else ["--direct-only"]),
            *(["--receipt", str(receipt)] if receipt else []), "--", str(program)]
