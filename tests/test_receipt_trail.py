"""``didmesh verify`` on several RunReceipts: one run's complete trail, or which receipt
is missing, foreign or repeated (issue 15, item 5)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cli_helpers import run_cli
from didmesh.session.mesh.loopback import loopback_plans
from didmesh.session.mesh.receipt import check_trail, sign_receipt

AT = ("--at", "2030-01-01T00:00:00Z")  # the receipts end in 2027


def _run(m: int = 3) -> list[dict[str, Any]]:
    plans, ids = loopback_plans(m)
    docs = []
    for i in range(m):
        result = SimpleNamespace(
            program_digest="sha256:" + "ab" * 32, started=1_800_000_000.25,
            ended=1_800_000_003.5,
            bytes_per_peer={j: {"sent": 10, "received": 5} for j in range(m) if j != i},
        )
        docs.append(sign_receipt(plans[i], ids[i], result))
    return docs


def _entries(docs: list[dict[str, Any]], names: list[str]) -> list[tuple[str, str, Any]]:
    return [(n, d["issuer"], d["credentialSubject"]) for n, d in zip(names, docs, strict=True)]


def test_complete_trail() -> None:
    docs = _run()
    report = check_trail(_entries(docs, ["a", "b", "c"]))
    assert report.complete and report.present == {0: "a", 1: "b", 2: "c"}
    assert report.parties[1] == docs[1]["issuer"]


def test_missing_foreign_and_repeated_receipts_are_named() -> None:
    run, other = _run(), _run()
    report = check_trail(_entries([run[0], run[2], other[1]], ["r0", "r2", "x1"]))
    assert not report.complete
    assert report.missing == (1,)
    assert report.foreign[0][0] == "x1" and "another run" in report.foreign[0][1]
    problems = report.problems()
    assert any(p.startswith("x1 is not part of this run") for p in problems)
    assert any(p.startswith(f"party 1 ({run[1]['issuer']}) has no receipt") for p in problems)
    again = check_trail(_entries([run[0], run[1], run[2], run[1]], ["a", "b", "c", "b2"]))
    assert again.duplicates == (("b2", 1),) and again.missing == ()


def _write(tmp: Path, docs: list[dict[str, Any]], names: list[str]) -> list[str]:
    paths = []
    for name, doc in zip(names, docs, strict=True):
        (tmp / name).write_text(json.dumps(doc))
        paths.append(str(tmp / name))
    return paths


def test_cli_verify_checks_the_trail(tmp_path: Path) -> None:
    run, other = _run(), _run()
    full = _write(tmp_path, run, ["r0.json", "r1.json", "r2.json"])
    res = run_cli(tmp_path / "home", "verify", *AT, *full)
    assert res.rc == 0, res.err
    assert "COMPLETE  run trail" in res.out and "all 3 parties" in res.out

    mixed = _write(tmp_path, [run[0], other[1]], ["m0.json", "x1.json"])
    res = run_cli(tmp_path / "home", "verify", *AT, *mixed)
    assert res.rc == 1
    assert res.out.count("VALID  ") == 2  # each receipt is valid on its own...
    assert "INCOMPLETE" in res.out  # ...but they are not one run's trail
    assert "x1.json is not part of this run" in res.out
    assert "party 1 (" in res.out and "party 2 (" in res.out and "has no receipt" in res.out

    res = run_cli(tmp_path / "home", "verify", "--json", *AT, *full[:2])
    assert res.rc == 1
    trail = res.json()["trail"]
    assert trail["complete"] is False and trail["missing"] == [2]
