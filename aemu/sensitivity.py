"""How robust the comparison's verdict is: each cost, and each of the boot's guest-profile
assumptions, one at a time over 0.5x-2x of its value.

The verdict of ``aemu compare`` is two figures: the boot's speed-up after the series (boot time
before / after) and the HPET counter read's median latency before / after (what the verdict
states as "N% lower"). :func:`run_sensitivity` runs the comparison's four runs (boot and
hpet-bench, before and after; no ablation) at the base costs and again with one cost at a time
scaled by each factor (default 0.5x and 2x), and reports how far each figure moves; a boot
parameter (``param.work_us``, ...) is scaled in the boot's runs only. A parameter the verdict
*depends on* moves a figure by more than :data:`THRESHOLD` (10%) at either end; the others it
does not depend on. One-at-a-time shows each one's own effect around the base, not their
interactions (Sobol indices would; they need thousands of runs of a 240-vCPU machine).

The default machine is the comparison's, 240 vCPUs on 32 host CPUs, with hpet-bench's default
reads (the verdict's HPET figure is the median read); the 140 runs take about two and a half
minutes on 2 cores.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .batch import Batch, Failure
from .compare import MACHINE_ARGS, seed_configs
from .config import MachineConfig
from .errors import ConfigError
from .sweep import SweepProgress, config_key, parameter, run_document

__all__ = ["COST_PARAMETERS", "DEFAULT_ARGS", "DEFAULT_PARAMETERS", "FACTORS", "PROFILE_PARAMETERS", "THRESHOLD",
           "Sensitivity", "Variant", "Verdict", "distinct_runs", "format_sensitivity", "run_sensitivity",
           "sensitivity_configs"]

#: The comparison's machine (the verdict whose robustness is measured is compare's), with
#: hpet-bench's default reads: the verdict's HPET figure is the median read.
DEFAULT_ARGS = MACHINE_ARGS
#: Each cost is run at these multiples of its base value.
FACTORS = (0.5, 2.0)
#: A verdict figure that moves by more than this (relative) at either factor depends on the cost.
THRESHOLD = 0.10
#: Every cost of the model, and the handler costs of the two timer devices the verdict is about.
COST_PARAMETERS = ("costs.pio_exit_ns", "costs.mmio_exit_ns", "costs.kernel_exit_ns", "costs.bql_handoff_ns",
                   "costs.mutex_handoff_ns", "costs.pre_run_ns", "costs.irq_inject_ns", "costs.ipi_ns",
                   "costs.guest_compute_ns", "costs.timer_cb_ns", "costs.default_handler_ns",
                   "costs.handler_ns.acpi-tmr", "costs.handler_ns.hpet")
#: The boot's guest-profile assumptions that act on the machine the verdict is measured on
#: (``pci_slots`` is a count of the board's, ``hv_read_ns`` matters only with hv-time).
PROFILE_PARAMETERS = ("param.work_us", "param.phases", "param.qpc_per_s", "param.stalls_per_s", "param.stall_us",
                      "param.poll_ns", "param.ap_start_us", "param.idle_ns")
#: What ``aemu sensitivity`` varies by default: the costs, then the profile's assumptions.
DEFAULT_PARAMETERS = COST_PARAMETERS + PROFILE_PARAMETERS

_RUNS = (("boot", "before"), ("boot", "after"), ("hpet-bench", "before"), ("hpet-bench", "after"))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The comparison's two figures."""

    #: boot time before / after the series (a lower bound when ``boot_capped``)
    boot_speedup: float
    #: the boot before the series hit the virtual-time cap
    boot_capped: bool
    #: the HPET counter read's median latency before / after
    hpet_speedup: float

    @property
    def hpet_reduction(self) -> float:
        """How much lower the median read latency is after (0.98 = 98% lower)."""
        return 1 - 1 / self.hpet_speedup if self.hpet_speedup else 0.0

    @classmethod
    def from_docs(cls, docs: Mapping[tuple[str, str], Mapping[str, Any]]) -> Verdict:
        """From the four result documents, keyed (workload, series)."""
        b0, b1 = docs["boot", "before"], docs["boot", "after"]

        def p50(doc: Mapping[str, Any]) -> int:
            return int(next(r for r in doc["regions"] if r["name"] == "hpet")["latency_ns"]["p50"])

        return cls(b0["virtual_ns"] / max(b1["virtual_ns"], 1), not b0["workload"]["finished"],
                   p50(docs["hpet-bench", "before"]) / max(p50(docs["hpet-bench", "after"]), 1))

    def words(self) -> str:
        boot = f"boot {'at least ' if self.boot_capped else ''}{self.boot_speedup:,.1f}x faster"
        return f"{boot} after the series; HPET read p50 {self.hpet_reduction:.1%} lower ({self.hpet_speedup:,.1f}x)"


@dataclass(frozen=True, slots=True)
class Variant:
    """One cost at one factor: its value and the verdict there (or why there is none)."""

    parameter: str
    factor: float
    value: int
    verdict: Verdict | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Sensitivity:
    """The baseline verdict and every variant's."""

    args: str
    baseline: Verdict | None
    variants: tuple[Variant, ...]
    base_values: tuple[tuple[str, int], ...]
    factors: tuple[float, ...] = FACTORS
    threshold: float = THRESHOLD
    interrupted: bool = False

    def moves(self, name: str) -> tuple[float, float]:
        """The largest relative move of (boot speed-up, HPET speed-up) over the factors."""
        base = self.baseline
        if base is None:
            return (0.0, 0.0)
        vs = [v.verdict for v in self.variants if v.parameter == name and v.verdict is not None]
        return (max((abs(v.boot_speedup / base.boot_speedup - 1) for v in vs), default=0.0),
                max((abs(v.hpet_speedup / base.hpet_speedup - 1) for v in vs), default=0.0))

    @property
    def parameters(self) -> list[str]:
        """The costs varied, the one that moves the verdict most first."""
        names = list(dict(self.base_values))
        return sorted(names, key=lambda n: -max(self.moves(n)))

    def depends_on(self) -> list[str]:
        """Costs that move a verdict figure by more than the threshold."""
        return [n for n in self.parameters if max(self.moves(n)) > self.threshold]

    def independent_of(self) -> list[str]:
        """Costs whose every variant keeps both figures within the threshold."""
        done = {v.parameter for v in self.variants if v.verdict is not None}
        return [n for n in self.parameters if n in done and max(self.moves(n)) <= self.threshold]

    def flips(self) -> list[Variant]:
        """Variants where the series no longer helps (a figure at or below 1x)."""
        return [v for v in self.variants if v.verdict is not None
                and (v.verdict.boot_speedup <= 1.0 or v.verdict.hpet_speedup <= 1.0)]

    def to_dict(self) -> dict[str, Any]:
        def verdict(v: Verdict | None) -> dict[str, Any] | None:
            return None if v is None else {"boot_speedup": v.boot_speedup, "boot_capped": v.boot_capped,
                                           "hpet_p50_speedup": v.hpet_speedup, "hpet_p50_reduction": v.hpet_reduction}

        return {"schema": "aemu.sensitivity/1", "args": self.args, "factors": list(self.factors),
                "threshold": self.threshold, "interrupted": self.interrupted, "baseline": verdict(self.baseline),
                "parameters": [{"name": n, "base": dict(self.base_values)[n],
                                "boot_move": self.moves(n)[0], "hpet_move": self.moves(n)[1],
                                "variants": [{"factor": v.factor, "value": v.value, "verdict": verdict(v.verdict),
                                              **({"error": v.error} if v.error else {})}
                                             for v in self.variants if v.parameter == n]}
                               for n in self.parameters],
                "depends_on": self.depends_on(), "independent_of": self.independent_of()}


def _boot_parameters() -> Mapping[str, Any]:
    from .workloads.boot import Boot

    return Boot.parameters


def _scaled(name: str, v0: int, f: float) -> int:
    """``v0`` x ``f``, rounded; a boot parameter kept in its range (``phases`` at least 1,
    ``pci_slots`` at most 32)."""
    v = max(round(v0 * f), 0)
    if name.startswith("param."):
        p = _boot_parameters()[name.removeprefix("param.")]
        v = max(v, int(p.min)) if p.max is None else min(max(v, int(p.min)), int(p.max))
    return v


def _base_value(config: MachineConfig, name: str) -> int:
    if name.startswith("param."):
        key = name.removeprefix("param.")
        return int(dict(config.workload_params).get(key, _boot_parameters()[key].default))
    cost = name.removeprefix("costs.")
    if cost.startswith("handler_ns."):
        return config.costs.handler(cost.removeprefix("handler_ns."))
    return int(getattr(config.costs, cost))


Key = tuple[str | None, float, str, str]  # (parameter or None for the baseline, factor, workload, series)


def sensitivity_configs(args: str | Sequence[str] = DEFAULT_ARGS, *, parameters: Sequence[str] = DEFAULT_PARAMETERS,
                        factors: Sequence[float] = FACTORS) -> tuple[dict[Key, MachineConfig], dict[str, int]]:
    """Every run's configuration, keyed (parameter or None, factor, workload, series); and each parameter's
    base value. A boot parameter (``param.NAME``) is scaled in the boot's runs only, and kept in its
    range (:func:`_scaled`)."""
    if not parameters:
        raise ConfigError("--params: empty list; give costs such as costs.bql_handoff_ns")
    if not factors or any(f <= 0 for f in factors):
        raise ConfigError(f"--factors: {list(factors)!r}; give positive multiples such as 0.5,2")
    seed = seed_configs(args, ablation=False)
    base = {(wl, s): seed[wl][s] for wl, s in _RUNS}
    runs: dict[Key, MachineConfig] = {(None, 1.0, wl, s): c for (wl, s), c in base.items()}
    values: dict[str, int] = {}
    boot = _boot_parameters()
    for name in parameters:
        if name.startswith("param."):
            if name.removeprefix("param.") not in boot:
                raise ConfigError(f"--params: {name!r} is not a parameter of the boot; its parameters: "
                                  f"{', '.join('param.' + k for k in boot)}")
        elif not name.startswith("costs."):
            raise ConfigError(f"--params: {name!r} is neither a cost nor a boot parameter; give costs.NAME "
                              "(aemu costs lists them) or param.NAME (aemu run --workload help)")
        p = parameter(name)
        values[name] = v0 = _base_value(base["boot", "before"], name)
        for f in factors:
            v = _scaled(name, v0, f)
            for (wl, s), c in base.items():
                runs[name, f, wl, s] = p.apply(c, v) if name.startswith("costs.") or wl == "boot" else c
    return runs, values


def _by_config(runs: Mapping[Key, MachineConfig], keys: Iterable[Key] | None = None) -> dict[str, list[Key]]:
    """``keys`` (default: all of ``runs``) grouped by configuration: each group is one run (a boot
    parameter's hpet-bench runs are the baseline's)."""
    groups: dict[str, list[Key]] = {}
    for k in runs if keys is None else keys:
        groups.setdefault(config_key(runs[k].to_dict()), []).append(k)
    return groups


def distinct_runs(runs: Mapping[Key, MachineConfig], keys: Iterable[Key] | None = None) -> int:
    """How many runs ``keys`` (default: all of ``runs``) make: keys with equal configurations run once."""
    return len(_by_config(runs, keys))


def run_sensitivity(args: str | Sequence[str] = DEFAULT_ARGS, *, parameters: Sequence[str] = DEFAULT_PARAMETERS,
                    factors: Sequence[float] = FACTORS, executor: cf.Executor | None = None, jobs: int | None = None,
                    slots: int | None = None, progress: Callable[[SweepProgress], None] | None = None,
                    results: dict[Key, dict[str, Any] | Failure] | None = None) -> Sensitivity:
    """Run the baseline and every variant (runs shared where configurations are equal).

    ``results`` (a dict, if given) fills up with each run's document or Failure as it finishes,
    so after a Ctrl-C (``KeyboardInterrupt`` propagates) :func:`assemble` makes what finished
    into a report.
    """
    runs, values = sensitivity_configs(args, parameters=parameters, factors=factors)
    out: dict[Key, dict[str, Any] | Failure] = {} if results is None else results
    by_config = _by_config(runs)
    todo = [(ck, runs[keys[0]]) for ck, keys in by_config.items()]
    t0 = time.monotonic()
    done = failed = 0
    with Batch(todo, run_document, executor=executor, jobs=jobs, slots=slots) as batch:
        for ck, doc in batch:
            for k in by_config[ck]:
                out[k] = doc
            done += 1
            failed += isinstance(doc, Failure)
            if progress is not None:
                progress(SweepProgress(done, failed, batch.running, len(todo), time.monotonic() - t0))
    return assemble(args, out, values, factors)


def assemble(args: str | Sequence[str], results: Mapping[Key, dict[str, Any] | Failure], values: Mapping[str, int],
             factors: Sequence[float], *, interrupted: bool = False) -> Sensitivity:
    """The report from the runs that finished."""
    def verdict(name: str | None, f: float) -> tuple[Verdict | None, str | None]:
        docs = {(wl, s): results.get((name, f, wl, s)) for wl, s in _RUNS}
        bad = [d for d in docs.values() if isinstance(d, Failure)]
        if bad:
            return None, str(bad[0])
        if any(d is None for d in docs.values()):
            return None, "did not run (interrupted)"
        return Verdict.from_docs(docs), None  # type: ignore[arg-type]

    baseline, _ = verdict(None, 1.0)
    variants = []
    for name, v0 in values.items():
        for f in factors:
            v, err = verdict(name, f)
            variants.append(Variant(name, f, _scaled(name, v0, f), v, err))
    base = MachineConfig.parse(args)
    text = base.qemu_args() + "".join(f" --param {k}={v}" for k, v in base.workload_params)
    if base.host_cpus:
        text += f" on {base.host_text()}"
    return Sensitivity(text, baseline, tuple(variants), tuple(values.items()), tuple(factors), THRESHOLD, interrupted)


def _factor(f: float) -> str:
    return f"{f:g}x"


def _short(name: str) -> str:
    """A parameter as the table names it: a cost by its name, a boot parameter as ``param.NAME``."""
    return name.removeprefix("costs.")


def _value(name: str, v: int) -> str:
    """A parameter's value with its unit (a cost's is ns; a boot parameter's is in its name)."""
    if name.startswith("costs."):
        return f"{v:,} ns"
    unit = next((u for suffix, u in (("_ns", " ns"), ("_us", " µs"), ("_per_s", "/s")) if name.endswith(suffix)), "")
    return f"{v:,}{unit}"


def format_sensitivity(s: Sensitivity) -> str:
    """The table (one line per cost, most influential first) and which costs the verdict depends on."""
    fs = s.factors
    out = [f"aemu sensitivity: {s.args} (boot); hpet-bench with hpet=on",
           f"each cost, and each boot parameter (param.*, in the boot's runs), at "
           f"{' and '.join(_factor(f) for f in fs)} of its value, the others at theirs;",
           f"a parameter the verdict depends on moves a figure by more than {s.threshold:.0%}", ""]
    if s.baseline is None:
        out.append("baseline: did not finish")
        return "\n".join(out)
    out += [f"baseline: {s.baseline.words()}", ""]
    w = max(len("parameter"), *(len(_short(n)) for n in s.parameters))
    head = (f"{'parameter':<{w}}  {'value':>10}  " + "  ".join(f"{'boot ' + _factor(f):>11}" for f in fs) + "  "
            + "  ".join(f"{'HPET ' + _factor(f):>11}" for f in fs) + f"  {'boot moves':>10}  {'HPET moves':>10}")
    out.append(head)
    base_values = dict(s.base_values)
    for name in s.parameters:
        cells = []
        for which in ("boot", "hpet"):
            for f in fs:
                v = next((x for x in s.variants if x.parameter == name and x.factor == f), None)
                if v is None or v.verdict is None:
                    cells.append(f"{'failed' if v is not None and v.error and 'interrupted' not in v.error else '-':>11}")
                elif which == "boot":
                    cells.append(f"{('≥' if v.verdict.boot_capped else '') + f'{v.verdict.boot_speedup:,.1f}x':>11}")
                else:
                    cells.append(f"{f'{v.verdict.hpet_speedup:,.1f}x':>11}")
        bm, hm = s.moves(name)
        out.append(f"{_short(name):<{w}}  {_value(name, base_values[name]):>10}  " + "  ".join(cells)
                   + f"  {bm:>10.0%}  {hm:>10.0%}")
    out.append("")
    out.append("(boot: boot time before/after the series; HPET: median HPET read latency before/after)")
    dep, ind = s.depends_on(), s.independent_of()
    out.append("the verdict depends on: " + (", ".join(map(_short, dep)) if dep else "none of these"))
    out.append("it does not depend on: " + (", ".join(map(_short, ind)) if ind else "-"))
    flips = s.flips()
    if flips:
        out.append("the series stops helping at: " + ", ".join(
            f"{_short(v.parameter)} {_factor(v.factor)}" for v in flips))
    else:
        ok = [v.verdict for v in s.variants if v.verdict is not None]
        if ok:
            out.append(f"the verdict holds at every point: the boot at least {min(v.boot_speedup for v in ok):,.1f}x "
                       f"faster, the HPET read p50 at least {min(v.hpet_reduction for v in ok):.1%} lower")
    failed = [v for v in s.variants if v.error and "interrupted" not in v.error]
    for v in failed:
        out.append(f"failed: {v.parameter} {_factor(v.factor)} ({_value(v.parameter, v.value)}): {v.error}")
    return "\n".join(out)
