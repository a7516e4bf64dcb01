"""Small statistics for measured figures: a summary of one run, a range over several."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values``, interpolated; the value itself for one value."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """min, median, p95 and max of ``values`` (at least one)."""
    return {"min": min(values), "median": statistics.median(values), "p95": percentile(values, 95),
            "max": max(values)}


def span(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """``values`` as a range, "low-high" (or one value when they agree), for a figure over several runs."""
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}-{high}"


def most_at_once(intervals: Sequence[tuple[float, float]]) -> int:
    """The most of ``intervals`` (start, end) that were open at the same moment: peak concurrency."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most
