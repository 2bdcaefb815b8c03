"""Secure sum and average of the parties' private inputs (an MPyC program).

Each party inputs one integer (``--value``, else the private input ``VALUE`` that
``didmesh run --input VALUE=N`` gives as ``$DIDMESH_INPUT_VALUE``; default ``10*pid + 7``).
Nothing but the sum and the average is revealed. Run it like any MPyC program::

    python examples/secure_sum.py -M3            # three local parties, plain MPyC
    didmesh run SESSION --input VALUE=42 -- examples/secure_sum.py
"""

import argparse
import os

from mpyc.runtime import mpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--value", type=int, default=None, help="this party's private input")
    args = parser.parse_args()
    value = args.value
    if value is None:
        value = int(os.environ.get("DIDMESH_INPUT_VALUE", 10 * mpc.pid + 7))

    secfxp = mpc.SecFxp(64, 32)
    mpc.run(mpc.start())
    xs = mpc.input(secfxp(value))
    total = mpc.sum(xs)
    average = total / len(mpc.parties)
    s = mpc.run(mpc.output(total))
    avg = mpc.run(mpc.output(average))
    print(f"parties: {len(mpc.parties)}")
    print(f"sum: {int(s)}")
    print(f"average: {round(float(avg), 4):.4f}")
    mpc.run(mpc.shutdown())


if __name__ == "__main__":
    main()
