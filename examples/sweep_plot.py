"""Boot time vs vCPUs, before and after the series, as a table and a PNG.

    python examples/sweep_plot.py [--smp 1,4,16,32] [--out scaling.png]
"""

import argparse

import aemu
from aemu.report.plots import plot_scaling
from aemu.sweep import format_sweep, parse_smp_list, sweep

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--smp", default="1,4,16,32")
ap.add_argument("--out", default="scaling.png")
ap.add_argument("--phases", type=int, default=1)
a = ap.parse_args()

base = aemu.MachineConfig.parse(
    f"-M q35,hpet=off -accel kvm,kernel-irqchip=split --workload boot --param phases={a.phases}")
rows = sweep(base, parse_smp_list(a.smp))
print(format_sweep(rows))
path = plot_scaling({"before": [(r.cpus, r.before) for r in rows], "after": [(r.cpus, r.after) for r in rows]}, a.out)
print(f"wrote {path}")
