"""Replay a real Linux boot, captured on QEMU, before and after the BQL-free PIO/MMIO series.

    python examples/replay_linux_boot.py [TRACE] [--smp 4] [--time-scale 1.0] [--limit N]

TRACE defaults to traces/linux-6.1-q35-smp4-hpet.trace.gz in the repository:
every PIO/MMIO access Linux 6.1 made while booting on QEMU 7.2 (q35, -smp 4, TCG), as QEMU's
``memory_region_ops_read/write`` trace events. Each recorded vCPU's accesses become a guest
program on a q35 machine with a split irqchip; the example prints how the BQL fared before and
after the series, and checks that at the recorded size every region saw exactly the reads and
writes the trace has. ``--limit N`` replays only the first N lines (a quick smoke run).
Exit status: 0 when the counts are exact or every difference is explained (a conflict between a
trace region and an aemu region at the same address), 1 otherwise, 2 when the trace is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import aemu
from aemu.replay import TraceError, load_trace, replay

DEFAULT = Path(__file__).resolve().parents[1] / "traces/linux-6.1-q35-smp4-hpet.trace.gz"

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("trace", nargs="?", type=Path, default=DEFAULT)
ap.add_argument("--smp", type=int, default=4)
ap.add_argument("--time-scale", type=float, default=1.0)
ap.add_argument("--limit", type=int, default=None, help="replay only the first N lines")
a = ap.parse_args()

if not a.trace.exists():
    print(f"replay_linux_boot: trace not found: {a.trace} (give its path, or capture one with "
          f"scripts/capture-trace.sh)", file=sys.stderr)
    sys.exit(2)
t0 = time.perf_counter()
try:
    trace = load_trace(a.trace, limit=a.limit)
except TraceError as e:
    print(f"replay_linux_boot: {e}", file=sys.stderr)
    sys.exit(2)
summary = trace.summary()
span = "" if summary.span_ns is None else f", {summary.span_ns / 1e9:.2f} s of host time"
print(f"{a.trace.name}: {summary.accesses:,} accesses from vCPUs {', '.join(map(str, summary.cpus))} "
      f"and {summary.device_accesses} from devices{span}")

runs = {}
for series in ("before", "after"):
    config = aemu.MachineConfig.parse(f"-M q35 -smp {a.smp} -accel kvm,kernel-irqchip=split --series {series}")
    runs[series] = replay(trace, config, time_scale=a.time_scale)

rows = [("time to replay", lambda r: f"{r.virtual_ns / 1e6:,.2f} ms"),
        ("BQL acquisitions", lambda r: f"{r.bql.acquisitions:,}"),
        ("BQL contentions", lambda r: f"{r.bql.contentions:,}"),
        ("vCPU time waiting for the BQL", lambda r: f"{r.lock_wait_share():.2%}"),
        ("top BQL site", lambda r: r.bql.sites[0].site if r.bql.sites else "-")]
print(f"\n{'':32}{'before':>22}{'after':>22}")
for label, fmt in rows:
    print(f"{label:32}{fmt(runs['before'][0]):>22}{fmt(runs['after'][0]):>22}")

report = runs["after"][1]
print(f"\n{report.format()}")
unexplained = [m for m in report.mismatches if "conflict" not in m.reason]
ok = all(r.region_counts == runs["after"][0].region_counts for r, _ in runs.values())
if report.exact_counts:
    print(f"exact counts: yes, {len(report.expected_counts)} regions match the trace")
elif not unexplained:
    print(f"exact counts: all but {len(report.mismatches)} region(s), each explained by a conflict above")
else:
    print("exact counts: NO (see the mismatches above)")
print(f"(wall time {time.perf_counter() - t0:.1f} s)")
sys.exit(0 if ok and not unexplained else 1)
