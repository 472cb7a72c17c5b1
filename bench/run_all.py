"""Every benchmark in one command, rows interleaved in one process (issue 6's table, issue 10's method).

    python bench/run_all.py [--quick] [--rounds N] [--profile DIR]

Rows:

1. reference contention model (bench_lock.py, 240 workers x 100 acquisitions): SimPy
   ``Resource`` vs aemu's ``Lock`` + ``sleep_ns``, and vs the same model with a ``QuantumKeeper``
   per worker (local think/hold time, one sync per acquisition, grants computed from releases);
2. full machine, BQL-bound: hpet-bench --series before at -smp 240, BQL acquisitions per CPU second;
3. full machine, lockless: hpet-bench --series after at -smp 240, HPET reads per CPU second;
4. temporal decoupling: default quantum vs --quantum 0 on hpet-bench and boot: time ratio
   and the largest relative difference in the statistics (metric, virtual time, BQL
   acquisitions, mean BQL wait);
5. scaling, -smp 1 ... 4096: CPU seconds per virtual millisecond (hpet-bench after, 100 reads
   per vCPU), per vCPU, and peak traced memory per vCPU (tracemalloc, separate untimed run);
6. host CPUs: the boot before the series on compare's host (-smp 240 on 32 host CPUs; --quick:
   64 on 8), under --host-sched eevdf and cfs: CPU seconds per virtual millisecond.

Method: on a shared machine, timing SimPy and aemu seconds apart made the ratios swing 1.6x-4.6x
between runs. Here every row runs once per round (round 1: every row once, round 2: every row
once, ...), each timed in CPU seconds of this process (``time.process_time``, after an untimed
``gc.collect()``), for ``--rounds`` rounds (default 5) after one untimed warm-up round. Each row reports its best and its median
round; the ratios to SimPy's reference model (row 1, measured in the same rounds) are given from
the best times, from the median times, and as the range of the per-round ratios (each round's row
over the same round's SimPy). Targets (issue 6): 1 >= 1x SimPy, 2 >= 2x SimPy, 3 >= 8x SimPy,
5 linear or better and <= 20 KB per vCPU. Nothing here is a pass/fail test.

Only aemu's public API is used (``aemu.simulate`` and its ``Result``, ``aemu.clock``,
``aemu.sync.Lock`` through bench_lock.py), so the script also runs against older checkouts:
``PYTHONPATH=/path/to/checkout python bench/run_all.py`` (the header says which aemu was imported).
``--profile DIR`` also writes cProfile listings of the machine runs (2 and 3) into DIR.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lock import aemu_lock, aemu_lock_keeper, simpy_resource  # noqa: E402

import aemu  # noqa: E402

HPET = "-M q35,hpet=on -smp {n} -accel kvm,kernel-irqchip=split --workload hpet-bench --param reads={reads}"
BOOT = "-M q35,hpet=off -smp {n} -accel kvm,kernel-irqchip=split --workload boot"
WORKERS, ACQUISITIONS = 240, 100


@dataclass
class Row:
    """One timed thing: ``run`` does it and returns the figures it produced (small, comparable)."""

    name: str  # the configuration, or the model's name
    label: str  # short, for the raw listing
    run: Callable[[], dict[str, Any]]
    times: list[float] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    differs: bool = False  # figures changed between rounds (the runs should be deterministic)

    def measure(self) -> None:
        gc.collect()
        t0 = time.process_time()
        figures = self.run()
        self.times.append(time.process_time() - t0)
        if self.figures and figures != self.figures:
            self.differs = True
        self.figures = figures

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _model(fn: Callable[[int, int], tuple[int, float]]) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        ops, mean_wait = fn(WORKERS, ACQUISITIONS)
        return {"ops": ops, "mean_wait": mean_wait}
    return run


def _machine(cfg: str) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        r = aemu.simulate(cfg)
        hpet = r.regions_by_name().get("hpet")
        return {"bql_acq": r.bql.acquisitions, "hpet_reads": hpet.count if hpet is not None else 0,
                "metric": r.metric.value, "virtual_ns": r.virtual_ns, "bql_wait_mean": r.bql.wait_ns.mean,
                "quantum_ns": r.config.quantum_ns}
    return run


def profile(fn: Callable[[], Any], path: Path, title: str) -> None:
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    out.write(f"# {title}\n# cProfile, sorted by own time (profiling slows Python calls ~3x)\n")
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
    path.write_text(out.getvalue())


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-9)


def _source() -> str:
    """Where aemu was imported from, and its git commit if it is a checkout."""
    pkg = Path(aemu.__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(pkg), "describe", "--always", "--dirty", "--abbrev=10"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{aemu.__file__}" + (f" (git {rev})" if rev else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds (3)")
    ap.add_argument("--rounds", type=int, help="rounds of every row (default 5, --quick 3)")
    ap.add_argument("--profile", metavar="DIR", type=Path, help="write cProfile listings of the machine runs here")
    a = ap.parse_args()
    rounds = a.rounds or (3 if a.quick else 5)
    if rounds < 1:
        ap.error("--rounds must be >= 1")
    smp = 64 if a.quick else 240
    sizes = (1, 16, 64, 256) if a.quick else (1, 4, 16, 64, 256, 1024, 4096)
    try:
        import simpy
    except ImportError:
        sys.exit("bench/run_all.py compares against SimPy: pip install simpy")

    before_cfg = HPET.format(n=smp, reads=100) + " --series before"
    after_cfg = HPET.format(n=smp, reads=300) + " --series after"
    decoupling = [("hpet-bench before", before_cfg), ("hpet-bench after", after_cfg),
                  ("boot before", BOOT.format(n=min(smp, 64)) + " --series before"),
                  ("boot after", BOOT.format(n=smp) + " --series after")]
    scaling = {n: HPET.format(n=n, reads=100) + " --series after" for n in sizes}

    rows: dict[str, Row] = {}

    def row(key: str, label: str, run: Callable[[], dict[str, Any]]) -> Row:
        if key not in rows:
            rows[key] = Row(key, label, run)
        return rows[key]

    # Round order: the reference model and machine rows next to SimPy first, then the rest.
    simpy_row = row("simpy", "1. SimPy Resource + timeout", _model(simpy_resource))
    lock_row = row("lock", "1. aemu Lock + sleep_ns", _model(aemu_lock))
    keeper_row = row("keeper", "1. aemu Lock + QuantumKeeper", _model(aemu_lock_keeper))
    before_row = row(before_cfg, "2. hpet-bench before (BQL-bound)", _machine(before_cfg))
    after_row = row(after_cfg, "3. hpet-bench after (lockless)", _machine(after_cfg))
    pairs = [(name, row(cfg, f"4. {name}", _machine(cfg)),
              row(cfg + " --quantum 0", f"4. {name} --quantum 0", _machine(cfg + " --quantum 0")))
             for name, cfg in decoupling]
    scale_rows = {n: row(cfg, f"5. scaling -smp {n}", _machine(cfg)) for n, cfg in scaling.items()}
    host_cfg = (f"-M q35,hpet=off -cpu host -smp {smp},sockets=4 -accel kvm,kernel-irqchip=split "
                f"--host-cpus {smp * 2 // 15} --workload boot --series before")  # compare's host at 240
    host_rows = {sched: row(f"{host_cfg} --host-sched {sched}", f"6. host CPUs, {sched}",
                            _machine(f"{host_cfg} --host-sched {sched}")) for sched in ("eevdf", "cfs")}

    print(f"aemu: {_source()}")
    print(f"Python {platform.python_version()}, SimPy {simpy.__version__}, {os.cpu_count()} CPUs; "
          f"{rounds} rounds (+1 warm-up) of {len(rows)} rows interleaved, CPU seconds (time.process_time)")
    t_start = time.perf_counter()
    for r in rows.values():  # warm-up round, not counted: lazy imports, first-use caches
        r.run()
    for _ in range(rounds):
        for r in rows.values():
            r.measure()
    t_rounds = time.perf_counter() - t_start

    def rate(r: Row, key: str, t: float) -> float:
        return float(r.figures[key]) / t

    def ratios(r: Row, key: str) -> tuple[float, float, float, float]:
        """Ratio to SimPy's rate from best times, from median times, and the per-round range."""
        s_ops = simpy_row.figures["ops"]
        per_round = [(r.figures[key] / t) / (s_ops / s) for t, s in zip(r.times, simpy_row.times)]
        return (rate(r, key, r.best) / rate(simpy_row, "ops", simpy_row.best),
                rate(r, key, r.median) / rate(simpy_row, "ops", simpy_row.median),
                min(per_round), max(per_round))

    def rate_line(label: str, r: Row, key: str, unit: str, target: str = "") -> str:
        rb, rm, lo, hi = ratios(r, key)
        return (f"   {label:<34} {rate(r, key, r.best):>10,.0f} {rate(r, key, r.median):>10,.0f} {unit:<8}"
                f" {rb:6.2f}x {rm:6.2f}x  {lo:5.2f}-{hi:5.2f}x  {target}")

    head = (f"   {'':<34} {'best':>10} {'median':>10} {'per CPU s':<8} {'ratio to SimPy':>16}"
            f"  {'per round':>12}  target")
    sub = f"   {'':<34} {'':>10} {'':>10} {'':<8} {'best':>7} {'median':>7}  {'lo-hi':>12}"
    w = {k: r.figures["mean_wait"] for k, r in (("SimPy", simpy_row), ("aemu", lock_row), ("aemu+keeper", keeper_row))}
    print(f"1. reference model, {WORKERS} workers x {ACQUISITIONS} (mean waits: "
          + ", ".join(f"{k} {v:,.1f} ns" for k, v in w.items()) + ")")
    print(head)
    print(sub)
    print(rate_line("SimPy Resource + timeout", simpy_row, "ops", "acq/s"))
    print(rate_line("aemu Lock + sleep_ns", lock_row, "ops", "acq/s", ">= 1x"))
    print(rate_line("aemu Lock + QuantumKeeper", keeper_row, "ops", "acq/s"))
    print(f"2. machine BQL-bound (hpet-bench before, -smp {smp}, {before_row.figures['bql_acq']:,} acquisitions):")
    print(rate_line("BQL acquisitions", before_row, "bql_acq", "acq/s", ">= 2x"))
    print(f"3. machine lockless (hpet-bench after, -smp {smp}, {after_row.figures['hpet_reads']:,} reads):")
    print(rate_line("HPET reads", after_row, "hpet_reads", "reads/s", ">= 8x"))

    print("4. temporal decoupling: default quantum vs --quantum 0 (CPU time of quantum 0 / default)")
    for name, fast, exact in pairs:
        f, e = fast.figures, exact.figures
        worst = max(rel_diff(e["metric"], f["metric"]), rel_diff(e["virtual_ns"], f["virtual_ns"]),
                    rel_diff(e["bql_acq"], f["bql_acq"]),
                    rel_diff(e["bql_wait_mean"], f["bql_wait_mean"]) if e["bql_wait_mean"] else 0.0)
        per_round = [t0 / tq for t0, tq in zip(exact.times, fast.times)]
        cpus = fast.name.split("-smp ")[1].split()[0]
        print(f"   {name:<18} -smp {cpus:>3}: {exact.best / fast.best:5.2f}x (best) {exact.median / fast.median:5.2f}x "
              f"(median) {min(per_round):4.2f}-{max(per_round):4.2f}x (rounds) faster with quantum "
              f"{f['quantum_ns']} ns; statistics within {worst:.2%} "
              f"(metric {f['metric']:,.6g} vs {e['metric']:,.6g})")

    print("5. scaling (hpet-bench after, 100 reads per vCPU), CPU seconds per virtual ms, best / median:")
    base_mem = None
    per_vms: dict[int, tuple[float, float]] = {}
    for n, r in scale_rows.items():
        vms = r.figures["virtual_ns"] / 1e6
        per_vms[n] = (r.best / vms, r.median / vms)
        gc.collect()
        tracemalloc.start()
        aemu.simulate(scaling[n])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if base_mem is None:
            base_mem = peak
        marginal = (peak - base_mem) / (n - 1) if n > 1 else float("nan")
        b, m = per_vms[n]
        print(f"   -smp {n:>4}: {b:8.3f} / {m:8.3f} s per virtual ms, {b / n * 1e3:7.3f} / {m / n * 1e3:7.3f} ms "
              f"per vCPU; peak {peak / 1024 / 1024:7.1f} MiB = {peak / n / 1024:7.1f} KiB per vCPU"
              + (f" ({marginal / 1024:5.1f} KiB per added vCPU)" if n > 1 else ""))
    n0, n1 = sizes[1], sizes[-1]
    for i, label in enumerate(("best", "median")):
        growth = per_vms[n1][i] / per_vms[n0][i]
        print(f"   from -smp {n0} to {n1} ({label}): vCPUs x{n1 / n0:.0f}, time per virtual ms x{growth:.1f} "
              f"({'linear or better' if growth <= n1 / n0 * 1.05 else 'worse than linear'})")

    print(f"6. host CPUs (the boot before the series, -smp {smp} on {smp * 2 // 15} host CPUs), CPU seconds per "
          "virtual ms, best / median:")
    for sched, r in host_rows.items():
        vms = r.figures["virtual_ns"] / 1e6
        print(f"   --host-sched {sched:<5}: {r.best / vms:8.4f} / {r.median / vms:8.4f} s per virtual ms "
              f"({vms:,.2f} virtual ms, {r.figures['bql_acq']:,} BQL acquisitions)")

    print("raw CPU seconds per round (rows as in 1-6; a row shared by 2/3 and 4 is listed once):")
    for r in rows.values():
        print(f"   {r.label:<36} " + " ".join(f"{t:7.3f}" for t in r.times))

    varied = [r.name for r in rows.values() if r.differs]
    if varied:
        print("WARNING: figures differed between rounds for: " + "; ".join(varied))
    print(f"({rounds} rounds and the warm-up took {t_rounds:.1f} s wall; every row's figures "
          f"{'were NOT' if varied else 'were'} identical in every round)")

    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
        profile(lambda: aemu.simulate(before_cfg), a.profile / "machine-bql-bound.txt", before_cfg)
        profile(lambda: aemu.simulate(after_cfg), a.profile / "machine-lockless.txt", after_cfg)
        print(f"profiles written to {a.profile}/machine-bql-bound.txt and machine-lockless.txt")


if __name__ == "__main__":
    main()
