"""The reference contention model (PERF-NOTES): 240 workers each compute a seeded uniform
1-10 µs of virtual time, take one lock, hold it 200 ns, release. Lock acquisitions per wall second.

    python bench/bench_lock.py [--workers 240] [--rounds 100]

Variants: aemu's accounted ``Lock`` with ``sleep_ns``; ``asyncio.Lock`` with ``asyncio.sleep`` on
the same virtual loop; SimPy's ``Resource(capacity=1)`` when SimPy is installed (optional). The
mean wait of each variant is printed too: with FIFO tie-breaking they must agree.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import best_of, table  # noqa: E402

from aemu import clock  # noqa: E402
from aemu.sync import Lock  # noqa: E402

HOLD_NS = 200


def think_times(seed: int, rounds: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1_000, 10_000) for _ in range(rounds)]


def aemu_lock(workers: int, rounds: int) -> tuple[int, float]:
    async def main() -> float:
        lock = Lock("BQL", bql=True)

        async def worker(i: int) -> None:
            for think in think_times(i, rounds):
                await clock.sleep_ns(think)
                await lock.acquire("worker")
                await clock.sleep_ns(HOLD_NS)
                lock.release()

        await asyncio.gather(*(worker(i) for i in range(workers)))
        return lock.statistics().wait_ns.mean

    return workers * rounds, clock.run(main())


def aemu_lock_keeper(workers: int, rounds: int, quantum_ns: int = 1_000_000) -> tuple[int, float]:
    """The same model with temporal decoupling: each worker keeps a local clock (a QuantumKeeper
    with ``hold_ahead``) for its think and hold times, syncs (one ``sleep_ns``) before taking the
    lock, and the lock computes the grant from the previous release's local time. The mean wait
    must equal the other variants' to the nanosecond."""
    async def main() -> float:
        lock = Lock("BQL", bql=True)

        async def worker(i: int) -> None:
            k = clock.QuantumKeeper(quantum_ns, hold_ahead=True)
            k.attach()
            try:
                for think in think_times(i, rounds):
                    if k.advance(think):
                        await k.sync()
                    await lock.acquire("worker")
                    if k.advance(HOLD_NS):
                        await k.sync()
                    lock.release()
                await k.sync()
            finally:
                k.detach()

        await asyncio.gather(*(worker(i) for i in range(workers)))
        return lock.statistics().wait_ns.mean

    return workers * rounds, clock.run(main())


def asyncio_lock(workers: int, rounds: int) -> tuple[int, float]:
    waits: list[int] = []

    async def main() -> None:
        lock = asyncio.Lock()

        async def worker(i: int) -> None:
            for think in think_times(i, rounds):
                await asyncio.sleep(think * 1e-9)
                t0 = clock.now_ns()
                async with lock:
                    waits.append(clock.now_ns() - t0)
                    await asyncio.sleep(HOLD_NS * 1e-9)

        await asyncio.gather(*(worker(i) for i in range(workers)))

    clock.run(main())
    return workers * rounds, sum(waits) / len(waits)


def simpy_resource(workers: int, rounds: int) -> tuple[int, float]:
    import simpy

    env = simpy.Environment()
    res = simpy.Resource(env, capacity=1)
    waits: list[float] = []

    def worker(i: int):  # type: ignore[no-untyped-def]
        for think in think_times(i, rounds):
            yield env.timeout(think)
            t0 = env.now
            with res.request() as req:
                yield req
                waits.append(env.now - t0)
                yield env.timeout(HOLD_NS)

    for i in range(workers):
        env.process(worker(i))
    env.run()
    return workers * rounds, sum(waits) / len(waits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=240)
    ap.add_argument("--rounds", type=int, default=100)
    a = ap.parse_args()
    variants = {"aemu Lock + sleep_ns": aemu_lock,
                "aemu Lock + QuantumKeeper": aemu_lock_keeper,
                "asyncio.Lock + asyncio.sleep": asyncio_lock}
    try:
        import simpy  # noqa: F401

        variants["SimPy Resource + timeout"] = simpy_resource
    except ImportError:
        print("(SimPy not installed: pip install simpy to compare against it)")
    rows, means = [], {}
    for name, fn in variants.items():
        result: dict[str, float] = {}

        def once(fn=fn, result=result) -> int:  # type: ignore[no-untyped-def]
            ops, result["mean"] = fn(a.workers, a.rounds)
            return ops

        rows.append((name, *best_of(once)))
        means[name] = result["mean"]
    print(f"reference contention model: {a.workers} workers x {a.rounds} acquisitions, "
          f"1-10 µs think, {HOLD_NS} ns hold (best of 3)")
    print(table(rows, baseline="aemu Lock + sleep_ns"))
    for name, m in means.items():
        print(f"  mean wait, {name}: {m:,.1f} ns")


if __name__ == "__main__":
    main()
