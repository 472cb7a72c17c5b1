"""A device of your own, and the what-if question: would it scale if it dropped the BQL?

    python examples/custom_device.py [--smp 32]

Defines a tiny MMIO "doorbell" device (a counter register every vCPU polls and bumps), adds it
to a q35 machine, runs a guest program that hammers it, once as QEMU would map it (under the BQL)
and once with ``--lockless doorbell`` (``memory_region_enable_lockless_io``), and prints the
difference. A lockless device must then protect its own state: this one uses its own mutex for
writes and a plain read for the counter.
"""

import argparse
import random

import aemu
from aemu.cpu import Compute, MMIORead, MMIOWrite
from aemu.devices.base import Device, DeviceHost
from aemu.machine import Machine
from aemu.result import Metric
from aemu.workloads import Workload

DOORBELL = 0xFEB00000


class Doorbell(Device):
    """A 4-byte counter at 0xfeb00000: reads return it, writes add to it."""

    type_name = "doorbell"

    def __init__(self, host: DeviceHost) -> None:
        super().__init__(host)
        self.count = 0
        self.lock = host.new_lock("doorbell")
        self.map_mmio(DOORBELL, self.region_io("doorbell", 4, self.read, self.write))

    async def read(self, offset: int, size: int) -> int:
        await self.host.delay(300)  # 300 ns of device work
        return self.count

    async def write(self, offset: int, value: int, size: int) -> None:
        async with self.lock.held("doorbell write"):
            await self.host.delay(300)
            self.count += value


class Hammer(Workload):
    """Each vCPU polls the doorbell and rings it now and then."""

    name = "hammer"

    def program(self, machine: Machine, index: int, rng: random.Random):  # type: ignore[no-untyped-def]
        for _ in range(200):
            yield MMIORead(DOORBELL, 4)
            if rng.random() < 0.1:
                yield MMIOWrite(DOORBELL, 1, 4)
            yield Compute(rng.randint(500, 2_000))

    def metric(self, machine: Machine) -> Metric:
        return Metric("median doorbell read", machine.region_latency("doorbell").p50, "ns")


def run(smp: int, lockless: bool) -> aemu.Result:
    config = aemu.MachineConfig.parse(f"-smp {smp} -accel kvm,kernel-irqchip=split --seed 3")
    machine = Machine(config, Hammer())
    machine.add_device(Doorbell(machine.host))
    if lockless:
        machine.make_lockless("doorbell")  # the same as --lockless doorbell on the command line
    aemu.clock.run(machine.run(10**9))
    return aemu.Result.from_machine(machine)


ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--smp", type=int, default=32)
a = ap.parse_args()
for lockless in (False, True):
    r = run(a.smp, lockless)
    label = "lockless" if lockless else "BQL"
    print(f"{label:>8}: {r.metric.name} {r.metric.value / 1000:7.1f} µs, finished in "
          f"{r.virtual_ns / 1e6:6.2f} ms, BQL acquisitions {r.bql.acquisitions:6,}, "
          f"doorbell mutex contentions {r.locks['doorbell'].contentions:5,}")
