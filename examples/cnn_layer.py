"""A quantized convolution layer on private images with private weights (an MPyC program).

Few rounds, multi-megabyte messages. Party 0 holds a private batch of small images
(``--images`` of 32x32 RGB, 4-bit pixels) and party 1 (party 0 when alone) the
private weights of a 3x3 convolution with ``--filters`` output channels (integers in
[-8, 8]), as in a quantized CNN. Party 0 lays its images out as im2col patches (a
``(images*30*30) x 27`` matrix: a private, local step) and secret-shares them: with the
defaults one input message of several megabytes to every other party. The parties then
compute the convolution as one secure matrix product, a square activation (as in
CryptoNets) and a sum pool per image and filter; all parties learn only the pooled
``images x filters`` values and print them with a SHA-256 digest. Integer arithmetic
throughout, so every run with the same inputs prints the same output.

With ``--seed S`` the inputs come from ``numpy.random.default_rng([S, pid])``.
"""

import argparse
import hashlib
import secrets

import numpy as np
from mpyc.runtime import mpc

SIDE = 32  # image height and width
CHANNELS = 3
K = 3  # kernel height and width


def im2col(images: np.ndarray) -> np.ndarray:
    """``(n, SIDE, SIDE, C)`` images -> ``(n * out * out, K * K * C)`` patches (valid conv)."""
    n = images.shape[0]
    out = SIDE - K + 1
    cols = [images[:, i : i + out, j : j + out, :] for i in range(K) for j in range(K)]
    return np.stack(cols, axis=3).reshape(n * out * out, K * K * CHANNELS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images in the batch (24)")
    parser.add_argument("--filters", type=int, default=8, help="output channels (8)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    args = parser.parse_args()
    if args.images < 1 or args.filters < 1:
        parser.error("--images and --filters must be at least 1")
    seed = args.seed if args.seed is not None else secrets.randbits(64)
    rng = np.random.default_rng([seed, mpc.pid])
    n, f = args.images, args.filters
    out = SIDE - K + 1
    images = rng.integers(0, 16, size=(n, SIDE, SIDE, CHANNELS))
    weights = rng.integers(-8, 9, size=(K * K * CHANNELS, f))

    secint = mpc.SecInt(64)
    mpc.run(mpc.start())
    m = len(mpc.parties)
    patches = mpc.input(secint.array(im2col(images)), senders=0)  # the large message
    kernel = mpc.input(secint.array(weights), senders=1 % m)
    conv = patches @ kernel  # (n * out * out, f)
    activated = conv * conv
    pooled = activated.reshape(n, out * out, f).sum(axis=1)  # (n, f)
    result = np.asarray(mpc.run(mpc.output(pooled)), dtype=np.int64)
    print(f"images: {n}  filters: {f}  patch matrix: {n * out * out} x {K * K * CHANNELS}")
    print(f"pooled[0]: {' '.join(str(int(v)) for v in result[0])}")
    print(f"total: {int(result.sum())}")
    print(f"sha256: {hashlib.sha256(result.tobytes()).hexdigest()}")
    mpc.run(mpc.shutdown())


if __name__ == "__main__":
    main()
