"""``replay``: a recorded QEMU boot's PIO/MMIO accesses as guest programs (the trace: :mod:`.trace`).

**Guest programs.** Each recorded vCPU's accesses, in file order, become one program: a
``PIORead``/``PIOWrite`` for an I/O-space region, an ``MMIORead``/``MMIOWrite`` for a memory-space
one, at the recorded absolute address with the recorded size and (for writes) value. Between two
accesses the program computes (``Compute``) for the recorded gap -- the difference of the host
timestamps times ``time_scale`` -- and before its first access for the time since the trace's
first line; without timestamps every gap is the cost model's ``guest_compute_ns``. Gaps are think
times, not deadlines: an access delayed by a lock delays everything after it on that vCPU, so a
contended configuration finishes later, as a real guest would.

**Address spaces.** A trace line does not say which space its region is in. An access goes to the
space where aemu maps a region of that name at that address; otherwise to ``I/O`` if the address
is below 0x10000 and to ``memory`` if not (on q35/pc nothing but RAM lives below 64 KiB of
guest-physical memory, and ports stop at 0xffff, so the rule is unambiguous there).

**Region mapping.** A trace name maps to aemu's region of that name; the trace's ``apic-msi`` maps
to aemu's MSI window whichever name it has (``kvm-apic-msi`` with an in-kernel LAPIC). The root
regions replay at their address and land on the root's own handler (``io``: unassigned ports
read all-ones; a hole in ``system`` is a decode error in aemu, so ``system`` hits get a generic
region). Every other (name, address) aemu does not resolve to that name gets a
:class:`~aemu.devices.generic.GenericRegion` of the trace's name, added before the vCPUs start,
covering exactly the bytes the trace's accesses to that name cover: one region per run of touching
accesses, widest first. A run on free addresses (or RAM: a generic is mapped over RAM as QEMU maps
``vga-lowmem``) is mapped at priority 0. A run on bytes where aemu maps another region (or an
earlier, wider stand-in), but where the trace starts no access of another name, is mapped over it
at priority 1, as QEMU overlaps ``piix3-reset-control`` on ``pci-conf-idx`` (so a ``-M pc`` trace
replays on q35 and the other way round). Any other run is split into its single addresses, each
placed the same way. An address still taken by a region of another name is a *conflict*: replayed
as is, and reported: the only way a stand-in receives an access the trace gives another name.

**cpu -1.** Device-context accesses (a device's DMA or MSI write) are replayed by a task of their
own, ``replay-devices``, at their recorded times (or, without timestamps, after
``guest_compute_ns`` per preceding access line), through the address space with the BQL held,
as QEMU's device code runs (timer callbacks and bottom halves hold it). The task is part of the
run: the run finishes when it and the vCPUs are done, and ``--duration`` ends it like the vCPUs,
whatever the timestamps of its last accesses say. With ``device_context=False`` they are skipped
and the report says so.

**Scaling with -smp N.** With R recorded vCPUs (the BSP is cpu 0, or the lowest index seen) and
the others the APs in index order: vCPU 0 replays the BSP stream; for N >= R, vCPU i >= 1 replays
AP stream ``(i - 1) mod (R - 1)``, so recorded vCPU i keeps its stream and extra APs reuse the AP
streams round-robin (with R = 1 every vCPU replays the BSP stream). For N < R the AP streams are
folded round-robin onto vCPUs 1..N-1 (onto vCPU 0 when N = 1), merged in file order, so every
access is still replayed once. Device-context accesses are never replicated.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import clock
from ..cpu import Compute, Exit, GuestProgram, MMIORead, MMIOWrite, PIORead, PIOWrite
from ..errors import ConfigError
from ..result import Metric
from ..workloads.base import Workload
from .report import CountMismatch, GenericRegionInfo, ReplayReport
from .trace import Access, Trace

if TYPE_CHECKING:
    from ..machine import Machine
    from ..memory import AddressSpace, MemoryRegion
    from ..result import Result

__all__ = ["ReplayWorkload", "MSI_NAMES", "stream_assignment"]

#: the MSI window's names: QEMU's userspace LAPIC and KVM's (``apic_common_realize``)
MSI_NAMES = ("apic-msi", "kvm-apic-msi")
#: ports end here; below it guest-physical memory is RAM on q35/pc
IO_LIMIT = 0x10000
_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


def stream_assignment(recorded: tuple[int, ...], n: int) -> tuple[tuple[int, ...], ...]:
    """Which recorded vCPU streams each of ``n`` vCPUs replays (see module docstring)."""
    if n < 1:
        raise ConfigError(f"replay: need at least one vCPU, got {n}")
    if not recorded:
        return tuple(() for _ in range(n))
    bsp = 0 if 0 in recorded else recorded[0]
    aps = [c for c in recorded if c != bsp]
    if n >= len(recorded):
        if not aps:
            return tuple((bsp,) for _ in range(n))
        return ((bsp,),) + tuple((aps[(i - 1) % len(aps)],) for i in range(1, n))
    out: list[list[int]] = [[bsp]] + [[] for _ in range(n - 1)]
    for k, ap in enumerate(aps):
        out[0 if n == 1 else 1 + k % (n - 1)].append(ap)
    return tuple(tuple(sorted(s)) for s in out)


def _rule(recorded: tuple[int, ...], n: int) -> str:
    r = len(recorded)
    if n == r:
        return "one recorded stream per vCPU (the recorded size)"
    if n > r:
        if r <= 1:
            return f"every vCPU replays the BSP stream ({n - r} copies)"
        return (f"vCPU 0 replays the BSP stream, vCPUs 1..{n - 1} the {r - 1} AP streams round-robin "
                f"({n - r} AP copies)")
    return f"the {r - 1} AP streams folded round-robin onto {max(n - 1, 1)} vCPU(s), merged in file order"


@dataclass(slots=True)
class _Key:
    """One distinct (region name, address) of the trace, and where it replays."""

    name: str
    addr: int
    max_size: int
    space: str = "io"


def _msi_aliases(name: str) -> tuple[str, ...]:
    return MSI_NAMES if name in MSI_NAMES else (name,)


def _end(keys: list[_Key]) -> int:
    """The end of the highest access among ``keys``."""
    return max(k.addr + k.max_size for k in keys)


def _runs(group: list[_Key]) -> list[list[_Key]]:
    """``group`` (sorted by address) cut where its accesses stop touching: each run's bytes are all
    bytes some access of the trace covers."""
    runs: list[list[_Key]] = [[group[0]]]
    end = _end(runs[0])
    for k in group[1:]:
        if k.addr <= end:
            runs[-1].append(k)
            end = max(end, k.addr + k.max_size)
        else:
            runs.append([k])
            end = k.addr + k.max_size
    return runs


class ReplayWorkload(Workload):
    """Replays a parsed trace: one guest program per recorded vCPU stream (see module docstring)."""

    name = "replay"
    summary = "replays a QEMU memory_region_ops trace (aemu replay TRACE)"

    def __init__(self, trace: Trace | None = None, **params: Any) -> None:
        if trace is None:
            raise ConfigError("workload 'replay' needs a trace: use 'aemu replay TRACE [options]'")
        super().__init__(**params)
        ts = float(self.params["time_scale"])
        if not ts >= 0:
            raise ConfigError(f"--time-scale: must be >= 0, got {self.params['time_scale']!r}")
        self.trace = trace
        self.time_scale = ts
        self.device_context = bool(self.params["device_context"])
        self._by_cpu = trace.by_cpu()
        self.recorded_cpus = trace.cpus
        self._timestamps = trace.has_timestamps
        times = [a.time_ns for a in trace.accesses if a.time_ns is not None]
        self._t0 = min(times) if times else 0
        #: set by setup()
        self.streams: tuple[tuple[int, ...], ...] = ()
        self.generic_regions: list[GenericRegionInfo] = []
        self.renamed: dict[str, str] = {}
        self.conflicts: list[str] = []
        self._space: dict[tuple[str, int], bool] = {}  # (name, addr) -> is I/O
        self._conflict_keys: dict[tuple[str, int], str] = {}  # (name, addr) -> aemu region there
        self.device_replayed = 0

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"time_scale": 1.0, "device_context": True}

    # -- layout ------------------------------------------------------------------------------------
    def setup(self, machine: Machine) -> None:
        """Decide each access's space, add generic regions, assign streams to vCPUs."""
        keys: dict[tuple[str, int], _Key] = {}
        for a in self.trace.accesses:
            k = keys.get((a.region, a.addr))
            if k is None:
                keys[(a.region, a.addr)] = _Key(a.region, a.addr, a.size)
            elif a.size > k.max_size:
                k.max_size = a.size
        unresolved: dict[tuple[str, str], list[_Key]] = {}
        for k in keys.values():
            hit = self._resolve(machine, k)
            if hit is None:
                k.space = "io" if k.addr < IO_LIMIT else "memory"
                unresolved.setdefault((k.name, k.space), []).append(k)
            else:
                k.space = hit
        # per space, the names the trace shows at each start address (a stand-in keeps off the others')
        shown: dict[str, dict[int, set[str]]] = {"io": {}, "memory": {}}
        for k in keys.values():
            shown[k.space].setdefault(k.addr, set()).add(k.name)
        runs = [(name, space, run) for (name, space), group in unresolved.items()
                for run in _runs(sorted(group, key=lambda k: k.addr))]
        runs.sort(key=lambda r: (-(_end(r[2]) - r[2][0].addr), r[0], r[2][0].addr))  # widest first
        for name, space, run in runs:
            self._place(machine, name, space, run, shown[space])
        for k in keys.values():
            self._space[(k.name, k.addr)] = k.space == "io"
            if self._resolve(machine, k) is None:
                sp = machine.io if k.space == "io" else machine.memory
                found = sp.translate(k.addr) if k.addr < sp.limit else None
                other = found[0].name if found is not None else "nothing (a hole)"
                self._conflict_keys[(k.name, k.addr)] = other
                self.conflicts.append(f"{k.name!r} at {k.addr:#x} ({k.space}) lands on aemu's {other!r}")
        self.streams = stream_assignment(self.recorded_cpus, len(machine.vcpus))

    def _resolve(self, machine: Machine, k: _Key) -> str | None:
        """The space where aemu's region of this name (MSI: either name) sits at k.addr, or None."""
        names = _msi_aliases(k.name)
        for space_name, space in (("io", machine.io), ("memory", machine.memory)):
            if k.addr + k.max_size > space.limit:
                continue
            hit = space.translate(k.addr)
            if hit is not None and hit[0].name in names:
                if hit[0].name != k.name:
                    self.renamed[k.name] = hit[0].name
                return space_name
        return None

    def _taken(self, space: AddressSpace, root: MemoryRegion, base: int, end: int) -> bool:
        """Whether [base, end) holds a region other than the root's background and RAM."""
        for fr in space.flatview():
            if fr.end <= base or fr.start >= end:
                continue
            mr = fr.region
            if mr is not root and mr.kind != "ram":
                return True
        return False

    def _place(self, machine: Machine, name: str, space: str, run: list[_Key], shown: dict[int, set[str]]) -> None:
        """Add a generic region ``name`` covering exactly the bytes of ``run`` (keys whose accesses touch).

        Free bytes (or RAM, as QEMU maps ``vga-lowmem`` over it): priority 0. Bytes of another
        region where the trace starts no access of another name: priority 1, over it, as QEMU
        overlaps ``piix3-reset-control`` on ``pci-conf-idx``. Otherwise each address on its own; one
        that cannot be placed either way is a conflict, reported by :meth:`setup`.
        """
        sp = machine.io if space == "io" else machine.memory
        root = machine.io_root if space == "io" else machine.system
        base, end = run[0].addr, _end(run)
        if end > sp.limit:
            return  # a conflict, reported by setup()
        priority = 0
        if self._taken(sp, root, base, end):
            if any(shown.get(a, {name}) != {name} for a in range(base, end)):
                if len(run) > 1:
                    for k in run:
                        self._place(machine, name, space, [k], shown)
                return  # one address: a conflict, reported by setup()
            priority = 1
        machine.add_generic(name, base, end - base, space=space, priority=priority)
        self.generic_regions.append(GenericRegionInfo(name, space, base, end - base))

    # -- guest programs ---------------------------------------------------------------------------
    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        streams = self.streams[index] if index < len(self.streams) else ()
        if len(streams) == 1:
            accesses = self._by_cpu.get(streams[0], [])
        else:
            accesses = sorted((a for c in streams for a in self._by_cpu.get(c, [])), key=lambda a: a.line)
        return self._program(accesses, machine.costs.guest_compute_ns)

    def _exit(self, a: Access) -> Exit:
        value = a.value & _MASK[a.size]
        if self._space[(a.region, a.addr)]:
            return PIOWrite(a.addr, value, a.size) if a.is_write else PIORead(a.addr, a.size)
        return MMIOWrite(a.addr, value, a.size) if a.is_write else MMIORead(a.addr, a.size)

    def _program(self, accesses: list[Access], compute_ns: int) -> GuestProgram:
        scale = self.time_scale
        exit_of = self._exit
        if self._timestamps:
            prev = self._t0
            for a in accesses:
                t = a.time_ns
                assert t is not None
                gap = round((t - prev) * scale)
                prev = t
                if gap > 0:
                    yield Compute(gap)
                yield exit_of(a)
        else:
            compute = Compute(compute_ns)
            first = True
            for a in accesses:
                if not first and compute_ns > 0:
                    yield compute
                first = False
                yield exit_of(a)

    # -- device context (cpu -1) --------------------------------------------------------------------
    def start_side_tasks(self, machine: Machine) -> list[asyncio.Task[None]]:
        """The ``replay-devices`` task on the running loop, if there are cpu -1 accesses to replay.

        It is part of the run (:class:`aemu.runner.SideTasks`): the run finishes when it and the
        vCPUs are done, and the run's cap (``--duration``) stops it like the vCPUs, however late
        its last recorded access is.
        """
        accesses = self._by_cpu.get(-1, [])
        if not accesses or not self.device_context:
            return []
        loop = asyncio.get_running_loop()
        return [loop.create_task(self._devices(machine, accesses), name="replay-devices")]

    async def _devices(self, machine: Machine, accesses: list[Access]) -> None:
        start = clock.now_ns()
        compute_ns = machine.costs.guest_compute_ns
        bql = machine.bql
        for a in accesses:
            if self._timestamps:
                assert a.time_ns is not None
                at = start + round((a.time_ns - self._t0) * self.time_scale)
            else:
                at = start + (a.line - 1) * compute_ns
            delay = at - clock.now_ns()
            if delay > 0:
                await clock.sleep_ns(delay)
            space = machine.io if self._space[(a.region, a.addr)] else machine.memory
            async with bql.held("replay device context"):
                if a.is_write:
                    await space.write(a.addr, a.value & _MASK[a.size], a.size)
                else:
                    await space.read(a.addr, a.size)
            self.device_replayed += 1

    # -- results -----------------------------------------------------------------------------------
    def metric(self, machine: Machine) -> Metric:
        return Metric("time to replay", machine.finish_ns / 1e6, "ms")  # in ms, as boot time

    def expected_counts(self) -> dict[str, tuple[int, int]]:
        """Per aemu region name, the (reads, writes) the replay must produce: every stream each vCPU
        replays (replicas included) plus the device-context accesses if they are replayed."""
        per_cpu: dict[int, tuple[dict[str, int], dict[str, int]]] = {}
        for cpu, accesses in self._by_cpu.items():
            r: dict[str, int] = {}
            w: dict[str, int] = {}
            for a in accesses:
                d = w if a.is_write else r
                d[a.region] = d.get(a.region, 0) + 1
            per_cpu[cpu] = (r, w)
        sources = [c for s in self.streams for c in s]
        if self.device_context:
            sources.append(-1)
        out: dict[str, tuple[int, int]] = {}
        for cpu in sources:
            r, w = per_cpu.get(cpu, ({}, {}))
            for name in r.keys() | w.keys():
                aemu_name = self.renamed.get(name, name)
                r0, w0 = out.get(aemu_name, (0, 0))
                out[aemu_name] = (r0 + r.get(name, 0), w0 + w.get(name, 0))
        return dict(sorted(out.items()))

    def report(self, machine: Machine, result: Result) -> ReplayReport:
        """The :class:`~aemu.replay.report.ReplayReport` of a finished run of this workload."""
        trace = self.trace
        n = len(machine.vcpus)
        replayed = sum(len(self._by_cpu.get(c, [])) for s in self.streams for c in s)
        n_dev = len(self._by_cpu.get(-1, []))
        if not n_dev:
            handling = "none in the trace"
        elif self.device_context:
            handling = (f"{self.device_replayed:,} of {n_dev:,} replayed from a device context (task "
                        f"'replay-devices', BQL held, at their recorded times; not replicated)")
        else:
            handling = f"{n_dev:,} skipped (device_context=False)"
        expected = self.expected_counts()
        mismatches: list[CountMismatch] = []
        counts = result.region_counts
        access_errors: dict[str, int] = {}
        for mr in machine.regions():
            if mr.access_errors:
                access_errors[mr.name] = access_errors.get(mr.name, 0) + mr.access_errors
        # accesses (as replayed) whose address lands on an aemu region of another name
        landed: dict[str, dict[str, int]] = {}  # aemu name -> trace name -> accesses
        lost: dict[str, int] = {}
        sources = [c for st in self.streams for c in st] + ([-1] if self.device_context else [])
        for cpu in sources:
            for a in self._by_cpu.get(cpu, []):
                other = self._conflict_keys.get((a.region, a.addr))
                if other is not None:
                    d = landed.setdefault(other, {})
                    d[a.region] = d.get(a.region, 0) + 1
                    lost[a.region] = lost.get(a.region, 0) + 1
        for name in sorted(expected.keys() | counts.keys()):
            want = expected.get(name, (0, 0))
            got = counts.get(name, (0, 0))
            if want == got:
                continue
            if name in landed or name in lost:
                parts = []
                if name in lost:
                    parts.append(f"{lost[name]} of its accesses land on another aemu region")
                if name in landed:
                    parts.append("it receives " + ", ".join(f"{n} access(es) the trace names {t!r}"
                                                             for t, n in sorted(landed[name].items())))
                reason = "; ".join(parts) + " (see conflicts)"
            elif access_errors.get(name):
                reason = f"{access_errors[name]} accesses refused by aemu's model (size/alignment not valid)"
            elif not machine.finished:
                reason = "the run did not finish (capped or interrupted)"
            else:
                reason = "unknown"
            mismatches.append(CountMismatch(name, want[0], want[1], got[0], got[1], reason))
        return ReplayReport(
            source=trace.source, lines=trace.lines, skipped=trace.skipped, other_events=trace.other_events,
            accesses=len(trace.accesses), replayed=replayed + self.device_replayed, device_accesses=n_dev,
            device_handling=handling, generic_regions=tuple(self.generic_regions), renamed=dict(self.renamed),
            conflicts=tuple(self.conflicts), recorded_cpus=self.recorded_cpus, vcpus=n, streams=self.streams,
            replication=_rule(self.recorded_cpus, n), time_scale=self.time_scale, timestamps=self._timestamps,
            exact_counts=not mismatches, mismatches=tuple(mismatches), expected_counts=expected,
            counts_basis=self._counts_basis(expected))

    def _counts_basis(self, expected: dict[str, tuple[int, int]]) -> str:
        """What ``expected`` holds, in words, with its total when it is not the trace's own counts."""
        n_dev = len(self._by_cpu.get(-1, []))
        skipped = f", less its {n_dev:,} cpu -1 accesses (skipped)" if n_dev and not self.device_context else ""
        if sorted(c for s in self.streams for c in s) == sorted(self.recorded_cpus):
            return "the trace's" + skipped
        total = sum(r + w for r, w in expected.values())
        dev = ", cpu -1 once" if n_dev and self.device_context else skipped
        return (f"the recorded streams as replayed, not the trace's: each recorded vCPU's counts times the "
                f"vCPUs replaying its stream{dev} ({total:,} accesses; the trace has {len(self.trace.accesses):,})")
