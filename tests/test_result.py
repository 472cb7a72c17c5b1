"""The result of a run (aemu.result): exact region latency percentiles from value counts, the
snapshot a machine leaves, its ``aemu.result/1`` document, and the vCPU time accounting."""

from __future__ import annotations

import json
import math
import random
from array import array
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import pytest

from aemu import MachineConfig, simulate
from aemu.machine import Machine, simulate_machine
from aemu.clock import run
from aemu.result import SCHEMA, Metric, RegionLatency, Result, VCPUResult, region_latency
from aemu.workloads.micro import HPETBench

CDF_PERCENTILES = [float(p) for p in range(100)] + [99.9, 99.99, 100.0]


def brute_force(name: str, samples: Sequence[int]) -> RegionLatency:
    """The definition, one sample at a time: the value at the ceil(q/100 * n)-th smallest sample."""
    s = sorted(samples)
    n = len(s)

    def at(q: float) -> int:
        return s[max(1, math.ceil(Fraction(repr(q)) * n / 100)) - 1]

    cdf = tuple((at(p), p / 100) for p in CDF_PERCENTILES)
    return RegionLatency(name, n, at(50), at(90), at(99), s[-1], sum(s) / n, cdf)


def random_samples(rng: random.Random, n: int, distinct: int) -> list[int]:
    """Virtual-time-like latencies: a few hot values and a long tail."""
    hot = [rng.randrange(100, 5_000) for _ in range(distinct)]
    return [rng.choice(hot) if rng.random() < 0.9 else rng.randrange(100, 2_000_000) for _ in range(n)]


def split(samples: Sequence[int], parts: int) -> list[Counter[int]]:
    """Per-vCPU value counts of one region's samples."""
    return [Counter(samples[i::parts]) for i in range(parts)]


class TestRegionLatency:
    @pytest.mark.parametrize("n, distinct", [(1, 1), (2, 2), (7, 3), (100, 5), (1_000, 40), (20_000, 200)])
    def test_value_counts_match_brute_force(self, n: int, distinct: int) -> None:
        samples = random_samples(random.Random(n), n, distinct)
        expected = brute_force("hpet", samples)
        assert region_latency("hpet", Counter(samples)) == expected
        assert region_latency("hpet", split(samples, 4)) == expected  # per-vCPU counts merged

    def test_array_samples_during_the_move_to_counts(self) -> None:
        samples = random_samples(random.Random(7), 5_000, 30)
        expected = brute_force("acpi-tmr", samples)
        assert region_latency("acpi-tmr", array("q", samples)) == expected
        assert region_latency("acpi-tmr", [array("q", samples[:100]), array("q", samples[100:])]) == expected
        assert region_latency("acpi-tmr", [array("q", samples[:100]), Counter(samples[100:])]) == expected

    def test_plain_mapping_and_generator_of_mappings(self) -> None:
        counts = {300: 2, 100: 1, 200: 1}
        r = region_latency("rtc", counts)
        assert (r.count, r.p50, r.p90, r.p99, r.max, r.mean) == (4, 200, 300, 300, 300, 225.0)
        assert region_latency("rtc", (c for c in [{300: 2}, {100: 1, 200: 1}])) == r

    def test_mean_is_the_exact_sum_over_n(self) -> None:
        # float accumulation would lose the small values beside the large ones
        samples = [2**53, 1, 1, 1, 3, 2**53 + 2]
        r = region_latency("x", Counter(samples))
        assert r.mean == sum(samples) / len(samples) == brute_force("x", samples).mean

    def test_no_accesses(self) -> None:
        empty = RegionLatency("serial", 0, 0, 0, 0, 0, 0.0)
        assert region_latency("serial", Counter()) == empty
        assert region_latency("serial", []) == empty
        assert region_latency("serial", array("q")) == empty
        assert region_latency("serial", {500: 0}) == empty

    def test_zero_counts_are_no_accesses(self) -> None:
        assert region_latency("x", {1: 0, 5: 2, 9: 0}) == region_latency("x", {5: 2})

    def test_negative_counts_are_refused(self) -> None:
        with pytest.raises(ValueError, match="region 'x': latency counts must not be negative"):
            region_latency("x", {5: 2, 7: -1})

    def test_cdf_runs_from_min_to_max(self) -> None:
        r = region_latency("x", Counter(range(1, 1001)))
        assert r.cdf[0] == (1, 0.0) and r.cdf[-1] == (1000, 1.0)
        assert [f for _, f in r.cdf] == [p / 100 for p in CDF_PERCENTILES]
        assert [v for v, _ in r.cdf[49:52]] == [490, 500, 510]  # 49th, 50th, 51st percentiles
        assert [v for v, _ in r.cdf[-3:]] == [999, 1000, 1000]  # 99.9, 99.99, 100

    def test_rank_of_99_9_at_41000_samples(self) -> None:
        r = region_latency("x", Counter(range(1, 41_001)))
        assert r.cdf[-3][0] == 40_959


# -- the snapshot and the document -------------------------------------------------------------

SPLIT = "-accel kvm,kernel-irqchip=split"


@pytest.fixture(scope="module")
def boot() -> Result:
    return simulate(MachineConfig.parse(f"-smp 4 {SPLIT} --workload boot --param phases=1 --series before"))


def run_machine(args: str) -> Machine:
    return run(simulate_machine(MachineConfig.parse(args)))


class TestFromMachine:
    def test_regions_are_the_vcpus_records_merged(self) -> None:
        m = run_machine(f"-smp 3 -M q35,hpet=on {SPLIT} --workload hpet-bench --param reads=20 --series before")
        r = Result.from_machine(m)
        samples = [dt for c in m.vcpus for dt in Counter(c.latency["hpet"]).elements()]
        assert r.regions == (brute_force("hpet", samples),)
        # hpet_read_test: the BSP only enables (CONFIG read + write); each AP reads 1 + 20 + 1 times
        assert [v.exits_by_region for v in r.vcpus] == [{"hpet": 2}, {"hpet": 22}, {"hpet": 22}]
        assert isinstance(m.workload, HPETBench)
        per_cpu = m.workload.latency  # tick delta x 10 ns / reads per AP; the BSP reads nothing
        assert per_cpu[0] == 0 and all(ns >= (3_000 + 20 * 3_100) // 20 for ns in per_cpu[1:])  # no faster than alone
        assert r.metric == Metric("average read (hpet_read_test)", sum(per_cpu) / 3, "ns")  # divided by all CPUs

    def test_region_accesses_are_the_vcpus_exits(self, boot: Result) -> None:
        for r in boot.regions:
            assert r.count == sum(v.exits_by_region.get(r.name, 0) for v in boot.vcpus)
            assert r.count == sum(boot.region_counts[r.name])  # reads + writes
        assert [r.name for r in boot.regions] == sorted(boot.regions_by_name())

    def test_exits_by_kind_sum_to_exits(self, boot: Result) -> None:
        for v in boot.vcpus:
            assert v.exits == sum(v.exits_by_kind.values())
            assert sum(v.exits_by_region.values()) == v.exits_by_kind.get("mmio", 0) + v.exits_by_kind.get("pio", 0)


class TestVCPUAccounting:
    @pytest.mark.parametrize("args", [
        f"-smp 4 {SPLIT} --workload boot --param phases=1 --series before",
        f"-smp 4 {SPLIT} --workload boot --param phases=1 --series after",
        "-smp 4 -accel kvm,kernel-irqchip=off --workload boot --param phases=1 --series before",
        f"-smp 6 -M q35,hpet=on {SPLIT} --workload hpet-bench --param reads=30 --series before",
        "-smp 4 -M pc,hpet=off -accel kvm,kernel-irqchip=on --workload pmtimer-bench --param reads=30",
    ])
    def test_guest_exit_lock_wait_halted_is_the_time_from_start_to_finish(self, args: str) -> None:
        r = simulate(MachineConfig.parse(args))
        assert r.finished
        for v in r.vcpus:
            assert v.finished
            assert v.guest_ns + v.exit_ns + v.lock_wait_ns + v.halted_ns == v.elapsed_ns == v.finish_ns - v.start_ns
            assert min(v.guest_ns, v.exit_ns, v.lock_wait_ns, v.halted_ns) >= 0
            assert v.lock_wait_ns == sum(v.lock_wait_by_lock.values())

    def test_capped_idle_vcpus_account_the_whole_run(self) -> None:
        r = simulate(MachineConfig.parse("-smp 2 --workload idle --duration 3ms"))
        assert [v.elapsed_ns for v in r.vcpus] == [r.virtual_ns] * 2

    def test_lock_wait_share(self, boot: Result) -> None:
        wait = sum(v.lock_wait_by_lock.get("BQL", 0) for v in boot.vcpus)
        assert 0 < boot.lock_wait_share() == wait / sum(v.elapsed_ns for v in boot.vcpus) < 1

    def test_frozen(self, boot: Result) -> None:
        with pytest.raises(AttributeError):
            boot.vcpus[0].guest_ns = 0  # type: ignore[misc]
        assert isinstance(boot.vcpus[0], VCPUResult)


class TestDocument:
    def test_shape(self, boot: Result) -> None:
        d = boot.to_dict()
        assert list(d) == ["schema", "config", "virtual_ns", "wall_s", "interrupted", "workload", "locks",
                           "vcpus", "regions", "series"]
        assert d["schema"] == SCHEMA == "aemu.result/1"
        assert d["workload"] == {"name": "boot", "finished": True,
                                 "metric": {"name": "boot time", "value": boot.virtual_ns / 1e6, "unit": "ms"},
                                 "milestones": dict(boot.milestones)}
        assert d["config"] == boot.config.to_dict() and d["virtual_ns"] == boot.virtual_ns
        assert "bql" in d["locks"] and "BQL" not in d["locks"]
        assert set(d["locks"]["bql"]) == {"acquisitions", "contentions", "wait_ns", "hold_ns", "sites", "holder_sites"}

    def test_milestones_only_for_a_workload_that_marks_them(self, boot: Result) -> None:
        assert [name for name, _ in boot.milestones] == ["APs started", "phase 0 done"]  # phases=1
        assert boot.milestone_ns("APs started") == boot.milestones[0][1] and boot.milestone_ns("nowhere") is None
        bench = simulate(MachineConfig.parse(f"-smp 2 -M q35,hpet=on {SPLIT} --workload hpet-bench --param reads=5"))
        assert bench.milestones == () and "milestones" not in bench.to_dict()["workload"]

    def test_vcpus_and_regions(self, boot: Result) -> None:
        d = boot.to_dict()
        assert [v["index"] for v in d["vcpus"]] == [0, 1, 2, 3]
        for doc, v in zip(d["vcpus"], boot.vcpus):
            assert list(doc) == ["index", "exits", "exits_by_kind", "interrupts", "finished", "time_ns", "lock_wait_ns"]
            assert doc["time_ns"] == {"guest": v.guest_ns, "exit": v.exit_ns, "lock_wait": v.lock_wait_ns,
                                      "runnable": v.runnable_ns, "halted": v.halted_ns}
        for doc, r in zip(d["regions"], boot.regions, strict=True):
            assert doc == {"name": r.name, "reads": boot.region_counts[r.name][0],
                           "writes": boot.region_counts[r.name][1], "accesses": r.count,
                           "latency_ns": {"p50": r.p50, "p90": r.p90, "p99": r.p99, "max": r.max,
                                          "mean": round(r.mean, 1)}}

    def test_series_and_json(self, boot: Result) -> None:
        d = boot.to_dict()
        util = d["series"]["bql_utilisation"]
        assert util["bin_ns"] == boot.bql_utilisation_bin_ns > 0
        assert len(util["values"]) == len(boot.bql_utilisation) and all(0 <= f <= 1 for f in util["values"])
        assert json.loads(json.dumps(d)) == d  # plain JSON: no tuples, no non-string keys
