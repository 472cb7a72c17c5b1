"""PNG plots of results: latency CDFs, scaling curves, BQL utilisation over virtual time.

matplotlib is imported inside each function, so ``import aemu`` never needs it; figures are
drawn on matplotlib's non-interactive Agg canvas directly (no pyplot, no global backend switch),
which is safe from any thread and leaves a caller's own matplotlib setup alone.

Colours are fixed per label so every plot of one comparison reads the same: "before" red,
"after" blue, ablations ("after -SWITCH") in thinner dashed lines of other colours. Each PNG
carries its title, axis labels and legend as text (PNG ``Title`` and ``Description`` chunks), so a
test can tell whether a committed plot still says what the code draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..compare import Comparison
    from ..result import Result

__all__ = ["plot_bql_utilisation", "plot_latency_cdf", "plot_scaling", "plot_sweep", "plot_tornado", "sweep_x",
           "write_comparison_plots"]

_INSTALL_HINT = "plots need matplotlib: pip install matplotlib"
_FIXED_COLOURS = {"before": "#c0392b", "after": "#1f5fa8"}
_OTHER_COLOURS = ("#2a9d50", "#e08a00", "#7b3fa0", "#17a2b8", "#8c564b", "#d6338a", "#5f6b6d", "#b5a300")


def _figure(width: float = 7.5, height: float = 4.6) -> tuple[Figure, Axes]:
    """A figure on the Agg canvas with one axes, or ConfigError if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401  (fails first when matplotlib is absent or blocked)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    return fig, ax


def _texts(fig: Figure) -> dict[str, str]:
    """The words on ``fig``: its axes titles, and axis labels and legend entries, one a line."""
    axes = fig.get_axes()
    legends = [ax.get_legend() for ax in axes] + list(fig.legends)
    lines = [f"x: {ax.get_xlabel()}" for ax in axes] + [f"y: {ax.get_ylabel()}" for ax in axes]
    lines += [f"legend: {t.get_text()}" for lg in legends if lg is not None for t in lg.get_texts()]
    return {"Title": "\n".join(ax.get_title() for ax in axes), "Description": "\n".join(lines)}


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (creating its directory), its words as PNG text chunks;
    unwritable -> ConfigError."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, format="png", metadata=_texts(fig))
    except OSError as e:
        raise ConfigError(f"plot: cannot write {str(p)!r}: {e.strerror or e}") from None
    return p


def _styles(labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Line style per label: before/after bold and fixed, the others thinner and dashed."""
    out: dict[str, dict[str, Any]] = {}
    i = 0
    for label in labels:
        if label in _FIXED_COLOURS:
            out[label] = {"color": _FIXED_COLOURS[label], "linewidth": 2.2, "linestyle": "-", "zorder": 3}
        else:
            primary = not label.startswith("after -")
            out[label] = {"color": _OTHER_COLOURS[i % len(_OTHER_COLOURS)],
                          "linewidth": 2.0 if primary else 1.2,
                          "linestyle": "-" if primary else (0, (4, 2)), "zorder": 2 if primary else 4}
            i += 1
    return out


def _legend(fig: Figure, ax: Axes, entries: int) -> None:
    """A legend inside the axes for a few lines, below the plot for many (it would hide data)."""
    if entries <= 3:
        ax.legend(loc="best", fontsize=8.5, framealpha=0.9)
    else:
        fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)


def _workload_words(r: Result) -> str:
    """'boot' or, with ``--param``s, 'boot phases=1,seed_offset=3'."""
    params = ",".join(f"{k}={v}" for k, v in r.config.workload_params)
    return f"{r.config.workload} {params}" if params else r.config.workload


def _machine_words(results: Sequence[Result], *, smp: bool = True) -> str:
    """'boot phases=1, -smp 240, q35,hpet=off, kernel-irqchip=split': the parts all results share.

    (``qemu_args()`` is too long for a title; the workload, its parameters and the vCPU count
    matter most.)
    """
    getters: list[Callable[[Result], str]] = [_workload_words]
    if smp:
        getters.append(lambda r: f"-smp {r.config.smp.cpus}")
    getters += [lambda r: f"{r.config.machine},hpet={'on' if r.config.hpet else 'off'}",
                lambda r: f"kernel-irqchip={r.config.kernel_irqchip}"]
    parts: list[str] = []
    for get in getters:
        values = {get(r) for r in results}
        if len(values) == 1:
            parts.append(values.pop())
    return ", ".join(parts)


def _us_text(ns: float) -> str:
    """A latency for a legend, as ``aemu compare`` prints it: '3.0 µs', '1,254.5 µs'."""
    return f"{ns / 1000:,.1f} µs"


def plot_latency_cdf(results: Mapping[str, Result], region: str, path: str | Path) -> Path:
    """CDF of the access latency of ``region`` (exit to re-entry, lock waits included) per result.

    One line per labelled result ("before", "after", ablations); x is latency in µs on a log
    scale, y the fraction of accesses at or below it. Results without accesses to ``region``
    are listed in the legend as such.
    """
    labelled = [(label, r, r.regions_by_name().get(region)) for label, r in results.items()]
    if not any(lat is not None and lat.count for _, _, lat in labelled):
        known = sorted({x.name for r in results.values() for x in r.regions})
        raise ConfigError(f"plot: no result has accesses to region {region!r}; regions: "
                          f"{', '.join(known) or 'none'}")
    fig, ax = _figure(height=4.6 if len(labelled) <= 3 else 5.4)
    styles = _styles([label for label, _, _ in labelled])
    counts = {lat.count for _, _, lat in labelled if lat is not None and lat.count}
    for label, r, lat in labelled:
        if lat is None or not lat.count or not lat.cdf:
            ax.plot([], [], label=f"{label}: no {region} accesses", **styles[label])
            continue
        xs = [max(ns, 1) / 1000 for ns, _ in lat.cdf]
        ys = [f for _, f in lat.cdf]
        xs.insert(0, xs[0])
        ys.insert(0, 0.0)
        notes = [f"n={lat.count:,}"] if len(counts) > 1 else []
        if not r.finished:
            notes.append("cap hit")
        note = f" ({', '.join(notes)})" if notes else ""
        ax.step(xs, ys, where="post", label=f"{label}: p50 {_us_text(lat.p50)}, p99 {_us_text(lat.p99)}{note}",
                **styles[label])
    ax.set_xscale("log")
    lo = min((max(lat.cdf[0][0], 1) for _, _, lat in labelled if lat is not None and lat.cdf), default=1)
    hi = max((max(lat.cdf[-1][0], 1) for _, _, lat in labelled if lat is not None and lat.cdf), default=1)
    ax.set_xlim(lo / 1000 / 1.5, hi / 1000 * 1.5)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"{region} access latency (µs of virtual time, log scale; exit to guest re-entry)")
    ax.set_ylabel("fraction of accesses ≤ latency")
    per_run = f"; {counts.pop():,} accesses per run" if len(counts) == 1 else ""
    ax.set_title(f"{region} access latency CDF\n{_machine_words(list(results.values()))}{per_run}", fontsize=10.5)
    _plain_log_ticks(ax.xaxis, hi / lo)
    _legend(fig, ax, len(labelled))
    return _save(fig, path)


def plot_scaling(points: Sequence[tuple[int, Result]] | Mapping[str, Sequence[tuple[int, Result]]],
                 path: str | Path, *, metric_label: str | None = None) -> Path:
    """The workload's metric against the vCPU count, one line per series.

    ``points`` is one sequence of ``(vcpus, result)`` or a mapping label -> such a sequence
    (e.g. "before"/"after"). Runs that did not finish (cap hit) are drawn as open markers with a
    "cap" note: their value is a lower bound. The y axis turns logarithmic when the values span
    more than a factor of 20, the x axis when the vCPU counts do.
    """
    series: dict[str, Sequence[tuple[int, Result]]]
    if isinstance(points, Mapping):
        series = dict(points)
    else:
        first = points[0][1] if points else None
        series = {first.config.series if first is not None else "runs": points}
    every = [(n, r) for pts in series.values() for n, r in pts]
    if not every:
        raise ConfigError("plot: plot_scaling needs at least one (vcpus, result) point")
    metric = every[0][1].metric
    unit = f" ({metric.unit})" if metric.unit else ""
    fig, ax = _figure()
    styles = _styles(list(series))
    capped_any = False
    for label, pts in series.items():
        pts = sorted(pts, key=lambda p: p[0])
        if not pts:
            continue
        st = styles[label]
        ax.plot([], [], label=label, color=st["color"], linewidth=st["linewidth"], linestyle=st["linestyle"])
        for (n0, r0), (n1, r1) in zip(pts, pts[1:]):
            # a segment that ends in a capped run is dotted: the true value lies above it
            bound = not (r0.finished and r1.finished)
            ax.plot([n0, n1], [r0.metric.value, r1.metric.value], color=st["color"], linewidth=st["linewidth"],
                    linestyle=(0, (1.5, 1.5)) if bound else st["linestyle"], zorder=st["zorder"])
        done = [(n, r.metric.value) for n, r in pts if r.finished]
        capped = [(n, r.metric.value) for n, r in pts if not r.finished]
        if done:
            ax.plot(*zip(*done), linestyle="none", marker="o", markersize=6, color=st["color"], zorder=4)
        if capped:
            capped_any = True
            ax.plot(*zip(*capped), linestyle="none", marker="o", markersize=9, markerfacecolor="white",
                    markeredgewidth=2, color=st["color"], zorder=5)
            for n, v in capped:
                ax.annotate("cap", (n, v), textcoords="offset points", xytext=(0, 8), ha="center",
                            fontsize=8, color=st["color"])
    values = [r.metric.value for _, r in every if r.metric.value > 0]
    if values and max(values) / min(values) > 20:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis, max(values) / min(values))
    else:
        ax.yaxis.set_major_formatter(_thousands())
    cpus = sorted({n for n, _ in every})
    if cpus[0] > 0 and cpus[-1] / cpus[0] > 20:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_formatter(_thousands(blank=True))
    ax.set_xticks(cpus, [str(n) for n in cpus])
    ax.margins(y=0.12)
    ax.set_xlabel("vCPUs (-smp)")
    ax.set_ylabel(metric_label or f"{metric.name}{unit}")
    words = _machine_words([r for _, r in every], smp=False)
    swept = f"-smp {','.join(str(n) for n in cpus)}"
    ax.set_title(f"{metric_label or metric.name} vs vCPUs ({swept})\n{words}", fontsize=10.5)
    if capped_any:
        ax.plot([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgewidth=2,
                color="0.3", label="did not finish (cap hit): a lower bound")
    ax.legend(fontsize=9, framealpha=0.9)
    return _save(fig, path)


def plot_bql_utilisation(results: Mapping[str, Result], path: str | Path) -> Path:
    """BQL busy fraction per utilisation bucket over virtual time (ms), one line per result.

    The end of each run is marked (finished, or stopped at the cap). When one run is more than
    50x longer than another the time axis is logarithmic, so a short "after" run stays visible
    next to a capped "before".
    """
    if not results:
        raise ConfigError("plot: plot_bql_utilisation needs at least one result")
    fig, ax = _figure()
    styles = _styles(list(results))
    ends = [max(r.virtual_ns, 1) for r in results.values()]
    log_x = max(ends) / min(ends) > 50
    bins = {r.bql_utilisation_bin_ns for r in results.values() if r.bql_utilisation_bin_ns}
    for label, r in results.items():
        st = styles[label]
        series = r.bql_utilisation
        b = r.bql_utilisation_bin_ns or 1
        end_ms = r.virtual_ns / 1e6
        how = f"finished at {end_ms:,.2f} ms" if r.finished else f"cap hit at {end_ms:,.0f} ms"
        mean = sum(f for _, f in series) / len(series) if series else 0.0
        text = f"{label}: mean {mean:.0%}, {how}"
        if not series:
            ax.plot([], [], label=f"{label}: no samples", **st)
            continue
        # a step per bucket, drawn to its end (the last bucket is cut at the run's end)
        xs = [t / 1e6 for t, _ in series] + [min(series[-1][0] + b, max(r.virtual_ns, series[-1][0] + 1)) / 1e6]
        ys = [f for _, f in series] + [series[-1][1]]
        if log_x:
            xs[0] = b / 2e6  # a log axis has no 0: draw the first bucket from half a bucket
        ax.step(xs, ys, where="post", label=text, **st)
        ax.axvline(end_ms, color=st["color"], linewidth=0.9, linestyle=":", zorder=1)
    if log_x:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis, max(ends) / min(ends))
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(_percent())
    bin_text = ", ".join(f"{b / 1000:,.0f} µs" for b in sorted(bins)) or "?"
    ax.set_xlabel(f"virtual time (ms{', log scale' if log_x else ''}); dotted line: end of run\n"
                  "(busy: held, or handed over to a waiter that is still waking up)",
                  fontsize=9)
    ax.set_ylabel(f"BQL busy (share of each {bin_text} bucket)")
    ax.set_title(f"BQL utilisation — {_machine_words(list(results.values()))}", fontsize=11)

    ax.legend(fontsize=8.5, framealpha=0.9, loc="best")
    return _save(fig, path)


def _plain_log_ticks(axis: Any, span: float) -> None:
    """Log-axis tick labels as plain numbers ('3', '20', '1,000'), minor ones on ranges under 3 decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def text(v: float, _pos: Any) -> str:
        return f"{v:,.0f}" if v >= 1 and v == round(v) else f"{v:,.4g}"

    plain = FuncFormatter(text)
    axis.set_major_formatter(plain)
    if span < 1000:
        axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 3.0, 5.0) if span < 30 else (2.0, 5.0)))
        axis.set_minor_formatter(plain)
    else:
        axis.set_minor_formatter(NullFormatter())


def _thousands(*, blank: bool = False) -> Any:
    """A tick formatter with thousands separators ('22,500'), or one that prints nothing."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    return NullFormatter() if blank else FuncFormatter(lambda v, _pos: f"{v:,.6g}")


def _percent() -> Any:
    """A 0..1 -> '0%..100%' tick formatter."""
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


def write_comparison_plots(comparison: Comparison, outdir: str | Path) -> list[Path]:
    """The comparison's plots in ``outdir`` (created if missing); returns the paths written.

    * ``hpet-latency-cdf.png``: hpet-bench's HPET access latency, before vs after (ablations, if
      the comparison ran them, as thinner dashed lines);
    * ``bql-utilisation-boot.png``: the boot's BQL utilisation before and after.
    """
    out = Path(outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"plot: cannot create directory {str(out)!r}: {e.strerror or e}") from None
    paths = [plot_latency_cdf(comparison.bench, "hpet", out / "hpet-latency-cdf.png")]
    boot: dict[str, Result] = {k: comparison.boot[k] for k in ("before", "after") if k in comparison.boot}
    paths.append(plot_bql_utilisation(boot, out / "bql-utilisation-boot.png"))
    return paths


# -- sweeps ---------------------------------------------------------------------------------------------

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def sweep_x(names: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The parameter a sweep's plot puts on its x axis: smp if swept, else the first numeric one."""
    numeric = [n for n in names if len({r["point"][n] for r in rows}) > 1
               and all(_is_number(r["point"][n]) for r in rows)]
    return "smp" if "smp" in numeric else (numeric[0] if numeric else None)


def _x_words(x: str) -> tuple[str, str]:
    """(axis label, title words) of a swept parameter."""
    if x == "smp":
        return "vCPUs (-smp)", "vCPUs"
    if x.startswith("costs."):
        return f"{x} (ns of virtual time)", x
    return x, x


def _config_words(configs: Sequence[Mapping[str, Any]], *, smp: bool) -> str:
    """The parts of the configurations' words that all share (workload and params, -smp, machine, irqchip)."""
    getters: list[Callable[[Mapping[str, Any]], str]] = [
        lambda c: c["workload"] + (" " + ",".join(f"{k}={v}" for k, v in c["workload_params"].items())
                                   if c["workload_params"] else "")]
    if smp:
        getters.append(lambda c: f"-smp {c['smp']['cpus']}")
    getters += [lambda c: f"{c['machine']},hpet={'on' if c['hpet'] else 'off'}",
                lambda c: f"kernel-irqchip={c['kernel_irqchip']}"]
    parts = []
    for get in getters:
        values = {get(c) for c in configs}
        if len(values) == 1:
            parts.append(values.pop())
    return ", ".join(parts)


def plot_sweep(rows: Sequence[Mapping[str, Any]], x: str, path: str | Path) -> Path:
    """A sweep's metric against the swept parameter ``x``, one line per value of the other dimensions.

    ``rows`` are the sweep's rows (``SweepRun.to_dict()``: point, config, status, result). Lines
    are labelled by the other swept parameters' values ("before", or "series=before,
    lock-policy=barging"); failed runs are left out, runs that hit the cap drawn as open markers
    (their value is a lower bound). Log axes as in :func:`plot_scaling`.
    """
    ok = [r for r in rows if r.get("status") == "ok" and r.get("result")]
    if not ok:
        raise ConfigError("plot: the sweep has no finished run to plot")
    if any(x not in r["point"] for r in ok):
        raise ConfigError(f"plot: {x!r} is not a swept parameter")
    others = [n for n in ok[0]["point"] if n != x and len({repr(r["point"][n]) for r in ok}) > 1]
    lines: dict[str, list[Mapping[str, Any]]] = {}
    for r in ok:
        p = r["point"]
        label = (str(p[others[0]]) if others == ["series"] else
                 ", ".join(f"{n}={p[n]}" for n in others)) or "runs"
        lines.setdefault(label, []).append(r)
    metric = ok[0]["result"]["workload"]["metric"]
    unit = f" ({metric['unit']})" if metric["unit"] else ""
    numeric = all(_is_number(r["point"][x]) for r in ok)
    xs_all = sorted({r["point"][x] for r in ok}, key=lambda v: (not numeric, v if numeric else str(v)))
    pos = (lambda v: v) if numeric else (lambda v: xs_all.index(v))
    fig, ax = _figure()
    styles = _styles(list(lines))
    if "series" in others and len(others) > 1:  # colour by series, dashes by the rest
        rest = sorted({", ".join(f"{n}={r['point'][n]}" for n in others if n != "series") for r in ok})
        dashes: list[Any] = ["-", (0, (5, 2)), (0, (1.5, 1.5)), (0, (6, 2, 1.5, 2))]
        for label, pts in lines.items():
            p = pts[0]["point"]
            key = ", ".join(f"{n}={p[n]}" for n in others if n != "series")
            styles[label] = {**styles[label], "linestyle": dashes[rest.index(key) % len(dashes)],
                             "color": _FIXED_COLOURS.get(p["series"], styles[label]["color"]),
                             "linewidth": 1.2 + 1.0 * (rest.index(key) == 0)}
    capped_any = False
    for label, pts in lines.items():
        pts = sorted(pts, key=lambda r: xs_all.index(r["point"][x]))
        st = styles[label]
        xv = [pos(r["point"][x]) for r in pts]
        yv = [r["result"]["workload"]["metric"]["value"] for r in pts]
        ax.plot(xv, yv, label=label, color=st["color"], linewidth=st["linewidth"], linestyle=st["linestyle"],
                marker="o", markersize=5, zorder=st["zorder"])
        capped = [(a, b) for a, b, r in zip(xv, yv, pts) if not r["result"]["workload"]["finished"]]
        if capped:
            capped_any = True
            ax.plot(*zip(*capped), linestyle="none", marker="o", markersize=9, markerfacecolor="white",
                    markeredgewidth=2, color=st["color"], zorder=5)
    values = [r["result"]["workload"]["metric"]["value"] for r in ok if r["result"]["workload"]["metric"]["value"] > 0]
    if values and max(values) / min(values) > 20:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis, max(values) / min(values))
    else:
        ax.yaxis.set_major_formatter(_thousands())
    if numeric and xs_all[0] > 0 and xs_all[-1] / xs_all[0] > 20:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_formatter(_thousands(blank=True))
    ax.set_xticks([pos(v) for v in xs_all], [f"{v:,}" if _is_number(v) and x != "smp" else str(v) for v in xs_all])
    ax.margins(y=0.12)
    label_x, title_x = _x_words(x)
    ax.set_xlabel(label_x)
    ax.set_ylabel(f"{metric['name']}{unit}")
    swept = f"-smp {','.join(str(v) for v in xs_all)}" if x == "smp" else f"{x}={','.join(str(v) for v in xs_all)}"
    words = _config_words([r["config"] for r in ok], smp=x != "smp")
    ax.set_title(f"{metric['name']} vs {title_x} ({swept})\n{words}", fontsize=10.5)
    if capped_any:
        ax.plot([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgewidth=2,
                color="0.3", label="did not finish (cap hit): a lower bound")
    _legend(fig, ax, len(lines) + capped_any)
    return _save(fig, path)


def plot_tornado(sensitivity: Any, path: str | Path) -> Path:
    """A tornado plot of :class:`aemu.sensitivity.Sensitivity`: per cost or boot parameter, how far each verdict figure
    moves at each factor, the most influential on top; two panels (boot speed-up, HPET read
    p50 speed-up), log x axes, the baseline as a line."""
    s = sensitivity
    if s.baseline is None:
        raise ConfigError("plot: the sensitivity run has no baseline verdict to plot")
    names = list(reversed(s.parameters))  # barh draws bottom-up
    fig, _ = _figure(11, 0.42 * len(names) + 2.2)
    fig.clear()
    ax0, ax1 = fig.subplots(1, 2, sharey=True)
    for ax in (ax0, ax1):
        ax.grid(True, which="major", axis="x", alpha=0.35)
    colours = dict(zip(s.factors, _OTHER_COLOURS[1:] + _OTHER_COLOURS[:1]))
    panels = ((ax0, "boot_speedup", "boot speed-up after the series (before / after)"),
              (ax1, "hpet_speedup", "HPET read p50 speed-up (before / after)"))
    for ax, attr, xlabel in panels:
        base = getattr(s.baseline, attr)
        for i, name in enumerate(names):
            for j, f in enumerate(s.factors):
                v = next((x for x in s.variants if x.parameter == name and x.factor == f), None)
                if v is None or v.verdict is None:
                    continue
                val = getattr(v.verdict, attr)
                h = 0.8 / len(s.factors)
                ax.barh(i - 0.4 + h * (j + 0.5), val - base, left=base, height=h, color=colours[f],
                        label=f"value x{f:g}" if i == 0 else None)
        ax.axvline(base, color="0.2", linewidth=1.2, zorder=3)
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis, 10)
        ax.set_yticks(range(len(names)), [n.removeprefix("costs.") for n in names], fontsize=8.5)
        ax.set_xlabel(xlabel + f"\nline: at the values as they are ({base:,.1f}x)", fontsize=9)
    ax1.tick_params(labelleft=False)
    ax0.set_title("boot", fontsize=10)
    ax1.set_title("hpet-bench", fontsize=10)
    fig.suptitle(f"sensitivity of the verdict to each cost and boot parameter "
                 f"(x{' and x'.join(f'{f:g}' for f in s.factors)}), "
                 f"{s.args}", fontsize=10.5)
    ax0.legend(fontsize=8.5, framealpha=0.9, loc="lower right")
    return _save(fig, path)
