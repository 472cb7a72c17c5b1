"""The Chrome/Perfetto timeline: structure, nesting, accounting, truncation and windows."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import aemu
import aemu.clock
import aemu.machine
import aemu.trace
from aemu.errors import ConfigError
from aemu.report.timeline import build_trace, timeline_summary, write_timeline

ARGS = "-smp 4 -accel kvm,kernel-irqchip=split --workload boot --param phases=1 --series before"


def traced(tracer: aemu.trace.Tracer) -> aemu.machine.Machine:
    """Run the small boot with ``tracer`` attached; the machine, for its accounting."""
    m = aemu.machine.Machine(aemu.MachineConfig.parse(ARGS))
    m.attach_tracer(tracer)
    aemu.clock.run(m.run(10**9))
    return m


@pytest.fixture(scope="module")
def run() -> tuple[aemu.machine.Machine, aemu.trace.Tracer, dict[str, Any]]:
    t = aemu.trace.Tracer()
    m = traced(t)
    return m, t, build_trace(t)


def complete(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in doc["traceEvents"] if e["ph"] == "X"]


def thread_names(doc: dict[str, Any]) -> dict[int, str]:
    return {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}


def ns(us: float) -> int:
    return round(us * 1000)


class TestStructure:
    def test_json_round_trip(self, run: Any) -> None:
        _, _, doc = run
        assert json.loads(json.dumps(doc)) == doc

    def test_every_complete_event_has_the_fields_a_viewer_needs(self, run: Any) -> None:
        _, t, doc = run
        events = complete(doc)
        assert events
        for e in events:
            assert {"ts", "dur", "pid", "tid", "name", "cat"} <= e.keys()
            assert e["pid"] == 1 and e["dur"] > 0
            assert e["cat"] in ("guest", "exit", "wait", "hold", "halted", "holder")
        assert len(events) + doc["otherData"]["zero_length_spans_omitted"] == len(t.spans)

    def test_threads_vcpus_in_order_and_the_bql_holder_first(self, run: Any) -> None:
        _, _, doc = run
        names = thread_names(doc)
        assert {names[i + 1] for i in range(4)} == {"vcpu0", "vcpu1", "vcpu2", "vcpu3"}
        assert [names[i + 1] for i in range(4)] == ["vcpu0", "vcpu1", "vcpu2", "vcpu3"]
        assert "BQL holder" in names.values()
        order = {e["tid"]: e["args"]["sort_index"] for e in doc["traceEvents"]
                 if e["ph"] == "M" and e["name"] == "thread_sort_index"}
        by_order = [names[tid] for tid in sorted(order, key=order.__getitem__)]
        assert by_order[:5] == ["BQL holder", "vcpu0", "vcpu1", "vcpu2", "vcpu3"]
        assert [e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"] == ["aemu"]

    def test_lock_spans_carry_their_site(self, run: Any) -> None:
        _, _, doc = run
        events = complete(doc)
        waits = [e for e in events if e["cat"] == "wait"]
        assert waits and all(e["args"]["lock"] == "BQL" and e["args"]["site"] for e in waits)
        holders = [e for e in events if e["cat"] == "holder"]
        assert {e["name"] for e in holders} >= {"vcpu0", "vcpu1", "vcpu2", "vcpu3"}
        assert all("site" in e["args"] for e in holders)
        exits = {e["args"]["region"] for e in events if e["cat"] == "exit" and "region" in e["args"]}
        assert {"hpet", "serial"} <= exits


class TestNesting:
    def test_spans_of_one_track_nest_without_partial_overlap(self, run: Any) -> None:
        _, _, doc = run
        by_tid: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for e in complete(doc):
            by_tid[e["tid"]].append((ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])))
        nested = 0
        for spans in by_tid.values():
            assert spans == sorted(spans, key=lambda s: (s[0], s[0] - s[1]))  # emitted in stacking order
            stack: list[tuple[int, int]] = []
            for start, end in spans:
                while stack and stack[-1][1] <= start:
                    stack.pop()
                assert not stack or end <= stack[-1][1], f"{(start, end)} overlaps {stack[-1]} partially"
                nested += bool(stack)
                stack.append((start, end))
        assert nested > 0  # the wait/hold spans inside exits really are nested

    def test_a_wait_and_hold_inside_an_exit_come_after_it_even_when_they_start_together(self) -> None:
        t = aemu.trace.Tracer()
        t.span("BQL", "vcpu0", 500, 700)
        t.span("vcpu0", "hold BQL (acpi-tmr read)", 500, 700)
        t.span("vcpu0", "wait BQL (acpi-tmr read)", 0, 500)
        t.span("vcpu0", "pio acpi-tmr", 0, 700)
        t.span("vcpu0", "guest", 700, 700)
        events = complete(build_trace(t))
        assert [(e["tid"], e["name"], e["ts"], e["dur"]) for e in events] == [
            (1, "pio acpi-tmr", 0.0, 0.7),
            (1, "wait BQL (acpi-tmr read)", 0.0, 0.5),
            (1, "hold BQL (acpi-tmr read)", 0.5, 0.2),
            (2, "vcpu0", 0.5, 0.2),
        ]
        assert events[3]["args"] == {"holder": "vcpu0", "site": "acpi-tmr read"}
        assert thread_names(build_trace(t)) == {1: "vcpu0", 2: "BQL holder"}


class TestAccounting:
    def test_top_level_vcpu_spans_fit_in_the_vcpus_elapsed_time(self, run: Any) -> None:
        m, _, doc = run
        names = thread_names(doc)
        for c in m.vcpus:
            tid = c.index + 1
            assert names[tid] == c.name
            mine = [e for e in complete(doc) if e["tid"] == tid]
            top = sum(ns(e["dur"]) for e in mine if e["cat"] in ("guest", "exit", "halted"))
            assert top <= c.finish_ns - c.start_ns
            assert sum(ns(e["dur"]) for e in mine if e["cat"] == "guest") == c.guest_ns
            assert sum(ns(e["dur"]) for e in mine if e["cat"] == "halted") == c.halted_ns

    def test_an_untruncated_full_trace_says_so(self, run: Any) -> None:
        m, t, doc = run
        other = doc["otherData"]
        assert other["truncated"] is False and other["dropped_spans"] == 0 and other["windowed"] is False
        assert other["window_ns"] == [0, max(s[3] for s in t.spans)]
        assert not [e for e in doc["traceEvents"] if e["ph"] == "i"]
        assert timeline_summary(t) == f"timeline: {len(t.spans):,} spans, window [0, {max(s[3] for s in t.spans)}] ns, not truncated"


class TestLimits:
    def test_truncation_is_flagged_for_people_and_viewers(self) -> None:
        t = aemu.trace.Tracer(max_spans=50)
        traced(t)
        doc = build_trace(t)
        assert t.dropped > 0
        assert doc["otherData"]["truncated"] is True
        assert doc["otherData"]["dropped_spans"] == t.dropped
        assert len(complete(doc)) <= 50
        instants = [e for e in doc["traceEvents"] if e["ph"] == "i"]
        assert [e["args"]["dropped_spans"] for e in instants] == [t.dropped]
        labels = [e for e in doc["traceEvents"] if e["name"] == "process_labels"]
        assert len(labels) == 1 and "truncated" in labels[0]["args"]["labels"]
        assert timeline_summary(t).endswith(f"truncated: dropped {t.dropped:,} spans")

    def test_a_window_keeps_only_events_inside_it(self) -> None:
        a, b = 1_000_000, 2_000_000
        t = aemu.trace.Tracer(window_start_ns=a, window_end_ns=b)
        traced(t)
        doc = build_trace(t)
        events = complete(doc)
        assert events
        for e in events:
            assert a <= ns(e["ts"]) and ns(e["ts"]) + ns(e["dur"]) <= b
        assert doc["otherData"]["window_ns"] == [a, b] and doc["otherData"]["windowed"] is True
        assert {e["name"] for e in doc["traceEvents"] if e["ph"] == "i"} == {
            "trace window starts (1,000,000 ns)", "trace window ends (2,000,000 ns)"}
        assert timeline_summary(t) == f"timeline: {len(t.spans):,} spans, window [{a}, {b}] ns, not truncated"


class TestWrite:
    def test_write_timeline_writes_loadable_json(self, run: Any, tmp_path: Path) -> None:
        _, t, doc = run
        p = write_timeline(t, tmp_path / "sub" / "boot.json")
        assert p == tmp_path / "sub" / "boot.json"
        assert json.loads(p.read_text()) == doc

    def test_an_unwritable_path_is_one_line_naming_it(self, tmp_path: Path) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        with pytest.raises(ConfigError) as err:
            write_timeline(aemu.trace.Tracer(), blocker / "x.json")
        assert str(blocker / "x.json") in str(err.value) and "\n" not in str(err.value)

    def test_an_empty_tracer_is_a_valid_empty_trace(self) -> None:
        t = aemu.trace.Tracer()
        doc = build_trace(t)
        assert complete(doc) == [] and doc["otherData"]["window_ns"] == [0, 0]
        assert timeline_summary(t) == "timeline: 0 spans, window [0, end] ns, not truncated"


class TestOrigin:
    def test_a_run_that_starts_late_on_its_loop_traces_the_same_spans(self) -> None:
        """Spans are relative to the run's start (a real-time loop's clock is not 0)."""
        from aemu.runner import run_machine

        def spans_after(delay_ns: int) -> list[tuple[str, str, int, int]]:
            t = aemu.trace.Tracer()

            async def main() -> None:
                await aemu.clock.sleep_ns(delay_ns)
                await run_machine(ARGS, tracer=t)

            aemu.clock.run(main())
            return t.spans

        assert spans_after(7_000_000) == spans_after(0) != []


def brute_force_bins(holds: list[tuple[int, int]], bin_ns: int) -> dict[int, int]:
    """Busy ns per bucket as Utilisation kept them before buckets could merge: split each hold."""
    busy: dict[int, int] = defaultdict(int)
    for start, end in holds:
        for t in range(start, end):
            busy[t // bin_ns] += 1
    return dict(busy)


class TestUtilisation:
    def test_buckets_of_a_run_that_fits_are_its_first_width(self) -> None:
        import random

        rng = random.Random(5)
        u = aemu.trace.Utilisation(100, max_bins=64)
        holds = []
        for _ in range(300):
            a = rng.randrange(0, 6_300)
            holds.append((a, a + rng.randrange(0, 250)))
        for a, b in holds:
            u.add(a, b)
        want = brute_force_bins(holds, 100)
        last = max(want)
        assert u.bin_ns == 100
        assert u.series() == [(i * 100, want.get(i, 0) / 100) for i in range(last + 1)]

    def test_a_run_that_outgrows_the_buckets_merges_neighbours_and_doubles_the_width(self) -> None:
        u = aemu.trace.Utilisation(100, max_bins=4)
        u.add(0, 150)
        assert (u.bin_ns, u.series()) == (100, [(0, 1.0), (100, 0.5)])
        u.add(350, 450)  # ends in bucket 4 of 100 ns: one merge
        assert (u.bin_ns, u.series()) == (200, [(0, 0.75), (200, 0.25), (400, 0.25)])
        u.add(1_000, 1_700)  # ends in bucket 8 of 200 ns: two more
        assert (u.bin_ns, u.series()) == (800, [(0, 0.3125), (800, 0.75), (1600, 0.125)])
        assert sum(u.busy) == 150 + 100 + 700  # busy time is never lost

    def test_a_series_to_a_later_end_merges_first(self) -> None:
        u = aemu.trace.Utilisation(100, origin_ns=1_000, max_bins=4)
        u.add(1_000, 1_050)
        assert u.series(until_ns=1_000) == [(0, 0.125), (400, 0.0), (800, 0.0)]  # until: since the origin
        assert u.bin_ns == 400
        assert aemu.trace.Utilisation(100).series(until_ns=1) == [(0, 0.0)]
        assert aemu.trace.Utilisation(100).series() == []

    def test_a_series_to_an_end_leaves_out_what_was_booked_after_it(self) -> None:
        """Regression (a real-time run, 1 in 3): the vCPUs are cancelled after the run's end time is
        taken, and a BQL release then booked a bucket past the end into the result's series."""
        u = aemu.trace.Utilisation(100)
        u.add(50, 100)
        u.add(250, 260)  # after the run's end at 200
        assert u.series(until_ns=200) == [(0, 0.5), (100, 0.0)]

    def test_bad_sizes(self) -> None:
        with pytest.raises(ValueError, match="bin_ns must be positive"):
            aemu.trace.Utilisation(0)
        with pytest.raises(ValueError, match="max_bins must be at least 1"):
            aemu.trace.Utilisation(100, max_bins=0)

    def test_a_long_idle_run_keeps_at_most_max_bins(self) -> None:
        short = aemu.simulate("-smp 2 --workload idle --duration 1s")
        long = aemu.simulate("-smp 2 --workload idle --duration 5s")
        assert (short.bql_utilisation_bin_ns, len(short.bql_utilisation)) == (100_000, 10_000)
        assert (long.bql_utilisation_bin_ns, len(long.bql_utilisation)) == (800_000, 6_250)
        assert len(long.bql_utilisation) <= aemu.trace.MAX_BINS
        busy_short, busy_long = (sum(f for _, f in r.bql_utilisation) * r.bql_utilisation_bin_ns for r in (short, long))
        assert 4 * busy_short < busy_long < 6 * busy_short  # the same idle machine, 5 times as long
