"""Micro-benchmarks: back-to-back timer reads from every vCPU, and an idle machine.

``hpet-bench`` is modelled on kvm-unit-tests' ``x86/hpet_read_test.c`` (the test the series was
measured with): vCPU 0 enables the HPET, then every vCPU reads the main counter (MMIO
0xfed000f0, 8 bytes) ``reads`` times back to back, with ``guest_compute_ns`` of loop body between
reads. The metric is the median read latency: from the exit to the return into the guest, lock
waits included. ``pmtimer-bench`` does the same with the ACPI PM timer port.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from ..cpu import Compute, GuestProgram, LAPICTimer, MMIORead, MMIOWrite, PIORead, WaitForVector
from ..errors import ConfigError
from ..result import Metric
from .base import Param, Workload

if TYPE_CHECKING:
    from ..machine import Machine

HPET_BASE = 0xFED00000
HPET_CFG = HPET_BASE + 0x010
HPET_COUNTER = HPET_BASE + 0x0F0


class _ReadBench(Workload):
    region = ""
    parameters = {"reads": Param(300, "timer reads per vCPU", min=1)}

    def metric(self, machine: Machine) -> Metric:
        return Metric("median read latency", machine.region_latency(self.region).p50, "ns")


class HPETBench(_ReadBench):
    """Every vCPU reads the HPET main counter back to back (kvm-unit-tests hpet_read_test)."""

    name = "hpet-bench"
    summary = "every vCPU reads the HPET main counter back to back; metric: median read latency"
    region = "hpet"

    def setup(self, machine: Machine) -> None:
        if not machine.config.hpet:
            raise ConfigError("workload 'hpet-bench' needs the HPET: use -M q35,hpet=on (or pc,hpet=on)")

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        compute = Compute(machine.costs.guest_compute_ns)
        read = MMIORead(HPET_COUNTER, 8)
        if index == 0:
            yield MMIOWrite(HPET_CFG, 1, 8)  # ENABLE
        for _ in range(self.params["reads"]):
            yield read
            yield compute


class PMTimerBench(_ReadBench):
    """Every vCPU reads the ACPI PM timer port back to back."""

    name = "pmtimer-bench"
    summary = "every vCPU reads the ACPI PM timer back to back; metric: median read latency"
    region = "acpi-tmr"

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        compute = Compute(machine.costs.guest_compute_ns)
        read = PIORead(machine.pm_timer_port, 4)
        for _ in range(self.params["reads"]):
            yield read
            yield compute


class Idle(Workload):
    """vCPUs halted, woken by their LAPIC timers every ``tick_ns``; runs until stopped or --duration."""

    name = "idle"
    summary = "vCPUs halt and wake on LAPIC timer ticks until --duration"
    open_ended = True
    parameters = {"tick_ns": Param(1_000_000, "LAPIC timer period, ns", min=1)}

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        tick = int(self.params["tick_ns"])
        timer = LAPICTimer(tick, 0xEC)
        wait = WaitForVector(0xEC)
        while True:
            yield timer
            yield wait

    def metric(self, machine: Machine) -> Metric:
        return Metric("interrupts per vCPU", sum(c.interrupts for c in machine.vcpus) / len(machine.vcpus), "")
