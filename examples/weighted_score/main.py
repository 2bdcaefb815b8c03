"""Weighted score: a program made of several files (a didmesh *bundle*).

The parties' private scores are combined with public weights read from
``data/weights.csv`` (relative to this folder) by the sibling module ``scoring.py``; only
the weighted total and the best party's weight class are revealed. Each party's private
score comes from ``--input SCORE=N`` (the environment variable ``DIDMESH_INPUT_SCORE``),
default ``3 * pid + 2``. The agreed argument ``--scale K`` multiplies the result.

Run it as plain MPyC from this folder, or as a bundle with didmesh::

    cd examples/weighted_score && python main.py -M3 --scale 10
    didmesh session new --program examples/weighted_score --arg=--scale --arg=10 ...
    didmesh run SESSION --input SCORE=42 -- examples/weighted_score
"""

import argparse
import os

import scoring
from mpyc.runtime import mpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1, help="agreed multiplier")
    args, _ = parser.parse_known_args()
    weights = scoring.load_weights("data/weights.csv")  # relative to the working directory
    mine = int(os.environ.get("DIDMESH_INPUT_SCORE", 3 * mpc.pid + 2))

    secint = mpc.SecInt(48)
    mpc.run(mpc.start())
    scores = mpc.input(secint(mine))
    total = scoring.weighted_total(mpc, scores, weights) * args.scale
    best = mpc.max(scores)
    print(f"parties: {len(mpc.parties)}")
    print(f"weights: {scoring.describe(weights[: len(mpc.parties)])}")
    print(f"weighted total: {mpc.run(mpc.output(total))}")
    print(f"best score: {mpc.run(mpc.output(best))}")
    mpc.run(mpc.shutdown())


if __name__ == "__main__":
    main()
