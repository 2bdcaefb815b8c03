"""A latency-bound MPyC program for benchmarks: ``-n`` rounds, one after the other.

    python bench/mpc_rounds.py -n 40 -M2        # plain MPyC, two local parties

Each round every party inputs one integer that depends on the previous round's output
and the sum is opened (one or two small messages each way per pair), so the rounds cannot
overlap: the run's elapsed time is about ``n`` round trips of the slowest pair plus little
CPU. ``bench/bench_punch.py`` uses it beside the examples to show a path's per-round cost
apart from the programs' own computation. Prints the final value (the same for every
transport).
"""

from __future__ import annotations

import argparse

from mpyc.runtime import mpc


async def main(rounds: int) -> int:
    secint = mpc.SecInt(32)
    await mpc.start()
    value = 0
    for _ in range(rounds):  # the next round's input needs this round's output
        value = int(await mpc.output(mpc.sum(mpc.input(secint(value % 1000 + mpc.pid)))))
    await mpc.shutdown()
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=40)
    args = parser.parse_args()
    print(f"value: {mpc.run(main(args.rounds))}")
