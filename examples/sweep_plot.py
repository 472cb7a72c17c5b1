"""Boot time vs vCPUs, before and after the series, as a table and a PNG.

    python examples/sweep_plot.py [--smp 1,4,16,32] [--phases 1] [--out out/scaling.png]

Sweeps -smp over the given counts on a fixed machine (-M q35,hpet=off -accel
kvm,kernel-irqchip=split, --workload boot --param phases=N), before and after the series, with
aemu.sweep's library API (a Grid of two dimensions, run on the local process pool; pass
executor=... to run_sweep for any concurrent.futures.Executor, a Dask client's included). The
PNG goes to --out (a file, or a directory to put scaling.png in; default out/scaling.png under
the current directory, a directory git ignores in aemu's clone); its title names the swept counts
and the fixed options.
"""

import argparse
from pathlib import Path

import aemu
from aemu.report.plots import plot_sweep
from aemu.sweep import Grid, format_sweep, parse_values, run_sweep

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--smp", default="1,4,16,32", help="vCPU counts to sweep (default 1,4,16,32)")
ap.add_argument("--phases", type=int, default=1, help="boot workload phases (default 1)")
ap.add_argument("--out", default="out/scaling.png",
                help="PNG file, or a directory for scaling.png (default out/scaling.png)")
a = ap.parse_args()

fixed = f"-M q35,hpet=off -accel kvm,kernel-irqchip=split --workload boot --param phases={a.phases}"
cpus = sorted(parse_values("smp", a.smp))
print(f"sweeping -smp {','.join(map(str, cpus))} with {fixed}\n")
grid = Grid.of(aemu.MachineConfig.parse(fixed), {"smp": cpus, "series": ["before", "after"]})
sweep = run_sweep(grid)
print(format_sweep(sweep))
out = Path(a.out)
if out.is_dir():
    out = out / "scaling.png"
path = plot_sweep([r.to_dict() for r in sweep.runs], "smp", out)
print(f"\nwrote {path}")
