"""The vCPU exit loop: one path per exit, post_run after every exit, its books, one BQL decision."""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

import pytest

import aemu.memory.dispatch as dispatch
from aemu import MachineConfig, simulate
from aemu.cpu import (Arrive, Compute, GuestBarrier, GuestProgram, LAPICTimer, MMIORead, PIORead, PIOWrite, SendIPI,
                       SpinUntil, VCPUAccount, WaitForVector)
from aemu.machine import Machine
from aemu.memory import AddressSpace, MemoryRegion
from aemu.result import Metric
from aemu.workloads import Workload

SPLIT = "-M q35,hpet=on -smp {n} -accel kvm,kernel-irqchip={chip} --workload {w} --series {s} {extra}"


def config(n: int = 1, chip: str = "split", w: str = "hpet-bench", s: str = "before", extra: str = "") -> MachineConfig:
    return MachineConfig.parse(SPLIT.format(n=n, chip=chip, w=w, s=s, extra=extra))


def site_acquisitions(result: Any, site: str, lock: str = "BQL") -> int:
    return sum(s.acquisitions for s in result.locks[lock].sites if s.site == site)


class _NoMetric(Workload):
    """A guest program for a test: its metric is nothing."""

    def metric(self, machine: Machine) -> Metric:
        return Metric("nothing", 0, "")


class TestPostRun:
    """``kvm_arch_post_run`` runs after every return from KVM_RUN (with kernel-irqchip=off it takes the BQL)."""

    def test_after_every_pio_exit(self) -> None:
        r = simulate(config(chip="off", w="pmtimer-bench", extra="--param reads=300 -M q35,hpet=off"))
        exits = r.vcpus[0].exits_by_kind
        assert exits == {"pio": 300}
        assert site_acquisitions(r, "kvm_arch_post_run") == 300

    @pytest.mark.parametrize("series", ["before", "after"])
    def test_after_every_exit_of_a_boot(self, series: str) -> None:
        r = simulate(config(n=4, chip="off", w="boot", s=series))
        assert r.finished
        exits = sum(n for v in r.vcpus for kind, n in v.exits_by_kind.items() if kind not in ("irq", "ple"))
        # interrupt deliveries ("irq") are injections at an entry, and pause-loop exits ("ple") are
        # handled in KVM: neither returns from KVM_RUN
        assert site_acquisitions(r, "kvm_arch_post_run") == exits

    @pytest.mark.parametrize("chip", ["on", "split"])
    def test_no_bql_with_an_in_kernel_lapic(self, chip: str) -> None:
        r = simulate(config(n=2, chip=chip, w="boot", s="before"))
        assert site_acquisitions(r, "kvm_arch_post_run") == 0


class TestOneDecision:
    """One HPET read passes through prepare_mmio_access once when it needs the BQL, never otherwise."""

    @pytest.fixture
    def calls(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
        seen: list[str] = []
        real = dispatch.prepare_mmio_access

        async def counting(space: AddressSpace, mr: MemoryRegion, site: str) -> bool:
            seen.append(mr.name)
            return await real(space, mr, site)

        monkeypatch.setattr(dispatch, "prepare_mmio_access", counting)
        yield seen

    @pytest.mark.parametrize("series, extra, expected", [
        # hpet_read_test at -smp 1: CONFIG read + write (the enable), then 1 + 100 + 1 counter reads
        ("before", "", 104),  # all 104 accesses, each under the BQL
        ("after", "", 0),  # hpet-lock: the region is lockless; the counter read takes no lock
        ("after", "--patch=-hpet-counter-lockless", 0),  # the HPET's own mutex, not the BQL
    ])
    def test_hpet_reads(self, calls: list[str], series: str, extra: str, expected: int) -> None:
        r = simulate(config(s=series, extra=f"--param reads=100 {extra}"))
        assert r.regions_by_name()["hpet"].count == 104
        assert calls.count("hpet") == expected
        assert site_acquisitions(r, "hpet read") + site_acquisitions(r, "hpet write") == expected


class TestHostThreadState:
    """What KVM sees of a vCPU thread: inside KVM_RUN except while QEMU handles its exit."""

    def test_a_vcpu_is_out_of_kvm_run_while_qemu_handles_its_exit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from aemu import clock

        seen: list[bool] = []
        real = dispatch.prepare_mmio_access

        async def recording(space: AddressSpace, mr: MemoryRegion, site: str) -> bool:
            k = clock.current_keeper()
            assert k is not None and k.thread is not None
            seen.append(k.thread.in_guest)
            return await real(space, mr, site)

        monkeypatch.setattr(dispatch, "prepare_mmio_access", recording)
        from aemu.runner import run_machine

        m = clock.run(run_machine(Machine(config(n=2, s="before", extra="--host-cpus 1"), _Probe())))
        # every access of _Probe takes the BQL before the series: 5 ioport80 writes, 5 HPET reads,
        # 1 PM-timer read per vCPU; all of them with the thread out of KVM_RUN
        assert seen == [False] * 2 * 11
        assert all(c.keeper.thread is not None and c.keeper.thread.in_guest for c in m.vcpus)  # back in KVM_RUN

    def test_a_vcpu_is_out_of_kvm_run_in_pre_run(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from aemu.cpu import VCPU

        seen: list[bool] = []
        real = VCPU.pre_run

        async def recording(cpu: VCPU) -> None:
            seen.append(cpu.keeper.thread.in_guest)
            await real(cpu)

        monkeypatch.setattr(VCPU, "pre_run", recording)
        r = simulate(config(n=2, s="before", extra="--host-cpus 1"), _Probe())
        assert r.finished and len(seen) == site_acquisitions(r, "kvm_arch_pre_run") > 0
        assert not any(seen)


class TestSpinBarrier:
    """A spin barrier in guest memory: arriving is a store, waiting is guest time on the vCPU's CPU."""

    @pytest.mark.parametrize("host", ["", "--host-cpus 1"])
    def test_the_waiter_spins_as_guest_time_until_the_last_arrives(self, host: str) -> None:
        r = simulate(config(n=2, s="after", extra=host), _Meet())
        assert r.finished
        late, early = r.vcpus
        assert early.finish_ns == late.finish_ns == 50_000  # the early one leaves when the late one arrives
        assert late.guest_ns == 50_000
        # one host CPU: vCPU 0 runs first; vCPU 1 waits for the CPU (runnable), then finds the barrier full
        # the early vCPU's spin is guest time; the run queue's waits are runnable time
        assert early.guest_ns + early.runnable_ns == early.finish_ns - early.start_ns
        assert early.exit_ns == 0 and not early.exits_by_kind

    @pytest.mark.parametrize(("host", "guest_share"), [("", 1.0), ("--host-cpus 2", 2 / 3), ("--host-cpus 1", 1 / 3)])
    def test_a_spin_that_never_ends_stops_at_the_cap_with_its_time_booked(self, host: str, guest_share: float) -> None:
        r = simulate(config(n=3, s="after", extra=f"--duration 60ms {host}"), _Stuck())
        assert not r.finished and r.virtual_ns == 60_000_000
        for v in r.vcpus:  # 3 spinners share the CPUs in slices: all of the time is spin or run queue
            assert v.guest_ns + v.runnable_ns == v.elapsed_ns == 60_000_000
            assert v.guest_ns == pytest.approx(guest_share * 60_000_000, rel=0.03)

    def test_a_barrier_needs_parties(self) -> None:
        with pytest.raises(ValueError, match="positive number of parties"):
            GuestBarrier(0)


class _Meet(_NoMetric):
    """vCPU 0 computes 50 us, then both meet at a spin barrier."""

    name = "meet"

    def setup(self, machine: Machine) -> None:
        self.barrier = GuestBarrier(2)

    def program(self, machine: Machine, index: int, rng: Any) -> GuestProgram:
        if index == 0:
            yield Compute(50_000)
        yield Arrive(self.barrier)
        yield SpinUntil(self.barrier)


class _Stuck(_NoMetric):
    """Every vCPU spins at a barrier that waits for more vCPUs than there are."""

    name = "stuck"

    def setup(self, machine: Machine) -> None:
        self.barrier = GuestBarrier(len(machine.vcpus) + 1)

    def program(self, machine: Machine, index: int, rng: Any) -> GuestProgram:
        yield Arrive(self.barrier)
        yield SpinUntil(self.barrier)


class _Probe(_NoMetric):
    """A guest that reads and writes a PIO port and computes."""

    name = "probe"

    def program(self, machine: Machine, index: int, rng: Any) -> GuestProgram:
        for _ in range(5):
            yield PIOWrite(0x80, 1, 1)  # ioport80, BQL-bound
            yield Compute(1_000)
            yield MMIORead(0xFED000F0, 8)
        yield PIORead(0x608, 4)


class TestBooks:
    def test_time_adds_up_and_accesses_are_counted(self) -> None:
        r = simulate(config(n=2, s="after"), _Probe())
        for v in r.vcpus:
            assert v.exits_by_kind == {"pio": 6, "mmio": 5}
            assert v.guest_ns == 5_000
            assert v.guest_ns + v.exit_ns + v.lock_wait_ns + v.halted_ns == v.finish_ns - v.start_ns
            assert v.exits_by_region == {"ioport80": 5, "hpet": 5, "acpi-tmr": 1}

    def test_latency_is_folded_into_value_counts(self) -> None:
        acct = VCPUAccount()
        acct.samples["r"] = array("q", [5, 5, 7])
        acct.fold("r")
        acct.samples["r"].extend([5, 9])
        assert acct.latency() == {"r": {5: 3, 7: 1, 9: 1}}
        assert len(acct.samples["r"]) == 0


class TestPreRun:
    """``kvm_arch_pre_run`` has work on every entry without 6/6 (PIC in userspace), else only when
    an interrupt is pending; a switch flipped on a built machine is seen at the next entry."""

    @pytest.mark.parametrize(("chip", "series", "per_read"), [
        ("split", "before", 1), ("split", "after", 0), ("on", "before", 0), ("off", "before", 1),
    ])
    def test_entries_that_take_the_bql(self, chip: str, series: str, per_read: int) -> None:
        r = simulate(config(chip=chip, s=series, extra="--param reads=50"))
        exits = r.vcpus[0].exits_by_kind["mmio"]  # 1 + 50 + 1 reads and the enable (CONFIG read + write)
        assert exits == 54
        assert site_acquisitions(r, "kvm_arch_pre_run") == (exits + 1) * per_read  # + the first entry

    def test_switch_flipped_on_a_built_machine(self) -> None:
        from aemu import clock
        from aemu.runner import run_machine

        from aemu.result import Result

        m = Machine(config(s="after", extra="--param reads=50"))
        m.set_patch("irqchip-pre-run", False)
        # every entry takes it: the first and one after each of the 54 exits (52 reads, CONFIG read + write)
        assert site_acquisitions(Result.from_machine(clock.run(run_machine(m))), "kvm_arch_pre_run") == 55


    @pytest.mark.parametrize(("chip", "expected"), [("split", 1 + 2), ("off", 1 + 2 + 3), ("on", 0)])
    def test_only_exits_that_return_to_qemu_enter_through_pre_run(self, chip: str, expected: int) -> None:
        """kvm_arch_pre_run runs before each KVM_RUN ioctl: after a PIO exit, not after an IPI,
        a LAPIC timer write or a HLT, which KVM handles itself when the LAPIC is in the kernel
        (kernel-irqchip=split); with it in QEMU (off) those return to QEMU too; with the PIC in
        the kernel (on) pre_run takes no BQL."""
        r = simulate(config(chip=chip), _KernelExits())
        v = r.vcpus[0]
        assert v.exits_by_kind["pio"] == 2 and v.exits_by_kind["ipi"] == 1 and v.exits_by_kind["hlt"] == 1
        assert site_acquisitions(r, "kvm_arch_pre_run") == expected  # the first entry, then per return


class _KernelExits(_NoMetric):
    """Exits KVM handles (IPI to itself, LAPIC timer, its interrupt's HLT) between two PIO exits."""

    name = "kernel-exits"

    def program(self, machine: Machine, index: int, rng: Any) -> GuestProgram:
        yield PIOWrite(0x80, 1, 1)
        yield SendIPI(0, 0x40)
        yield WaitForVector(0x40)
        yield LAPICTimer(5_000, 0xEC)
        yield WaitForVector(0xEC)
        yield PIOWrite(0x80, 1, 1)


class TestLatencyBooks:
    """Latency counts stay bounded however many distinct values arrive, and lose no access."""

    def test_exact_while_few_values(self) -> None:
        acct = VCPUAccount()
        acct.samples["r"] = array("q", [3001, 3000, 3001] * 10)
        assert acct.latency() == {"r": {3001: 20, 3000: 10}}

    def test_many_distinct_values_are_kept_to_three_digits(self) -> None:
        acct = VCPUAccount()
        n = 0
        for chunk in range(20):  # 20 folds of 16k distinct nanosecond values, as real time gives
            acct.samples["r"] = array("q", range(chunk * 16_384 + 100_000, (chunk + 1) * 16_384 + 100_000))
            acct.fold("r")
            n += 16_384
        counts = acct.latency()["r"]
        assert sum(counts.values()) == n
        assert len(counts) <= VCPUAccount.MAX_EXACT_VALUES
        assert all(len(str(v).rstrip("0")) <= 3 for v in counts)
        assert min(counts) == 100_000 and max(counts) == 428_000


class _Yields(_NoMetric):
    """vCPU 1 yields ``bad()`` after a BQL-bound access; the others read the PM timer."""

    name = "yields"

    def __init__(self, bad: Any) -> None:
        super().__init__()
        self.bad = bad

    def program(self, machine: Machine, index: int, rng: Any) -> GuestProgram:
        yield PIOWrite(0x80, 1, 1)
        if index == 1:
            yield self.bad()
        yield PIORead(0x608, 4)



class TestGuestErrors:
    """Whatever a guest program yields, the run stops with a GuestError naming the vCPU and the
    bad exit, and no lock stays held (issue 11 items 13, 14)."""

    @pytest.mark.parametrize(("bad", "message"), [
        (lambda: Compute(1.5), r"vCPU 1: the guest program made a bad exit: Compute: ns must be an integer >= 0, got 1\.5"),
        (lambda: Compute("abc"), r"vCPU 1: .*Compute: ns must be an integer >= 0, got 'abc'"),
        (lambda: Compute(-10**12), r"vCPU 1: .*Compute: ns must be an integer >= 0, got -1000000000000"),
        (lambda: PIORead("0x70"), r"vCPU 1: .*PIORead: port must be an integer from 0 to 0xffff, got '0x70'"),
        (lambda: PIORead(0x70, 8), r"vCPU 1: .*PIORead: size must be one of 1, 2, 4, got 8"),
        (lambda: MMIORead(-1), r"vCPU 1: .*MMIORead: addr must be an integer from 0 to 0xffffffffffffffff, got -1"),
        (lambda: None, r"vCPU 1: guest program yielded None, which is not an exit"),
        (lambda: 42, r"vCPU 1: guest program yielded 42, which is not an exit"),
    ])
    def test_a_bad_exit_stops_the_run_naming_the_vcpu(self, bad: Any, message: str) -> None:
        from aemu import clock
        from aemu.cpu import GuestError

        m = Machine(config(n=3, s="before"), _Yields(bad))
        with pytest.raises(GuestError, match=message):
            clock.run(m.run(10**9))
        assert not any(lock.locked() for lock in m.all_locks())

    def test_yield_none_is_not_the_end_of_the_program(self) -> None:
        from aemu.cpu import GuestError

        with pytest.raises(GuestError, match="yielded None"):
            simulate(config(n=2, s="after"), _Yields(lambda: None))
