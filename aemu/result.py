"""The result of a run: a frozen snapshot and its versioned JSON document (``aemu.result/1``)."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any, TypeAlias

from .sync import LockStatistics

if TYPE_CHECKING:
    from .config import MachineConfig
    from .machine import Machine

__all__ = ["LatencyCounts", "Metric", "RegionLatency", "Result", "SCHEMA", "VCPUResult", "region_latency"]

SCHEMA = "aemu.result/1"


@dataclass(frozen=True, slots=True)
class Metric:
    """The number a workload is judged by (the result document's ``workload.metric``)."""

    name: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class RegionLatency:
    """Accesses to one region: count and exact latency percentiles (ns, exit to guest re-entry)."""

    name: str
    count: int
    p50: int
    p90: int
    p99: int
    max: int
    mean: float
    #: (latency ns, fraction of accesses at or below it): 0..100th percentile in steps of 1,
    #: plus 99.9 and 99.99 -- for CDF plots.
    cdf: tuple[tuple[int, float], ...] = ()


_CDF_PERCENTILES = tuple(float(p) for p in range(0, 100)) + (99.9, 99.99, 100.0)


#: Latency value counts: latency ns -> number of accesses (a vCPU's ``latency[region]``).
LatencyCounts: TypeAlias = Mapping[int, int]


def region_latency(name: str, counts: LatencyCounts | array[int] | Iterable[LatencyCounts | array[int]]
                   ) -> RegionLatency:
    """Exact percentiles of latency value counts (value at the ``ceil(q * n)``-th smallest access).

    ``counts`` maps latency (ns) to accesses, or is an iterable of such maps (one per vCPU) to
    merge. Virtual-time latencies repeat a lot, so the percentiles are read off the running totals
    of the distinct values: exact, no histogram rounding. (An ``array`` of raw samples is counted
    first: the per-access form vCPUs kept before.)
    """
    parts = (counts,) if isinstance(counts, (Mapping, array)) else counts
    merged: Counter[int] = Counter()
    for part in parts:
        merged.update(part)  # a Mapping adds its counts; an array counts its samples (in C)
    if any(c < 0 for c in merged.values()):
        raise ValueError(f"region {name!r}: latency counts must not be negative")
    values = sorted(v for v, c in merged.items() if c)
    if not values:
        return RegionLatency(name, 0, 0, 0, 0, 0, 0.0)
    cumulative = list(accumulate(merged[v] for v in values))
    n = cumulative[-1]

    def at(q: float) -> int:
        hundredths = round(q * 100)  # integer arithmetic: a float rank is one too many at some n
        rank = max(1, -(-hundredths * n // 10_000))  # ceil(q / 100 * n), at least the first access
        return values[bisect_left(cumulative, rank)]

    cdf = tuple((values[0] if p == 0 else at(p), p / 100) for p in _CDF_PERCENTILES)
    total = sum(v * merged[v] for v in values)  # exact: the float mean is rounded once, as sum(samples) / n
    return RegionLatency(name, n, at(50), at(90), at(99), values[-1], total / n, cdf)


def _accesses(counts: LatencyCounts | array[int]) -> int:
    """How many accesses one vCPU's latency record of a region holds."""
    return sum(counts.values()) if isinstance(counts, Mapping) else len(counts)


@dataclass(frozen=True, slots=True)
class VCPUResult:
    """One vCPU's accounting; ``guest + exit + lock_wait + runnable + halted == elapsed``.

    ``runnable`` is time waiting for a host CPU (``--host-cpus``); the part of it spent after a
    futex wake-up, before the lock is taken, is not in ``lock_wait``."""

    index: int
    exits: int
    exits_by_kind: dict[str, int]
    exits_by_region: dict[str, int]
    interrupts: int
    guest_ns: int
    exit_ns: int
    lock_wait_ns: int
    lock_wait_by_lock: dict[str, int]
    halted_ns: int
    finished: bool
    start_ns: int
    finish_ns: int
    runnable_ns: int = 0

    @property
    def elapsed_ns(self) -> int:
        """guest + exit + lock_wait + runnable + halted: the vCPU's elapsed virtual time."""
        return self.guest_ns + self.exit_ns + self.lock_wait_ns + self.runnable_ns + self.halted_ns


@dataclass(frozen=True, slots=True)
class Result:
    """What a run produced (see :meth:`to_dict` for the document)."""

    config: MachineConfig
    virtual_ns: int
    wall_s: float
    workload: str
    finished: bool
    metric: Metric
    locks: dict[str, LockStatistics]
    vcpus: tuple[VCPUResult, ...]
    regions: tuple[RegionLatency, ...]
    region_counts: dict[str, tuple[int, int]]
    serial_output: bytes
    #: (bucket start ns, fraction of the bucket the BQL was held) over the run.
    bql_utilisation: tuple[tuple[int, float], ...] = ()
    bql_utilisation_bin_ns: int = 0
    #: True when the run was interrupted (Ctrl-C): the figures cover the part that ran.
    interrupted: bool = False
    #: True for a workload that runs until stopped (``idle``): ending at --duration is its normal end.
    open_ended: bool = False
    #: What ``aemu check`` / ``aemu run --check`` found (:meth:`aemu.check.CheckReport.to_dict`),
    #: or None for a run without the checker (the document then has no ``check`` key).
    check: dict[str, Any] | None = None
    #: With ``--host-cpus``: how the host scheduler shared them (:meth:`aemu.sched.HostCPUs.statistics`:
    #: dispatches, preemptions, wake-up preemptions, directed yields, pulls, wake-affine wake-ups,
    #: threads moved by periodic balancing),
    #: else None (the document then has no ``host_cpus`` key).
    host_cpus: dict[str, int] | None = None
    #: (name, virtual ns since the start) of each point the workload marked
    #: (:meth:`aemu.machine.Machine.milestone`), in the order reached; empty if it marks none
    #: (the document then has no ``workload.milestones`` key).
    milestones: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_machine(cls, m: Machine) -> Result:
        """Snapshot a machine after its run."""
        locks = {lock.name: lock.statistics() for lock in m.all_locks()}
        waits: dict[str, dict[str, int]] = {}
        for st in locks.values():
            for t in st.tasks:
                waits.setdefault(t.task, {})[st.name] = t.wait_total_ns
        vcpus = []
        for c in m.vcpus:
            w = waits.get(c.name, {})
            total_wait = sum(w.values())
            a = c.account
            lock_wait = total_wait - a.runnable_in_lock_ns
            # exit handling (pre/post_run included) is the rest of the vCPU's elapsed time: without
            # host CPUs that is exactly the exit spans less lock waits; with them, the spans
            # also hold waits for a CPU, which are booked as runnable
            end = c.finish_ns if c.finished else m.finish_ns
            exit_ns = end - c.start_ns - c.guest_ns - lock_wait - a.runnable_ns - c.halted_ns
            vcpus.append(VCPUResult(
                c.index, sum(c.exits.values()), dict(c.exits),
                {name: _accesses(lat) for name, lat in c.latency.items()}, c.interrupts,
                c.guest_ns, exit_ns, lock_wait, w, c.halted_ns, c.finished,
                c.start_ns, c.finish_ns, a.runnable_ns))
        names = sorted({n for c in m.vcpus for n in c.latency})
        regions = tuple(region_latency(n, [c.latency[n] for c in m.vcpus if n in c.latency]) for n in names)
        counts: dict[str, tuple[int, int]] = {}
        for mr in m.regions():
            if mr.kind == "io" and (mr.reads or mr.writes):
                counts[mr.name] = (counts.get(mr.name, (0, 0))[0] + mr.reads, counts.get(mr.name, (0, 0))[1] + mr.writes)
        serial = bytes(m.serial.output)
        util = m.bql_utilisation
        return cls(m.config, m.finish_ns, m.wall_s, m.workload.name, m.finished, m.workload.metric(m),
                   locks, tuple(vcpus), regions, counts, serial,
                   tuple(util.series(until_ns=max(m.finish_ns, 1))), util.bin_ns, m.interrupted,
                   m.workload.open_ended,
                   host_cpus=m.host_cpus.statistics() if m.host_cpus is not None else None,
                   milestones=tuple(m.milestones.items()))

    def milestone_ns(self, name: str) -> int | None:
        """When the run reached the milestone ``name`` (virtual ns since the start), or None."""
        return dict(self.milestones).get(name)

    def regions_by_name(self) -> dict[str, RegionLatency]:
        """Region latency summaries keyed by region name."""
        return {r.name: r for r in self.regions}

    @property
    def bql(self) -> LockStatistics:
        """The BQL's statistics."""
        return self.locks["BQL"]

    def lock_wait_share(self) -> float:
        """Share of all vCPU time spent waiting for the BQL."""
        total = sum(v.elapsed_ns for v in self.vcpus)
        wait = sum(v.lock_wait_by_lock.get("BQL", 0) for v in self.vcpus)
        return wait / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The versioned result document (schema ``aemu.result/1``, see README)."""
        workload: dict[str, Any] = {"name": self.workload, "finished": self.finished,
                                    "metric": {"name": self.metric.name, "value": self.metric.value,
                                               "unit": self.metric.unit}}
        if self.milestones:
            workload["milestones"] = dict(self.milestones)
        doc = {
            "schema": SCHEMA,
            "config": self.config.to_dict(),
            "virtual_ns": self.virtual_ns,
            "wall_s": round(self.wall_s, 3),
            "interrupted": self.interrupted,
            "workload": workload,
            "locks": {("bql" if name == "BQL" else name): lock_dict(st) for name, st in self.locks.items()},
            "vcpus": [{"index": v.index, "exits": v.exits, "exits_by_kind": v.exits_by_kind,
                       "interrupts": v.interrupts, "finished": v.finished,
                       "time_ns": {"guest": v.guest_ns, "exit": v.exit_ns, "lock_wait": v.lock_wait_ns,
                                   "runnable": v.runnable_ns, "halted": v.halted_ns},
                       "lock_wait_ns": v.lock_wait_by_lock} for v in self.vcpus],
            "regions": [{"name": r.name, "reads": self.region_counts.get(r.name, (0, 0))[0],
                         "writes": self.region_counts.get(r.name, (0, 0))[1], "accesses": r.count,
                         "latency_ns": {"p50": r.p50, "p90": r.p90, "p99": r.p99, "max": r.max,
                                        "mean": round(r.mean, 1)}} for r in self.regions],
            "series": {"bql_utilisation": {"bin_ns": self.bql_utilisation_bin_ns,
                                           "values": [round(f, 4) for _, f in self.bql_utilisation]}},
        }
        if self.check is not None:
            doc["check"] = self.check
        if self.host_cpus is not None:
            doc["host_cpus"] = dict(self.host_cpus)
        return doc


def _time_dict(ts: Any) -> dict[str, Any]:
    return {"min": ts.min, "max": ts.max, "total": ts.total, "mean": round(ts.mean, 1),
            "p50": ts.p50, "p90": ts.p90, "p99": ts.p99, "p999": ts.p999}


def lock_dict(st: LockStatistics) -> dict[str, Any]:
    """A lock's statistics as the result document's ``locks`` entry."""
    return {
        "acquisitions": st.acquisitions, "contentions": st.contentions,
        "wait_ns": _time_dict(st.wait_ns), "hold_ns": _time_dict(st.hold_ns),
        "sites": [{"site": s.site, "acquisitions": s.acquisitions, "contentions": s.contentions,
                   "wait_ns_total": s.wait_total_ns, "wait_ns_mean": round(s.wait_mean_ns, 1),
                   "wait_ns_max": s.wait_max_ns, "hold_ns_total": s.hold_total_ns} for s in st.sites],
        "holder_sites": [{"site": p.site, "count": p.count} for p in st.holder_sites],
    }
