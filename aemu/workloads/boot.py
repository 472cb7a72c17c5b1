"""``boot``: a Windows-like SMP boot -- aemu's one guest profile (docs/WINDOWS-GUEST.md).

Not a trace: a small program per vCPU with the parts of a Windows boot that hit QEMU's BQL.
Every value is a parameter whose source, or the word "assumption", is in docs/WINDOWS-GUEST.md
section 6 and in README's guest-profile table.

* **The clock Windows reads** (QueryPerformanceCounter's source) follows what the machine offers,
  as Windows chooses it: the Hyper-V reference TSC page with ``-cpu host,hv-time`` (read without
  an exit: a TSC read and a page read, ``hv_read_ns``); else the HPET main counter when the
  machine has one (a 4-byte MMIO read of 0xfed000f0: Windows makes 32-bit HPET accesses);
  else the ACPI PM timer (a 4-byte ``IN`` from PM base + 8): one read per query for either,
  and no TSC under any hypervisor, as the Windows 11 24H2 / Server 2025 kernel selects and reads
  its counter (``HalpTimerFindIdealPerformanceCounterSource``, ``KeQueryPerformanceCounter``:
  docs/WINDOWS-GUEST.md 1.5).
* **BSP (vCPU 0)**: enables the HPET when it uses it, scans PCI bus 0 (``pci-conf-idx`` write +
  ``pci-conf-data`` read per slot), reads the RTC, prints a banner on the serial port, then
  starts the APs one at a time, as ``KeStartAllProcessors`` does: a startup IPI, then it stalls
  (``KeStallExecutionProcessor``, polling the clock) until that AP has checked in. Windows stalls
  1 ms between two checks (``HalpInterruptWaitForProcessorStartUp``); the profile stalls
  ``stall_us``, so that the start-up keeps a share of the shortened boot nearer its share of a real
  one (docs/WINDOWS-GUEST.md 2.1).
* **An AP** waits for its startup IPI, spends ``ap_start_us`` of guest work initialising, checks
  in, and idles (HLT) until the BSP has started every AP and sends it an IPI (assumption: the
  APs get work once all processors are up, as in Linux's ``smp_init``).
* **Every vCPU** then runs ``phases`` phases: ``work_us`` of guest work during which it reads the
  clock ``qpc_per_s`` times per second of work (counted: a slower read makes the work longer),
  and calls ``KeStallExecutionProcessor(stall_us)`` ``stalls_per_s`` times per second of work.
  A stall spins on the clock until the deadline has passed (timed: a slower read means fewer
  reads, not a longer stall), one PAUSE between two reads, as the HAL's
  ``HalpTimerStallExecutionProcessor`` polls QPC's counter when the TSC is not invariant
  (docs/WINDOWS-GUEST.md 2.1). Both are rates, so ``work_us`` sets only how often the vCPUs
  meet, not what they do between two meetings. After each phase the vCPUs meet at a rendezvous
  in guest memory (an IPI generic call's barrier): early arrivers spin with ``pause`` (Windows'
  spin-waits use ``KeYieldProcessor``, i.e. PAUSE). KVM's pause-loop exiting then offers their
  host CPU to a vCPU that is ready (:mod:`aemu.sched`): one preempted in the guest, or woken
  from HLT -- not one asleep on the BQL in QEMU, which the spinners keep waiting for. Then each vCPU idles for one clock tick of
  ``idle_ns``. The BSP, Windows' clock owner, prints a progress line and idles on the clock
  Windows picks (:class:`ClockTick`: HPET timer 0 one-shots, else its LAPIC timer); the APs arm
  their LAPIC timers and halt (with an HPET, Windows 24H2 would route their ticks through the
  HPET too: docs/WINDOWS-GUEST.md 2.3).
* The boot is done when every vCPU has finished its phases; the metric is the virtual time that
  took. A cap (``--duration``, default 2 s) ends a boot that stalls (``finished: false``).

The boot is shortened (a few ms of guest work per vCPU where Windows takes minutes): the ratios
between configurations are what it is for.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from .. import clock
from ..cpu import (Arrive, Compute, Exit, GuestBarrier, GuestProgram, LAPICTimer, MMIORead, MMIOWrite, PIORead, PIOWrite,
                   SendIPI, SpinUntil, WaitForVector)
from ..result import Metric
from .base import Param, Workload
from .micro import HPET_CFG, HPET_CLK_PERIOD_NS, HPET_COUNTER

if TYPE_CHECKING:
    from ..machine import Machine

SERIAL_THR = 0x3F8
STARTUP_VECTOR = 0x30
IDLE_VECTOR = 0xEC  # the LAPIC timer
PM_TIMER_HZ = 3_579_545  # ACPI PM timer frequency (ACPI spec; QEMU hw/acpi/core.c PM_TIMER_FREQUENCY)
GO_VECTOR = 0xFB  # the IPI the BSP sends each AP once all are up
#: The milestone the BSP marks once it has started every AP and sent each its work: the boot's
#: start-up (the BSP alone) ends and its phases (every vCPU) begin.
APS_STARTED = "APs started"


class GuestClock:
    """One vCPU's QueryPerformanceCounter: which source it reads, and the time it has seen.

    ``read()`` is a guest program fragment: one read of the source; afterwards ``ns`` is the
    time since the first read, as the guest computes it from the counter (wrap-around included).
    """

    __slots__ = ("source", "ns", "_last", "_op", "_wrap", "_scale", "_hv_read")

    def __init__(self, machine: Machine, hv_read_ns: int) -> None:
        self.ns = 0
        self._last: int | None = None
        self._hv_read = Compute(hv_read_ns)
        self._op: MMIORead | PIORead | None
        if machine.config.hv_time:
            self.source, self._op, self._wrap, self._scale = "hv-ref-tsc", None, 0, 1.0
        elif machine.config.hpet:
            self.source, self._op = "hpet", MMIORead(HPET_COUNTER, 4)
            self._wrap, self._scale = (1 << 32) - 1, float(HPET_CLK_PERIOD_NS)
        else:
            self.source, self._op = "acpi-pm-timer", PIORead(machine.pm_timer_port, 4)
            self._wrap, self._scale = (1 << 24) - 1, 1e9 / PM_TIMER_HZ

    def read(self) -> GuestProgram:
        if self._op is None:  # the reference TSC page: no exit
            yield self._hv_read
            raw = clock.local_now_ns()
            delta = 0 if self._last is None else raw - self._last
        else:
            raw = yield self._op
            delta = 0 if self._last is None else (raw - self._last) & self._wrap
        self._last = raw
        self.ns += round(delta * self._scale)

    def stall(self, ns: int, poll: Compute) -> GuestProgram:
        """``KeStallExecutionProcessor``: poll the clock until ``ns`` have passed."""
        yield from self.read()
        deadline = self.ns + ns
        while self.ns < deadline:
            yield poll
            yield from self.read()


#: HPET timer 0's registers (HPET spec 1.0a 2.3.8; QEMU hw/timer/hpet.c: timers at 0x100 + 0x20 n)
HPET_T0_CFG, HPET_T0_CMP = 0xFED00100, 0xFED00108
#: What Windows 1809 writes to timer 0's config: interrupt enable and 32-bit mode (the 0x30 are
#: read-only capability bits); VirtualBox src/VBox/Devices/PC/DevHPET.cpp, header comment.
HPET_T0_WINDOWS_CFG = 0x134
HPET_ENABLE_LEGACY = 0x3  # general config: ENABLE | LEG_RT_CNF (timer 0 on IRQ0, as the PIT was)
RTC_INDEX, RTC_DATA = 0x70, 0x71
#: The vector the IOAPIC delivers ISA IRQ0 (pin 2: HPET timer 0 in legacy replacement mode) on,
#: to the BSP (IRQChip.program_like_linux)
HPET_CLOCK_VECTOR = 0x30


def cmos_read(reg: int) -> Generator[Exit, Any, int]:
    """Read a CMOS/RTC register: select it at port 0x70, read it at 0x71; returns its value."""
    yield PIOWrite(RTC_INDEX, reg, 1)
    value = yield PIORead(RTC_DATA, 1)
    return int(value or 0)


def lapic_idle(period_ns: int) -> GuestProgram:
    """Arm the vCPU's LAPIC timer for one ``period_ns`` one-shot (KVM emulates it in the kernel)
    and halt until it fires."""
    yield LAPICTimer(period_ns, IDLE_VECTOR)
    yield WaitForVector(IDLE_VECTOR)


class ClockTick:
    """The clock interrupt Windows' clock owner (the BSP) idles on, as Windows 11 24H2 / Server
    2025 picks it under a hypervisor without synthetic timers (``HalpTimerFindIdealClockSource``,
    docs/WINDOWS-GUEST.md 2.3): the HPET when present, else the LAPIC timer (the kernel has no
    RTC or 8254 clock plugin any more).

    With an HPET, timer 0 in legacy replacement mode as one-shots, each programmed with the
    sequence Windows 1809 uses (seven 32-bit accesses: counter, config, config, comparator,
    config, comparator, counter; VirtualBox DevHPET.cpp); if the last counter read shows the
    comparator already passed, it is programmed again further ahead (assumption: what the
    closing counter read is for; Linux does the same). Without one, a one-shot of the vCPU's own
    LAPIC timer, which KVM emulates in the kernel (no exit to QEMU).
    """

    __slots__ = ("source", "vector", "period_ns", "_hpet_ticks")

    def __init__(self, machine: Machine, period_ns: int) -> None:
        self.source = "hpet" if machine.config.hpet else "lapic"
        self.vector = HPET_CLOCK_VECTOR if machine.config.hpet else IDLE_VECTOR
        self.period_ns = period_ns
        self._hpet_ticks = max(1, period_ns // HPET_CLK_PERIOD_NS)

    def start(self) -> GuestProgram:
        """At boot: the HPET enabled in legacy replacement mode (nothing to do for the LAPIC)."""
        if self.source == "hpet":
            yield MMIOWrite(HPET_CFG, HPET_ENABLE_LEGACY, 4)

    def idle(self) -> GuestProgram:
        """Program one tick and halt until its interrupt."""
        if self.source == "lapic":
            yield from lapic_idle(self.period_ns)
            return
        ticks = self._hpet_ticks
        while True:
            now = yield MMIORead(HPET_COUNTER, 4)
            yield MMIORead(HPET_T0_CFG, 4)
            yield MMIOWrite(HPET_T0_CFG, HPET_T0_WINDOWS_CFG, 4)
            cmp = (now + ticks) & 0xFFFF_FFFF
            yield MMIOWrite(HPET_T0_CMP, cmp, 4)
            yield MMIOWrite(HPET_T0_CFG, HPET_T0_WINDOWS_CFG, 4)
            yield MMIORead(HPET_T0_CMP, 4)
            after = yield MMIORead(HPET_COUNTER, 4)
            if 0 < (cmp - after) & 0xFFFF_FFFF < 1 << 31:
                break  # armed: the counter has not reached the comparator yet
            # the counter passed it while programming (the interrupt would come at the
            # 32-bit wrap, 43 s on): program it again further ahead, as Linux's
            # hpet_clkevt_set_next_event (-ETIME) and clockevents' min_delta do
            ticks *= 2
        yield WaitForVector(self.vector)


class Boot(Workload):
    """A Windows-like SMP boot (see the module docstring)."""

    name = "boot"
    summary = "Windows-like SMP boot reading the clock the machine offers; metric: time to finish"

    parameters = {
        "phases": Param(3, "boot phases, each ending in a rendezvous of all vCPUs (assumption: the boot is "
                           "shortened to this many)", min=1),
        "work_us": Param(2_000, "guest work per vCPU per phase, us: the interval between two rendezvous of all "
                                "vCPUs (assumption; the ratios depend on it, README)", min=1),
        "qpc_per_s": Param(10_000, "clock reads per second of guest work (assumption in the 2k-50k range of "
                                   "docs/WINDOWS-GUEST.md 6)", min=1),
        "stalls_per_s": Param(5_000, "KeStallExecutionProcessor calls per second of guest work (assumption: 10 in "
                                     "each 2 ms phase)"),
        "stall_us": Param(20, "each stall, us (KeStallExecutionProcessor docs: typically under 50; 20: assumption)",
                          min=1),
        "poll_ns": Param(50, "guest work between two clock reads in a stall, ns (one PAUSE: about 10-140 cycles, "
                               "Intel; 50: assumption)", min=1),
        "ap_start_us": Param(50, "an AP's start-up work before it checks in, us (assumption)"),
        "hv_read_ns": Param(50, "a reference TSC page read (TSC + page), ns (assumption)", min=1),
        "idle_ns": Param(200_000, "clock tick idled for after each phase, ns: the BSP on Windows' clock (the HPET, else its LAPIC timer), "
                                  "the APs on their LAPIC timers (assumption)", min=1),
        "pci_slots": Param(32, "PCI slots the BSP scans on bus 0 (PCI: 32 devices per bus)", max=32),
    }

    def setup(self, machine: Machine) -> None:
        self.cpus = len(machine.vcpus)
        self.rendezvous = [GuestBarrier(self.cpus) for _ in range(int(self.params["phases"]))]
        self.checked_in = 1  # the BSP

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        p = self.params
        qpc = GuestClock(machine, p["hv_read_ns"])
        poll = Compute(p["poll_ns"])
        tick = ClockTick(machine, p["idle_ns"])
        if index == 0:
            yield from tick.start()
            for slot in range(p["pci_slots"]):
                yield PIOWrite(0xCF8, 0x8000_0000 | slot << 11, 4)
                yield PIORead(0xCFC, 4)
            for reg in (0x00, 0x02, 0x04):  # the RTC's seconds, minutes, hours
                yield from cmos_read(reg)
            yield from _serial(b"aemu boot: starting APs\r\n")
            for ap in range(1, self.cpus):
                yield SendIPI(ap, STARTUP_VECTOR)
                while self.checked_in <= ap:  # KeStartAllProcessors waits for the AP
                    yield from qpc.stall(p["stall_us"] * 1000, poll)
            for ap in range(1, self.cpus):
                yield SendIPI(ap, GO_VECTOR)
            machine.milestone(APS_STARTED)
        else:
            yield WaitForVector(STARTUP_VECTOR)
            yield Compute(p["ap_start_us"] * 1000)
            self.checked_in += 1
            yield WaitForVector(GO_VECTOR)
        interval = Compute(max(1, 10**9 // p["qpc_per_s"]))
        reads = max(1, p["work_us"] * p["qpc_per_s"] // 1_000_000)
        stalls = p["work_us"] * p["stalls_per_s"] // 1_000_000
        for phase in range(p["phases"]):
            for i in range(reads):
                yield interval
                yield from qpc.read()
                if i * stalls // reads != (i + 1) * stalls // reads:  # stalls spread over the work
                    yield from qpc.stall(p["stall_us"] * 1000, poll)
            yield Arrive(self.rendezvous[phase])  # the barrier lives in guest RAM: no exit
            yield SpinUntil(self.rendezvous[phase])
            if index == 0:
                machine.milestone(f"phase {phase} done")
                yield from _serial(b"phase %d done\r\n" % phase)
                yield from tick.idle()
            else:
                yield from lapic_idle(p["idle_ns"])

    def metric(self, machine: Machine) -> Metric:
        return Metric("boot time", machine.finish_ns / 1e6, "ms")


def _serial(text: bytes) -> GuestProgram:
    for byte in text:
        yield PIOWrite(SERIAL_THR, byte, 1)
