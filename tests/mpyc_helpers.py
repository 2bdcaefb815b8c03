"""Plain MPyC on loopback: what a didmesh run's output is compared with."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from didmesh.session.lab.procs import finish
from didmesh.session.mesh.loopback import free_ports


def plain_mpyc(program: Path | str, args: Sequence[str], m: int, *, timeout: float = 90,
               env: Mapping[str, str] | None = None) -> list[str]:
    """Run ``program`` with plain MPyC (``-P`` for ``m`` parties on free loopback ports);
    each party's stdout. Every party must exit 0; one still running after ``timeout``
    seconds is killed."""
    plist = [a for p in free_ports(m) for a in ("-P", f"127.0.0.1:{p}")]
    procs = [subprocess.Popen([sys.executable, str(program), *args, *plist, "-I", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for i in range(m)]
    res = finish(procs, timeout)
    assert [code for code, _, _ in res] == [0] * m, [err[-2000:] for _, _, err in res]
    return [out for _, out, _ in res]
