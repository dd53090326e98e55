"""The final choice: one rule, on val figures, that says which of its clauses decided.

Among the int8 rows whose val drop is within ``max_drop`` and whose int8 arithmetic was
executed (not ``simulated``):

1. **speed** - the fastest (batch-``latency_batch`` median) wins when it leads the next fastest
   by more than the two rows' latency spreads added up (``latency_spread_ms``: the
   interquartile range of the timing repeats). A lead inside that band is noise on a shared
   CPU, so then every row whose latency is within spread of the fastest is tied on speed, and
2. **size** - the smallest file among the tied wins,
3. **int8 layers** - then the one with more int8 layers,
4. then the lower median latency (``tie``).

A ``simulated`` row (int8 emulated in fp32, its latency and often its size not those of a
deployed int8 model) never wins on speed or size: it is chosen only when no executed row is
within budget (``simulated-only``: the most accurate on val of the simulated rows within
budget). When no int8 row at all is within budget, the most accurate on val wins
(``most-accurate``; ties: executed before simulated, then smaller). Test figures play no part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vitquant.errors import VitquantError
from vitquant.results import ResultRow, fp32_reference

RULES = ("only", "speed", "size", "int8-layers", "tie", "simulated-only", "most-accurate")


@dataclass(frozen=True)
class Choice:
    """The chosen row, the clause of the rule that chose it (one of ``RULES``) and why."""

    row: ResultRow
    rule: str
    reason: str


def val_drop_pts(row: ResultRow, fp32: ResultRow) -> float:
    """``(fp32 val accuracy - row val accuracy) x 100``, rounded to 1e-4 points."""
    if row.val_accuracy is None or fp32.val_accuracy is None:
        raise VitquantError(f"{row.variant}/{row.backend} has no val accuracy to choose on.")
    return round((fp32.val_accuracy - row.val_accuracy) * 100, 4)


def _name(row: ResultRow) -> str:
    return f"{row.variant} ({row.backend})"


def _lat(row: ResultRow) -> float:
    return row.latency_ms_per_image if row.latency_ms_per_image is not None else math.inf


def _spread(row: ResultRow) -> float:
    return row.latency_spread_ms or 0.0


def choose_final(rows: Sequence[ResultRow], *, max_drop: float) -> Choice:
    """Apply the rule (module docstring) to ``rows``; the fp32 PyTorch row is the reference.

    Raises:
        VitquantError: no fp32 PyTorch row, no int8 row, or a row without val accuracy.
    """
    fp32 = fp32_reference(list(rows))
    if fp32 is None:
        raise VitquantError("the final choice needs the fp32 PyTorch row (the val reference).")
    int8 = [r for r in rows if r.variant != "fp32"]
    if not int8:
        raise VitquantError("no int8 variant to choose from.")
    drop = {id(r): val_drop_pts(r, fp32) for r in int8}
    within = [r for r in int8 if drop[id(r)] <= max_drop]
    executed = [r for r in within if not r.simulated]
    budget = f"the {max_drop} pt val budget"
    if executed:
        choice = _fastest_or_smallest(executed)
        head = f"{len(executed)} executed int8 variant(s) within {budget}"
        if len(within) > len(executed):
            head += (
                f" ({len(within) - len(executed)} simulated row(s) set aside: emulated int8 "
                "wins on neither speed nor size)"
            )
        return Choice(choice.row, choice.rule, f"{head}; {choice.reason}")
    if within:
        best = max(within, key=lambda r: (r.val_accuracy, r.int8_layers))
        return Choice(
            best,
            "simulated-only",
            f"only simulated variants (int8 emulated in fp32, not executed) are within {budget}, "
            f"so neither speed nor size could decide; {_name(best)} is the most accurate of "
            f"them on val (drop {drop[id(best)]:.2f} pts).",
        )
    best = max(int8, key=lambda r: (r.val_accuracy, not r.simulated, -r.size_mb, r.int8_layers))
    simulated = (
        " It is a simulated row: its int8 arithmetic was emulated, not executed."
        if best.simulated
        else ""
    )
    return Choice(
        best,
        "most-accurate",
        f"no int8 variant is within {budget}; {_name(best)} is the most accurate on val "
        f"(drop {drop[id(best)]:.2f} pts).{simulated}",
    )


def _fastest_or_smallest(rows: list[ResultRow]) -> Choice:
    """Clauses 1-4 of the rule on executed rows within budget."""
    if len(rows) == 1:
        r = rows[0]
        return Choice(r, "only", f"{_name(r)} is the only one ({_figures(r)}).")
    by_speed = sorted(rows, key=_lat)
    fast, nxt = by_speed[0], by_speed[1]
    if math.isfinite(_lat(fast)):
        gap, band = _lat(nxt) - _lat(fast), _spread(fast) + _spread(nxt)
        if gap > band:
            return Choice(
                fast,
                "speed",
                f"{_name(fast)} is the fastest ({_figures(fast)}), {gap:.3f} ms/img ahead of "
                f"{_name(nxt)}, more than their summed latency spreads ({band:.3f} ms): "
                "speed decided.",
            )
        tied = [r for r in by_speed if _lat(r) - _lat(fast) <= _spread(fast) + _spread(r)]
        why = (
            f"the fastest, {_name(fast)} ({_lat(fast):.3f} ms/img), leads {_name(nxt)} by "
            f"{gap:.3f} ms/img, within their summed latency spreads ({band:.3f} ms), so "
            f"{len(tied)} are tied on speed"
        )
    else:  # nothing was timed: speed cannot decide
        tied, why = rows, "none was timed, so speed cannot decide"
    ranked = sorted(tied, key=lambda r: (r.size_mb, -r.int8_layers, _lat(r)))
    best, second = ranked[0], ranked[1]
    if best.size_mb < second.size_mb:
        rule, then = "size", f"the smaller file decided: {_name(best)}"
    elif best.int8_layers > second.int8_layers:
        rule, then = (
            "int8-layers",
            f"equal files, so more int8 layers decided: {_name(best)}",
        )
    else:
        rule, then = (
            "tie",
            f"equal in file size and int8 layers; the lower median latency breaks the tie: "
            f"{_name(best)}",
        )
    return Choice(best, rule, f"{why}; {then} ({_figures(best)}).")


def _figures(row: ResultRow) -> str:
    lat = (
        f"{row.latency_ms_per_image:.3f} ms/img (IQR {_spread(row):.3f})"
        if row.latency_ms_per_image is not None
        else "not timed"
    )
    return f"{lat}, {row.size_mb:.2f} MiB, {row.int8_layers} int8 layers"
