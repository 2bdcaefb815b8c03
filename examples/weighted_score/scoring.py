"""Helpers of the weighted-score bundle: public weights from a CSV file, a weighted sum."""

import csv
from collections.abc import Sequence
from typing import Any


def load_weights(path: str) -> list[int]:
    """Integer weights, one per party in party order, from a ``party,weight`` CSV file."""
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh)]
    return [int(r["weight"]) for r in sorted(rows, key=lambda r: int(r["party"]))]


def weighted_total(mpc: Any, values: Sequence[Any], weights: Sequence[int]) -> Any:
    """The secret sum of ``weights[i] * values[i]`` (public weights, secret values)."""
    if len(weights) < len(values):
        raise ValueError(f"{len(values)} parties but only {len(weights)} weights")
    return mpc.sum([w * v for w, v in zip(weights, values, strict=False)])


def describe(weights: Sequence[int]) -> str:
    return ", ".join(str(w) for w in weights)
