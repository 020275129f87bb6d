"""Latency summaries: QPS and nearest-rank percentiles of one measurement window."""
from __future__ import annotations

import math


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(latencies: list[float], elapsed: float) -> dict:
    values = sorted(latencies)
    n = len(values)
    return {
        "calls": n,
        "seconds": round(elapsed, 3),
        "qps": round(n / elapsed, 1) if elapsed > 0 else 0.0,
        "mean_ms": round(sum(values) / n * 1e3, 4) if n else math.nan,
        "p50_ms": round(percentile(values, 50) * 1e3, 4),
        "p99_ms": round(percentile(values, 99) * 1e3, 4),
        "max_ms": round(values[-1] * 1e3, 4) if n else math.nan,
    }
