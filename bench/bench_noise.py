"""Benchmark of the mesh's Noise core and framing (bounded: about 10 s in all).

Run: ``python bench/bench_noise.py [--seconds 0.5]``. Prints one table: the KK handshake
(both sides, in memory), and encrypt+decrypt throughput through SecureChannel for one
message per call and for the coalesced ``send_many`` path, next to the bare AEAD.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from didmesh.session.mesh.channel import MeshHandshake, didmesh_prologue
from didmesh.session.mesh.testing import PartyKeys, channel_pair

AEAD = ChaCha20Poly1305(os.urandom(32))
NONCE = bytes(12)


def timed(
    fn: Callable[[], int], seconds: float, max_iter: int = 1_000_000
) -> tuple[float, int, int]:
    """Run ``fn`` (returns bytes processed) until ``seconds`` pass; (elapsed, iterations, bytes)."""
    fn()  # warm-up
    n = total = 0
    start = time.perf_counter()
    deadline = start + seconds
    while n < max_iter:
        total += fn()
        n += 1
        if time.perf_counter() >= deadline:
            break
    return time.perf_counter() - start, n, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=0.5, help="time per row (default 0.5)")
    args = ap.parse_args()
    sec = min(max(args.seconds, 0.05), 5.0)
    rng = random.Random(1)
    rows: list[tuple[str, str, str, str]] = []

    ka, kb = PartyKeys.from_rng(rng), PartyKeys.from_rng(rng)
    prologue = didmesh_prologue(bytes(32), 0, 1)

    def kk() -> int:
        a = MeshHandshake.initiator(ka.private, kb.public, prologue)
        b = MeshHandshake.responder(kb.private, ka.public, prologue)
        a.step(b.step(a.step()))
        a.into_channel()
        b.into_channel()
        return 0

    el, n, _ = timed(kk, sec)
    rows.append(("KK handshake (both sides)", f"{el / n * 1e6:,.0f} us", f"{n / el:,.0f} /s", ""))

    a, b = channel_pair(rng)
    for size, label in ((64, "64 B"), (1024, "1 KiB"), (65536, "64 KiB"), (1 << 20, "1 MiB")):
        msg = os.urandom(size)

        def one(msg: bytes = msg, size: int = size) -> int:
            b.receive_data(a.send(msg))
            got = b.next_message()
            assert got is not None and len(got) == size
            return size

        el, n, total = timed(one, sec)
        rows.append((f"send+receive {label}, 1 per call", f"{el / n * 1e6:,.1f} us",
                     f"{n / el:,.0f} msg/s", f"{total / el / 1e6:,.1f} MB/s"))  # fmt: skip

        def bare(
            msg: bytes = msg, size: int = size, aead: ChaCha20Poly1305 = AEAD, nonce: bytes = NONCE
        ) -> int:
            aead.decrypt(nonce, aead.encrypt(nonce, msg, None), None)
            return size

        el, n, total = timed(bare, sec)
        rows.append((f"  bare ChaCha20-Poly1305 {label}", f"{el / n * 1e6:,.1f} us",
                     f"{n / el:,.0f} msg/s", f"{total / el / 1e6:,.1f} MB/s"))  # fmt: skip

    for size, count in ((64, 1000), (1024, 100)):
        batch = [os.urandom(size) for _ in range(count)]

        def many(batch: list[bytes] = batch, size: int = size, count: int = count) -> int:
            b.receive_data(a.send_many(batch))
            got = list(b)
            assert len(got) == count
            return size * count

        el, n, total = timed(many, sec)
        msgs = n * count
        rows.append((f"send_many {count} x {size} B (coalesced)", f"{el / msgs * 1e6:,.2f} us",
                     f"{msgs / el:,.0f} msg/s", f"{total / el / 1e6:,.1f} MB/s"))  # fmt: skip

    w = max(len(r[0]) for r in rows)
    print(f"{'case':<{w}}  {'time/op':>12}  {'rate':>15}  {'throughput':>12}")
    print("-" * (w + 45))
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>12}  {r[2]:>15}  {r[3]:>12}")


if __name__ == "__main__":
    main()
