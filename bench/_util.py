"""Shared helpers for the benchmarks: best-of-N wall timing and a plain table."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], int], repeat: int = 3) -> tuple[float, int]:
    """Run ``fn`` (which returns how many operations it did) ``repeat`` times; best wall seconds."""
    best = float("inf")
    ops = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        ops = fn()
        best = min(best, time.perf_counter() - t0)
    return best, ops


def table(rows: list[tuple[str, float, int]], baseline: str) -> str:
    """Rows of (name, seconds, ops) as ops/s and the ratio to the ``baseline`` row."""
    base = next(ops / s for name, s, ops in rows if name == baseline)
    width = max(len(r[0]) for r in rows)
    out = [f"{'variant':<{width}}  {'ops/s':>12}  {'ns/op':>8}  {'ratio':>6}"]
    for name, s, ops in rows:
        rate = ops / s
        out.append(f"{name:<{width}}  {rate:>12,.0f}  {1e9 / rate:>8,.0f}  {rate / base:>5.2f}x")
    return "\n".join(out)
