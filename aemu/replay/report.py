"""What a replay reports: the regions it added, the counts it checked, and how it scaled the trace."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CountMismatch", "GenericRegionInfo", "ReplayReport"]


@dataclass(frozen=True, slots=True)
class GenericRegionInfo:
    """A generic region added for a trace region aemu does not model."""

    name: str
    space: str
    addr: int
    size: int


@dataclass(frozen=True, slots=True)
class CountMismatch:
    """A region whose replayed counts differ from the expected ones (``trace_*``: see
    :attr:`ReplayReport.counts_basis`), and why if known."""

    name: str
    trace_reads: int
    trace_writes: int
    reads: int
    writes: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """How a replay went: what was parsed, mapped, replicated and replayed."""

    source: str
    lines: int
    #: malformed lines skipped (``lenient``)
    skipped: int
    other_events: int
    #: access lines in the trace
    accesses: int
    #: accesses the run performed (vCPU streams, replicas included, plus device context)
    replayed: int
    #: cpu -1 accesses in the trace
    device_accesses: int
    #: "replayed from a device context ..." or "skipped ..."
    device_handling: str
    #: generic regions added for names aemu does not model (same name may appear more than once)
    generic_regions: tuple[GenericRegionInfo, ...]
    #: trace name -> aemu region name, where they differ (``apic-msi`` -> ``kvm-apic-msi``)
    renamed: dict[str, str]
    #: trace accesses that land on an aemu region of another name (their counts cannot match)
    conflicts: tuple[str, ...]
    recorded_cpus: tuple[int, ...]
    vcpus: int
    #: per vCPU: the recorded vCPU streams it replays
    streams: tuple[tuple[int, ...], ...]
    #: the scaling rule applied, in words
    replication: str
    time_scale: float
    timestamps: bool
    #: True when every region's (reads, writes) equal :attr:`expected_counts`
    exact_counts: bool
    mismatches: tuple[CountMismatch, ...] = ()
    #: what the checked counts were compared as: aemu name -> (reads, writes) expected
    expected_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: what :attr:`expected_counts` are, in words: "the trace's" when every recorded stream is
    #: replayed once, else how the streams were replicated and how many accesses that makes
    counts_basis: str = "the trace's"

    @property
    def generic_names(self) -> tuple[str, ...]:
        """The distinct names of the generic regions added."""
        return tuple(sorted({g.name for g in self.generic_regions}))

    def format(self) -> str:
        """A few lines for ``aemu replay`` (the run report follows it)."""
        out = [f"replay of {self.source}: {self.lines:,} lines, {self.accesses:,} accesses "
               f"({self.skipped:,} malformed lines skipped, {self.other_events:,} other events ignored)",
               f"  vCPUs: recorded {', '.join(map(str, self.recorded_cpus))}; replayed on {self.vcpus}: "
               f"{self.replication}",
               f"  cpu -1: {self.device_handling}",
               f"  gaps: {'host timestamps x ' + format(self.time_scale, 'g') if self.timestamps else 'cost model guest_compute_ns'}",
               f"  accesses replayed: {self.replayed:,}"]
        if self.generic_regions:
            out.append(f"  generic regions (not modelled by aemu): {', '.join(self.generic_names)}")
        if self.renamed:
            out.append("  renamed: " + ", ".join(f"{a} -> {b}" for a, b in sorted(self.renamed.items())))
        for c in self.conflicts:
            out.append(f"  conflict: {c}")
        if self.exact_counts:
            out.append(f"  per-region read/write counts equal {self.counts_basis}")
        else:
            out.append(f"  per-region read/write counts checked against {self.counts_basis}:")
        for mm in self.mismatches:
            out.append(f"  count mismatch {mm.name}: expected {mm.trace_reads}/{mm.trace_writes}, "
                       f"aemu {mm.reads}/{mm.writes} (reads/writes): {mm.reason}")
        return "\n".join(out)
