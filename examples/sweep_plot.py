"""Boot time vs vCPUs, before and after the series, as a table and a PNG.

    python examples/sweep_plot.py [--smp 1,4,16,32] [--phases 1] [--out out/scaling.png]

Sweeps -smp over the given counts on a fixed machine (-M q35,hpet=off -accel
kvm,kernel-irqchip=split, --workload boot --param phases=N). The PNG goes to --out (a file, or a
directory to put scaling.png in; default out/scaling.png under the current directory, a
directory git ignores in aemu's clone); its title names the swept counts and the fixed options.
"""

import argparse
from pathlib import Path

import aemu
from aemu.report.plots import plot_scaling
from aemu.sweep import format_sweep, parse_smp_list, sweep

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--smp", default="1,4,16,32", help="vCPU counts to sweep (default 1,4,16,32)")
ap.add_argument("--phases", type=int, default=1, help="boot workload phases (default 1)")
ap.add_argument("--out", default="out/scaling.png",
                help="PNG file, or a directory for scaling.png (default out/scaling.png)")
a = ap.parse_args()

fixed = f"-M q35,hpet=off -accel kvm,kernel-irqchip=split --workload boot --param phases={a.phases}"
cpus = parse_smp_list(a.smp)
print(f"sweeping -smp {','.join(map(str, cpus))} with {fixed}\n")
rows = sweep(aemu.MachineConfig.parse(fixed), cpus)
print(format_sweep(rows))
out = Path(a.out)
if out.is_dir():
    out = out / "scaling.png"
path = plot_scaling({"before": [(r.cpus, r.before) for r in rows], "after": [(r.cpus, r.after) for r in rows]}, out)
print(f"\nwrote {path}")
