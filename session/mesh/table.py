"""The connectivity table a party prints (specs/mesh.md, 8). Pure functions.

:func:`format_table` is the check's table once every party's row is in (READY).
:func:`format_partial` is what a run that failed before that prints: every pair of the
roster, those known (from this party's row, a peer's row, or this party's own links)
with path, RTT and link, the others marked as never connected (with the reason this
party's attempt gave up with) or as unknown here (neither party's row arrived). Its first
line says "incomplete" only when some pair is unknown here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .plan import MeshPlan


@dataclass(frozen=True)
class PairStatus:
    """One row of the connectivity table (measured by the lower party ``a``)."""

    a: int
    b: int
    path: str
    via: str
    rtt_ms: float


@dataclass(frozen=True)
class LocalPair:
    """How this party's own pair with ``peer`` stands when a run failed before its
    check completed: connected (``path``/``via``, ``rtt_ms`` if measured) or not
    (``why``: the reason the attempt gave up, or that it was still trying)."""

    peer: int
    path: str | None = None
    via: str = ""
    rtt_ms: float | None = None
    why: str = ""


def format_table(plan: MeshPlan, table: Sequence[PairStatus]) -> str:
    lines = ["connectivity check (all pairs):"]
    lines += [_line(plan.describe_pair(r.a, r.b), r.path, r.rtt_ms, r.via) for r in table]
    return "\n".join(lines)


def _line(pair: str, path: str, rtt_ms: float | None, via: str) -> str:
    """One connected pair's line (an RTT not measured: ``?``)."""
    rtt = f"{rtt_ms:8.3f} ms" if rtt_ms is not None else "       ? ms"
    return f"  {pair}  {path:<6}  {rtt}  via {via}"


def format_partial(plan: MeshPlan, rows: Mapping[int, Sequence[Mapping[str, Any]]],
                   local: Mapping[int, LocalPair]) -> str:
    """The table of a run that failed before every row was in: ``rows`` are the READY
    rows known here (party id -> its entries ``{peer, path, via, rtt_ms}``), ``local``
    this party's own pairs as its links stand. Every pair of the roster gets a line."""
    me = plan.my_party_id
    lines: list[str] = []
    unknown = never = 0
    for a in range(plan.m):
        for b in range(a + 1, plan.m):
            entry = _entry(rows, a, b) or _entry(rows, b, a)
            pair = plan.describe_pair(a, b)
            mine = local.get(b if a == me else a) if me in (a, b) else None
            if entry is not None:
                lines.append(_line(pair, str(entry["path"]), float(entry["rtt_ms"]),
                                   str(entry["via"])))
            elif mine is not None and mine.path is not None:
                lines.append(_line(pair, mine.path, mine.rtt_ms, mine.via))
            elif mine is not None:
                never += 1
                lines.append(f"  {pair}  never connected: {mine.why or 'reason unknown'}")
            else:
                unknown += 1
                lines.append(f"  {pair}  unknown here: neither party's check arrived")
    return "\n".join([_partial_title(len(lines), unknown, never), *lines])


def _partial_title(pairs: int, unknown: int, never: int) -> str:
    """The partial table's first line: "incomplete" only if some pair is unknown here."""
    if unknown:
        return (f"connectivity check (incomplete, the run failed before it ended; "
                f"{unknown} of {pairs} pairs unknown here):")
    if never:
        return (f"connectivity check (the run failed before it ended; every pair known, "
                f"{never} of {pairs} never connected):")
    return "connectivity check (the run failed before it ended; every pair's path is known):"


def _entry(rows: Mapping[int, Sequence[Mapping[str, Any]]], party: int, peer: int
           ) -> Mapping[str, Any] | None:
    for r in rows.get(party, ()):
        if r.get("peer") == peer:
            return r
    return None


__all__ = ["LocalPair", "PairStatus", "format_partial", "format_table"]
