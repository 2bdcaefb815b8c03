"""Secure fixed-point matrix product with numpy (an MPyC program).

Few rounds, large messages. Party 0 inputs a private ``n x n`` matrix ``A`` and party
1 (party 0 when alone) a private ``B``; all parties learn ``C = A @ B`` and print its
size, sum, trace and a SHA-256 digest of its entries. Entries of ``A`` and ``B`` are
multiples of 1/4 in [-2, 2], so the fixed-point products are exact and every run with
the same inputs prints the same digest.

With ``--seed S`` the matrices come from ``numpy.random.default_rng([S, pid])``.
"""

import argparse
import hashlib
import secrets

import numpy as np
from mpyc.runtime import mpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="matrix dimension (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbits(64)
    rng = np.random.default_rng([seed, mpc.pid])
    n = args.n
    mine = rng.integers(-8, 9, size=(n, n)) / 4

    secfxp = mpc.SecFxp(32, 16)
    mpc.run(mpc.start())
    m = len(mpc.parties)
    A = mpc.input(secfxp.array(mine), senders=0)
    B = mpc.input(secfxp.array(mine), senders=1 % m)
    C = A @ B
    c = mpc.run(mpc.output(C))
    scaled = np.rint(np.asarray(c, dtype=float) * 16).astype(np.int64)
    print(f"n: {n}")
    print(f"sum: {scaled.sum() / 16:.4f}")
    print(f"trace: {np.trace(scaled) / 16:.4f}")
    print(f"sha256: {hashlib.sha256(scaled.tobytes()).hexdigest()}")
    mpc.run(mpc.shutdown())


if __name__ == "__main__":
    main()
