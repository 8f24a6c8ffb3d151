"""Percentiles and summaries for latency samples (pure, numpy-free for exactness in tests)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Summary", "percentile", "summarize"]


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0–100) with linear interpolation between closest ranks
    (numpy's default "linear" method), so p50 of [1, 2, 3, 4] is 2.5."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float

    def as_ms(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "p50": round(self.p50 * 1000, 1),
            "p95": round(self.p95 * 1000, 1),
            "p99": round(self.p99 * 1000, 1),
            "mean": round(self.mean * 1000, 1),
            "max": round(self.max * 1000, 1),
        }


def summarize(samples: Sequence[float]) -> Summary | None:
    if not samples:
        return None
    return Summary(
        count=len(samples),
        p50=percentile(samples, 50),
        p95=percentile(samples, 95),
        p99=percentile(samples, 99),
        mean=sum(samples) / len(samples),
        max=max(samples),
    )
