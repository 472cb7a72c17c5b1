"""Scaling sweeps: the same workload before and after the series at several vCPU counts.

Runs are spread over the host's cores with a local process pool; the result is a list of rows
(vCPUs, series label, Result) that the CLI prints as a table and plots as "metric vs vCPUs".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from .config import SERIES, SMP, MachineConfig
from .errors import ConfigError
from .machine import simulate
from .result import Result

__all__ = ["SweepRow", "parse_smp_list", "sweep", "format_sweep"]


@dataclass(frozen=True, slots=True)
class SweepRow:
    """One vCPU count: its before and after results."""

    cpus: int
    before: Result
    after: Result


def parse_smp_list(text: str) -> list[int]:
    """``"1,8,32,64"`` -> [1, 8, 32, 64] (ConfigError naming the bad item)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise ConfigError(f"--smp: {item!r} is not a vCPU count; give a list such as 1,8,32,64,128,240")
        out.append(int(item))
    if not out:
        raise ConfigError("--smp: give a list of vCPU counts such as 1,8,32,64,128,240")
    return sorted(set(out))


def _with_cpus(base: MachineConfig, n: int) -> MachineConfig:
    sockets = base.smp.sockets if n % base.smp.sockets == 0 else 1
    return base.replace(smp=SMP.complete(cpus=n, sockets=sockets))


def sweep(base: MachineConfig, cpus: Sequence[int], *, jobs: int | None = None,
          progress: Callable[[int, int], None] | None = None) -> list[SweepRow]:
    """Run ``base`` before and after the series at each vCPU count (in parallel)."""
    configs = [(n, label, _with_cpus(base, n).replace(patches=SERIES[label]))
               for n in cpus for label in ("before", "after")]
    jobs = jobs or os.cpu_count() or 1
    results: dict[tuple[int, str], Result] = {}
    if jobs == 1:
        for i, (n, label, cfg) in enumerate(configs):
            results[n, label] = simulate(cfg)
            if progress:
                progress(i + 1, len(configs))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futs = {(n, label): pool.submit(simulate, cfg) for n, label, cfg in configs}
            for i, (key, fut) in enumerate(futs.items()):
                results[key] = fut.result()
                if progress:
                    progress(i + 1, len(configs))
    return [SweepRow(n, results[n, "before"], results[n, "after"]) for n in cpus]


def format_sweep(rows: Sequence[SweepRow]) -> str:
    """A plain-text scaling table."""
    if not rows:
        return ""
    m = rows[0].before.metric
    head = f"{rows[0].before.workload}: {m.name} ({m.unit}) before vs after the BQL-free series"
    out = [head, "", f"{'vCPUs':>6}  {'before':>18}  {'after':>14}  {'before/after':>12}  {'BQL wait share (before)':>24}"]
    for r in rows:
        b, a = r.before, r.after
        bv = f"{b.metric.value:,.1f}" + ("" if b.finished else " (cap)")
        av = f"{a.metric.value:,.1f}" + ("" if a.finished else " (cap)")
        ratio = b.metric.value / a.metric.value if a.metric.value else float("inf")
        out.append(f"{r.cpus:>6}  {bv:>18}  {av:>14}  {ratio:>11.1f}x  {b.lock_wait_share():>23.1%}")
    return "\n".join(out)
