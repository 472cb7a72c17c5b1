"""aemu.check: races (Eraser states, atomic fields, seqlock readers), IRQ updates without the BQL,
lock-order inversions, the hpet-irq-bql switch, the reports, and a property test against a
brute-force reference."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aemu
from aemu import MachineConfig, clock
from aemu.check import Checker, check
from aemu.check.lockset import EXCLUSIVE, SHARED, SHARED_MODIFIED, VIRGIN, Lockset, races_by_brute_force
from aemu.check.order import LockOrder, has_cycle_by_brute_force
from aemu.cli import main
from aemu.cpu import Compute, GuestProgram, MMIORead, MMIOWrite
from aemu.devices.base import Device, DeviceHost
from aemu.machine import Machine
from aemu.result import Metric
from aemu.sync import Lock, SeqLock
from aemu.workloads import Workload

BASE = 0xFEB00000
SPLIT = "-accel kvm,kernel-irqchip=split --seed 3"


# -- devices and guests of the tests ----------------------------------------------------------------

class Counter(Device):
    """Reads return ``count``; writes add to it, under the device mutex or under nothing."""

    type_name = "counter"

    def __init__(self, host: DeviceHost, *, locked_writes: bool = True, lockless: bool = True) -> None:
        super().__init__(host)
        self.count = 0
        self.locked_writes = locked_writes
        self.lock = host.new_lock("counter")
        mr = self.map_mmio(BASE, self.region_io("counter", 4, self.read, self.write))
        if lockless:
            mr.enable_lockless_io()

    async def read(self, offset: int, size: int) -> int:
        await self.host.delay(100)
        return self.count

    async def write(self, offset: int, value: int, size: int) -> None:
        if self.locked_writes:
            async with self.lock.held("counter write"):
                self.count += value
        else:
            self.count += value


class AtomicCounter(Counter):
    """The same device, declaring ``count`` atomic (``qatomic_read``/``qatomic_add``)."""

    atomic_fields = frozenset({"count"})


class Poke(Workload):
    """vCPU 0 writes first (initialisation); then every vCPU reads ``reads`` times and writes
    if ``writers`` says so."""

    name = "poke"
    parameters: Any = {}

    def __init__(self, *, reads: int = 5, writers: tuple[int, ...] = (), first_write: bool = True) -> None:
        super().__init__()
        self.reads, self.writers, self.first_write = reads, writers, first_write

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        if index == 0 and self.first_write:
            yield MMIOWrite(BASE, 1, 4)
        yield Compute(10_000)
        for _ in range(self.reads):
            yield MMIORead(BASE, 4)
            if index in self.writers:
                yield MMIOWrite(BASE, 1, 4)
            yield Compute(1_000 + 100 * index)

    def metric(self, machine: Machine) -> Metric:
        return Metric("none", 0, "")


def counter_machine(device: type[Counter] = Counter, workload: Workload | None = None, smp: int = 3,
                    **kw: Any) -> tuple[Machine, Counter]:
    m = Machine(MachineConfig.parse(f"-smp {smp} {SPLIT}"), workload or Poke())
    dev = device(m.host, **kw)
    m.add_device(dev)
    return m, dev


def kinds(report: Any) -> list[tuple[str, str]]:
    return [(f.kind, f.subject) for f in report.findings]


class Legacy(Workload):
    """vCPU 0 puts the HPET in legacy replacement mode (ENABLE | LEGACY), as Linux does."""

    name = "legacy"

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        if index == 0:
            yield MMIOWrite(0xFED00010, 3, 4)
        yield MMIORead(0xFED000F0, 8)

    def metric(self, machine: Machine) -> Metric:
        return Metric("none", 0, "")


# -- Eraser's states and the pairwise lockset ------------------------------------------------------

class TestLockset:
    def where(self) -> tuple[str, int]:
        return ("here", 0)

    def test_states_virgin_exclusive_shared_shared_modified(self) -> None:
        ls = Lockset()
        assert ls.state("f") == VIRGIN
        assert ls.access("f", "vcpu0", True, frozenset(), self.where) is None
        assert ls.access("f", "vcpu0", True, frozenset(), self.where) is None
        assert ls.state("f") == EXCLUSIVE  # initialisation by one task: never reported
        assert ls.access("f", "vcpu1", False, frozenset(), self.where) is None
        assert ls.state("f") == SHARED  # read-only sharing: no race without a write
        assert ls.access("f", "vcpu2", False, frozenset({"BQL"}), self.where) is None
        race = ls.access("f", "vcpu2", True, frozenset({"BQL"}), self.where)
        assert ls.state("f") == SHARED_MODIFIED
        assert race is not None and (race.first.task, race.second.task) == ("vcpu1", "vcpu2")
        assert ls.races == [race]
        assert ls.access("f", "vcpu1", True, frozenset(), self.where) is None  # one race per field

    def test_a_common_lock_or_the_same_task_is_no_race(self) -> None:
        ls = Lockset()
        for task in ("vcpu0", "vcpu1", "main-loop", "vcpu0"):
            ls.access("f", task, True, frozenset({"BQL", task}), self.where)
        ls.access("g", "vcpu0", False, frozenset(), self.where)
        ls.access("g", "vcpu1", False, frozenset(), self.where)
        assert ls.races == [] and ls.state("f") == SHARED_MODIFIED and ls.state("g") == SHARED

    def test_pairwise_spares_erasers_three_way_false_alarm(self) -> None:
        ls = Lockset()
        ls.access("f", "init", True, frozenset(), self.where)
        ls.access("f", "a", False, frozenset({"L1"}), self.where)
        ls.access("f", "b", True, frozenset({"L1", "L2"}), self.where)
        ls.access("f", "c", False, frozenset({"L2"}), self.where)
        assert ls.races == []  # Eraser's intersection would be empty; every pair shares a lock


class TestLockOrder:
    def test_inversion_found_without_a_deadlock(self) -> None:
        order = LockOrder()
        assert order.acquired(["hpet"], "BQL", "vcpu0", lambda: ("hpet write", 5)) == []
        invs = order.acquired(["BQL"], "hpet", "main-loop", lambda: ("timer", 9))
        assert len(invs) == 1 and invs[0].locks == ("hpet", "BQL")
        assert [(e.first, e.second, e.task) for e in invs[0].edges] == [("hpet", "BQL", "vcpu0"), ("BQL", "hpet", "main-loop")]
        assert order.acquired(["BQL"], "hpet", "vcpu3", lambda: ("x", 1)) == []  # once per cycle

    def test_longer_cycle(self) -> None:
        order = LockOrder()
        order.acquired(["A"], "B", "t1", lambda: ("s", 0))
        order.acquired(["B"], "C", "t2", lambda: ("s", 0))
        (inv,) = order.acquired(["C"], "A", "t3", lambda: ("s", 0))
        assert inv.locks == ("A", "B", "C")


# -- the property test: random schedules against a brute-force reference -----------------------------

_FIELDS = ("a", "b", "c")
_LOCKS = ("L1", "L2", "L3")
_op = st.one_of(
    st.tuples(st.just("acq"), st.sampled_from(_LOCKS)),
    st.tuples(st.just("rel"), st.just("")),
    st.tuples(st.sampled_from(["r", "w"]), st.sampled_from(_FIELDS)),
    st.tuples(st.just("sleep"), st.sampled_from(["1", "2", "5"])),
)
_schedule = st.lists(st.lists(_op, max_size=12), min_size=1, max_size=4)


class Cells(Device):
    """Three plain fields for the property test."""

    type_name = "cells"

    def __init__(self, host: DeviceHost) -> None:
        super().__init__(host)
        self.a = self.b = self.c = 0


def _run_schedule(schedule: list[list[tuple[str, str]]]) -> tuple[Checker, list[Any], list[tuple[str, str]]]:
    """Run each op list as a task on aemu's locks and a watched device; returns the checker, the
    log of field accesses ``(field, task, write, locks)`` and the lock-order edges that happened."""
    host = DeviceHost()
    cells = Cells(host)
    locks = {n: Lock(n) for n in _LOCKS}
    log: list[Any] = []
    edges: list[tuple[str, str]] = []
    checker = Checker()
    checker.watch([cells], locks.values())

    async def worker(name: str, ops: list[tuple[str, str]]) -> None:
        held: list[str] = []
        for op, arg in ops:
            if op == "acq" and arg not in held:
                if locks[arg].try_acquire(name):  # never blocks: a schedule cannot deadlock
                    edges.extend((h, arg) for h in held)
                    held.append(arg)
            elif op == "rel" and held:
                locks[held.pop()].release()
            elif op == "r":
                log.append(((id(cells), arg), name, False, frozenset(held)))
                getattr(cells, arg)
            elif op == "w":
                log.append(((id(cells), arg), name, True, frozenset(held)))
                setattr(cells, arg, 1)
            elif op == "sleep":
                await clock.sleep_ns(int(arg))
        for n in reversed(held):
            locks[n].release()

    async def main() -> None:
        await asyncio.gather(*(asyncio.create_task(worker(f"t{i}", ops), name=f"t{i}")
                               for i, ops in enumerate(schedule)))

    try:
        clock.run(main())
    finally:
        checker.detach()
    return checker, log, edges


class TestProperty:
    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(_FIELDS), st.sampled_from(["t0", "t1", "t2"]), st.booleans(),
                              st.frozensets(st.sampled_from(_LOCKS), max_size=2)), max_size=30))
    def test_lockset_matches_brute_force(self, log: list[tuple[str, str, bool, frozenset[str]]]) -> None:
        ls = Lockset()
        for field, task, write, held in log:
            ls.access(field, task, write, held, lambda: ("s", 0))
        assert {r.field for r in ls.races} == races_by_brute_force(log)

    @settings(max_examples=60, deadline=None)
    @given(_schedule)
    def test_random_schedules_on_real_locks_match_the_reference(self, schedule: list[list[tuple[str, str]]]) -> None:
        checker, log, edges = _run_schedule(schedule)
        raced = {f for f in races_by_brute_force(log)}
        assert {r.field for r in checker.lockset.races} == raced
        assert {f.subject for f in checker.findings if f.kind == "race"} == {f"Cells.{name}" for _, name in raced}
        assert bool(checker.order.inversions) == has_cycle_by_brute_force(edges)


# -- races in a machine -------------------------------------------------------------------------------

class TestRaces:
    def test_lockless_reads_race_with_locked_writes_and_the_fix_names_the_lock(self) -> None:
        m, dev = counter_machine(workload=Poke(writers=(2,)))
        report = check(m)
        assert kinds(report) == [("race", "Counter.count")]
        (f,) = report.findings
        assert len(f.sites) == 2 and any("holding counter" in s for s in f.sites)
        assert any("holding no lock" in s and "Counter.read" in s for s in f.sites)
        assert f.fix.startswith("hold counter in vcpu")
        assert type(dev) is Counter  # the class is given back after the run

    def test_initialisation_is_not_reported(self) -> None:
        m, _ = counter_machine(workload=Poke(writers=()))  # vCPU 0 writes once, first; then reads only
        report = check(m)
        assert report.clean and report.accesses > 0

    def test_atomic_fields_are_not_reported(self) -> None:
        m, _ = counter_machine(AtomicCounter, workload=Poke(writers=(1, 2)), locked_writes=False)
        assert check(m).clean
        m, _ = counter_machine(Counter, workload=Poke(writers=(1, 2)), locked_writes=False)
        assert kinds(check(m)) == [("race", "Counter.count")]

    def test_under_the_bql_nothing_races(self) -> None:
        m, _ = counter_machine(workload=Poke(writers=(1, 2)), lockless=False, locked_writes=False)
        assert check(m).clean

    def test_serial_made_lockless_races_with_the_main_loop_and_the_bql_is_the_fix(self) -> None:
        report = check(f"-smp 2 {SPLIT} --workload console --series before --lockless serial")
        races = {f.subject: f for f in report.by_kind("race")}
        lsr = races["SerialState.lsr"]
        assert any(s.startswith("main-loop") and "holding BQL" in s for s in lsr.sites)
        assert any(s.startswith("vcpu0") and "holding no lock" in s for s in lsr.sites)
        assert lsr.fix == "hold BQL in vcpu0's read, as main-loop's write does"
        assert [f.subject for f in report.by_kind("irq-without-bql")] == ["gsi 4"]
        assert check(f"-smp 2 {SPLIT} --workload console --series before").clean


class Versioned(Device):
    """A value and its double under a seqlock: lockless readers, writers under the mutex."""

    type_name = "versioned"

    def __init__(self, host: DeviceHost, *, write_section: bool = True) -> None:
        super().__init__(host)
        self.value = 0
        self.double = 0
        self.write_section = write_section
        self.lock = host.new_lock("versioned")
        self.seq = SeqLock("versioned-seq", writer_lock=self.lock)
        self.map_mmio(BASE, self.region_io("versioned", 4, self.read, self.write)).enable_lockless_io()

    def read(self, offset: int, size: int) -> int:
        return self.seq.read(lambda: self.value + self.double)

    async def write(self, offset: int, value: int, size: int) -> None:
        async with self.lock.held("versioned write"):
            if self.write_section:
                self.seq.write_begin()
            self.value = value
            self.double = 2 * value
            if self.write_section:
                self.seq.write_end()


class TestSeqlock:
    def test_readers_in_read_sections_do_not_race_with_write_sections(self) -> None:
        m = Machine(MachineConfig.parse(f"-smp 3 {SPLIT}"), Poke(writers=(1,)))
        m.add_device(Versioned(m.host))
        report = check(m)
        assert report.clean and "versioned-seq" in report.seqlocks

    def test_a_write_outside_the_write_section_races_with_the_readers(self) -> None:
        m = Machine(MachineConfig.parse(f"-smp 3 {SPLIT}"), Poke(writers=(1,)))
        m.add_device(Versioned(m.host, write_section=False))
        report = check(m)
        assert {f.subject for f in report.by_kind("race")} >= {"Versioned.value"}
        (f,) = [f for f in report.findings if f.subject == "Versioned.value"]
        assert any("seqlock versioned-seq" in s for s in f.sites)


# -- QEMU's lock rules ---------------------------------------------------------------------------------

class TestIRQWithoutBQL:
    def test_hpet_without_the_fix_raises_its_irq_under_its_mutex_only(self) -> None:
        cfg = MachineConfig.parse(f"-smp 2 -M q35,hpet=on {SPLIT} --patch=-hpet-irq-bql")
        report = check(cfg, Legacy())
        irq = report.by_kind("irq-without-bql")
        assert [f.subject for f in irq][:2] == ["gsi 0", "pic-intr"] and "gsi 8" in [f.subject for f in irq]
        first = irq[0].sites[0]
        assert "HPETState._deliver" in first and "HPETState._write_held" in first and "holding hpet" in first
        assert "d99041a20328" in irq[0].fix

    def test_with_the_fix_the_irq_update_holds_the_bql(self) -> None:
        report = check(MachineConfig.parse(f"-smp 2 -M q35,hpet=on {SPLIT}"), Legacy())
        assert report.by_kind("irq-without-bql") == []

    def test_without_the_checker_the_model_refuses_as_xen_asserted(self) -> None:
        with pytest.raises(RuntimeError, match="without the BQL"):
            aemu.simulate(MachineConfig.parse(f"-smp 2 -M q35,hpet=on {SPLIT} --patch=-hpet-irq-bql"), Legacy())


class TwoOrders(Device):
    """Region ``a`` is lockless and takes the mutex, then the BQL; region ``b`` is BQL-bound (the
    BQL first) and takes the mutex: a lock-order inversion, even if no run deadlocks on it."""

    type_name = "two-orders"

    def __init__(self, host: DeviceHost) -> None:
        super().__init__(host)
        self.lock = host.new_lock("two-orders")
        self.map_mmio(BASE, self.region_io("a", 4, self.a, None)).enable_lockless_io()
        self.map_mmio(BASE + 0x1000, self.region_io("b", 4, self.b, None))

    async def a(self, offset: int, size: int) -> int:
        async with self.lock.held("a"):
            async with self.host.bql_guard("a irq"):
                return 0

    async def b(self, offset: int, size: int) -> int:
        async with self.lock.held("b"):
            return 0


class Both(Workload):
    name = "both"

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        yield MMIORead(BASE if index == 0 else BASE + 0x1000, 4)
        yield Compute(50_000)
        yield MMIORead(BASE + 0x1000 if index == 0 else BASE, 4)

    def metric(self, machine: Machine) -> Metric:
        return Metric("none", 0, "")


class TestLockOrderInMachine:
    def test_mutex_then_bql_and_bql_then_mutex(self) -> None:
        m = Machine(MachineConfig.parse(f"-smp 2 {SPLIT}"), Both())
        m.add_device(TwoOrders(m.host))
        report = check(m)
        (f,) = report.by_kind("lock-order")
        assert f.subject in ("two-orders -> BQL -> two-orders", "BQL -> two-orders -> BQL")
        assert len(f.sites) == 2 and all("took" in s for s in f.sites)


# -- the series --------------------------------------------------------------------------------------

#: Found in 'after' and real in QEMU as merged (README, "Is it safe?"): the HPET's timer callback
#: runs in the main loop under the BQL only, its register writes under the device mutex only.
REAL_IN_QEMU = {("race", "HPETState.config"), ("race", "HPETState.hpet_offset"), ("race", "HPETState.isr")}


class TestSeries:
    @pytest.mark.parametrize("workload", ["hpet-bench", "pmtimer-bench", "boot -M q35,hpet=on",
                                          "boot -M q35,hpet=off", "console"])
    def test_before_is_clean(self, workload: str) -> None:
        assert check(f"-smp 8 {SPLIT} --workload {workload} --series before").clean

    @pytest.mark.parametrize("workload", ["hpet-bench", "pmtimer-bench", "boot -M q35,hpet=on",
                                          "boot -M q35,hpet=off", "console"])
    def test_after_has_only_what_qemu_has(self, workload: str) -> None:
        assert set(kinds(check(f"-smp 8 {SPLIT} --workload {workload} --series after"))) <= REAL_IN_QEMU

    def test_hpet_torture_after_finds_the_timer_callback_race(self) -> None:
        # hpet_read_test's torture: CPU 1 toggles ENABLE under the HPET mutex while timer 0's
        # callback runs in the main loop under the BQL only -- QEMU 10.2's own race (README)
        report = check(f"-smp 4 -M q35,hpet=on {SPLIT} --workload hpet-torture --series after")
        assert {(f.kind, f.subject) for f in report.findings} == {
            ("race", "HPETState.config"), ("race", "HPETState.hpet_offset"), ("race", "HPETState.isr")}
        f = next(f for f in report.findings if f.subject == "HPETState.config")
        assert "[timer hpet-timer0]" in f.sites[0] and "holding BQL" in f.sites[0]
        assert "holding hpet, seqlock hpet-state" in f.sites[1]

    @pytest.mark.parametrize("series", ["before", "after"])
    def test_replay_of_the_test_trace(self, series: str) -> None:
        from aemu.replay import ReplayWorkload, load_trace

        trace = load_trace("tests/data/linux-boot-excerpt.trace")
        cfg = MachineConfig.parse(f"-smp 4 -M q35,hpet=on {SPLIT} --series {series}").replace(workload="replay")
        assert set(kinds(check(cfg, ReplayWorkload(trace)))) <= (REAL_IN_QEMU if series == "after" else set())


# -- reports, API, CLI --------------------------------------------------------------------------------

class TestReports:
    def test_result_document_and_timeline_carry_the_findings(self) -> None:
        from aemu.report.timeline import build_trace
        from aemu.trace import Tracer

        tracer = Tracer()
        m, _ = counter_machine(workload=Poke(writers=(2,)))
        report = check(m, tracer=tracer)
        assert report.result is not None
        doc = json.loads(json.dumps(report.result.to_dict()))
        assert doc["check"]["clean"] is False
        assert [(f["kind"], f["subject"]) for f in doc["check"]["findings"]] == [("race", "Counter.count")]
        assert "Counter" in doc["check"]["watched"]["devices"] and "counter" in doc["check"]["watched"]["locks"]
        events = [e for e in build_trace(tracer)["traceEvents"] if e.get("cat") == "check"]
        assert len(events) == 2 and all(e["ph"] == "i" and e["name"] == "race Counter.count" for e in events)
        assert "check" not in aemu.simulate(f"-smp 2 {SPLIT} --workload pmtimer-bench").to_dict()

    def test_the_pinned_api(self) -> None:
        report = aemu.check(MachineConfig.parse(f"-smp 2 {SPLIT} --workload console --lockless serial"))
        assert isinstance(report, aemu.CheckReport) and isinstance(report.findings, list)
        f = report.findings[0]
        assert isinstance(f, aemu.Finding) and f.kind in ("race", "irq-without-bql", "lock-order")
        assert isinstance(f.subject, str) and all(isinstance(s, str) for s in f.sites)

    def test_checker_mode_changes_no_figure(self) -> None:
        args = f"-smp 16 -M q35,hpet=on {SPLIT} --workload boot --series before"
        plain = aemu.simulate(args).to_dict()
        checked = aemu.check(args).result
        assert checked is not None
        doc = checked.to_dict()
        assert doc.pop("check")["clean"] is True
        plain.pop("wall_s"), doc.pop("wall_s")
        assert doc == plain

    def test_a_machine_that_ran_is_refused(self) -> None:
        m, _ = counter_machine()
        check(m)
        with pytest.raises(RuntimeError, match="has not run"):
            check(m)

    def test_nothing_stays_installed(self) -> None:
        from aemu import irq, timer
        from aemu.check import watch

        m, _ = counter_machine(workload=Poke(writers=(2,)))
        check(m)
        assert watch.active is None and irq.checker is None and timer.checker is None
        assert all(type(d).__dict__.get("_aemu_watched") is None for d in m.devices)
        assert all(type(lock) is Lock for lock in m.all_locks())


class TestCLI:
    def test_exit_codes_and_output(self, capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
        assert main(["check", "-q", "-smp", "2", "--workload", "pmtimer-bench", "--series", "before"]) == 0
        assert "no findings" in capsys.readouterr().out
        out_json = tmp_path / "r.json"
        assert main(["check", "-q", "-smp", "2", "--workload", "console", "--series", "before",
                     "--lockless", "serial", "--json", str(out_json)]) == 1
        out = capsys.readouterr().out
        assert "race: SerialState.lsr" in out and "fix: hold BQL in vcpu0's read" in out
        assert json.loads(out_json.read_text())["check"]["findings"]
        assert main(["check", "--bogus"]) == 2

    def test_run_check(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["run", "-q", "--check", "-smp", "2", "--workload", "console", "--lockless", "serial"]) == 1
        out = capsys.readouterr().out
        assert "mean line latency" in out and "race: SerialState.lsr" in out
        assert main(["run", "-q", "--check", "-smp", "2", "--workload", "pmtimer-bench"]) == 0
