"""Done-when test of issue 5 (CLI part): three homes agree a session through a real relay,
then three ``didmesh run`` processes run an example over direct and over relayed paths,
with the output of plain MPyC; a changed program file is refused before anything starts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pytest
from cli_helpers import agree_while_waiting, concurrently, finish_all, ok, run_cli, spawn
from didmesh.session.mesh.loopback import free_ports
from mpyc_helpers import plain_mpyc
from relay_helpers import relay_url  # noqa: F401  (fixture)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def agreed_session(tmp_path: Path, relay: str, program: Path,
                   more_relays: Sequence[str] = ()) -> tuple[str, list[Path]]:
    """Three parties agree a session on ``relay`` (and ``more_relays``, also named in
    the session): an invite by DID, one by code."""
    homes = [tmp_path / n for n in ("alice", "bob", "carol")]
    # each person's commands in order, the three people at once where the flow allows
    dids = concurrently(*(partial(ok, h, "id", "new", "--no-passphrase") for h in homes))
    dids = [d["did"] for d in dids]
    relays = [a for r in (relay, *more_relays) for a in ("--relay", r)]
    ports = free_ports(2)

    def organize() -> tuple[str, str]:
        sid = ok(homes[0], "session", "new", "--program", str(program), "--parties", "3",
                 *relays, "--name", "mesh e2e", "--no-direct")["sessionId"]
        ok(homes[0], "contacts", "add", "bob", dids[1])
        ok(homes[0], "invite", sid[:8], "--to", "bob")
        return sid, ok(homes[0], "invite", sid, "--code", "--no-wait")["code"]

    (sid, code), _ = concurrently(organize, partial(ok, homes[1], "contacts", "add", "alice",
                                                    dids[0]))
    organizer = spawn(homes[0], "session", "wait", sid, "--timeout", "60", "--json")

    def bob() -> None:
        ok(homes[1], "invites", "--relay", relay)
        ok(homes[1], "accept", sid[:8], "--yes", "--program", str(program),
           "--endpoint", f"tcp://127.0.0.1:{ports[0]}")

    def carol() -> None:
        ok(homes[2], "claim", code, "--relay", relay, timeout=60)
        ok(homes[2], "accept", sid, "--yes", "--endpoint", f"tcp://127.0.0.1:{ports[1]}")

    agree_while_waiting(organizer, sid, homes[1:], bob, carol)
    return sid, homes


def plain_output(program: Path) -> str:
    return plain_mpyc(program, ["--no-log"], 3)[0]


@pytest.mark.slow
def test_didmesh_run_direct_and_relayed(tmp_path: Path, relay_url: str) -> None:  # noqa: F811
    program = tmp_path / "secure_sum.py"
    shutil.copy(EXAMPLES / "secure_sum.py", program)
    (sid, homes), expected = concurrently(  # plain MPyC's output meanwhile
        lambda: agreed_session(tmp_path, relay_url, program), lambda: plain_output(program))
    for flag in ("--direct-only", "--relay-only"):
        procs = [spawn(h, "run", sid[:8], flag, "--timeout", "10", "--connect-timeout", "30",
                       "--", str(program), "--no-log") for h in homes]
        results = finish_all(procs)
        for rc, out, err in results:
            assert rc == 0, f"{flag}: {err[-2500:]}"
            assert out == expected
            assert "connectivity check (all pairs)" in err
            kind = "direct" if flag == "--direct-only" else "relay"
            assert err.count(f"  {kind} ") >= 3, err
        receipt = json.loads((homes[0] / "sessions").glob(f"{sid}*/receipt-0.json")
                             .__next__().read_text())
        assert receipt["credentialSubject"]["sessionId"] == sid

    # the program changed after the manifest was agreed: refused, nothing starts
    program.write_text(program.read_text() + "\n# changed\n")
    res = run_cli(homes[1], "run", sid[:8], "--", str(program), timeout=30)
    assert res.rc != 0 and "SHA-256" in res.err and "nothing starts" in res.err
