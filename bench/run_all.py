"""Every benchmark in one command, as ratios measured in this one run (issue 6's table).

    python bench/run_all.py [--quick]

1. reference contention model (bench_lock.py): aemu Lock + sleep_ns vs SimPy Resource (if installed);
2. full machine, BQL-bound: hpet-bench --series before at -smp 240, BQL acquisitions per wall second;
3. full machine, lockless: hpet-bench --series after at -smp 240, HPET reads per wall second;
4. temporal decoupling: default quantum vs --quantum 0 wall time on the same runs;
5. scaling: wall time per virtual ms and peak memory per vCPU at several -smp.
Targets (issue 6): 1 >= 1x SimPy, 2 >= 2x SimPy, 3 >= 8x SimPy. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lock import aemu_lock, simpy_resource  # noqa: E402

import aemu  # noqa: E402


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    a = ap.parse_args()
    smp, reads = (64, 100) if a.quick else (240, 300)

    (ops, _), t = timed(lambda: aemu_lock(240, 100))
    lock_rate = ops / t
    try:
        (sops, _), st = timed(lambda: simpy_resource(240, 100))
        simpy_rate: float | None = sops / st
    except ImportError:
        simpy_rate = None
    base = f"-M q35,hpet=on -smp {smp} -accel kvm,kernel-irqchip=split --workload hpet-bench --param reads={reads}"
    before, tb = timed(lambda: aemu.simulate(base + " --series before"))
    after, ta = timed(lambda: aemu.simulate(base + " --series after"))
    after0, ta0 = timed(lambda: aemu.simulate(base + " --series after --quantum 0"))
    bql_rate = before.bql.acquisitions / tb
    hpet_reads = after.regions_by_name()["hpet"].count
    read_rate = hpet_reads / ta

    def ratio(x: float) -> str:
        return f"{x / simpy_rate:.2f}x SimPy" if simpy_rate else "(SimPy not installed: pip install simpy)"

    print(f"reference model, SimPy Resource:            {simpy_rate or 0:>12,.0f} acq/s")
    print(f"reference model, aemu Lock + sleep_ns:      {lock_rate:>12,.0f} acq/s   {ratio(lock_rate)}  (target >= 1x)")
    print(f"machine BQL-bound (before, -smp {smp}):     {bql_rate:>12,.0f} acq/s   {ratio(bql_rate)}  (target >= 2x)")
    print(f"machine lockless (after, -smp {smp}):       {read_rate:>12,.0f} reads/s {ratio(read_rate)}  (target >= 8x)")
    print(f"temporal decoupling: quantum {after.config.quantum_ns} ns is {ta0 / ta:.2f}x faster than --quantum 0 "
          f"(median read {after.metric.value:.0f} vs {after0.metric.value:.0f} ns)")
    for n in ((1, 16, 64) if a.quick else (1, 16, 64, 256, 1024)):
        tracemalloc.start()
        r, t = timed(lambda: aemu.simulate(f"-smp {n} -accel kvm,kernel-irqchip=split --workload idle --duration 2ms"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"scaling -smp {n:>5}: {t / (r.virtual_ns / 1e6):8.3f} s wall per virtual ms, "
              f"peak {peak / n / 1024:8.1f} KiB per vCPU (tracemalloc, whole run)")


if __name__ == "__main__":
    main()
