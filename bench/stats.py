"""Latency summaries: QPS and nearest-rank percentiles of one measurement window."""
from __future__ import annotations

import math
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def git(*args: str) -> str | None:
    """What `git ARGS` prints in the repository (a run's commit, whether it was modified)."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

