"""The comparison: the same workloads before and after the BQL-free series, plus an ablation.

Default scenario (the series' reproducer): ``boot`` on ``-M q35,hpet=off -smp 240,sockets=4 -accel
kvm,kernel-irqchip=split`` and ``hpet-bench`` on the same machine with the HPET on. Each runs
"before" (no switch) and "after" (every switch, less those ``--patch -NAME`` turns off); the
ablation runs "after" with one switch off at a time (and whatever needs it). Runs are spread over
the host's cores by :func:`aemu.batch.run_all` (Ctrl-C stops them at once). The core functions
return results; :func:`format_comparison` makes the text report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .batch import run_all
from .config import SERIES, MachineConfig
from .costs import CostModel
from .patches import ABLATION, PATCHES
from .machine import DEFAULT_CAP_NS
from .errors import ConfigError
from .result import Result
from .workloads import WORKLOADS, get_workload

__all__ = ["Comparison", "DEFAULT_ARGS", "compare", "format_comparison", "format_finished", "seed_configs"]

#: The series' reproducer machine (hpet=off for boot; hpet-bench turns the HPET on).
DEFAULT_ARGS = "-M q35,hpet=off -smp 240,sockets=4 -accel kvm,kernel-irqchip=split"


@dataclass(frozen=True, slots=True)
class Comparison:
    """Results of one comparison: per workload, before/after and one run per switch turned off."""

    boot: dict[str, Result]
    bench: dict[str, Result]


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
        if ablation:
            for p in ABLATION:  # the six patches; not the follow-up fix (aemu check shows what it fixes)
                if p in base.patches:
                    runs[f"after -{p}"] = wl_base.replace(patches=_without(base.patches, p))
        out[workload] = runs
    return out


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
                      {lbl: results["hpet-bench", lbl] for lbl in configs["hpet-bench"]})


def _us(ns: float) -> str:
    return f"{ns / 1000:,.1f} µs"


def _boot_time(r: Result) -> str:
    cap = (r.config.duration_ns or DEFAULT_CAP_NS) / 1e6
    return f"{r.virtual_ns / 1e6:,.2f} ms" if r.finished else f"did not finish in {cap:,.0f} ms"


def format_comparison(c: Comparison) -> str:
    """The side-by-side table, the ablation, and a verdict, as plain text."""
    b0, b1 = c.boot["before"], c.boot["after"]
    h0, h1 = c.bench["before"], c.bench["after"]
    lat0, lat1 = h0.regions_by_name()["hpet"], h1.regions_by_name()["hpet"]
    rows = [
        ("boot: time to finish", _boot_time(b0), _boot_time(b1)),
        ("boot: BQL acquisitions", f"{b0.bql.acquisitions:,}", f"{b1.bql.acquisitions:,}"),
        ("boot: BQL contentions", f"{b0.bql.contentions:,}", f"{b1.bql.contentions:,}"),
        ("boot: vCPU time waiting for the BQL", f"{b0.lock_wait_share():.1%}", f"{b1.lock_wait_share():.1%}"),
        ("hpet-bench: read latency p50", _us(lat0.p50), _us(lat1.p50)),
        ("hpet-bench: read latency p99", _us(lat0.p99), _us(lat1.p99)),
        ("hpet-bench: BQL acquisitions", f"{h0.bql.acquisitions:,}", f"{h1.bql.acquisitions:,}"),
        ("hpet-bench: BQL contentions", f"{h0.bql.contentions:,}", f"{h1.bql.contentions:,}"),
        ("hpet-bench: vCPU time waiting for the BQL", f"{h0.lock_wait_share():.1%}", f"{h1.lock_wait_share():.1%}"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w = max(22, *(len(r[1]) for r in rows), *(len(r[2]) for r in rows))
    out = [f"aemu compare: {b0.config.qemu_args()} (boot); hpet-bench with hpet=on",
           f"virtual time; costs: {'the defaults' if b0.config.costs == CostModel() else 'from --costs'} "
           f"(see `aemu costs`); BQL hand-off: {b0.config.lock_policy}",
           "", f"{'':<{w0}}  {'before':>{w}}  {'after':>{w}}"]
    if b1.config.patches != SERIES["after"]:
        off = [p for p in PATCHES if p not in b1.config.patches]
        out.insert(2, f"after: the series without {', '.join(off)} (--patch)")
    out += [f"{n:<{w0}}  {x:>{w}}  {y:>{w}}" for n, x, y in rows]
    abl = [(k.removeprefix("after -"), c.boot[k], c.bench[k]) for k in c.boot if k.startswith("after -")]
    if abl:
        out += ["", "ablation: 'after' with one switch off (and the switches that need it)", "",
                f"{'switch off':<24}  {'boot time':>24}  {'hpet read p50':>14}  {'BQL contentions (boot)':>22}  top BQL site (boot)"]
        for name, rb, rh in abl:
            top = rb.bql.sites[0].site if rb.bql.sites else "-"
            out.append(f"{name:<24}  {_boot_time(rb):>24}  {_us(rh.regions_by_name()['hpet'].p50):>14}  "
                       f"{rb.bql.contentions:>22,}  {top}")
    out += ["", "verdict: " + verdict(c)]
    return "\n".join(out)


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
    lat0 = c.bench["before"].regions_by_name()["hpet"].p50
    lat1 = c.bench["after"].regions_by_name()["hpet"].p50
    cut = 100 * (1 - lat1 / lat0) if lat0 else 0.0
    if not b0.finished and b1.finished:
        boot = f"the {len(b0.vcpus)}-vCPU boot stalls before the series (cap hit) and finishes in {b1.virtual_ns / 1e6:,.1f} ms after it"
    elif b1.finished and b0.finished:
        boot = f"the boot is {b0.virtual_ns / max(b1.virtual_ns, 1):,.1f}x faster after the series"
    else:
        boot = "the boot does not finish even after the series"
    sites = [s.site for s in b0.bql.sites[:2]]
    return (f"{boot}; the median HPET counter read latency is {cut:.1f}% lower. Before, the BQL's top "
            f"waiting sites are {' and '.join(sites)}.")
