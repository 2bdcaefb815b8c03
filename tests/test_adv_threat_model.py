"""specs/threat-model.md is machine-checked: every test it names exists and is collected;
a claim that "holds" names no xfail test, and a "gap" names at least one (its strict xfail)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
DOC = ROOT / "specs" / "threat-model.md"
_ROW = re.compile(r"^\|\s*([A-Z]\d+)\s*\|(.*)\|\s*(holds|gap)\s*\|(.*)\|\s*$")
_NODE = re.compile(r"`(tests/[\w/]+\.py::\w+)`")


def claims() -> dict[str, tuple[str, list[str]]]:
    out: dict[str, tuple[str, list[str]]] = {}
    for line in DOC.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            assert m.group(1) not in out, f"claim id {m.group(1)} appears twice"
            out[m.group(1)] = (m.group(3), _NODE.findall(m.group(4)))
    return out


def collected(files: list[str]) -> dict[str, set[str]]:
    """Base node id (parameters dropped) -> the kinds of its items ("run", "xfail")."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"),
                                                        os.environ.get("PYTHONPATH", "")]),
           "DIDMESH_SOAK": "1"}  # full-size soak tests are named too (tests/conftest.py)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "no:warnings", "-p", "adversary.collect_plugin", *files],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out: dict[str, set[str]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("DIDMESH-NODE "):
            node, kind = line.removeprefix("DIDMESH-NODE ").rsplit(" ", 1)  # ids may hold spaces
            out.setdefault(node.split("[")[0], set()).add(kind)
    return out


def test_every_claim_names_collected_tests_and_its_status_is_honest() -> None:
    table = claims()
    assert len(table) >= 30, "the threat model lost its tables"
    for ident, (_status, nodes) in table.items():
        assert nodes, f"claim {ident} names no test"
    files = sorted({n.split("::")[0] for _s, nodes in table.values() for n in nodes})
    for f in files:
        assert (ROOT / f).exists(), f"{f} (named in specs/threat-model.md) does not exist"
    everything = collected(files)
    xfails = {node for node, kinds in everything.items() if "xfail" in kinds}
    missing = sorted({n for _s, nodes in table.values() for n in nodes} - set(everything))
    assert not missing, f"named in specs/threat-model.md but not collected: {missing}"
    for ident, (status, nodes) in table.items():
        marked = [n for n in nodes if n in xfails]
        if status == "holds":
            assert not marked, f"claim {ident} 'holds' but names xfail tests {marked}"
        else:
            assert marked, f"claim {ident} is a 'gap' but names no xfail test"


def test_every_adversarial_test_file_is_referenced() -> None:
    named = {n.split("::")[0] for _s, nodes in claims().values() for n in nodes}
    mine = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_adv_*.py")}
    mine |= {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_fuzz_*.py")}
    mine.discard("tests/test_adv_threat_model.py")
    assert not sorted(mine - named), f"not in specs/threat-model.md: {sorted(mine - named)}"
