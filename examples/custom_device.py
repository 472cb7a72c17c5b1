"""A device of your own, and the what-if question: would it scale if it dropped the BQL -- and is
it safe?

    python examples/custom_device.py [--smp 32]

Defines a tiny MMIO "doorbell" device (a counter register every vCPU polls and bumps), adds it
to a q35 machine, runs a guest program that hammers it, once as QEMU would map it (under the BQL)
and once with ``--lockless doorbell`` (``memory_region_enable_lockless_io``), and prints the
difference. Then it asks the checker (``aemu.check``) whether the lockless version is safe: the
doorbell's writes take its own mutex but its reads take nothing, so a read races with a write
(``Doorbell.count``). The safe version says what QEMU would write: the reads are
``qatomic_read(&s->count)`` and the writes, serialized by the mutex, ``qatomic_set`` -- declared
with ``atomic_fields`` -- and the checker has nothing to report.
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
    """A 4-byte counter at 0xfeb00000: reads return it, writes add to it (under its mutex)."""

    type_name = "doorbell"

    def __init__(self, host: DeviceHost) -> None:
        super().__init__(host)
        self.count = 0
        self.lock = host.new_lock("doorbell")
        self.map_mmio(DOORBELL, self.region_io("doorbell", 4, self.read, self.write))

    async def read(self, offset: int, size: int) -> int:
        await self.host.delay(300)  # 300 ns of device work
        return self.count  # a plain load: without the BQL, nothing orders it with a write

    async def write(self, offset: int, value: int, size: int) -> None:
        async with self.lock.held("doorbell write"):
            await self.host.delay(300)
            self.count += value


class SafeDoorbell(Doorbell):
    """The same device made safe without the BQL: ``count`` is read with ``qatomic_read`` and set
    with ``qatomic_set`` (writers stay serialized by the mutex, so no increment is lost)."""

    atomic_fields = frozenset({"count"})


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


def build(smp: int, lockless: bool, device: type[Doorbell] = Doorbell) -> Machine:
    config = aemu.MachineConfig.parse(f"-smp {smp} -accel kvm,kernel-irqchip=split --seed 3")
    machine = Machine(config, Hammer())
    machine.add_device(device(machine.host))
    if lockless:
        machine.make_lockless("doorbell")  # the same as --lockless doorbell on the command line
    return machine


def run(smp: int, lockless: bool) -> aemu.Result:
    machine = build(smp, lockless)
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

print()
print("is the lockless doorbell safe? aemu.check(machine):")
report = aemu.check(build(a.smp, lockless=True))
for f in report.findings:
    print(f.format())
print()
print("the safe doorbell (atomic_fields = {'count'}: qatomic_read / qatomic_set under the mutex):")
safe = aemu.check(build(a.smp, lockless=True, device=SafeDoorbell))
print("no findings" if safe.clean else "\n".join(f.format() for f in safe.findings))
