"""Micro-benchmarks: back-to-back timer reads from every vCPU, and an idle machine.

``hpet-bench`` is kvm-unit-tests' ``x86/hpet_read_test.c`` (commit 4f94f467a6df, the test the
series' HPET patches were measured with; docs/WINDOWS-GUEST.md section 4): the BSP enables the
HPET (a read-modify-write of CONFIG) and starts the APs (``on_cpu_async``: an IPI each, from the
last CPU down); then it waits in a ``pause`` loop without exits while every AP reads the main
counter (MMIO 0xfed000f0, 8 bytes) once, ``reads`` times back to back (the test: 100,000), and
once more. Each AP's latency is its HPET tick delta x 10 ns / ``reads``; the metric is their
sum divided by the number of CPUs, the BSP included -- as the test computes it (which reads low
by (n-1)/n). With ``-smp 1`` (which the test cannot run: no AP) the BSP is the reader, so one
uncontended reader can be measured. Backward steps of the counter are counted as the test counts its failures.
``hpet-torture`` is the test's second phase: CPU 1 toggles ENABLE (a read and a write of CONFIG)
``toggles`` times while CPUs 2.. read; the metric is the backward steps the readers saw.
``pmtimer-bench`` reads the ACPI PM timer port back to back; its metric is the median read
latency (from the exit to the return into the guest, lock waits included).
"""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from ..cpu import (Arrive, Compute, Exit, GuestBarrier, GuestProgram, LAPICTimer, MMIORead, MMIOWrite, PIORead, SendIPI,
                   SpinUntil, WaitForVector)
from ..errors import ConfigError
from ..result import Metric
from .base import Param, Workload

if TYPE_CHECKING:
    from ..machine import Machine

HPET_BASE = 0xFED00000
HPET_CFG = HPET_BASE + 0x010
HPET_COUNTER = HPET_BASE + 0x0F0
HPET_CLK_PERIOD_NS = 10  # hpet_read_test's HPET_CLK_PERIOD (QEMU's HPET runs at 100 MHz)
START_VECTOR = 0x31  # on_cpu_async's IPI


class _ReadBench(Workload):
    region = ""
    parameters = {"reads": Param(300, "timer reads per vCPU", min=1)}

    def metric(self, machine: Machine) -> Metric:
        return Metric("median read latency", machine.region_latency(self.region).p50, "ns")


class _HPETTest(Workload):
    """What both phases of hpet_read_test share: the HPET, enabled by the BSP, and the readers."""

    def setup(self, machine: Machine) -> None:
        if not machine.config.hpet:
            raise ConfigError(f"workload {self.name!r} needs the HPET: use -M q35,hpet=on (or pc,hpet=on)")
        self.cpus = len(machine.vcpus)
        self.aps_done = GuestBarrier(max(self.cpus - 1, 1))  # cpus_active() == 1: every AP's job returned
        self.backward = 0  # failures: a read returned less than the one before

    def enable(self) -> GuestProgram:
        """The BSP's ``hpet_enable``: CONFIG |= ENABLE, a 64-bit read-modify-write."""
        config = yield MMIORead(HPET_CFG, 8)
        yield MMIOWrite(HPET_CFG, config | 1, 8)

    def reader(self, reads: int, compute: Compute) -> Generator[Exit, Any, int]:
        """``hpet_reader``: ``reads`` back-to-back counter reads, counting backward steps."""
        read = MMIORead(HPET_COUNTER, 8)
        start = old = yield read
        for _ in range(reads):
            new = yield read
            if new < old:
                self.backward += 1
            old = new
            yield compute
        end = yield read
        latency: int = (end - start) * HPET_CLK_PERIOD_NS // reads
        return latency

    def wait_for_aps(self) -> GuestProgram:
        """The BSP's ``while (cpus_active() > 1) pause();``: a pause loop on its CPU (KVM's PLE exits
        may hand the CPU to a ready AP), no exits to QEMU."""
        yield SpinUntil(self.aps_done)


class HPETBench(_HPETTest):
    """kvm-unit-tests hpet_read_test's concurrent read benchmark (see the module docstring)."""

    name = "hpet-bench"
    summary = "hpet_read_test: every AP reads the HPET main counter back to back; metric: its average read"
    region = "hpet"
    parameters = {"reads": Param(300, "counter reads per AP (hpet_read_test: 100,000)", min=1)}

    def setup(self, machine: Machine) -> None:
        super().setup(machine)
        self.latency = [0] * self.cpus

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        compute = Compute(machine.costs.guest_compute_ns)
        if index == 0:
            yield from self.enable()
            if self.cpus == 1:  # no AP to read (the test needs two CPUs): the BSP reads itself
                self.latency[0] = yield from self.reader(self.params["reads"], compute)
                return
            for cpu in range(self.cpus - 1, 0, -1):
                yield SendIPI(cpu, START_VECTOR)
            yield from self.wait_for_aps()
            return
        yield WaitForVector(START_VECTOR)
        self.latency[index] = yield from self.reader(self.params["reads"], compute)
        yield Arrive(self.aps_done)

    def metric(self, machine: Machine) -> Metric:
        return Metric("average read (hpet_read_test)", sum(self.latency) / self.cpus, "ns")


class HPETTorture(_HPETTest):
    """hpet_read_test's enable/disable torture: CPU 1 toggles ENABLE while CPUs 2.. read."""

    name = "hpet-torture"
    summary = "hpet_read_test's torture: CPU 1 toggles HPET ENABLE while the others read; metric: backward steps"
    parameters = {"reads": Param(300, "counter reads per reader (hpet_read_test: 100,000)", min=1),
                  "toggles": Param(300, "ENABLE toggles by CPU 1 (hpet_read_test: 100,000)", min=1)}

    def setup(self, machine: Machine) -> None:
        super().setup(machine)
        if self.cpus < 3:
            raise ConfigError("workload 'hpet-torture' needs -smp 3 or more (a writer and a reader besides the BSP)")

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        if index == 0:
            yield from self.enable()
            for cpu in range(self.cpus - 1, 1, -1):
                yield SendIPI(cpu, START_VECTOR)
            yield SendIPI(1, START_VECTOR)
            yield from self.wait_for_aps()
            return
        yield WaitForVector(START_VECTOR)
        if index == 1:  # hpet_writer: even i disables, odd i enables
            for i in range(self.params["toggles"]):
                config = yield MMIORead(HPET_CFG, 8)
                yield MMIOWrite(HPET_CFG, config | 1 if i & 1 else config & ~1, 8)
        else:
            yield from self.reader(self.params["reads"], Compute(machine.costs.guest_compute_ns))
        yield Arrive(self.aps_done)

    def metric(self, machine: Machine) -> Metric:
        return Metric("backward counter steps", self.backward, "")


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
