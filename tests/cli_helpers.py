"""Run the real ``didmesh`` CLI in a subprocess with a given home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    stdin: str | None = None,
) -> Result:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
    full_env["DIDMESH_HOME"] = str(home)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "didmesh.session.cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        input=stdin if stdin is not None else "",
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
