"""``boot``: a documented synthetic model of a Windows-like SMP boot.

Not a trace: a small program per vCPU that exercises the paths the seed's boot stalls on.

* **BSP (vCPU 0)**: a PCI config scan of bus 0 (``pci-conf-idx`` write + ``pci-conf-data``
  read per slot), an RTC read (index/data for seconds, minutes, hours), a banner on the serial
  port, then the startup IPIs that wake the APs (INIT-SIPI through the in-kernel LAPIC).
* **APs** start halted and wait for their startup IPI.
* **Every vCPU** then runs ``phases`` timer-polling phases, as Windows' stall and calibration
  loops do without invariant TSC or ``hv-time``: a *stall* loop (``stall_reads`` timer reads,
  ``stall_compute_ns`` apart) and a *work* stretch (``work_reads`` reads, ``work_compute_ns``
  apart: about 20,000 reads per second per vCPU, in the 2k-50k range CALIBRATION.md cites).
  The timer is the ACPI PM timer with ``hpet=off`` and the HPET main counter with ``hpet=on``.
  After each phase the vCPUs meet at a rendezvous, as Windows' processor start-up and IPI
  generic calls make every processor wait for the others: a vCPU that arrives early spins in a
  stall loop (a timer read every ``stall_compute_ns``) until all have arrived -- so stragglers
  are slowed further by the spinners. Then each vCPU idles: it arms its LAPIC timer for
  ``idle_ns`` and halts until the timer interrupt; the BSP prints a progress line on the serial
  port.
* The boot is done when every vCPU has finished its phases. The metric is the virtual time that
  took; a cap (``--duration``, default 2 s of virtual time) ends a boot that stalls, and the
  result then says ``finished: false``.

The loops are counted (a fixed number of reads), not timed: a slower timer read makes the boot
slower, as it does for a guest whose stall loops spin on the timer.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from ..cpu import Compute, GuestProgram, LAPICTimer, MMIORead, MMIOWrite, PIORead, PIOWrite, SendIPI, WaitForVector
from ..result import Metric
from .base import Param, Workload
from .micro import HPET_CFG, HPET_COUNTER

if TYPE_CHECKING:
    from ..machine import Machine

SERIAL_THR = 0x3F8
STARTUP_VECTOR = 0x30
IDLE_VECTOR = 0xEC  # the LAPIC timer


class Boot(Workload):
    """A Windows-like SMP boot (see module docstring)."""

    name = "boot"
    summary = "synthetic Windows-like SMP boot polling its timer; metric: time to finish"

    parameters = {
        "phases": Param(3, "timer-polling phases per vCPU", min=1),
        "stall_reads": Param(50, "timer reads per stall loop"),
        "stall_compute_ns": Param(1_000, "guest compute between stall-loop reads, ns"),
        "work_reads": Param(60, "timer reads per work stretch"),
        "work_compute_ns": Param(50_000, "guest compute between work reads, ns"),
        "idle_ns": Param(200_000, "LAPIC timer idle after each phase, ns", min=1),
        "pci_slots": Param(32, "PCI slots the BSP scans on bus 0", max=32),
    }

    def setup(self, machine: Machine) -> None:
        self.arrived: list[int] = [0] * int(self.params["phases"])
        self.cpus = len(machine.vcpus)

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        p = self.params
        arrived = self.arrived
        if machine.config.hpet:
            read: Any = MMIORead(HPET_COUNTER, 8)
        else:
            read = PIORead(machine.pm_timer_port, 4)
        if index == 0:
            if machine.config.hpet:
                yield MMIOWrite(HPET_CFG, 1, 8)
            for slot in range(p["pci_slots"]):
                yield PIOWrite(0xCF8, 0x8000_0000 | slot << 11, 4)
                yield PIORead(0xCFC, 4)
            for reg in (0x00, 0x02, 0x04):
                yield PIOWrite(0x70, reg, 1)
                yield PIORead(0x71, 1)
            yield from _serial(b"aemu boot: starting APs\r\n")
            for ap in range(1, len(machine.vcpus)):
                yield SendIPI(ap, STARTUP_VECTOR)
        else:
            yield WaitForVector(STARTUP_VECTOR)  # wait for the startup IPI
        stall = Compute(p["stall_compute_ns"])
        work = Compute(p["work_compute_ns"])
        for phase in range(p["phases"]):
            for _ in range(p["stall_reads"]):
                yield read
                yield stall
            for _ in range(p["work_reads"]):
                yield work
                yield read
            arrived[phase] += 1  # the rendezvous lives in guest RAM: no exit to check it
            while arrived[phase] < self.cpus:
                yield read
                yield stall
            if index == 0:
                yield from _serial(b"phase %d done\r\n" % phase)
            yield LAPICTimer(p["idle_ns"], IDLE_VECTOR)
            yield WaitForVector(IDLE_VECTOR)

    def metric(self, machine: Machine) -> Metric:
        return Metric("boot time", machine.finish_ns / 1e6, "ms")


def _serial(text: bytes) -> GuestProgram:
    for byte in text:
        yield PIOWrite(SERIAL_THR, byte, 1)
