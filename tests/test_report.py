"""Text reports: QEMU's ``info sync-profile`` (checked line by line against real QEMU output),
Linux's ``/proc/lock_stat``, and the ``aemu run`` report in plain and rich form."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

import aemu
from aemu import clock
from aemu.clock import sleep_ns
from aemu.errors import ConfigError
from aemu.report import format_lock_stat, format_sync_profile, parse_sync_profile_args, render_run_report
from aemu.report.lock_stat import contended_wait_min, lock_stat_time, site_address
from aemu.report.sync_profile import QSPRow, lock_object_address, sync_profile_rows
from aemu.result import Result
from aemu.sync import ContentionPoint, Lock, LockStatistics, SiteStats, TimeStats

REFERENCE = Path(__file__).parent / "data" / "qemu-7.2" / "info-sync-profile-q35-tcg.txt"
QEMU_BQL = "0x55872837bb40"  # the BQL's address in the reference output
QEMU_MONITOR = "0x558740942170"  # the monitor mutex's


# -- scenarios -------------------------------------------------------------------------------------

async def _worker(lock: Lock, site: str, start: int, hold: int) -> None:
    if start:
        await sleep_ns(start)
    async with lock.held(site=site):
        await sleep_ns(hold)


def run_scenario(plan: Sequence[tuple[Lock, str, int, int]]) -> dict[str, LockStatistics]:
    """Run (lock, site, start ns, hold ns) workers, one task each in this order; snapshot the locks."""
    async def main() -> dict[str, LockStatistics]:
        await asyncio.gather(*(asyncio.create_task(_worker(*p), name=f"w{i}") for i, p in enumerate(plan)))
        return {lk.name: lk.statistics() for lk in dict.fromkeys(p[0] for p in plan)}
    return clock.run(main())


@pytest.fixture(scope="module")
def profile() -> dict[str, LockStatistics]:
    """The BQL and two device mutexes sharing a call site, in microseconds (fifo, no hand-off).

    BQL: 'a' holds 0..1 ms; 'b' waits 1 ms, holds 0.5 ms; 'b' (from 0.2 ms) waits 1.3 ms.
    hpet: 'device read' holds 0..0.4 ms; 'device read' (0.1 ms) waits 0.3 ms; 'hpet write' (0.1 ms)
    waits 0.7 ms. pit: 'device read' holds 2.1 ms; 'device read' waits 2.1 ms.
    """
    bql, hpet, pit = Lock("BQL", bql=True), Lock("hpet"), Lock("pit")
    return run_scenario([
        (bql, "a", 0, 1_000_000), (bql, "b", 0, 500_000), (bql, "b", 200_000, 100_000),
        (hpet, "device read", 0, 400_000), (hpet, "device read", 100_000, 400_000),
        (hpet, "hpet write", 100_000, 50_000),
        (pit, "device read", 0, 2_100_000), (pit, "device read", 0, 10_000),
    ])


def synthetic(name: str, sites: Sequence[tuple[str, int, int]], *, bql: bool = False) -> LockStatistics:
    """A snapshot with only what QSP reads: per site (name, acquisitions, total wait ns)."""
    rows = tuple(SiteStats(s, n, 0, 0, w, w / n, 0, n, 0, 0.0, 0) for s, n, w in sites)
    acqs = sum(n for _, n, _ in sites)
    return LockStatistics(
        name=name, policy="fifo", handoff_ns=0, bql=bql, locked=False, owner=None, owner_site=None,
        tasks_waiting=0, acquisitions=acqs, contentions=0, contended_acquisitions=0, cancelled_waits=0,
        handoffs=0, barges=0, requeues=0, wait_ns=TimeStats(), hold_ns=TimeStats(), sites=rows,
        holder_sites=(), waiter_sites=(), tasks=(), window_start_ns=0, window_ns=0)


def addr(name: str) -> str:
    return f"0x{lock_object_address(name):x}"


def section(text: str, title: str) -> list[str]:
    """The lines of the report section whose title starts with ``title`` (up to the blank line)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start + 1:end]


# -- info sync-profile ---------------------------------------------------------------------------------

class TestSyncProfile:
    def test_reference_table_line_by_line(self) -> None:
        """Rebuild QEMU's own table (its mutex rows) and compare every line with QEMU's output."""
        bql = synthetic("BQL", [
            ("accel/tcg/cputlb.c:1371", 4266460, 137_420_000), ("util/rcu.c:269", 6, 17_468_280),
            ("softmmu/physmem.c:2748", 185694, 6_810_000), ("accel/tcg/tcg-accel-ops-mttcg.c:96", 44503, 2_340_000),
            ("accel/tcg/cputlb.c:1431", 49359, 1_630_000), ("accel/tcg/cpu-exec.c:763", 3870, 430_000),
            ("accel/tcg/cpu-exec.c:700", 2838, 270_000), ("util/main-loop.c:318", 274, 191_800),
        ], bql=True)
        # Four objects share three call sites (QEMU shows them coalesced as "[           4]").
        cpus = [synthetic(f"cpu{i}", [("cpus-common.c:329", 11129, 375_000),
                                      ("tcg/region.c:204", 1415 + (i == 0), 62_500),
                                      ("cpus-common.c:134", 259 + (i == 0), 10_025)]) for i in range(4)]
        monitor = synthetic("monitor", [("monitor/monitor.c:217", 1056, 40_500)])
        text = format_sync_profile([bql, *cpus, monitor], max_rows=15)
        ours = text.replace(addr("BQL"), QEMU_BQL).replace(addr("monitor"), QEMU_MONITOR).splitlines()
        qemu = REFERENCE.read_text().splitlines()
        assert ours[:2] == qemu[:2]  # header and rule, character for character
        assert ours[-1] == qemu[-1]
        assert ours[2:-1] == [line for line in qemu[2:-1] if not line.startswith("condvar")]
        assert text.endswith("-\n")

    def test_rows_hand_computed(self, profile: dict[str, LockStatistics]) -> None:
        b, h, p = addr("BQL"), addr("hpet"), addr("pit")
        assert format_sync_profile(profile) == (
            "Type               Object  Call site    Wait Time (s)         Count  Average (us)\n"
            + "-" * 81 + "\n"
            "mutex      [           2]  device read        0.00240             4        600.00\n"
            f"BQL mutex  {b}  b                  0.00230             2       1150.00\n"
            f"mutex      {h}  hpet write         0.00070             1        700.00\n"
            f"BQL mutex  {b}  a                  0.00000             1          0.00\n"
            + "-" * 81 + "\n")
        assert all(len(a) == 14 and a.startswith("0x55") for a in (b, h, p))

    def test_sort_by_mean(self, profile: dict[str, LockStatistics]) -> None:
        rows = sync_profile_rows(profile, sort_by_mean=True)
        assert [(r.site, r.avg_ns) for r in rows] == [("b", 1_150_000), ("hpet write", 700_000),
                                                     ("device read", 600_000), ("a", 0)]
        lines = format_sync_profile(profile, sort_by_mean=True).splitlines()
        assert [ln.split()[-1] for ln in lines[2:-1]] == ["1150.00", "700.00", "600.00", "0.00"]

    def test_no_coalescing(self, profile: dict[str, LockStatistics]) -> None:
        text = format_sync_profile(profile.values(), coalesce=False)
        rows = [ln for ln in text.splitlines()[2:-1]]
        assert [(ln[11:25], ln[27:].split("  ")[0]) for ln in rows] == [
            (addr("BQL"), "b"), (addr("pit"), "device read"), (addr("hpet"), "hpet write"),
            (addr("hpet"), "device read"), (addr("BQL"), "a")]
        assert "[" not in text
        assert rows[3].endswith("0.00030             2        150.00")

    def test_max_rows(self, profile: dict[str, LockStatistics]) -> None:
        lines = format_sync_profile(profile, max_rows=2).splitlines()
        assert len(lines) == 2 + 2 + 1 and "device read" in lines[2] and " b " in lines[3]
        empty = format_sync_profile(profile, max_rows=0).splitlines()
        assert empty == ["Type               Object  Call site  Wait Time (s)         Count  Average (us)",
                         "-" * 79, "-" * 79]
        with pytest.raises(ConfigError, match="max must be an integer >= 0"):
            format_sync_profile(profile, max_rows=-1)

    def test_default_shows_ten_rows(self) -> None:
        lock = synthetic("BQL", [(f"site{i:02d}", 1, 1000 * (i + 1)) for i in range(12)], bql=True)
        rows = format_sync_profile({"BQL": lock}).splitlines()[2:-1]
        assert len(rows) == 10 and "site11" in rows[0] and "site02" in rows[-1]

    def test_ties_and_avg_in_integer_arithmetic(self) -> None:
        row = QSPRow("mutex", 0x55, 1, "x", wait_ns=3, acquisitions=2)
        assert row.avg_ns == 1 and QSPRow("mutex", 0x55, 1, "x", 5, 0).avg_ns == 0
        one = synthetic("one", [("z", 1, 10), ("y", 1, 10)])
        assert [r.site for r in sync_profile_rows([one])] == ["y", "z"]  # same object: by call site

    def test_object_addresses_are_stable(self) -> None:
        assert lock_object_address("BQL") == lock_object_address("BQL") != lock_object_address("hpet")
        assert lock_object_address("BQL") % 64 == 0 and lock_object_address("BQL") >> 40 == 0x55

    def test_from_a_run(self) -> None:
        r = aemu.simulate(aemu.MachineConfig.parse(
            "-smp 8 -accel kvm,kernel-irqchip=split --workload boot --series before"))
        lines = format_sync_profile(r.locks).splitlines()
        # QSP's order for one object: total wait, then call site (barging leaves several sites with no wait)
        sites = sorted((s for s in r.bql.sites if s.acquisitions), key=lambda s: (-s.wait_total_ns, s.site.encode()))[:10]
        assert len(lines) == len(sites) + 3
        for line, s in zip(lines[2:], sites):
            assert line.startswith(f"BQL mutex  {addr('BQL')}  {s.site} ")
            assert line.endswith(f"{s.acquisitions:12d}  {s.wait_total_ns // s.acquisitions / 1e3:12.2f}")

    def test_a_result_or_a_snapshot_is_accepted(self) -> None:
        from aemu.embed import Snapshot

        r = aemu.simulate(aemu.MachineConfig.parse("-smp 4 --workload hpet-bench --series before --param reads=20"))
        table = format_sync_profile(r.locks)
        assert "hpet read" in table
        assert format_sync_profile(r) == table == format_sync_profile(Snapshot(r.virtual_ns, 0.0, 4, 4, r.locks))
        assert format_lock_stat(r) == format_lock_stat(r.locks)
        for bad in (42, "BQL", [r.bql, "hpet"]):
            with pytest.raises(TypeError, match=r"^expected a Result, a Snapshot, .* got (int|str)$"):
                format_sync_profile(bad)  # type: ignore[arg-type]

    @pytest.mark.parametrize(("args", "expected"), [
        ("", (10, False, True)), ("-m", (10, True, True)), ("-n", (10, False, False)),
        ("-m -n 15", (15, True, False)), ("-n -m 3", (3, True, False)), ("  7 ", (7, False, True)),
        ("0x10", (16, False, True)), ("0", (0, False, True)),
    ])
    def test_parse_args(self, args: str, expected: tuple[int, bool, bool]) -> None:
        got = parse_sync_profile_args(args)
        assert (got["max_rows"], got["sort_by_mean"], got["coalesce"]) == expected

    @pytest.mark.parametrize(("args", "match"), [
        ("-x", "unsupported option '-x'"), ("-mn", "unsupported option '-mn'"),
        ("ten", "max must be an integer, got 'ten'"), ("-5", "max must be >= 0, got -5"),
        ("1 2", "unexpected '2' after max"), ("3 -m", "unexpected '-m' after max"),
        ("-m -m", "option -m given twice"),
    ])
    def test_parse_args_errors(self, args: str, match: str) -> None:
        with pytest.raises(ConfigError, match=match) as e:
            parse_sync_profile_args(args)
        assert "\n" not in str(e.value) and str(e.value).endswith("usage: info sync-profile [-m] [-n] [max]")

    def test_parsed_args_drive_the_table(self, profile: dict[str, LockStatistics]) -> None:
        assert format_sync_profile(profile, **parse_sync_profile_args("-m -n 2")) == format_sync_profile(
            profile, sort_by_mean=True, coalesce=False, max_rows=2)


# -- /proc/lock_stat -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lock_stat_locks() -> dict[str, LockStatistics]:
    """BQL: 'a' holds 0..1000 ns; 'b' waits 1000 ns, holds 500; 'b' (t=200) waits 1300, holds 100;
    'c' (t=5000) takes it free and holds 7. hpet: 'read' holds 300; 'write' waits 300, holds 10.
    idle: never taken."""
    bql, hpet = Lock("BQL", bql=True), Lock("hpet")
    return run_scenario([
        (hpet, "read", 0, 300), (hpet, "write", 0, 10),
        (bql, "a", 0, 1000), (bql, "b", 0, 500), (bql, "b", 200, 100), (bql, "c", 5000, 7),
    ]) | {"idle": Lock("idle").statistics()}


class TestLockStat:
    def test_header(self, lock_stat_locks: dict[str, LockStatistics]) -> None:
        lines = format_lock_stat(lock_stat_locks).splitlines()
        assert lines[0] == "lock_stat version 0.4"
        assert lines[1] == lines[3] == "-" * 221
        assert lines[2] == (
            "                              class name    con-bounces    contentions   waittime-min   waittime-max"
            " waittime-total   waittime-avg    acq-bounces   acquisitions   holdtime-min   holdtime-max"
            " holdtime-total   holdtime-avg")
        assert lines[4] == ""

    def test_rows_and_points(self, lock_stat_locks: dict[str, LockStatistics]) -> None:
        text = format_lock_stat(lock_stat_locks)
        ip = {s: f"[<{site_address(s):016x}>]" for s in ("a", "b", "read", "write")}
        sp = " " * 37
        expected = [
            # BQL first: 2 contended acquisitions; waits 1000 and 1300 ns; holds 1000, 500, 100, 7 ns
            f"{sp}BQL:{2:14d} {2:14d}{'1.00':>15}{'1.30':>15}{'2.30':>15}{'1.15':>15}"
            f" {2:14d} {4:14d}{'0.01':>15}{'1.00':>15}{'1.61':>15}{'0.40':>15}",
            f"{sp}---",
            f"{sp}BQL {2:14d} {ip['b']:>29} b",
            f"{sp}---",
            f"{sp}BQL {2:14d} {ip['a']:>29} a",
            "", "." * 221, "",
            f"{' ' * 36}hpet:{1:14d} {1:14d}{'0.30':>15}{'0.30':>15}{'0.30':>15}{'0.30':>15}"
            f" {1:14d} {2:14d}{'0.01':>15}{'0.30':>15}{'0.31':>15}{'0.16':>15}",
            f"{' ' * 36}----",
            f"{' ' * 36}hpet {1:14d} {ip['write']:>29} write",
            f"{' ' * 36}----",
            f"{' ' * 36}hpet {1:14d} {ip['read']:>29} read",
            "", "." * 221, "",
        ]
        assert text.splitlines()[5:] == expected
        assert "idle" not in text and text.endswith("\n")
        assert all(len(line) == 220 for line in text.splitlines() if line.endswith(("0.40", "0.16")))

    def test_points_limit_and_no_contention(self, lock_stat_locks: dict[str, LockStatistics]) -> None:
        lines = format_lock_stat([lock_stat_locks["BQL"]], top_points=0).splitlines()
        assert lines[5].startswith(" " * 37 + "BQL:") and lines[6:] == []
        quiet = run_scenario([(Lock("quiet"), "x", 0, 10), (Lock("quiet2"), "y", 20, 10)])
        out = format_lock_stat(quiet).splitlines()
        assert len(out) == 7 and out[5].startswith(" " * 35 + "quiet:") and "---" not in "".join(out[5:])

    def test_long_names_are_cut_to_37(self) -> None:
        st = run_scenario([(Lock("x" * 50), "s", 0, 1)])
        assert format_lock_stat(st).splitlines()[5].startswith("   " + "x" * 37 + ":")

    def test_time_format(self) -> None:
        assert [lock_stat_time(n) for n in (0, 4, 5, 994, 995, 1_234_567, 10**12)] == [
            "0.00", "0.00", "0.01", "0.99", "1.00", "1234.57", "1000000000.00"]

    def test_contended_min(self) -> None:
        # With uncontended acquisitions (0 ns waits) in the histogram, the contended minimum comes
        # from it: the bucket's lowest value, exact below 2048 ns and at most 0.1 % low above.
        lock = Lock("L")
        st = run_scenario([(lock, "a", 0, 1_000_000), (lock, "b", 0, 1), (lock, "c", 2_000_000, 1)])["L"]
        assert (st.contended_acquisitions, st.acquisitions, st.wait_ns.min) == (1, 3, 0)
        assert 999_000 <= contended_wait_min(st) <= 1_000_000
        # Every acquisition waited: the exact minimum.
        waits = TimeStats(count=2, min=5001, max=7000, total=12001, mean=6000.5)
        all_waited = dataclasses.replace(st, acquisitions=2, contended_acquisitions=2, wait_ns=waits)
        assert contended_wait_min(all_waited) == 5001
        assert contended_wait_min(dataclasses.replace(st, contended_acquisitions=0)) == 0

    def test_bad_top_points(self, lock_stat_locks: dict[str, LockStatistics]) -> None:
        with pytest.raises(ConfigError, match="top_points"):
            format_lock_stat(lock_stat_locks, top_points=-1)

    def test_contention_point_order(self) -> None:
        lock = Lock("L")
        st = run_scenario([(lock, "h", 0, 100), (lock, "w1", 0, 1)] + [(lock, "w2", 0, 1)] * 3)["L"]
        assert st.waiter_sites == (ContentionPoint("w2", 3), ContentionPoint("w1", 1))
        lines = format_lock_stat(st).splitlines()
        assert [ln.split()[-1] for ln in lines[7:9]] == ["w2", "w1"]


# -- the aemu run report --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def capped() -> Result:
    """20 vCPUs booting before the series, cut at 5 ms: a cap hit, more vCPUs than rows."""
    return aemu.simulate(aemu.MachineConfig.parse(
        "-smp 20 -accel kvm,kernel-irqchip=split --workload boot --series before --duration 5ms"))


@pytest.fixture(scope="module")
def finished() -> Result:
    return aemu.simulate(aemu.MachineConfig.parse(
        "-smp 2 --workload hpet-bench --series after --patch -hpet-counter-lockless --param reads=50"))


class TestRunReport:
    def test_plain_sections(self, capped: Result) -> None:
        text = render_run_report(capped, plain=True)
        assert "\x1b" not in text
        for title in ("aemu run", "Locks", "Top BQL call sites", "Device regions", "vCPUs"):
            assert section(text, title), title
        summary = dict(line.strip().split("  ", 1) for line in section(text, "aemu run"))
        assert {k: v.strip() for k, v in summary.items()} == {
            "machine": capped.config.qemu_args(),
            "workload": "boot",
            "series": "before (no patches of the BQL-free series)",
            "model": "BQL hand-off barging; quantum 10 µs; seed 1",  # glibc's mutex, the default
            "metric": "boot time: 5 ms (did not finish)",
            "milestones": "APs started {:,.2f} ms, phase 0 done {:,.2f} ms".format(*(ns / 1e6 for _, ns in capped.milestones)),
            "status": "cap hit: did not finish in 5.00 ms (0 of 20 vCPUs finished)",
            "virtual time": "5.00 ms",
            "wall time": f"{capped.wall_s:,.2f} s",
        }

    def test_the_model_line_names_the_host_cpus_and_their_scheduler(self) -> None:
        r = aemu.simulate(aemu.MachineConfig.parse("-smp 4 --host-cpus 2 --host-sched cfs --param reads=10"))
        model = next(line for line in section(render_run_report(r, plain=True), "aemu run") if "model" in line)
        assert model.strip().split("  ", 1)[1].strip() == ("BQL hand-off barging; quantum 10 µs; seed 1; "
                                                           "2 host CPUs scheduled by CFS")
        r = aemu.simulate(aemu.MachineConfig.parse("-smp 4 --host-cpus 2 --host-rq per-cpu --param reads=10"))
        model = next(line for line in section(render_run_report(r, plain=True), "aemu run") if "model" in line)
        assert model.strip().endswith("seed 1; 2 host CPUs with per-CPU run queues")

    def test_the_milestones_line_for_a_workload_that_marks_them(self) -> None:
        r = aemu.simulate(aemu.MachineConfig.parse("-smp 2 -accel kvm,kernel-irqchip=split --workload boot "
                                                   "--param phases=2"))
        line = next(line for line in section(render_run_report(r, plain=True), "aemu run")
                    if line.strip().startswith("milestones"))
        up, n0, n1 = (ns for _, ns in r.milestones)
        assert line.split("milestones", 1)[1].strip() == (
            f"APs started {up / 1e6:,.2f} ms, phase 0 done {n0 / 1e6:,.2f} ms, phase 1 done {n1 / 1e6:,.2f} ms")
        bench = aemu.simulate(aemu.MachineConfig.parse("-smp 2 --param reads=10"))  # hpet-bench marks none
        assert bench.milestones == () and not any(
            line.strip().startswith("milestones") for line in section(render_run_report(bench, plain=True), "aemu run"))

    def test_the_host_cpus_line_says_how_the_scheduler_shared_them(self, capped: Result) -> None:
        r = aemu.simulate(aemu.MachineConfig.parse("-smp 4 --host-cpus 2 --host-rq per-cpu --param reads=10"))
        st = r.host_cpus
        assert st is not None and st["dispatches"] > 0 and st["cpus"] == 2
        line = next(line for line in section(render_run_report(r, plain=True), "aemu run")
                    if line.strip().startswith("host CPUs"))
        assert line.split("host CPUs", 1)[1].strip() == (
            f"{st['dispatches']:,} dispatches, {st['preemptions']:,} preemptions, {st['wakeup_preemptions']:,} "
            f"wake-up preemptions, {st['directed_yields']:,} directed yields, {st['pulls']:,} idle pulls, "
            f"{st['affine_wakeups']:,} wake-affine wake-ups, {st['migrations']:,} moved by periodic balancing")
        assert r.to_dict()["host_cpus"] == st
        # with a CPU per thread there is no host scheduler: no line, no key
        assert capped.host_cpus is None and "host_cpus" not in capped.to_dict()
        assert not any(line.strip().startswith("host CPUs")
                       for line in section(render_run_report(capped, plain=True), "aemu run"))
        # one run queue: nothing moves between queues, so the line leaves pulls out
        one = aemu.simulate(aemu.MachineConfig.parse("-smp 4 --host-cpus 2 --param reads=10"))
        assert "pulls" not in render_run_report(one, plain=True) and one.host_cpus is not None

    def test_plain_numbers(self, capped: Result) -> None:
        text = render_run_report(capped, plain=True)
        bql = capped.bql
        assert section(text, "Locks")[1].split() == [
            "BQL", f"{bql.acquisitions:,}", f"{bql.contentions:,}", f"{bql.wait_ns.p50 / 1e3:,.1f}",
            f"{bql.wait_ns.p99 / 1e3:,.1f}", f"{bql.wait_ns.max / 1e3:,.1f}", f"{bql.hold_ns.mean / 1e3:,.2f}",
            f"{capped.lock_wait_share():.1%}"]
        sites = section(text, "Top BQL call sites")[1:]
        assert len(sites) == 5
        for line, s in zip(sites, bql.sites):
            assert line.startswith(s.site + " ")
            assert line[len(s.site):].split() == [
                f"{s.wait_total_ns * 1e-9:.5f}", f"{s.acquisitions:,}", f"{s.wait_total_ns // s.acquisitions / 1e3:,.2f}",
                f"{s.contentions:,}", f"{s.wait_max_ns / 1e3:,.1f}"]
        regions = section(text, "Device regions")
        assert regions[0].split() == ["region", "accesses", "p50", "µs", "p90", "µs", "p99", "µs", "max", "µs"]
        by_count = sorted(capped.regions, key=lambda r: (-r.count, r.name))
        assert [line.split()[0] for line in regions[1:]] == [r.name for r in by_count]
        hpet = capped.regions_by_name()["hpet"]
        assert regions[1].split() == [
            "hpet", f"{hpet.count:,}", *(f"{v / 1e3:,.1f}" for v in (hpet.p50, hpet.p90, hpet.p99, hpet.max))]

    def test_vcpu_rows_are_capped(self, capped: Result) -> None:
        body = section(render_run_report(capped, plain=True), "vCPUs")[1:]
        assert [line.split()[0] for line in body[:16]] == [str(i) for i in range(16)]
        assert body[16] == "… 4 more vCPUs"
        assert set(body[17]) == {"-", " "}
        assert [line.split()[0] for line in body[18:]] == ["min", "median", "max"]
        v0 = capped.vcpus[0]
        assert body[0].split() == [
            "0", f"{v0.exits:,}", f"{v0.guest_ns / 1e6:,.2f}", f"{v0.guest_ns / v0.elapsed_ns:.1%}",
            f"{v0.exit_ns / 1e6:,.2f}", f"{v0.exit_ns / v0.elapsed_ns:.1%}", f"{v0.lock_wait_ns / 1e6:,.2f}",
            f"{v0.lock_wait_ns / v0.elapsed_ns:.1%}", f"{v0.halted_ns / 1e6:,.2f}",
            f"{v0.halted_ns / v0.elapsed_ns:.1%}", str(v0.interrupts)]
        exits = sorted(v.exits for v in capped.vcpus)
        assert [line.split()[1] for line in body[18:]] == [
            f"{exits[0]:,}", f"{round((exits[9] + exits[10]) / 2):,}", f"{exits[-1]:,}"]
        widths = {len(line) for line in body[:16]}
        assert len(widths) == 1  # aligned

    def test_finished_run_and_device_mutex(self, finished: Result) -> None:
        text = render_run_report(finished, plain=True)
        assert re.search(r"^  status +finished$", text, re.M) and "more vCPUs" not in text
        # 'after' has the follow-up fix hpet-irq-bql on too (a switch since 827f482)
        assert re.search(r"^  series +custom \(lockless-io, pmtimer-lockless, hpet-lock, irqchip-pre-run, hpet-irq-bql\)$",
                         text, re.M)
        # the AP's counter delta: one 3,000 ns read then 50 x (3,000 read + 100 compute); x 10 / 50 = 3,160 ns, / 2 CPUs
        assert finished.metric.value == 1_580
        assert f"average read (hpet_read_test): {finished.metric.value:,.0f} ns" in text
        locks = section(text, "Locks")
        assert [line.split()[:3] for line in locks[1:]] == [
            ["BQL", f"{finished.bql.acquisitions:,}", f"{finished.bql.contentions:,}"],
            ["hpet", f"{finished.locks['hpet'].acquisitions:,}", f"{finished.locks['hpet'].contentions:,}"]]
        assert [line.split()[0] for line in section(text, "vCPUs")[1:]] == ["0", "1", "------", "min", "median", "max"]

    def test_rich(self, capped: Result) -> None:
        out = render_run_report(capped, console=Console(force_terminal=True, width=140, color_system="standard"))
        assert "\x1b[" in out and "Top BQL call sites" in out and "… 4 more vCPUs" in out
        assert f"{capped.bql.acquisitions:,}" in out
        assert "kvm_arch_pre_run" in render_run_report(capped, plain=False, console=Console(width=140))

    def test_not_a_terminal_means_plain(self, capped: Result) -> None:
        console = Console(force_terminal=False, width=200)
        assert render_run_report(capped, console=console) == render_run_report(capped, plain=True)
