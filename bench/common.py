"""Shared bench helpers: timing and the side-by-side table."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def seconds(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best wall time of `repeat` calls (the least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95))


HEADER = ("benchmark", "binsight", "naive baseline", "speed-up", "share of peak")


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...] = HEADER) -> None:
    """rows: (what, binsight, naive baseline, speed-up[, share of peak]), or the columns `header`
    names; a shorter row leaves the last columns blank."""
    rows = [tuple(row) + ("",) * (len(header) - len(row)) for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if row is header:
            print(line)
    print(line)
