"""Secret santa: a uniformly random derangement, computed securely (an MPyC program).

Many rounds, small messages. For ``i = n-1 .. 1`` (Fisher-Yates) every party inputs a
private one-hot vector of length ``i+1``; their cyclic convolution is a secret one-hot
vector at the sum of the parties' private offsets modulo ``i+1``: a random position ``j``
no coalition short of all parties knows. ``x[i]`` and ``x[j]`` are swapped obliviously.
If the permutation has a fixed point (its ``prod(x[k] - k)`` is zero) all parties
start over. The derangement is then revealed (a demo: a real exchange would reveal
``x[k]`` to participant ``k`` only).

With ``--seed S`` the parties' private random choices come from ``random.Random``
seeded with ``S`` and the party id, so a run is reproducible (tests compare runs).
"""

import argparse
import random
import secrets

from mpyc.runtime import mpc


def one_hot(k: int, r: int, secint):  # noqa: ANN001, ANN201
    return [secint(int(t == r)) for t in range(k)]


def cyclic_convolution(u, v):  # noqa: ANN001, ANN201
    k = len(u)
    return [mpc.in_prod(u, [v[(t - a) % k] for a in range(k)]) for t in range(k)]


def random_selector(k: int, rng, secint):  # noqa: ANN001, ANN201
    """A secret one-hot vector of length k at a position no single party chose."""
    vectors = mpc.input(one_hot(k, rng.randrange(k), secint))
    u = vectors[0]
    for v in vectors[1:]:
        u = cyclic_convolution(u, v)
    return u


def random_permutation(n: int, rng, secint):  # noqa: ANN001, ANN201
    x = [secint(k) for k in range(n)]
    for i in range(n - 1, 0, -1):
        u = random_selector(i + 1, rng, secint)
        xi = x[i]
        picked = mpc.in_prod(u, x[: i + 1])
        d = [xi - x[k] for k in range(i)]
        x[:i] = [x[k] + w for k, w in enumerate(mpc.schur_prod(u[:i], d))]
        x[i] = picked
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=12, help="number of participants (>= 2)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    args = parser.parse_args()
    if args.n < 2:
        parser.error("secret santa needs at least 2 participants")
    rng = (
        random.Random(f"{args.seed}:{mpc.pid}")
        if args.seed is not None
        else random.Random(secrets.randbits(128))
    )
    secint = mpc.SecInt(32)

    mpc.run(mpc.start())
    attempts = 0
    while True:
        attempts += 1
        x = random_permutation(args.n, rng, secint)
        fixed = mpc.prod([x[k] - k for k in range(args.n)])
        if not mpc.run(mpc.is_zero_public(fixed)):
            break
    result = mpc.run(mpc.output(x))
    print(f"participants: {args.n}")
    print(f"attempts: {attempts}")
    print("derangement: " + " ".join(f"{k}->{int(v)}" for k, v in enumerate(result)))
    assert all(int(v) != k for k, v in enumerate(result))
    assert sorted(int(v) for v in result) == list(range(args.n))
    mpc.run(mpc.shutdown())


if __name__ == "__main__":
    main()
