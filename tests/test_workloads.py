"""Workloads (aemu.workloads): the registry, parameters and their defaults, the exits each built-in
guest program yields, and the metric each scores a run by."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from itertools import islice
from typing import Any

import pytest

import aemu
from aemu import MachineConfig, simulate
from aemu.cpu import (Arrive, Compute, Exit, GuestProgram, LAPICTimer, MMIORead, MMIOWrite, PIORead, PIOWrite, SendIPI,
                      SpinUntil, WaitForVector)
from aemu.errors import ConfigError
from aemu.machine import Machine
from aemu.replay import ReplayWorkload
from aemu.result import Metric
from aemu.workloads import BUILTIN_WORKLOADS, WORKLOADS, Workload, get_workload, register
from aemu.workloads.boot import HPET_T0_CFG, HPET_T0_CMP, Boot, ClockTick, GuestClock
from aemu.workloads.console import Console
from aemu.workloads.micro import HPET_CFG, HPET_COUNTER, HPETBench, HPETTorture, Idle, PMTimerBench

SPLIT = "-accel kvm,kernel-irqchip=split"


@pytest.fixture
def registry() -> Iterator[dict[str, Any]]:
    """WORKLOADS as it was before the test (user registrations are undone)."""
    saved = dict(WORKLOADS)
    yield WORKLOADS
    WORKLOADS.clear()
    WORKLOADS.update(saved)


class Nap(Workload):
    """A user workload: every vCPU computes ``ns`` once."""

    name = "nap"

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"ns": 1_000}

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        yield Compute(self.params["ns"])

    def metric(self, machine: Machine) -> Metric:
        return Metric("nap", self.params["ns"], "ns")


# -- the registry -------------------------------------------------------------------------------

class TestRegistry:
    def test_builtin_table(self) -> None:
        assert BUILTIN_WORKLOADS == (HPETBench, HPETTorture, PMTimerBench, Idle, Boot, Console, ReplayWorkload)
        assert [c.name for c in BUILTIN_WORKLOADS] == ["hpet-bench", "hpet-torture", "pmtimer-bench", "idle", "boot",
                                                       "console", "replay"]
        assert all(WORKLOADS[c.name] is c for c in BUILTIN_WORKLOADS)

    def test_complete_on_import_without_get_workload(self) -> None:
        for first in ("aemu.workloads", "aemu.replay", "aemu.replay.workload", "aemu.workloads.base"):
            code = f"import {first}; from aemu.workloads import WORKLOADS; print(' '.join(WORKLOADS))"
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
            assert out.split() == ["hpet-bench", "hpet-torture", "pmtimer-bench", "idle", "boot", "console", "replay"], first

    def test_register_a_user_workload(self, registry: dict[str, Any]) -> None:
        assert register(Nap) is Nap  # usable as a class decorator
        wl = get_workload("nap", ns=5)
        assert isinstance(wl, Nap) and wl.params == {"ns": 5}
        r = simulate(MachineConfig.parse(f"-smp 2 {SPLIT} --workload nap --param ns=2500"))
        assert r.finished and r.metric == Metric("nap", 2500, "ns") and r.virtual_ns == 2500

    def test_register_replaces_a_namesake(self, registry: dict[str, Any]) -> None:
        class Idle2(Nap):
            name = "idle"

        register(Idle2)
        assert isinstance(get_workload("idle"), Idle2)

    def test_unknown_workload_lists_the_accepted(self) -> None:
        with pytest.raises(ConfigError, match=r"^unknown workload 'nap'; accepted: boot, console, hpet-bench, hpet-torture, idle, pmtimer-bench, replay$"):
            get_workload("nap")

    def test_public_import_paths_and_no_aliases(self) -> None:
        from aemu.workloads import base

        assert aemu.register_workload is register and aemu.Workload is Workload is base.Workload
        assert aemu.Metric is Metric
        for old in ("WORKLOADS", "register", "get_workload", "Metric"):  # the registry's old home is gone
            assert not hasattr(base, old), old
        from aemu.devices import base as devices_base

        assert not hasattr(devices_base, "PATCHES")  # its home is aemu.patches


# -- parameters ----------------------------------------------------------------------------------

class TestParameters:
    @pytest.mark.parametrize("cls, defaults", [
        (HPETBench, {"reads": 300}),
        (HPETTorture, {"reads": 300, "toggles": 300}),
        (PMTimerBench, {"reads": 300}),
        (Idle, {"tick_ns": 1_000_000}),
        (Boot, {"phases": 3, "work_us": 2_000, "qpc_per_s": 10_000, "stalls_per_s": 5_000, "stall_us": 20, "poll_ns": 50,
                "ap_start_us": 50, "hv_read_ns": 50, "idle_ns": 200_000, "pci_slots": 32}),
    ])
    def test_defaults(self, cls: type[Workload], defaults: dict[str, Any]) -> None:
        assert cls.defaults() == defaults
        assert get_workload(cls.name).params == defaults

    def test_params_override_defaults(self) -> None:
        assert get_workload("boot", phases=1, pci_slots=2).params == {**Boot.defaults(), "phases": 1, "pci_slots": 2}

    def test_unknown_parameter_names_the_accepted(self) -> None:
        with pytest.raises(ConfigError, match=r"workload 'hpet-bench': unknown parameter 'read'; accepted: reads"):
            get_workload("hpet-bench", read=1)
        with pytest.raises(ConfigError, match=r"workload 'nap': unknown parameter 'x'; accepted: ns"):
            Nap(x=1)

    def test_a_workload_without_parameters(self) -> None:
        class Bare(Nap):
            @classmethod
            def defaults(cls) -> dict[str, Any]:
                return {}

        with pytest.raises(ConfigError, match="accepted: none"):
            Bare(ns=1)

    @pytest.mark.parametrize("name, params, needle", [
        ("hpet-bench", {"reads": -1}, "parameter reads must be an integer >= 1, got -1"),
        ("hpet-bench", {"reads": 0}, "parameter reads must be an integer >= 1, got 0"),
        ("pmtimer-bench", {"reads": "abc"}, "parameter reads must be an integer >= 1, got 'abc'"),
        ("hpet-bench", {"reads": 2.5}, "parameter reads must be an integer >= 1, got 2.5"),
        ("idle", {"tick_ns": 0}, "parameter tick_ns must be an integer >= 1, got 0"),
        ("boot", {"pci_slots": 33}, "parameter pci_slots must be an integer from 0 to 32, got 33"),
        ("boot", {"phases": True}, "parameter phases must be an integer >= 1, got True"),
    ])
    def test_parameters_are_checked_by_type_and_range(self, name: str, params: dict[str, Any], needle: str) -> None:
        """Regression: reads=-1 "finished" with no reads and reads='abc' failed in the guest program."""
        with pytest.raises(ConfigError) as info:
            get_workload(name, **params)
        assert str(info.value) == f"workload {name!r}: {needle}"

    def test_summaries_for_help(self) -> None:
        assert all(c.summary for c in BUILTIN_WORKLOADS)
        assert [c.open_ended for c in BUILTIN_WORKLOADS] == [False, False, False, True, False, False, False]


# -- guest programs ------------------------------------------------------------------------------

def program(args: str, index: int = 0, **params: Any) -> tuple[Machine, list[Exit]]:
    """A machine built for ``args`` and vCPU ``index``'s program as a list (it must be finite)."""
    m = machine(args, **params)
    exits = list(islice(m.workload.program(m, index, random.Random(0)), 100_001))
    assert len(exits) <= 100_000, "the program does not end by itself"  # not all the host's memory
    return m, exits


def machine(args: str, **params: Any) -> Machine:
    config = MachineConfig.parse(args)
    return Machine(config, get_workload(config.workload, **params))


def drive(prog: GuestProgram, n: int, reply: Any = 0) -> list[Exit]:
    """The first ``n`` exits of ``prog`` (fewer if it ends), answering every one with ``reply(exit)``
    (a constant or a function): hpet_read_test uses what its reads return."""
    out: list[Exit] = []
    value: Any = None
    try:
        while len(out) < n:
            e = prog.send(value)
            out.append(e)
            if isinstance(e, Arrive):  # what the vCPU does with it: a store to guest memory
                e.barrier.arrive()
            value = reply(e) if callable(reply) else reply
    except StopIteration:
        pass
    return out


def counter(start: int = 1_000) -> Any:
    """Replies counting up by one on every counter read (0 for CONFIG and the rest)."""
    ticks = iter(range(start, 10**9))
    return lambda e: next(ticks) if e == MMIORead(HPET_COUNTER, 8) else 0


class TestPrograms:
    """hpet_read_test (kvm-unit-tests x86/hpet_read_test.c): the BSP enables the HPET and starts
    the APs, which read; with -smp 1 the BSP reads itself."""

    START = 0x31  # on_cpu_async's IPI vector in the workload

    def test_hpet_bench_bsp_enables_the_hpet_starts_the_aps_then_waits(self) -> None:
        m = machine(f"-M q35,hpet=on -smp 3 {SPLIT} --workload hpet-bench", reads=3)
        bsp = m.workload.program(m, 0, random.Random(0))
        wl = m.workload
        assert isinstance(wl, HPETBench)
        # CONFIG read-modify-write (a set LEG_RT bit is kept), an IPI per AP from the last down,
        # then a pause loop until both APs have arrived at the barrier (cpus_active() == 1)
        assert drive(bsp, 7, lambda e: 0b10 if e == MMIORead(HPET_CFG, 8) else None) == [
            MMIORead(HPET_CFG, 8), MMIOWrite(HPET_CFG, 0b11, 8), SendIPI(2, self.START), SendIPI(1, self.START),
            SpinUntil(wl.aps_done)]
        assert (HPET_CFG, HPET_COUNTER) == (0xFED00010, 0xFED000F0)
        assert wl.aps_done.parties == 2 and not wl.aps_done.full
        for ap in (1, 2):  # each AP arrives when its reads are done
            assert drive(m.workload.program(m, ap, random.Random(0)), 100, counter())[-1] == Arrive(wl.aps_done)
        assert wl.aps_done.full and drive(bsp, 5) == []

    def test_hpet_bench_ap_reads_reads_plus_two_times(self) -> None:
        m = machine(f"-M q35,hpet=on -smp 2 {SPLIT} --workload hpet-bench", reads=2)
        ap = drive(m.workload.program(m, 1, random.Random(0)), 100, counter())
        read, compute = MMIORead(0xFED000F0, 8), Compute(100)
        assert isinstance(m.workload, HPETBench)
        done = Arrive(m.workload.aps_done)
        # start, 2 x (read, loop), end, then it arrives at the BSP's barrier
        assert ap == [WaitForVector(self.START), read, read, compute, read, compute, read, done]
        assert m.workload.latency == [0, (1_003 - 1_000) * 10 // 2]  # tick delta x 10 ns / reads, per AP

    def test_hpet_bench_one_cpu_the_bsp_reads(self) -> None:
        m = machine(f"-M q35,hpet=on -smp 1 {SPLIT} --workload hpet-bench", reads=2)
        bsp = drive(m.workload.program(m, 0, random.Random(0)), 100, counter())
        read, compute = MMIORead(HPET_COUNTER, 8), Compute(100)
        assert bsp == [MMIORead(HPET_CFG, 8), MMIOWrite(HPET_CFG, 1, 8), read, read, compute, read, compute, read]
        assert isinstance(m.workload, HPETBench) and m.workload.latency == [(1_003 - 1_000) * 10 // 2]

    def test_hpet_reader_counts_backward_steps(self) -> None:
        m = machine(f"-M q35,hpet=on -smp 2 {SPLIT} --workload hpet-bench", reads=4)
        values = iter([10, 20, 15, 30, 25, 40])  # start, 4 reads, end
        drive(m.workload.program(m, 1, random.Random(0)), 100, lambda e: next(values) if isinstance(e, MMIORead) else None)
        assert isinstance(m.workload, HPETBench) and m.workload.backward == 2  # 20 -> 15 and 30 -> 25

    def test_hpet_torture_cpu1_toggles_enable_the_others_read(self) -> None:
        m = machine(f"-M q35,hpet=on -smp 4 {SPLIT} --workload hpet-torture", reads=1, toggles=3)
        bsp = m.workload.program(m, 0, random.Random(0))
        assert drive(bsp, 5, 0)[2:] == [SendIPI(3, self.START), SendIPI(2, self.START), SendIPI(1, self.START)]
        cfg = 0b11  # ENABLE and LEG_RT: only ENABLE toggles (even i disables, odd i enables)
        writer = drive(m.workload.program(m, 1, random.Random(0)), 100, lambda e: cfg if e == MMIORead(HPET_CFG, 8) else None)
        assert isinstance(m.workload, HPETTorture)
        done = Arrive(m.workload.aps_done)
        assert writer == [WaitForVector(self.START),
                          MMIORead(HPET_CFG, 8), MMIOWrite(HPET_CFG, 0b10, 8), MMIORead(HPET_CFG, 8),
                          MMIOWrite(HPET_CFG, 0b11, 8), MMIORead(HPET_CFG, 8), MMIOWrite(HPET_CFG, 0b10, 8), done]
        reader = drive(m.workload.program(m, 2, random.Random(0)), 100, counter())
        assert reader == [WaitForVector(self.START), *[MMIORead(HPET_COUNTER, 8)] * 2, Compute(100), MMIORead(HPET_COUNTER, 8),
                          done]
        with pytest.raises(ConfigError, match="needs -smp 3 or more"):
            machine(f"-M q35,hpet=on -smp 2 {SPLIT} --workload hpet-torture")

    def test_hpet_bench_needs_the_hpet(self) -> None:
        with pytest.raises(ConfigError, match=r"needs the HPET: use -M q35,hpet=on"):
            machine(f"-M q35,hpet=off {SPLIT} --workload hpet-bench")

    @pytest.mark.parametrize("board, port", [("q35", 0x608), ("pc", 0x608)])  # SeaBIOS: PM base 0x600 on both
    def test_pmtimer_bench_reads_the_boards_pm_timer(self, board: str, port: int) -> None:
        m, prog = program(f"-M {board},hpet=off -smp 1 {SPLIT} --workload pmtimer-bench", reads=2)
        assert m.pm_timer_port == port
        assert prog == [PIORead(port, 4), Compute(100)] * 2

    def test_idle_arms_its_lapic_timer_and_waits(self) -> None:
        m = machine(f"-smp 1 {SPLIT} --workload idle", tick_ns=500)
        prog = m.workload.program(m, 0, random.Random(0))
        assert list(islice(prog, 6)) == [LAPICTimer(500, 0xEC), WaitForVector(0xEC)] * 3

    # The boot (the Windows guest profile, docs/WINDOWS-GUEST.md): the clock source follows the
    # machine, stalls spin until a deadline, work reads the clock at a rate.
    BOOT = dict(phases=1, pci_slots=1, work_us=2, qpc_per_s=1_000_000, stalls_per_s=500_000, stall_us=1, poll_ns=50,
                ap_start_us=0, idle_ns=30)

    def test_boot_bsp_on_one_cpu(self) -> None:
        m = machine(f"-M q35,hpet=off -smp 1 {SPLIT} --workload boot", **self.BOOT)
        ticks = iter(range(0, 10**6, 2))  # each PM timer read 2 ticks (~559 ns) after the last
        prog = drive(m.workload.program(m, 0, random.Random(0)), 10_000,
                     lambda e: next(ticks) if e == PIORead(0x608, 4) else 0)
        read = PIORead(0x608, 4)
        assert isinstance(m.workload, Boot)
        rendezvous = m.workload.rendezvous[0]
        banner = [PIOWrite(0x3F8, b, 1) for b in b"aemu boot: starting APs\r\n"]
        # 2 us of work at 1M reads/s: (1 us of work, a read) twice; the one stall (1 us) after the
        # second read: a read to start, then (poll, read) until 1 us has passed on the PM timer
        # (2 ticks = 559 ns per read: 2 more); then the rendezvous (alone: no wait), the progress
        # line and the idle tick
        assert prog == [
            PIOWrite(0xCF8, 0x8000_0000, 4), PIORead(0xCFC, 4),  # PCI config scan, slot 0
            PIOWrite(0x70, 0x00, 1), PIORead(0x71, 1),  # RTC seconds, minutes, hours
            PIOWrite(0x70, 0x02, 1), PIORead(0x71, 1),
            PIOWrite(0x70, 0x04, 1), PIORead(0x71, 1),
            *banner,
            Compute(1_000), read, Compute(1_000), read,
            read, Compute(50), read, Compute(50), read,
            Arrive(rendezvous), SpinUntil(rendezvous),
            *(PIOWrite(0x3F8, b, 1) for b in b"phase 0 done\r\n"),
            # without an HPET the clock owner idles on its LAPIC timer (Windows 24H2 has no RTC clock)
            LAPICTimer(30, 0xEC), WaitForVector(0xEC)]

    @pytest.mark.parametrize(("machine_args", "first", "clock"), [
        ("-M q35,hpet=off -cpu host", [], PIORead(0x608, 4)),  # the ACPI PM timer
        # the HPET, 32-bit (enabled in legacy replacement mode: it also drives the clock tick)
        ("-M q35,hpet=on -cpu host", [MMIOWrite(HPET_CFG, 3, 4)], MMIORead(HPET_COUNTER, 4)),
        ("-M pc,hpet=off", [], PIORead(0x608, 4)),
    ])
    def test_boot_reads_the_clock_windows_would(self, machine_args: str, first: list[Exit], clock: Exit) -> None:
        m = machine(f"{machine_args} -smp 1 {SPLIT} --workload boot", **{**self.BOOT, "pci_slots": 0})
        ticks = iter(range(0, 10**6, 4))
        prog = drive(m.workload.program(m, 0, random.Random(0)), 10_000, lambda e: next(ticks) if e == clock else 0)
        assert prog[:len(first)] == first
        tick_registers = (PIORead(0x71, 1), MMIORead(HPET_T0_CFG, 4), MMIORead(HPET_T0_CMP, 4))
        reads = {e for e in prog if isinstance(e, (MMIORead, PIORead)) and e not in tick_registers}
        assert reads == {clock}

    def test_boot_with_hv_time_reads_the_reference_tsc_page_without_exits(self) -> None:
        params = " ".join(f"--param {k}={v}" for k, v in {**self.BOOT, "pci_slots": 0}.items())
        r = simulate(MachineConfig.parse(f"-M q35,hpet=on -cpu host,hv-time -smp 2 {SPLIT} --workload boot {params}"))
        assert r.finished
        bsp, ap = r.vcpus
        assert "hpet" not in ap.exits_by_region and "acpi-tmr" not in ap.exits_by_region
        # the BSP touches the HPET only for its clock tick (hv-time gives no synthetic timers)
        assert "acpi-tmr" not in bsp.exits_by_region and bsp.exits_by_region["hpet"] > 0
        assert bsp.interrupts == 1  # the tick

    def test_clock_tick_on_the_hpet_is_windows_sequence_and_reprograms_when_late(self) -> None:
        m = machine(f"-M q35,hpet=on -smp 1 {SPLIT} --workload boot", **self.BOOT)
        tick = ClockTick(m, 1_000)  # 100 HPET ticks
        counter = iter([5_000, 5_050])  # the closing read, 5,050, is before the comparator (5,100): armed
        seq = drive(tick.idle(), 100, lambda e: next(counter) if e == MMIORead(HPET_COUNTER, 4) else 0)
        cfg, cmp = HPET_T0_CFG, HPET_T0_CMP
        assert seq == [MMIORead(HPET_COUNTER, 4), MMIORead(cfg, 4), MMIOWrite(cfg, 0x134, 4), MMIOWrite(cmp, 5_100, 4),
                       MMIOWrite(cfg, 0x134, 4), MMIORead(cmp, 4), MMIORead(HPET_COUNTER, 4), WaitForVector(0x30)]
        late = iter([5_000, 5_100, 6_000, 6_150])  # the counter reached the comparator: again, 200 ticks ahead
        seq = drive(tick.idle(), 100, lambda e: next(late) if e == MMIORead(HPET_COUNTER, 4) else 0)
        assert MMIOWrite(cmp, 5_100, 4) in seq and MMIOWrite(cmp, 6_200, 4) in seq and seq[-1] == WaitForVector(0x30)

    @pytest.mark.parametrize(("hpet", "device"), [("on", "hpet"), ("off", "mc146818rtc")])
    def test_the_clock_owner_idles_on_windows_clock(self, hpet: str, device: str) -> None:
        from aemu import clock
        from aemu.runner import run_machine

        m = machine(f"-M q35,hpet={hpet} -smp 2 {SPLIT} --workload boot")
        clock.run(run_machine(m))
        assert all(c.finished for c in m.vcpus)
        bsp, ap = m.vcpus
        phases = m.workload.params["phases"]
        assert bsp.interrupts == phases and ap.interrupts == phases + 2  # ap: startup, go and LAPIC ticks
        dev = next(d for d in m.devices if d.type_name == device)
        if device == "hpet":
            assert dev.irq_raises == phases
        else:  # its LAPIC timer, in KVM: the RTC's periodic interrupt is never enabled
            assert dev.cmos[0x0A] == 0x26 and dev.cmos[0x0B] & 0x40 == 0  # rate and PIE as reset left them

    def test_boot_bsp_starts_the_aps_one_at_a_time(self) -> None:
        m = machine(f"-M q35,hpet=off -smp 3 {SPLIT} --workload boot", **{**self.BOOT, "pci_slots": 0})
        wl = m.workload
        assert isinstance(wl, Boot)
        ticks = iter(range(0, 10**6, 4))
        stalls_before_check_in = 3

        def reply(e: Exit) -> int:
            nonlocal stalls_before_check_in
            if e == PIORead(0x608, 4):
                if wl.checked_in == 1 and stalls_before_check_in:  # AP 1 started, not yet checked in
                    stalls_before_check_in -= 1
                    if not stalls_before_check_in:
                        wl.checked_in += 1  # AP 1 checks in
                return next(ticks)
            return 0

        out = drive(m.workload.program(m, 0, random.Random(0)), 500, reply)
        first, second = out.index(SendIPI(1, 0x30)), out.index(SendIPI(2, 0x30))
        # KeStartAllProcessors: the BSP stalls on the clock until AP 1 checks in, then starts AP 2
        assert first < second and PIORead(0x608, 4) in out[first:second]
        ap = m.workload.program(m, 1, random.Random(0))
        assert next(ap) == WaitForVector(0x30)
        assert ap.send(None) == Compute(0)  # its start-up work (ap_start_us=0 here), then it checks in

    @pytest.mark.parametrize("work_us, stalls", [(2_000, 10), (8_000, 40)])
    def test_boot_stalls_at_a_rate_of_work_so_a_phase_length_changes_only_how_often_vcpus_meet(
            self, work_us: int, stalls: int, monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[int] = []
        real = GuestClock.stall

        def stall(clock: GuestClock, ns: int, poll: Compute) -> GuestProgram:
            calls.append(ns)
            return real(clock, ns, poll)

        monkeypatch.setattr(GuestClock, "stall", stall)
        m = machine(f"-M q35,hpet=off -smp 2 {SPLIT} --workload boot", phases=1, pci_slots=0, work_us=work_us,
                    ap_start_us=0)
        ticks = iter(range(0, 10**9, 100))  # 100 PM-timer ticks (28 us) pass between two reads
        out = drive(m.workload.program(m, 1, random.Random(0)), 10_000,
                    lambda e: next(ticks) if e == PIORead(0x608, 4) else 0)
        assert out[-1] == WaitForVector(0xEC)  # the AP ran its one phase to the end
        assert calls == [20_000] * stalls  # stalls_per_s=5,000 of 20 us each, per second of work
        assert out.count(Compute(100_000)) == work_us * 10_000 // 1_000_000  # qpc_per_s=10,000: a read per 100 us

    def test_boot_aps_idle_until_all_are_up_then_meet_at_a_spin_barrier(self) -> None:
        m = machine(f"-M q35,hpet=off -smp 2 {SPLIT} --workload boot", **{**self.BOOT, "pci_slots": 0})
        wl = m.workload
        assert isinstance(wl, Boot)
        ticks = iter(range(0, 10**6, 4))
        reply = lambda e: next(ticks) if e == PIORead(0x608, 4) else 0  # noqa: E731
        ap = m.workload.program(m, 1, random.Random(0))
        out = drive(ap, 100, reply)
        barrier = wl.rendezvous[0]
        # started, checked in, then halted (off its host CPU) until the BSP's go IPI
        assert out[:3] == [WaitForVector(0x30), Compute(0), WaitForVector(0xFB)]
        # first at the barrier: it spins (PAUSE, on its CPU) until the BSP arrives
        assert out[-4:] == [Arrive(barrier), SpinUntil(barrier), LAPICTimer(30, 0xEC), WaitForVector(0xEC)]
        assert barrier.arrived == 1 and not barrier.full
        bsp = drive(m.workload.program(m, 0, random.Random(0)), 200, reply)
        assert bsp.index(SendIPI(1, 0x30)) < bsp.index(SendIPI(1, 0xFB)) < bsp.index(Arrive(barrier))
        assert barrier.full


# -- metrics -------------------------------------------------------------------------------------

class TestMetrics:
    def test_pmtimer_bench_scores_the_median_read(self) -> None:
        r = simulate(MachineConfig.parse(f"-smp 2 {SPLIT} --workload pmtimer-bench --param reads=20"))
        assert r.metric == Metric("median read latency", r.regions_by_name()["acpi-tmr"].p50, "ns")
        assert r.metric.value > 0

    @pytest.mark.parametrize("cpus", [1, 2, 4])
    def test_hpet_bench_scores_as_hpet_read_test(self, cpus: int) -> None:
        # after, lockless: an AP's counter delta is one 3,000 ns read then 20 x (3,000 read + 100
        # compute) = 65,000 ns, x 10 / 20 reads = 3,250 ns; summed over the readers (the APs, or the
        # BSP alone at -smp 1) and divided by every CPU, the BSP included
        r = simulate(MachineConfig.parse(f"-M q35,hpet=on -smp {cpus} {SPLIT} --workload hpet-bench --param reads=20"))
        readers = max(cpus - 1, 1)
        assert r.metric == Metric("average read (hpet_read_test)", readers * 3_250 / cpus, "ns")

    @pytest.mark.parametrize("quantum", ["", "--quantum 0"])
    @pytest.mark.parametrize("series", ["before", "after"])
    def test_hpet_torture_never_steps_back(self, series: str, quantum: str) -> None:
        # the lockless (seqlock) reads of 'after' too: without e525715's "stop no lower than a
        # lockless read" this run saw 180 backward steps (257 with --quantum 0)
        r = simulate(MachineConfig.parse(f"-M q35,hpet=on -smp 8 {SPLIT} --workload hpet-torture --series {series} "
                                         f"--param reads=200 --param toggles=200 {quantum}"))
        assert r.finished and r.metric == Metric("backward counter steps", 0, "")

    def test_idle_scores_interrupts_per_vcpu(self) -> None:
        r = simulate(MachineConfig.parse(f"-smp 2 {SPLIT} --workload idle --param tick_ns=100000 --duration 1ms"))
        assert r.metric == Metric("interrupts per vCPU", sum(v.interrupts for v in r.vcpus) / 2, "")
        assert r.metric.value == 9  # ticks at 0.1, 0.2, ... 0.9 ms (plus exit costs) before the 1 ms cap

    def test_boot_scores_its_time_in_ms(self) -> None:
        r = simulate(MachineConfig.parse(f"-smp 2 {SPLIT} --workload boot --param phases=1"))
        assert r.finished and r.metric == Metric("boot time", r.virtual_ns / 1e6, "ms")


# -- milestones -----------------------------------------------------------------------------------

class Marks(Workload):
    """A user workload: vCPU i computes (i + 1) us, marks it, computes 1 us more and marks that."""

    name = "marks"

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        yield Compute(1_000 * (index + 1))
        machine.milestone("a first compute done")
        yield Compute(1_000)
        machine.milestone(f"vCPU {index} done")

    def metric(self, machine: Machine) -> Metric:
        return Metric("marks", len(machine.milestones), "")


class TestMilestones:
    def test_a_milestone_is_when_it_was_first_reached_from_the_start(self) -> None:
        r = simulate(MachineConfig.parse(f"-smp 2 {SPLIT} --quantum 0"), Marks())
        times = dict(r.milestones)
        assert list(times) == ["a first compute done", "vCPU 0 done", "vCPU 1 done"]
        # vCPU 0 reached the first mark (vCPU 1 reached it 1 us later, which does not move it)
        assert times["a first compute done"] < times["vCPU 0 done"] <= times["vCPU 1 done"] == r.virtual_ns
        assert times["vCPU 0 done"] - times["a first compute done"] == 1_000
        assert r.metric.value == 3

    def test_each_run_of_a_machine_starts_with_none(self) -> None:
        m = Machine(MachineConfig.parse(f"-smp 1 {SPLIT}"), Marks())
        m.milestones["left from before"] = 5
        r = simulate(m.config, Marks())
        assert "left from before" not in dict(r.milestones)

    def test_the_boot_marks_its_start_up_and_each_phase(self) -> None:
        r = simulate(MachineConfig.parse(f"-M q35,hpet=off -smp 4 {SPLIT} --workload boot --param phases=2"))
        assert [name for name, _ in r.milestones] == ["APs started", "phase 0 done", "phase 1 done"]
        times = [ns for _, ns in r.milestones]
        assert 0 < times[0] < times[1] < times[2] <= r.virtual_ns
        assert r.to_dict()["workload"]["milestones"] == dict(r.milestones)

    def test_more_phases_of_the_same_length_keep_the_phases_ratio(self) -> None:
        """README ("A first look"): the number of phases is a faithful shortening of the boot; the
        before/after ratio of its phases (from the APs-started milestone to the end) stays put."""
        def phases_ratio(phases: int) -> float:
            spent = {}
            for series in ("before", "after"):
                r = simulate(MachineConfig.parse(f"-M q35,hpet=off -cpu host -smp 32 {SPLIT} --host-cpus 4 "
                                                 f"--workload boot --param phases={phases} --series {series}"))
                up = r.milestone_ns("APs started")
                assert up is not None and r.finished
                spent[series] = r.virtual_ns - up
            return spent["before"] / spent["after"]

        two, eight = phases_ratio(2), phases_ratio(8)
        assert two > 1.3 and eight == pytest.approx(two, rel=0.05)
