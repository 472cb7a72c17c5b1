"""Quickstart: the seed's question in a few lines of aemu's API.

    python examples/quickstart.py [--smp 64]

Runs hpet-bench (every vCPU reads the HPET main counter back to back) before and after QEMU's
BQL-free PIO/MMIO series, on a q35 machine with a split irqchip, and prints what changed.
"""

import argparse

import aemu

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--smp", type=int, default=64)
ap.add_argument("--reads", type=int, default=100)
a = ap.parse_args()

config = aemu.MachineConfig.parse(
    f"-M q35,hpet=on -smp {a.smp} -accel kvm,kernel-irqchip=split --workload hpet-bench --param reads={a.reads}")
before = aemu.simulate(config.replace(patches=aemu.config.SERIES["before"]))
after = aemu.simulate(config.replace(patches=aemu.config.SERIES["after"]))

for label, r in (("before", before), ("after", after)):
    print(f"{label:>6}: median HPET read {r.metric.value / 1000:8.1f} µs, "
          f"BQL acquisitions {r.bql.acquisitions:7,}, contentions {r.bql.contentions:7,}, "
          f"vCPU time waiting for the BQL {r.lock_wait_share():6.1%}")
print(f"median read latency {1 - after.metric.value / before.metric.value:.1%} lower after the series; "
      f"top BQL site before: {before.bql.sites[0].site}")
