"""The comparison: the series' published measurements, beside the same runs in the model.

Default scenario (the series' reproducer, as published): ``-M q35,hpet=off -cpu host -smp
240,sockets=4`` with kernel-irqchip=split on 32 host CPUs (``--host-cpus 32``). The runs: the
``boot`` as given (hpet=off), the same boot with ``hpet=on`` and with ``-cpu host,hv-time``,
and ``hpet-bench`` (hpet_read_test) with the HPET on -- each "before" (no switch) and "after"
(every switch, less those ``--patch -NAME`` turns off); the ablation runs the first boot "after"
with one switch off at a time (and whatever needs it); the benchmark's BQL-bound runs cost a
minute each, so its ablation is ``aemu sweep --patch``'s. The
scenarios differ only in the options of the published command lines (:data:`SCENARIOS`).
Runs are spread over the host's cores by :func:`aemu.batch.run_all` (Ctrl-C stops them at once).
The core functions return results; :func:`format_comparison` makes the text report, with the
published figures beside the model's: the 448-core host's (:data:`PUBLISHED_HOSTS`) for a run on
448 host CPUs, else the reproducer's 32-core host's (:data:`PUBLISHED`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass

from .batch import run_all
from .config import SERIES, MachineConfig
from .costs import CostModel
from .patches import ABLATION, PATCHES
from .machine import DEFAULT_CAP_NS
from .errors import ConfigError
from .result import Result
from .workloads import WORKLOADS, get_workload
from .workloads.boot import APS_STARTED

__all__ = ["Comparison", "DEFAULT_ARGS", "MACHINE_ARGS", "PUBLISHED_HOSTS", "PublishedHost", "compare",
           "format_comparison", "format_finished", "published_document", "published_host", "published_multiple",
           "published_ratio", "seed_configs"]

#: The series' reproducer: its command line (cover letter v2/v4), on the 32-core host it was
#: measured on; kernel-irqchip=split is the path patch 6/6 fixes. hpet-bench's reads are
#: shortened from hpet_read_test's 100,000 (the ratio is what the table compares).
MACHINE_ARGS = "-M q35,hpet=off -cpu host -smp 240,sockets=4 -accel kvm,kernel-irqchip=split --host-cpus 32"
DEFAULT_ARGS = MACHINE_ARGS + " --param reads=5000"

#: The other scenarios: what each changes in the reproducer's options, and nothing else.
SCENARIOS: dict[str, dict[str, bool]] = {"hpet=on": {"hpet": True}, "hv-time": {"hv_time": True}}


@dataclass(frozen=True, slots=True)
class Published:
    """A figure the series published, with its source."""

    row: str
    before: str
    after: str
    ratio: float | None  # before/after (boot) or after/before (latency); None: not a number
    source: str


#: The series' own measurements: Windows Server 2025, -smp 240,sockets=4, 32 cores / 2 NUMA
#: nodes (cover letter v2 <20250730123934.1787379-1-imammedo@redhat.com>, unchanged in v4
#: <20250814160600.2327672-1-imammedo@redhat.com>); the HPET patch v2 5/6 for hpet_read_test.
PUBLISHED: dict[str, Published] = {
    "boot": Published("boot, hpet=off (ACPI PM timer)", "did not boot in 30 min", "about 2 min", None,
                      "cover letter v2/v4"),
    "hpet=on": Published("boot, hpet=on", "4 min 13 s", "2 min 21 s", 253 / 141, "cover letter v2/v4"),
    "hv-time": Published("boot, -cpu host,hv-time", "about 1-2 min", "no significant difference", 1.0,
                         "cover letter v2/v4 (v1: about 10%)"),
    "hpet-bench": Published("hpet_read_test average read", "-", "over 80% lower", 0.2,
                            "HPET patch v2 5/6 (kvm-unit-tests x86/hpet_read_test.c)"),
}


#: The published boot times in seconds, (shortest, longest; None: unbounded), to set each boot
#: beside the hv-time boot after the series ("about 1-2 min"), the one the series leaves alone:
#: hpet=off did not boot in 30 min and took about 2 min after; hpet=on 4 min 13 s and 2 min 21 s.
PUBLISHED_BOOT_S: dict[tuple[str, str], tuple[float, float | None]] = {
    ("boot", "before"): (1800.0, None), ("boot", "after"): (120.0, 120.0),
    ("hpet=on", "before"): (253.0, 253.0), ("hpet=on", "after"): (141.0, 141.0),
}
HV_TIME_BOOT_S = (60.0, 120.0)


@dataclass(frozen=True, slots=True)
class PublishedHost:
    """One of the two hosts the series measured its boots on: its cores, NUMA nodes, figures and
    boot times (as :data:`PUBLISHED` and :data:`PUBLISHED_BOOT_S`)."""

    cpus: int
    nodes: int
    figures: dict[str, Published]
    boot_s: dict[tuple[str, str], tuple[float, float | None]]


#: The series' two hosts (cover letter v2/v4): "32 core 2NUMA nodes", the reproducer's, and "448
#: cores 8NUMA nodes", where hpet=off again did not boot within 30 min before the series and took
#: about 1 min after, and hpet=on took 2 min 19 s and 1 min 15 s. The hv-time boot and
#: hpet_read_test name no host; they are the same rows for both.
PUBLISHED_HOSTS: dict[int, PublishedHost] = {
    32: PublishedHost(32, 2, PUBLISHED, PUBLISHED_BOOT_S),
    448: PublishedHost(448, 8, {
        "boot": Published("boot, hpet=off (ACPI PM timer)", "did not boot in 30 min", "about 1 min", None,
                          "cover letter v2/v4, 448-core host"),
        "hpet=on": Published("boot, hpet=on", "2 min 19 s", "1 min 15 s", 139 / 75, "cover letter v2/v4, 448-core host"),
        "hv-time": PUBLISHED["hv-time"], "hpet-bench": PUBLISHED["hpet-bench"],
    }, {("boot", "before"): (1800.0, None), ("boot", "after"): (60.0, 60.0),
        ("hpet=on", "before"): (139.0, 139.0), ("hpet=on", "after"): (75.0, 75.0)}),
}


def published_host(host_cpus: int | None) -> PublishedHost:
    """The published host with ``host_cpus`` cores, else the reproducer's 32-core host."""
    return PUBLISHED_HOSTS.get(host_cpus or 0, PUBLISHED_HOSTS[32])


def published_ratio(key: str, host: PublishedHost) -> str:
    """The published before/after of boot ``key`` as text: "1.79x", or "> 15x" for a boot that did
    not finish (its cap over the time after)."""
    lo, hi = host.boot_s[(key, "before")]
    after_lo, after_hi = host.boot_s[(key, "after")]
    if hi is None:
        return f"> {lo / (after_hi or after_lo):.0f}x"
    return f"{lo / after_lo:.2f}x"


def published_multiple(scenario: str, label: str, host: PublishedHost = PUBLISHED_HOSTS[32]) -> str:
    """The published boot ``(scenario, label)`` on ``host`` as a multiple of the hv-time boot: a range."""
    lo, hi = host.boot_s[(scenario, label)]
    low = lo / HV_TIME_BOOT_S[1]
    if hi is None:
        return f"> {low:.0f}"
    return f"{low:.1f}-{hi / HV_TIME_BOOT_S[0]:.1f}"


@dataclass(frozen=True, slots=True)
class Comparison:
    """Results of one comparison: per workload, before/after and one run per switch turned off;
    ``scenarios``: the boot in the other published scenarios, before and after."""

    boot: dict[str, Result]
    bench: dict[str, Result]
    scenarios: dict[str, dict[str, Result]]


def _without(after: frozenset[str], patch: str) -> frozenset[str]:
    """``after`` minus ``patch`` and every switch that needs it."""
    off = {patch}
    changed = True
    while changed:
        changed = False
        for name, pre in PATCHES.items():
            if name not in off and off & set(pre):
                off.add(name)
                changed = True
    return after - off


def seed_configs(args: str | Sequence[str] = DEFAULT_ARGS, *, ablation: bool = True) -> dict[str, dict[str, MachineConfig]]:
    """The configurations to run: {"boot": {label: config}, "hpet-bench": {...}}.

    "after" is the patches ``args`` give (the whole series unless ``--patch`` turns some off);
    ``--param`` values are checked here, before anything runs.
    """
    get_workload("boot")  # registers the built-in workloads
    base = MachineConfig.parse(args)
    out: dict[str, dict[str, MachineConfig]] = {}
    accepted = {name: set(WORKLOADS[name].defaults()) for name in ("boot", "hpet-bench")}  # type: ignore[attr-defined]
    for key, _ in base.workload_params:
        if not any(key in a for a in accepted.values()):
            raise ConfigError(f"--param: {key!r} is a parameter of neither boot nor hpet-bench; accepted: "
                              f"{', '.join(sorted(accepted['boot'] | accepted['hpet-bench']))}")
    for workload, hpet in (("boot", base.hpet), ("hpet-bench", True)):
        params = tuple((k, v) for k, v in base.workload_params if k in accepted[workload])
        get_workload(workload, **dict(params))  # a bad value is a usage error now, not in a worker
        wl_base = base.replace(workload=workload, hpet=hpet, workload_params=params)
        runs = {"before": wl_base.replace(patches=SERIES["before"]), "after": wl_base}
        if ablation and workload == "boot":  # the benchmark's ablation: aemu sweep --patch
            for p in ABLATION:  # the six patches; not the follow-up fix (aemu check shows what it fixes)
                if p in base.patches:
                    runs[f"after -{p}"] = wl_base.replace(patches=_without(base.patches, p))
        out[workload] = runs
    boot = out["boot"]
    for name, change in SCENARIOS.items():
        out[name] = {label: boot[label].replace(**change) for label in ("before", "after")}
    return out


def published_document(host_cpus: int | None = 32) -> dict[str, dict[str, Any]]:
    """The published figures of the host with ``host_cpus`` cores (:func:`published_host`) as
    plain data, for ``aemu compare --json``: per scenario its row, the published before and
    after, their ratio (None where not a number) and the source."""
    return {key: {"row": p.row, "before": p.before, "after": p.after, "ratio": p.ratio, "source": p.source}
            for key, p in published_host(host_cpus).figures.items()}


def compare(args: str | Sequence[str] = DEFAULT_ARGS, *, ablation: bool = True, jobs: int | None = None,
            progress: Callable[[str, Result], None] | None = None) -> Comparison:
    """Run the comparison (in parallel over ``jobs`` processes, default: one per core).

    ``progress(label, result)`` is called as each run finishes ("boot before", "hpet-bench after
    -hpet-lock"); after a Ctrl-C (``KeyboardInterrupt``, which propagates) those are what finished.
    """
    configs = seed_configs(args, ablation=ablation)
    flat = [((wl, label), cfg) for wl, runs in configs.items() for label, cfg in runs.items()]

    def done(key: tuple[str, str], r: Result) -> None:
        if progress is not None:
            progress(" ".join(key), r)

    results = run_all(flat, jobs=jobs, done=done)
    return Comparison({lbl: results["boot", lbl] for lbl in configs["boot"]},
                      {lbl: results["hpet-bench", lbl] for lbl in configs["hpet-bench"]},
                      {name: {lbl: results[name, lbl] for lbl in configs[name]} for name in SCENARIOS})


def _us(ns: float) -> str:
    return f"{ns / 1000:,.1f} µs"


def _boot_time(r: Result) -> str:
    cap = (r.config.duration_ns or DEFAULT_CAP_NS) / 1e6
    return f"{r.virtual_ns / 1e6:,.2f} ms" if r.finished else f"did not finish in {cap:,.0f} ms"


def _share(r: Result, ns: Callable[[Any], int]) -> str:
    total = sum(v.elapsed_ns for v in r.vcpus)
    return f"{sum(ns(v) for v in r.vcpus) / total:.1%}" if total else "-"


def _ratio(before: Result, after: Result) -> str:
    """Boot before/after, or "> N x" when before hit the cap."""
    if not after.finished:
        return "-"
    x = before.virtual_ns / max(after.virtual_ns, 1)
    return f"{x:,.2f}x" if before.finished else f"> {x:,.1f}x"


def format_comparison(c: Comparison) -> str:
    """The side-by-side table, the published figures beside the model's, each boot beside the hv-time boot
    and in two parts (start-up and phases), the ablation, a verdict."""
    b0, b1 = c.boot["before"], c.boot["after"]
    h0, h1 = c.bench["before"], c.bench["after"]
    rows = [
        ("boot: time to finish", _boot_time(b0), _boot_time(b1)),
        ("boot: BQL acquisitions", f"{b0.bql.acquisitions:,}", f"{b1.bql.acquisitions:,}"),
        ("boot: BQL contentions", f"{b0.bql.contentions:,}", f"{b1.bql.contentions:,}"),
        ("boot: vCPU time waiting for the BQL", f"{b0.lock_wait_share():.1%}", f"{b1.lock_wait_share():.1%}"),
        ("boot: vCPU time waiting for a host CPU", _share(b0, lambda v: v.runnable_ns), _share(b1, lambda v: v.runnable_ns)),
        ("hpet-bench: average read (hpet_read_test)", _us(h0.metric.value), _us(h1.metric.value)),
        ("hpet-bench: BQL acquisitions", f"{h0.bql.acquisitions:,}", f"{h1.bql.acquisitions:,}"),
        ("hpet-bench: BQL contentions", f"{h0.bql.contentions:,}", f"{h1.bql.contentions:,}"),
        ("hpet-bench: vCPU time waiting for the BQL", f"{h0.lock_wait_share():.1%}", f"{h1.lock_wait_share():.1%}"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w = max(22, *(len(r[1]) for r in rows), *(len(r[2]) for r in rows))
    host = b0.config.host_text() or "a host CPU per vCPU"
    out = [f"aemu compare: {b0.config.qemu_args()} on {host} (boot); hpet-bench with hpet=on",
           f"virtual time; costs: {'the defaults' if b0.config.costs == CostModel() else 'from --costs'} "
           f"(see `aemu costs`); lock hand-off: {b0.config.lock_policy}",
           "", f"{'':<{w0}}  {'before':>{w}}  {'after':>{w}}"]
    if b1.config.patches != SERIES["after"]:
        off = [p for p in PATCHES if p not in b1.config.patches]
        out.insert(2, f"after: the series without {', '.join(off)} (--patch)")
    out += [f"{n:<{w0}}  {x:>{w}}  {y:>{w}}" for n, x, y in rows]
    ph = published_host(b0.config.host_cpus)
    if b0.config.host_cpus == ph.cpus:
        out += ["", f"published (Windows Server 2025 on {ph.cpus} host cores) beside the model (the same options; "
                    "a shortened boot):", ""]
    else:
        out += ["", f"published (Windows Server 2025 on {ph.cpus} host cores) beside the model on {host} (not the "
                    "published host; a shortened boot):", ""]
    table = [("", "published before", "after", "ratio", "model before", "after", "ratio", "source")]
    model = {"boot": (b0, b1), **{name: (runs["before"], runs["after"]) for name, runs in c.scenarios.items()}}
    for key, pub in ph.figures.items():
        pratio = (published_ratio(key, ph) if (key, "before") in ph.boot_s
                  else f"{pub.ratio:.2f}x" if pub.ratio is not None else "-")
        if key == "hpet-bench":
            lat0, lat1 = h0.metric.value, h1.metric.value
            table.append((pub.row, pub.before, pub.after, f"<= {pub.ratio:.2f}", _us(lat0), _us(lat1),
                          f"{lat1 / lat0:.2f}" if lat0 else "-", pub.source))
        elif key in model:
            r0, r1 = model[key]
            table.append((pub.row, pub.before, pub.after, pratio, _boot_time(r0), _boot_time(r1), _ratio(r0, r1),
                          pub.source))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        out.append("  ".join(cell.ljust(widths[i]) if i in (0, 7) else cell.rjust(widths[i])
                             for i, cell in enumerate(row)).rstrip())
    unit = c.scenarios.get("hv-time", {}).get("after")
    if unit is not None and unit.finished:
        out += ["", "each boot as a multiple of the hv-time boot after the series (published: about 1-2 min):", ""]
        rel = [("", "published", "model")]
        for key in ("boot", "hpet=on"):
            for i, label in enumerate(("before", "after")):
                r = model[key][i]
                x = r.virtual_ns / unit.virtual_ns
                rel.append((f"{PUBLISHED[key].row}, {label}", published_multiple(key, label, ph),
                            f"{x:.2f}" if r.finished else f"> {x:.1f}"))
        rw = [max(len(cells[i]) for cells in rel) for i in range(3)]
        out += [f"{a:<{rw[0]}}  {b:>{rw[1]}}  {m:>{rw[2]}}".rstrip() for a, b, m in rel]
    out += _parts_table(model)
    abl = [(k.removeprefix("after -"), c.boot[k]) for k in c.boot if k.startswith("after -")]
    if abl:
        out += ["", "ablation: the boot 'after' with one switch off (and the switches that need it)", "",
                f"{'switch off':<24}  {'boot time':>24}  {'BQL contentions':>15}  top BQL site"]
        for name, rb in abl:
            top = rb.bql.sites[0].site if rb.bql.sites else "-"
            out.append(f"{name:<24}  {_boot_time(rb):>24}  {rb.bql.contentions:>15,}  {top}")
    out += ["", "verdict: " + verdict(c)]
    return "\n".join(out)


def _parts(r: Result) -> tuple[str, str, float | None, float | None]:
    """A boot's start-up (to the ``APs started`` milestone) and phases (from it to the end), as
    text and ns (None where the run did not get there)."""
    up = r.milestone_ns(APS_STARTED)
    if up is None:
        return "did not finish", "-", None, None
    if not r.finished:
        return f"{up / 1e6:,.2f} ms", "did not finish", up, None
    return f"{up / 1e6:,.2f} ms", f"{(r.virtual_ns - up) / 1e6:,.2f} ms", up, r.virtual_ns - up


def _parts_table(model: dict[str, tuple[Result, Result]]) -> list[str]:
    """Each boot split where its BSP has started every AP: what the series changes in each part."""
    rows = [("", "start-up before", "after", "ratio", "phases before", "after", "ratio")]
    for key, (r0, r1) in model.items():
        s0, p0, su0, ph0 = _parts(r0)
        s1, p1, su1, ph1 = _parts(r1)
        up = f"{su0 / su1:.2f}x" if su0 and su1 else "-"
        ph = f"{ph0 / ph1:.2f}x" if ph0 and ph1 else "-"
        rows.append((PUBLISHED[key].row, s0, s1, up, p0, p1, ph))
    if len(rows) == 1:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["", "the model's boots in two parts, split where the BSP has started every AP: the start-up (the BSP "
                "alone, then one AP at a time)", "and the phases (every vCPU); the start-up is a larger share of a "
                "shortened boot than of a real one, which draws the boot's ratio towards its own;",
            "how often all vCPUs meet (a phase's length, --param work_us, an assumption) moves the phases' ratio "
            "most (aemu sensitivity):", ""] + [
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in rows]


def format_finished(results: dict[str, Result], total: int) -> str:
    """What finished of an interrupted comparison: one line per run, with its metric."""
    out = [f"interrupted: {len(results)} of {total} runs finished"]
    width = max((len(label) for label in results), default=0)
    for label, r in results.items():
        m = r.metric
        out.append(f"  {label:<{width}}  {m.name}: {m.value:,.1f} {m.unit}".rstrip()
                   + ("" if r.finished else " (cap reached)"))
    return "\n".join(out)


def verdict(c: Comparison) -> str:
    """One or two sentences drawn from the numbers."""
    b0, b1 = c.boot["before"], c.boot["after"]
    lat0, lat1 = c.bench["before"].metric.value, c.bench["after"].metric.value
    cut = 100 * (1 - lat1 / lat0) if lat0 else 0.0
    if not b0.finished and b1.finished:
        boot = f"the {len(b0.vcpus)}-vCPU boot stalls before the series (cap hit) and finishes in {b1.virtual_ns / 1e6:,.1f} ms after it"
    elif b1.finished and b0.finished:
        boot = f"the boot is {b0.virtual_ns / max(b1.virtual_ns, 1):,.2f}x faster after the series"
    else:
        boot = "the boot does not finish even after the series"
    sites = [s.site for s in b0.bql.sites[:2]]
    return (f"{boot}; hpet_read_test's average HPET counter read is {cut:.1f}% lower. Before, the BQL's top "
            f"waiting sites are {' and '.join(sites) or 'none'}.")
