"""Load test: one relay process serving many concurrent sessions (issue 6, "Load").

Run: ``python bench/bench_load.py [--sessions 200] [--parties 5] [--frames 20]``.

One relay process (memory store by default, ``--store sqlite:PATH`` for the durable one),
on loopback. For every session, in parallel (at most ``--concurrency`` clients at a time):

1. the organizer seals a real SessionInvite (eddsa-jcs-2022) to each invitee and posts it;
2. each invitee fetches it, verifies the envelope and the invite, and posts a real
   SessionAcceptance (a signed presentation embedding the invite), then acknowledges;
3. the organizer fetches every acceptance, verifies each completely, acknowledges;
4. the organizer opens a forwarding link to each invitee and they echo ``--frames`` frames
   of 1 KiB each way, checked byte for byte.

Bounded in count (sessions x parties) and time (``--deadline`` seconds, default 240). Prints
throughput, the error count (must be 0: the exit code is 1 otherwise) and the peak RSS of
the relay process and of this (client) process.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from didmesh.identity.keys import IdentityKey
from didmesh.relay.client import RelayClient
from didmesh.session.documents import (
    build_acceptance,
    build_invite,
    new_invite_id,
    verify_acceptance,
    verify_invite,
)
from didmesh.session.lab.procs import stop
from didmesh.session.manifest import Manifest, ProgramRef

LISTENING = "didmesh relay listening on "
FRAME = 1024


@dataclass
class LoadReport:
    sessions: int
    parties: int
    frames: int
    seconds: float = 0.0
    envelopes: int = 0
    verified_documents: int = 0
    links: int = 0
    link_frames: int = 0
    link_bytes: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    relay_peak_rss_mb: float = 0.0
    client_peak_rss_mb: float = 0.0

    @property
    def envelopes_per_s(self) -> float:
        return self.envelopes / self.seconds if self.seconds else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.link_frames / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.sessions} sessions x {self.parties} parties in {self.seconds:.1f} s: "
            f"{self.envelopes} envelopes ({self.envelopes_per_s:.0f}/s), "
            f"{self.verified_documents} invites/acceptances verified, {self.links} links, "
            f"{self.link_frames} frames ({self.frames_per_s:.0f}/s, "
            f"{self.link_bytes / 2**20:.1f} MiB), errors {self.errors}, "
            f"relay peak RSS {self.relay_peak_rss_mb:.0f} MiB, "
            f"client peak RSS {self.client_peak_rss_mb:.0f} MiB"
        )


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process (Linux), in MiB; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def spawn_relay(store: str, home: str, timeout: float = 20.0) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "didmesh.relay", "--host", "127.0.0.1", "--port", "0",
        "--store", store, "--rate-ip-per-s", "0", "--rate-did-per-s", "0",
        "--no-access-log", "--links-total", "8192",
    ]  # fmt: skip
    env = {**os.environ, "DIDMESH_HOME": home}
    env.pop("DIDMESH_RELAY_CONFIG", None)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(LISTENING):
            return proc, line[len(LISTENING) :].strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the relay did not start")


def _seed(*parts: object) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


class _Load:
    def __init__(self, url: str, report: LoadReport, concurrency: int, now: datetime) -> None:
        self.url = url
        self.report = report
        self.sem = asyncio.Semaphore(concurrency)
        self.now = now
        self.errors: Counter[str] = Counter()

    def fail(self, what: str, exc: BaseException) -> None:
        self.report.errors += 1
        self.errors[f"{what}: {type(exc).__name__}"] += 1
        if self.report.errors <= 5:
            print(f"error in {what}: {type(exc).__name__}: {exc}", file=sys.stderr)

    async def fetch_all(self, client: RelayClient, want: int, deadline: float) -> list[Any]:
        got: list[Any] = []
        while len(got) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(got)}/{want} envelopes arrived")
            batch = await client.fetch(wait=min(left, 5.0))
            new = [r for r in batch if r.id not in {g.id for g in got}]
            got += new
            if batch:
                await client.ack([r.id for r in batch])
        return got

    async def session(self, index: int, parties: int, frames: int, deadline: float) -> None:
        org = IdentityKey.from_seed(_seed("org", index))
        invitees = [IdentityKey.from_seed(_seed("inv", index, i)) for i in range(1, parties)]
        manifest = Manifest(
            session_id=hashlib.sha256(f"load-{index}".encode()).hexdigest()[:32],
            name=f"load {index}", organizer=org.did,
            program=ProgramRef("sum.py", "ab" * 32, ">=0.10,<0.12", ()),
            parties=parties, threshold=(parties - 1) // 2, relays=(self.url,),
            valid_from=self.now - timedelta(minutes=1), valid_until=self.now + timedelta(hours=1),
        )  # fmt: skip
        sid = manifest.session_id
        async with self.sem:
            org_client = RelayClient(self.url, org, timeout=30)
            inv_clients = [RelayClient(self.url, k, timeout=30) for k in invitees]
            try:
                # 1. invites
                for key in invitees:
                    doc = build_invite(manifest, key.did, org, now=self.now,
                                       invite_id=new_invite_id())  # fmt: skip
                    await org_client.send(key.did, sid, json.dumps(doc).encode(), ttl=3600)
                    self.report.envelopes += 1

                # 2. acceptances
                async def invitee(key: IdentityKey, client: RelayClient) -> None:
                    (item,) = await self.fetch_all(client, 1, deadline)
                    inv = verify_invite(json.loads(item.open(key)), now=self.now, me=key.did,
                                        manifest=manifest)  # fmt: skip
                    self.report.verified_documents += 1
                    acc = build_acceptance(inv, key, session_public=os.urandom(32),
                                           endpoints=[], now=self.now)  # fmt: skip
                    await client.send(org.did, sid, json.dumps(acc).encode(), ttl=3600)
                    self.report.envelopes += 1

                await asyncio.gather(*(invitee(k, c) for k, c in zip(invitees, inv_clients,
                                                                      strict=True)))  # fmt: skip
                # 3. the organizer verifies every acceptance
                items = await self.fetch_all(org_client, len(invitees), deadline)
                holders = set()
                for item in items:
                    acc = verify_acceptance(json.loads(item.open(org)), manifest=manifest,
                                            now=self.now)  # fmt: skip
                    holders.add(acc.holder)
                    self.report.verified_documents += 1
                assert holders == {k.did for k in invitees}, "acceptances from the wrong DIDs"

                # 4. forwarding links, echoed
                async def link(key: IdentityKey, client: RelayClient) -> None:
                    a, b = await asyncio.gather(
                        org_client.open_link(sid, key.did, link_id=f"l{index}", timeout=30),
                        client.open_link(sid, org.did, link_id=f"l{index}", timeout=30),
                    )
                    self.report.links += 1
                    try:
                        for n in range(frames):
                            payload = _seed(index, key.did, n) * (FRAME // 32)
                            await a.send(payload)
                            echo = await b.recv(timeout=30)
                            await b.send(echo)
                            back = await a.recv(timeout=30)
                            if back != payload:
                                raise AssertionError("a link frame came back altered")
                            self.report.link_frames += 2
                            self.report.link_bytes += 2 * len(payload)
                    finally:
                        await a.close()
                        await b.close()

                if frames:
                    await asyncio.gather(*(link(k, c) for k, c in zip(invitees, inv_clients,
                                                                       strict=True)))  # fmt: skip
            except Exception as exc:  # counted, reported, and the run goes on
                self.fail(f"session {index}", exc)
            finally:
                for c in (org_client, *inv_clients):
                    await c.close()


async def run_load(
    url: str,
    *,
    sessions: int,
    parties: int,
    frames: int,
    concurrency: int = 50,
    deadline_s: float = 240.0,
    relay_pid: int | None = None,
) -> LoadReport:
    """Drive the load against the relay at ``url``; never raises for a session's failure
    (it is counted in ``errors``), but stops at ``deadline_s`` (the rest count as errors)."""
    report = LoadReport(sessions, parties, frames)
    load = _Load(url, report, concurrency, datetime.now(UTC))
    start = time.monotonic()
    deadline = start + deadline_s
    tasks = [
        asyncio.ensure_future(load.session(i, parties, frames, deadline)) for i in range(sessions)
    ]
    done, pending = await asyncio.wait(tasks, timeout=deadline_s)
    for task in pending:
        task.cancel()
        load.fail("deadline", TimeoutError("session unfinished at the deadline"))
    await asyncio.gather(*pending, return_exceptions=True)
    report.seconds = time.monotonic() - start
    report.error_kinds = dict(load.errors)
    if relay_pid is not None:
        report.relay_peak_rss_mb = peak_rss_mb(relay_pid)
    report.client_peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del done
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--parties", type=int, default=5)
    ap.add_argument("--frames", type=int, default=20, help="echoed frames per link")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--deadline", type=float, default=240.0)
    ap.add_argument("--store", default="memory", help="memory | sqlite:PATH")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="didmesh-load-") as home:
        proc, url = spawn_relay(args.store, home)
        try:
            report = asyncio.run(
                run_load(url, sessions=args.sessions, parties=args.parties, frames=args.frames,
                         concurrency=args.concurrency, deadline_s=args.deadline,
                         relay_pid=proc.pid)  # fmt: skip
            )
        finally:
            stop(proc, 15)
    if args.json:
        print(json.dumps(asdict(report) | {"envelopes_per_s": report.envelopes_per_s,
                                           "frames_per_s": report.frames_per_s}))  # fmt: skip
    else:
        print(report.summary())
        for kind, n in report.error_kinds.items():
            print(f"  {n} x {kind}")
    return 0 if report.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
