"""aemu inside an asyncio (uvloop) application: live BQL statistics while the host loop stays free.

Runs a workload before and after the BQL-free series with :func:`aemu.embed.simulate_async`.
The simulation runs in a worker thread on its own virtual-time loop; snapshots of the BQL's
statistics arrive on this loop every ``--every`` of virtual time, while a heartbeat task on this
loop keeps beating -- its largest gap shows the loop was never blocked by the simulation.

    python examples/embed_asyncio.py --smp 8 --workload boot
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time

from aemu.config import MachineConfig, parse_duration
from aemu.embed import Snapshot, simulate_async
from aemu.errors import ConfigError


class Heartbeat:
    """A task on the host loop that beats every ``period_s`` and remembers its largest gap."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.beats = 0
        self.max_gap_s = 0.0

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(self.period_s)
            now = time.perf_counter()
            self.beats += 1
            self.max_gap_s = max(self.max_gap_s, now - last)
            last = now


def config_for(args: argparse.Namespace, series: str) -> MachineConfig:
    """The seed's machine at ``--smp``, HPET on for hpet-bench and off for boot (as in ``aemu compare``)."""
    hpet = "on" if args.workload == "hpet-bench" else "off"
    extra = f" --param reads={args.reads}" if args.workload == "hpet-bench" else ""
    return MachineConfig.parse(f"-M q35,hpet={hpet} -smp {args.smp} -accel kvm,kernel-irqchip=split "
                               f"--workload {args.workload} --series {series}{extra}")


def show(series: str, snap: Snapshot, *, heart: Heartbeat) -> None:
    """One line of the live dashboard."""
    bql = snap.bql
    print(f"  [{series:6}] virtual {snap.virtual_ns / 1e6:7.2f} ms  vCPUs {snap.vcpus_finished:>3}/{snap.vcpus_total}"
          f"  BQL acquisitions {bql.acquisitions:>9,}  contentions {bql.contentions:>8,}"
          f"  wait p99 {bql.wait_ns.p99 / 1e3:9.1f} us  | heartbeats {heart.beats}")


async def main(args: argparse.Namespace) -> None:
    heart = Heartbeat(args.heartbeat)
    beat = asyncio.create_task(heart.run())
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"host loop: {loop_name}; {args.workload} at -smp {args.smp}, a snapshot every {args.every / 1e6:g} ms "
          f"of virtual time")
    results = {}
    for series in ("before", "after"):
        results[series] = await simulate_async(
            config_for(args, series), snapshot_every_ns=args.every,
            on_snapshot=functools.partial(show, series, heart=heart))
    beat.cancel()
    for series, r in results.items():
        state = "finished" if r.finished else "capped"
        print(f"{series}: {r.metric.name} {r.metric.value:,.2f} {r.metric.unit} ({state}), "
              f"BQL contentions {r.bql.contentions:,}, virtual {r.virtual_ns / 1e6:.2f} ms in {r.wall_s:.2f} s wall")
    print(f"host loop stayed responsive: {heart.beats} heartbeats, largest gap {heart.max_gap_s * 1e3:.1f} ms "
          f"(period {args.heartbeat * 1e3:.0f} ms)")


def duration(text: str) -> int:
    """An argparse type: ``2ms`` -> 2000000 (ns)."""
    try:
        return parse_duration(text, "--every")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--smp", type=int, default=8, help="vCPUs (default 8)")
    p.add_argument("--workload", choices=("boot", "hpet-bench"), default="boot")
    p.add_argument("--reads", type=int, default=100, help="hpet-bench: reads per vCPU (default 100)")
    p.add_argument("--every", type=duration, default=duration("2ms"),
                   help="virtual time between snapshots (default 2ms)")
    p.add_argument("--heartbeat", type=float, default=0.01, help="heartbeat period, wall seconds (default 0.01)")
    return p.parse_args(argv)


def run(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args))
    else:
        uvloop.run(main(args))


if __name__ == "__main__":
    run()
