"""Every benchmark in one command, as ratios measured in this one run (issue 6's table).

    python bench/run_all.py [--quick] [--profile DIR]

1. reference contention model (bench_lock.py, 240 workers x 100 acquisitions): SimPy
   ``Resource`` vs aemu's ``Lock`` + ``sleep_ns``, and vs the same model with a ``QuantumKeeper``
   per worker (local think/hold time, one sync per acquisition, grants computed from releases);
2. full machine, BQL-bound: hpet-bench --series before at -smp 240, BQL acquisitions per wall second;
3. full machine, lockless: hpet-bench --series after at -smp 240, HPET reads per wall second;
4. temporal decoupling: default quantum vs --quantum 0 on hpet-bench and boot: wall-time ratio
   and the largest relative difference in the statistics (metric, virtual time, BQL
   acquisitions, mean BQL wait);
5. scaling, -smp 1 ... 4096: wall seconds per virtual millisecond (hpet-bench after, 100 reads
   per vCPU), per vCPU, and peak traced memory per vCPU (tracemalloc, separate run).

Wall times are the best of a few runs (this kind of shared VM is noisy); every ratio divides two
figures measured in this run. Targets (issue 6): 1 >= 1x SimPy, 2 >= 2x SimPy, 3 >= 8x SimPy,
5 linear or better and <= 20 KB per vCPU. Nothing here is a pass/fail test.
``--profile DIR`` also writes cProfile listings of the machine runs (2 and 3) into DIR.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lock import aemu_lock, aemu_lock_keeper, simpy_resource  # noqa: E402

import aemu  # noqa: E402

HPET = "-M q35,hpet=on -smp {n} -accel kvm,kernel-irqchip=split --workload hpet-bench --param reads={reads}"
BOOT = "-M q35,hpet=off -smp {n} -accel kvm,kernel-irqchip=split --workload boot"


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall seconds of ``repeat`` runs, and the last run's result."""
    t_best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        t_best = min(t_best, time.perf_counter() - t0)
    return t_best, result


def profile(fn: Callable[[], Any], path: Path, title: str) -> None:
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    out.write(f"# {title}\n# cProfile, sorted by own time (profiling slows Python calls ~3x)\n")
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
    path.write_text(out.getvalue())


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    ap.add_argument("--profile", metavar="DIR", type=Path, help="write cProfile listings of the machine runs here")
    a = ap.parse_args()
    smp = 64 if a.quick else 240
    repeat = 2 if a.quick else 3
    try:
        import simpy  # noqa: F401
    except ImportError:
        sys.exit("bench/run_all.py compares against SimPy: pip install simpy")

    # 1. the reference model
    t_simpy, (ops, w_simpy) = best(lambda: simpy_resource(240, 100), repeat)
    t_lock, (_, w_lock) = best(lambda: aemu_lock(240, 100), repeat)
    t_keep, (_, w_keep) = best(lambda: aemu_lock_keeper(240, 100), repeat)
    simpy_rate = ops / t_simpy

    def ratio(rate: float) -> str:
        return f"{rate / simpy_rate:5.2f}x SimPy"

    print(f"1. reference model, 240 workers x 100 (mean waits: SimPy {w_simpy:,.1f} ns, "
          f"aemu {w_lock:,.1f} ns, aemu+keeper {w_keep:,.1f} ns)")
    print(f"   SimPy Resource + timeout:           {simpy_rate:>10,.0f} acq/s")
    print(f"   aemu Lock + sleep_ns:               {ops / t_lock:>10,.0f} acq/s  {ratio(ops / t_lock)}  (target >= 1x)")
    print(f"   aemu Lock + QuantumKeeper:          {ops / t_keep:>10,.0f} acq/s  {ratio(ops / t_keep)}")

    # 2./3. the full machine
    before_cfg = HPET.format(n=smp, reads=100) + " --series before"
    after_cfg = HPET.format(n=smp, reads=300) + " --series after"
    tb, before = best(lambda: aemu.simulate(before_cfg), repeat)
    ta, after = best(lambda: aemu.simulate(after_cfg), repeat)
    bql_rate = before.bql.acquisitions / tb
    read_rate = after.regions_by_name()["hpet"].count / ta
    print(f"2. machine BQL-bound (hpet-bench before, -smp {smp}, {before.bql.acquisitions:,} acquisitions):")
    print(f"                                       {bql_rate:>10,.0f} acq/s  {ratio(bql_rate)}  (target >= 2x)")
    print(f"3. machine lockless (hpet-bench after, -smp {smp}, {after.regions_by_name()['hpet'].count:,} reads):")
    print(f"                                       {read_rate:>10,.0f} reads/s {ratio(read_rate)}  (target >= 8x)")
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
        profile(lambda: aemu.simulate(before_cfg), a.profile / "machine-bql-bound.txt", before_cfg)
        profile(lambda: aemu.simulate(after_cfg), a.profile / "machine-lockless.txt", after_cfg)
        print(f"   profiles written to {a.profile}/machine-bql-bound.txt and machine-lockless.txt")

    # 4. temporal decoupling
    print("4. temporal decoupling: default quantum vs --quantum 0")
    for name, cfg in [("hpet-bench before", before_cfg), ("hpet-bench after", after_cfg),
                      ("boot before", BOOT.format(n=min(smp, 64)) + " --series before"),
                      ("boot after", BOOT.format(n=smp) + " --series after")]:
        tq, fast = best(lambda: aemu.simulate(cfg), 1)
        t0, exact = best(lambda: aemu.simulate(cfg + " --quantum 0"), 1)
        worst = max(rel_diff(exact.metric.value, fast.metric.value), rel_diff(exact.virtual_ns, fast.virtual_ns),
                    rel_diff(exact.bql.acquisitions, fast.bql.acquisitions),
                    rel_diff(exact.bql.wait_ns.mean, fast.bql.wait_ns.mean) if exact.bql.wait_ns.mean else 0.0)
        n = cfg.split("-smp ")[1].split()[0]
        print(f"   {name:<18} -smp {n:>3}: {t0 / tq:5.2f}x faster with quantum {fast.config.quantum_ns} ns; "
              f"statistics within {worst:.2%} (metric {fast.metric.value:,.6g} vs {exact.metric.value:,.6g})")

    # 5. scaling
    sizes = (1, 16, 64, 256) if a.quick else (1, 4, 16, 64, 256, 1024, 4096)
    print("5. scaling (hpet-bench after, 100 reads per vCPU):")
    base_mem = None
    rows = []
    for n in sizes:
        cfg = HPET.format(n=n, reads=100) + " --series after"
        t, r = best(lambda: aemu.simulate(cfg), 1 if n >= 1024 else repeat)
        per_vms = t / (r.virtual_ns / 1e6)
        tracemalloc.start()
        aemu.simulate(cfg)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if base_mem is None:
            base_mem = peak
        marginal = (peak - base_mem) / (n - 1) if n > 1 else float("nan")
        rows.append((n, per_vms))
        print(f"   -smp {n:>4}: {per_vms:8.3f} s wall per virtual ms, {per_vms / n * 1e3:7.3f} ms per vCPU; "
              f"peak {peak / 1024 / 1024:7.1f} MiB = {peak / n / 1024:7.1f} KiB per vCPU"
              + (f" ({marginal / 1024:5.1f} KiB per added vCPU)" if n > 1 else ""))
    (n0, w0), (n1, w1) = rows[1], rows[-1]
    print(f"   from -smp {n0} to {n1}: vCPUs x{n1 / n0:.0f}, wall per virtual ms x{w1 / w0:.1f} "
          f"({'linear or better' if w1 / w0 <= n1 / n0 * 1.05 else 'worse than linear'})")


if __name__ == "__main__":
    main()
