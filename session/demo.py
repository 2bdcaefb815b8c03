"""``didmesh demo``: a complete session on one machine, with no set-up.

The demo plays three people on three "shells": each is a separate ``didmesh``
process with its own home directory, exactly as users would type the commands. It
starts a relay on loopback, creates three identities, lets the organizer create a
session for an example program and invite one party by DID and one by a short code,
has both accept, waits until all three hold the same confirmed roster (and shows the
short authentication strings), runs the program over the mesh and verifies the signed
run receipts. Everything lives in a temporary directory that is removed at the end;
every step has a timeout, and the relay and all parties are stopped on any exit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from didmesh.identity.errors import LocalError
from didmesh.relay.server import LISTENING

from .mesh.loopback import free_ports

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PEOPLE = ("alice", "bob", "carol")
#: private inputs of the demo's secure sum (think: salaries nobody wants to reveal)
INPUTS = {"alice": 52_000, "bob": 61_000, "carol": 58_500}


class DemoFailed(LocalError):
    """A step of the demo did not complete."""

    code = "demo_failed"


@dataclass
class Demo:
    """Drives the three parties' CLIs. ``say`` prints a step for people."""

    workdir: Path
    say: Callable[[str], None]
    step_timeout: float = 120.0
    relay_url: str = ""
    dids: dict[str, str] = field(default_factory=dict)
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)

    # -- processes ---------------------------------------------------------------
    def home(self, who: str) -> Path:
        return self.workdir / who

    def _env(self, who: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIDMESH_")}
        env["DIDMESH_HOME"] = str(self.home(who))
        env["NO_COLOR"] = "1"
        return env

    def _cmd(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "didmesh.session.cli.main", *args]

    def spawn(self, who: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self._cmd(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self._env(who),
        )
        self._procs.append(proc)
        return proc

    def finish(self, who: str, proc: subprocess.Popen[str], what: str) -> tuple[str, str]:
        try:
            out, err = proc.communicate(timeout=self.step_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise DemoFailed(
                f"{who}: '{what}' did not finish within {self.step_timeout:.0f} s"
            ) from None
        if proc.returncode != 0:
            last = (err.strip().splitlines() or ["(no message)"])[-1]
            raise DemoFailed(f"{who}: '{what}' failed (exit {proc.returncode}): {last}")
        return out, err

    def cli(self, who: str, *args: str) -> Any:
        """Run one command as ``who`` with --json and return its parsed result."""
        out, _ = self.finish(who, self.spawn(who, *args, "--json"), " ".join(args[:2]))
        return json.loads(out) if out.strip() else None

    def start_relay(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "didmesh.relay",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--store",
            f"sqlite:{self.workdir / 'relay.sqlite3'}",
        ]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self._procs.append(proc)
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(LISTENING):
                self.relay_url = line[len(LISTENING) :].strip()
                return
        raise DemoFailed("the relay did not start within 30 s")

    def stop_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    # -- the story -----------------------------------------------------------------
    def run(self, program: Path, *, relay_only: bool = False) -> dict[str, Any]:
        say = self.say
        self.start_relay()
        say(f"1. A community relay is listening on {self.relay_url} (it is not trusted).")

        for who in PEOPLE:
            self.dids[who] = self.cli(who, "id", "new", "--no-passphrase", "--name", who)["did"]
            say(f"2. {who:<5} created an identity: {self.dids[who]}")

        made = self.cli(
            "alice",
            "session",
            "new",
            "--program",
            str(program),
            "--parties",
            "3",
            "--relay",
            self.relay_url,
            "--name",
            "demo: secure average of salaries",
        )
        sid = made["sessionId"]
        say(
            f"3. alice created session {sid[:8]} for {program.name} "
            f"(sha256 {made['program']['sha256'][:16]}...), 3 parties"
        )

        self.cli("alice", "contacts", "add", "bob", self.dids["bob"])
        self.cli("bob", "contacts", "add", "alice", self.dids["alice"])
        self.cli("alice", "invite", sid, "--to", "bob")
        say("4. alice invited bob by his DID (a signed invite, encrypted to bob, via the relay)")
        code = self.cli("alice", "invite", sid, "--code", "--no-wait")["code"]
        say(f"   and carol by a short code she reads to her over the phone: {code}")
        organizer = self.spawn(
            "alice", "session", "wait", sid, "--timeout", str(int(self.step_timeout)), "--json"
        )

        pending = self.cli("bob", "invites", "--relay", self.relay_url)
        offer = next(p for p in pending if p["sessionId"] == sid)
        say(
            f"5. bob sees a verified invite from {offer.get('organizerName') or 'alice'}; "
            "he accepts"
        )
        ports = free_ports(2)
        self.cli(
            "bob",
            "accept",
            sid,
            "--yes",
            "--program",
            str(program),
            "--endpoint",
            f"tcp://127.0.0.1:{ports[0]}",
        )
        self.cli("carol", "claim", code, "--relay", self.relay_url)
        say("   carol claims the code (SPAKE2: the relay cannot guess it) and accepts")
        self.cli("carol", "accept", sid, "--yes", "--endpoint", f"tcp://127.0.0.1:{ports[1]}")

        waits = {
            who: self.spawn(
                who, "status", sid, "--wait", "--timeout", str(int(self.step_timeout)), "--json"
            )
            for who in ("bob", "carol")
        }
        views = {"alice": json.loads(self.finish("alice", organizer, "session wait")[0])}
        for who, proc in waits.items():
            views[who] = json.loads(self.finish(who, proc, "status --wait")[0])
        hashes = {v["roster"]["hash"] for v in views.values()}
        if len(hashes) != 1:
            raise DemoFailed("the parties hold different rosters")
        say("6. every party verified every acceptance and confirmed the same roster:")
        for who, view in views.items():
            say(f"   {who:<5} reads out: {view['sas']}")
        order = [p["did"] for p in views["alice"]["roster"]["parties"]]
        names = {did: who for who, did in self.dids.items()}
        say("   MPyC party ids: " + ", ".join(f"{i}={names[d]}" for i, d in enumerate(order)))

        say(
            f"7. each party runs {program.name} over the mesh with a private input "
            "(no one else sees it):"
        )
        runs = {}
        for who in PEOPLE:
            receipt = self.workdir / f"receipt-{who}.json"
            args = [
                "run",
                sid,
                "--timeout",
                "30",
                "--connect-timeout",
                "60",
                "--receipt",
                str(receipt),
            ]
            if relay_only:
                args.append("--relay-only")
            runs[who] = (
                self.spawn(who, *args, "--input", f"VALUE={INPUTS[who]}", "--", str(program),
                           "--no-log"),
                receipt,
            )
        outputs = {}
        for who, (proc, _) in runs.items():
            out, err = self.finish(who, proc, "run")
            outputs[who] = (out, err)
        check = [
            ln
            for ln in outputs["alice"][1].splitlines()
            if ln.strip().startswith(("connectivity", "direct", "relay", "party"))
        ]
        for ln in check:
            say("   " + ln.rstrip())
        results = {who: out.strip() for who, (out, _) in outputs.items()}
        if len(set(results.values())) != 1:
            raise DemoFailed("the parties computed different results")
        for ln in results["alice"].splitlines():
            say(f"   result: {ln}")

        verified = self.cli("alice", "verify", *(str(r) for _, r in runs.values()))
        if not verified["valid"]:
            raise DemoFailed("a run receipt did not verify")
        say("8. the three signed run receipts verify: an audit trail with no central log")
        return {
            "sessionId": sid,
            "sas": views["alice"]["sas"],
            "result": results["alice"],
            "relay": self.relay_url,
            "dids": self.dids,
        }


def find_program(name: str = "secure_sum.py") -> Path:
    path = EXAMPLES / name
    if not path.is_file():
        raise DemoFailed(
            f"example program {path} not found; run the demo from a source checkout "
            "(pip install -e .) or pass --program FILE"
        )
    return path


def run_demo(
    say: Callable[[str], None],
    *,
    program: Path | None = None,
    relay_only: bool = False,
    keep: bool = False,
    step_timeout: float = 120.0,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="didmesh-demo-"))
    demo = Demo(workdir, say, step_timeout=step_timeout)
    try:
        src = program or find_program()
        local = workdir / src.name
        shutil.copy(src, local)
        return demo.run(local, relay_only=relay_only)
    finally:
        demo.stop_all()
        if keep:
            say(f"(kept {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
