"""Virtual loop cost per timer: aemu's timer calendar against a virtual clock on asyncio's own
TimerHandle heap (the stock loop's timer machinery with only ``time()`` made virtual).

    python bench/bench_clock.py [--workers 240] [--sleeps 200]

240 tasks each sleep a seeded uniform 1-10 us of virtual time, ``--sleeps`` times. Reported as
timers per wall second and as ratios measured in this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import selectors
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import best_of, table  # noqa: E402

from aemu import clock  # noqa: E402


class _JumpSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Stock-heap baseline: instead of blocking for ``timeout``, jump virtual time by it."""

    loop: StockHeapVirtualLoop

    def select(self, timeout: float | None = None):  # type: ignore[no-untyped-def]
        if timeout:
            self.loop.vt += timeout
        return super().select(0)


class StockHeapVirtualLoop(asyncio.SelectorEventLoop):
    """asyncio's loop, TimerHandle heap and all, with ``time()`` virtual (the usual approach)."""

    def __init__(self) -> None:
        sel = _JumpSelector()
        self.vt = 0.0
        super().__init__(sel)
        sel.loop = self

    def time(self) -> float:
        return self.vt


def workload(sleep: str, workers: int, sleeps: int) -> int:
    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        if sleep == "sleep_ns":
            for _ in range(sleeps):
                await clock.sleep_ns(rng.randint(1_000, 10_000))
        else:
            for _ in range(sleeps):
                await asyncio.sleep(rng.randint(1_000, 10_000) * 1e-9)

    async def main() -> None:
        await asyncio.gather(*(worker(i) for i in range(workers)))

    return main()  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=240)
    ap.add_argument("--sleeps", type=int, default=200)
    a = ap.parse_args()
    n = a.workers * a.sleeps

    def aemu_sleep_ns() -> int:
        clock.run(workload("sleep_ns", a.workers, a.sleeps))  # type: ignore[arg-type]
        return n

    def aemu_asyncio_sleep() -> int:
        clock.run(workload("asyncio", a.workers, a.sleeps))  # type: ignore[arg-type]
        return n

    def stock_heap() -> int:
        with asyncio.Runner(loop_factory=StockHeapVirtualLoop) as r:
            r.run(workload("asyncio", a.workers, a.sleeps))  # type: ignore[arg-type]
        return n

    rows = [
        ("stock TimerHandle heap, asyncio.sleep", *best_of(stock_heap)),
        ("aemu loop, asyncio.sleep", *best_of(aemu_asyncio_sleep)),
        ("aemu loop, clock.sleep_ns", *best_of(aemu_sleep_ns)),
    ]
    print(f"timers: {a.workers} tasks x {a.sleeps} sleeps of 1-10 us virtual (best of 3)")
    print(table(rows, baseline="stock TimerHandle heap, asyncio.sleep"))


if __name__ == "__main__":
    main()
