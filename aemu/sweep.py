"""Sweeps: a workload over any grid of machine options and costs, each run a row with its configuration.

A :class:`Grid` is a base :class:`~aemu.config.MachineConfig` and dimensions, each a parameter
(:data:`PARAMETERS`: ``smp``, ``series``, ``patch``, ``lock-policy``, ``host-cpus``, ..., or
``costs.NAME``, ``costs.handler_ns.REGION``, ``param.KEY``) with a list of values; its points are
their product. A point's configuration is the base with its series applied first (``before``: no
switch, ``after``: all of them), then its patch edits (``-hpet-lock``, as ``--patch``), then the
rest. Every point is built -- and so validated -- before anything runs.

:func:`iter_sweep` runs the points (one run per distinct configuration) through
:class:`aemu.batch.Batch` -- aemu's local process pool or any ``concurrent.futures.Executor``,
a Dask client's included -- and yields a :class:`SweepRun` as each finishes: its point, its full
configuration and its ``aemu.result/1`` document, or the error it failed with (the others go on).
Given the rows of an earlier sweep (:func:`load_runs`, from the JSON-lines file the CLI writes),
it runs only the configurations those rows lack. :func:`run_sweep` collects them into a
:class:`Sweep`, in grid order; :func:`format_sweep` is the table the CLI prints.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import json
import time
import tomllib
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batch import Batch, Failure
from .config import HOST_RQS, HOST_SCHEDS, LOCK_POLICIES, MAX_CPUS, SERIES, SMP, MachineConfig, _number, parse_duration
from .costs import HANDLER_REGIONS, CostModel
from .errors import ConfigError
from .patches import PATCHES

__all__ = ["Grid", "Parameter", "PARAMETERS", "Sweep", "SweepProgress", "SweepRun", "format_sweep",
           "iter_sweep", "load_runs", "trim_partial_row", "parameter", "parse_values", "run_document", "run_sweep", "SCHEMA"]

#: The sweep document's schema (``aemu sweep --json``).
SCHEMA = "aemu.sweep/2"


# -- parameters ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Parameter:
    """A dimension a sweep can vary: how a value is read from text and applied to a configuration."""

    name: str
    help: str
    parse: Callable[[str], Any]
    apply: Callable[[MachineConfig, Any], MachineConfig]


def _int_in(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise ConfigError(f"{name}: {text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise ConfigError(f"{name}: {v} is out of range ({lo} to {hi})")
        return v
    return parse


def _choice(name: str, choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ConfigError(f"{name}: {text!r}; accepted: {', '.join(choices)}")
        return text
    return parse


def _smp(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_CPUS:
        raise ConfigError(f"smp: {text!r} is not a vCPU count (1 to {MAX_CPUS}); give a list such as 1,8,32,64")
    return int(text)


def _host_cpus(text: str) -> int | None:
    return None if text == "none" else _int_in("host-cpus", 1, MAX_CPUS)(text)


def _patch_edits(text: str) -> str:
    """A --patch value (``-hpet-lock,-hpet-counter-lockless``, or ``none``), checked and kept as text."""
    if text == "none":
        return text
    for item in text.split(","):
        name = item.strip().lstrip("+-").removeprefix("no-")
        if name not in PATCHES:
            raise ConfigError(f"patch: unknown patch {name!r} in {text!r}; accepted: {', '.join(PATCHES)} "
                              "(each with - to turn it off), or none")
    return text


def _apply_patch(c: MachineConfig, text: str) -> MachineConfig:
    patches = set(c.patches)
    if text != "none":
        for item in text.split(","):
            item = item.strip()
            name = item.lstrip("+-").removeprefix("no-")
            (patches.discard if item.startswith(("-", "no-")) else patches.add)(name)
    return c.replace(patches=frozenset(patches))


def _ns(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return parse_duration(text, name)
        except ConfigError:
            raise ConfigError(f"{name}: {text!r} is not a time in ns (e.g. 5000, 5us or 2ms)") from None
    return parse


def _onoff(name: str) -> Callable[[str], bool]:
    def parse(text: str) -> bool:
        if text in ("on", "true"):
            return True
        if text in ("off", "false"):
            return False
        raise ConfigError(f"{name}: {text!r}; accepted: on, off")
    return parse


def _onoff_text(v: Any) -> str:
    return "on" if v is True else "off" if v is False else str(v)


#: The parameters a sweep varies by name (``costs.NAME``, ``costs.handler_ns.REGION`` and
#: ``param.KEY`` besides; see :func:`parameter`).
PARAMETERS: dict[str, Parameter] = {p.name: p for p in [
    Parameter("smp", "vCPU counts (-smp N: 1 socket of N cores, as QEMU)", _smp,
              lambda c, v: c.replace(smp=SMP.complete(cpus=v))),
    Parameter("series", "before (no switch of the series) or after (all of them)", _choice("series", list(SERIES)),
              lambda c, v: c.replace(patches=SERIES[v])),
    Parameter("patch", "switch edits on top of the series, as --patch (-NAME off, NAME on; none: no edit)",
              _patch_edits, _apply_patch),
    Parameter("lock-policy", "how the BQL is handed over", _choice("lock-policy", LOCK_POLICIES),
              lambda c, v: c.replace(lock_policy=v)),
    Parameter("host-cpus", "physical CPUs the vCPU and main-loop threads share (none: one each)", _host_cpus,
              lambda c, v: c.replace(host_cpus=v)),
    Parameter("host-sched", "how the host kernel shares its CPUs (eevdf or cfs)", _choice("host-sched", HOST_SCHEDS),
              lambda c, v: c.replace(host_sched=v)),
    Parameter("host-rq", "the host's run queues (global or per-cpu)", _choice("host-rq", HOST_RQS),
              lambda c, v: c.replace(host_rq=v)),
    Parameter("host-nodes", "NUMA nodes the host CPUs are split into (per-cpu queues balance within, then across)",
              _int_in("host-nodes", 1, MAX_CPUS), lambda c, v: c.replace(host_nodes=v)),
    Parameter("workload", "what the vCPUs run", str, lambda c, v: c.replace(workload=v)),
    Parameter("machine", "q35 or pc", _choice("machine", ("q35", "pc")), lambda c, v: c.replace(machine=v)),
    Parameter("hpet", "the HPET on or off", _onoff("hpet"), lambda c, v: c.replace(hpet=v)),
    Parameter("kernel-irqchip", "on, split or off", _choice("kernel-irqchip", ("on", "split", "off")),
              lambda c, v: c.replace(kernel_irqchip=v)),
    Parameter("seed", "random seed", _int_in("seed", -(2**63), 2**63 - 1), lambda c, v: c.replace(seed=v)),
    Parameter("quantum", "how far a vCPU may run ahead (ns, or 10us)", _ns("quantum"),
              lambda c, v: c.replace(quantum_ns=v)),
    Parameter("duration", "the virtual-time cap (ns, or 2s)", _ns("duration"), lambda c, v: c.replace(duration_ns=v)),
]}

_COSTS = [f.name for f in dataclasses.fields(CostModel) if f.name != "handler_ns"]


def parameter(name: str) -> Parameter:
    """The parameter called ``name`` (ConfigError naming the accepted ones)."""
    if name in PARAMETERS:
        return PARAMETERS[name]
    if name.startswith("costs."):
        cost = name.removeprefix("costs.")
        if cost.startswith("handler_ns."):
            region = cost.removeprefix("handler_ns.")
            if region not in HANDLER_REGIONS:
                raise ConfigError(f"unknown cost {name!r}: no region {region!r}; regions: {', '.join(sorted(HANDLER_REGIONS))}")
            return Parameter(name, f"handler cost of {region} (ns)", _ns(name),
                             lambda c, v: c.replace(costs=c.costs.replace(handler_ns={**c.costs.handler_ns, region: v})))
        if cost not in _COSTS:
            raise ConfigError(f"unknown cost {name!r}; accepted: {', '.join('costs.' + n for n in _COSTS)}, "
                              "costs.handler_ns.REGION")
        return Parameter(name, f"{cost} (ns)", _ns(name), lambda c, v: c.replace(costs=c.costs.replace(**{cost: v})))
    if name.startswith("param.") and len(name) > len("param."):
        key = name.removeprefix("param.")
        return Parameter(name, f"workload parameter {key}", _number,
                         lambda c, v: c.replace(workload_params=tuple(sorted({**dict(c.workload_params), key: v}.items()))))
    raise ConfigError(f"unknown parameter {name!r}; accepted: {', '.join(PARAMETERS)}, costs.NAME, "
                      "costs.handler_ns.REGION, param.KEY")


def parse_values(name: str, text: str) -> tuple[Any, ...]:
    """``"1,8,32"`` -> (1, 8, 32) for parameter ``name`` (``patch`` takes one value: its commas are edits)."""
    p = parameter(name)
    items = [text.strip()] if name == "patch" else [t.strip() for t in text.split(",")]
    if not text.strip() or not all(items):
        raise ConfigError(f"{name}: {'empty list' if not text.strip() else f'an empty value in {text!r}'}; "
                          "give values such as 1,8,32")
    return tuple(p.parse(t) for t in items)


# -- the grid -----------------------------------------------------------------------------------------

#: Dimensions applied before the others, in this order: the series sets the patches, --patch edits
#: them; the host's CPUs come before its NUMA nodes, which must fit in them.
_FIRST = ("series", "patch", "host-cpus")


@dataclass(frozen=True, slots=True)
class Grid:
    """A base configuration and dimensions (name -> values); its points are their product."""

    base: MachineConfig
    dimensions: tuple[tuple[str, tuple[Any, ...]], ...]

    @classmethod
    def of(cls, base: MachineConfig, dimensions: Mapping[str, Sequence[Any]]) -> Grid:
        """Check names and values (text is parsed, other values checked as their text) and every point."""
        dims: list[tuple[str, tuple[Any, ...]]] = []
        for name, values in dimensions.items():
            p = parameter(name)
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise ConfigError(f"{name}: expected a list of values, got {values!r}")
            if not values:
                raise ConfigError(f"{name}: empty list; give at least one value")
            parsed: list[Any] = []
            for v in values:
                if isinstance(v, bool) and name != "hpet":
                    raise ConfigError(f"{name}: {v!r} is not a value of {name}")
                if v is None and name == "host-cpus":
                    parsed.append(None)
                    continue
                parsed.append(p.parse(_onoff_text(v) if isinstance(v, bool) else str(v)))
            if len(set(map(repr, parsed))) != len(parsed):
                raise ConfigError(f"{name}: {list(values)!r} repeats a value")
            dims.append((name, tuple(parsed)))
        grid = cls(base, tuple(dims))
        from .workloads import get_workload

        workloads = set()
        for point in grid.points():
            try:
                c = grid.config(point)
                if (c.workload, c.workload_params) not in workloads:
                    workloads.add((c.workload, c.workload_params))
                    get_workload(c.workload, **dict(c.workload_params))  # a bad --param now, not in a worker
            except ConfigError as e:
                raise ConfigError(f"{_point_words(point)}: {e}" if point else str(e)) from None
        return grid

    @classmethod
    def from_toml(cls, path: str | Path, base_args: Sequence[str] = (),
                  extra: Mapping[str, Sequence[Any]] | None = None) -> Grid:
        """A grid file: ``args = "MACHINE OPTIONS"`` (optional) and a ``[grid]`` table of name = [values].

        ``base_args`` (the command line's machine options) come after the file's ``args``;
        ``extra`` dimensions (the command line's) are added to the file's.
        """
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"--grid: no such file: {p}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--grid: cannot read {p}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--grid: {p} is not valid TOML: {e}") from None
        unknown = sorted(set(data) - {"args", "grid"})
        if unknown:
            raise ConfigError(f"--grid: {p}: unknown key {unknown[0]!r}; a grid file has args = \"...\" and a [grid] table")
        args = data.get("args", "")
        if not isinstance(args, str):
            raise ConfigError(f"--grid: {p}: args must be a string of machine options")
        table = data.get("grid")
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"--grid: {p}: no [grid] table of parameter = [values]")
        dims = _flatten(table)
        for name in extra or {}:
            if name in dims:
                raise ConfigError(f"{name}: given in {p} and on the command line; give it once")
        import shlex

        base = MachineConfig.parse([*shlex.split(args), *base_args])
        return cls.of(base, {**dims, **(extra or {})})

    @property
    def names(self) -> list[str]:
        """The dimensions' names, in order."""
        return [n for n, _ in self.dimensions]

    def points(self) -> list[dict[str, Any]]:
        """Every point (name -> value), the last dimension varying fastest."""
        return [dict(zip(self.names, combo)) for combo in itertools.product(*(v for _, v in self.dimensions))]

    def config(self, point: Mapping[str, Any]) -> MachineConfig:
        """The configuration of ``point``: the base, then its series, its patch edits, the rest."""
        c = self.base
        for name in sorted(point, key=lambda n: _FIRST.index(n) if n in _FIRST else len(_FIRST)):
            c = parameter(name).apply(c, point[name])
        return c

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "dimensions": {n: list(v) for n, v in self.dimensions}}


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, list) else [v]
    return out


def _point_words(point: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in point.items()) or "the base configuration"


def config_key(config: Mapping[str, Any]) -> str:
    """A configuration document as a canonical string: two runs with the same key are the same run."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


# -- runs -------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SweepRun:
    """One point of a sweep: its values, its full configuration, and its result document or error."""

    point: dict[str, Any]
    config: dict[str, Any]
    result: dict[str, Any] | None = None
    error: str | None = None
    #: taken from an earlier sweep's rows (``--resume``), not run now
    resumed: bool = field(default=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The row: ``{"point", "config", "status": "ok", "result"}`` or ``{..., "status": "failed", "error"}``."""
        row: dict[str, Any] = {"point": self.point, "config": self.config, "status": "ok" if self.ok else "failed"}
        if self.ok:
            row["result"] = self.result
        else:
            row["error"] = self.error
        return row


@dataclass(frozen=True, slots=True)
class SweepProgress:
    """Where a sweep stands: runs done (ok or failed), failed, running, of total; wall time so far."""

    done: int
    failed: int
    running: int
    total: int
    elapsed_s: float
    #: runs taken from earlier rows (they count as done, not in the rate)
    resumed: int = 0

    @property
    def eta_s(self) -> float | None:
        """Seconds until the rest are done at the rate so far (None before the first run finishes)."""
        ran = self.done - self.resumed
        if ran <= 0:
            return None
        return self.elapsed_s / ran * (self.total - self.done)

    def words(self) -> str:
        eta = self.eta_s
        eta_text = "ETA ?" if eta is None else f"ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        return (f"{self.done}/{self.total} done, {self.running} running, {self.failed} failed, {eta_text}")


def run_document(config: MachineConfig) -> dict[str, Any]:
    """Run ``config`` and return its result document (what a sweep's worker does)."""
    from .runner import simulate

    return simulate(config).to_dict()


def load_runs(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a sweep's JSON-lines file (a last line cut short by a kill is left out)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--resume: cannot read {p}: {e}") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                break  # the run was being written when the sweep was killed: it runs again
            raise ConfigError(f"--resume: {p}: line {i} is not a JSON row of an aemu sweep") from None
        if not isinstance(row, dict) or not isinstance(row.get("config"), dict) or "status" not in row:
            raise ConfigError(f"--resume: {p}: line {i} is not a row of an aemu sweep (no config/status)")
        rows.append(row)
    return rows


def trim_partial_row(path: str | Path) -> None:
    """Cut a last line left unfinished by a kill off a rows file, so rows appended after it stay lines."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        with open(p, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def iter_sweep(grid: Grid, *, executor: cf.Executor | None = None, jobs: int | None = None,
               slots: int | None = None, done_rows: Sequence[Mapping[str, Any]] = (),
               progress: Callable[[SweepProgress], None] | None = None,
               run: Callable[[MachineConfig], dict[str, Any]] = run_document) -> Generator[SweepRun, None, None]:
    """Run the grid's points and yield each :class:`SweepRun` as it finishes.

    Points whose configuration has an ``ok`` row in ``done_rows`` are yielded first, from there;
    points that share a configuration share one run. ``executor``/``jobs``/``slots`` as
    :class:`aemu.batch.Batch`. ``progress`` is called at the start and after every run. Closing
    the iterator (or Ctrl-C while it waits) stops the runs in flight at once.
    """
    t0 = time.monotonic()
    points = grid.points()
    configs = [grid.config(p) for p in points]
    docs = [c.to_dict() for c in configs]
    keys = [config_key(d) for d in docs]
    earlier = {config_key(r["config"]): r["result"] for r in done_rows if r.get("status") == "ok"}
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    total = len(points)
    done = failed = resumed = 0

    def report(running: int) -> None:
        if progress is not None:
            progress(SweepProgress(done, failed, running, total, time.monotonic() - t0, resumed))

    for i, k in enumerate(keys):
        if k in earlier:
            done += 1
            resumed += 1
            yield SweepRun(points[i], docs[i], earlier[k], resumed=True)
    todo = [(k, configs[idx[0]]) for k, idx in by_key.items() if k not in earlier]
    report(0)
    with Batch(todo, run, executor=executor, jobs=jobs, slots=slots) as batch:
        for k, out in batch:
            for i in by_key[k]:
                done += 1
                if isinstance(out, Failure):
                    failed += 1
                    yield SweepRun(points[i], docs[i], error=out.error)
                else:
                    yield SweepRun(points[i], docs[i], out)
            report(batch.running)


@dataclass(frozen=True, slots=True)
class Sweep:
    """A sweep's runs in grid order (those that finished, if it was interrupted)."""

    grid: Grid
    runs: tuple[SweepRun, ...]
    interrupted: bool = False

    @classmethod
    def collect(cls, grid: Grid, runs: Sequence[SweepRun], *, interrupted: bool = False) -> Sweep:
        """Put runs in grid order."""
        order = {config_key(p): i for i, p in enumerate(grid.points())}
        return cls(grid, tuple(sorted(runs, key=lambda r: order.get(config_key(r.point), len(order)))), interrupted)

    @property
    def total(self) -> int:
        return len(self.grid.points())

    @property
    def failed(self) -> list[SweepRun]:
        return [r for r in self.runs if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        """The ``aemu.sweep/2`` document."""
        return {"schema": SCHEMA, **self.grid.to_dict(), "total": self.total, "interrupted": self.interrupted,
                "failed": len(self.failed), "runs": [r.to_dict() for r in self.runs]}


def run_sweep(grid: Grid, **kwargs: Any) -> Sweep:
    """Run the whole grid (:func:`iter_sweep`'s arguments) and return the :class:`Sweep`."""
    it = iter_sweep(grid, **kwargs)
    try:
        return Sweep.collect(grid, list(it))
    finally:
        it.close()


# -- the table -------------------------------------------------------------------------------------------

def bql_wait_share(doc: Mapping[str, Any]) -> float:
    """Share of all vCPU time spent waiting for the BQL, from a result document."""
    total = sum(sum(v["time_ns"].values()) for v in doc["vcpus"])
    wait = sum(v["lock_wait_ns"].get("BQL", 0) for v in doc["vcpus"])
    return wait / total if total else 0.0


def _metric_text(r: SweepRun | None) -> str:
    if r is None:
        return "-"
    if r.result is None:
        return "failed"
    wl = r.result["workload"]
    return f"{wl['metric']['value']:,.1f}" + ("" if wl["finished"] else " (cap)")


def _value_text(v: Any) -> str:
    return "none" if v is None else _onoff_text(v)


def format_sweep(sweep: Sweep) -> str:
    """The sweep as a table: one line per point, or per point but the series with before, after
    and their ratio side by side when the series is swept over before and after; failures listed below."""
    grid = sweep.grid
    ok = [r for r in sweep.runs if r.result is not None]
    if ok:
        m = ok[0].result["workload"]["metric"]  # type: ignore[index]
        head = f"{ok[0].result['workload']['name']}: {m['name']} ({m['unit']})"  # type: ignore[index]
    else:
        head = "no run finished"
    series = dict(grid.dimensions).get("series", ())
    pivot = "before" in series and "after" in series
    dims = [n for n in grid.names if not (pivot and n == "series")]
    if pivot:
        head += " before vs after the BQL-free series"
    runs = {config_key(r.point): r for r in sweep.runs}
    w = {n: max(len(n), *(len(_value_text(v)) for v in dict(grid.dimensions)[n])) for n in dims}
    lines = [head, ""]
    if pivot:
        lines.append("  ".join(f"{n:>{w[n]}}" for n in dims) + ("  " if dims else "")
                     + f"{'before':>18}  {'after':>14}  {'before/after':>12}  {'BQL wait share (before)':>24}")
    else:
        lines.append("  ".join(f"{n:>{w[n]}}" for n in dims) + ("  " if dims else "")
                     + f"{'value':>18}  {'BQL wait share':>14}")
    seen: set[str] = set()
    for point in grid.points():
        rest = {n: point[n] for n in dims}
        k = config_key(rest)
        if k in seen:
            continue
        seen.add(k)
        cells = "  ".join(f"{_value_text(point[n]):>{w[n]}}" for n in dims) + ("  " if dims else "")
        if pivot:
            b = runs.get(config_key({**point, "series": "before"}))
            a = runs.get(config_key({**point, "series": "after"}))
            if b is None and a is None:
                continue
            ratio = share = "-"
            if b is not None and a is not None and b.result is not None and a.result is not None:
                bv, av = b.result["workload"]["metric"]["value"], a.result["workload"]["metric"]["value"]
                ratio = f"{bv / av:.1f}x" if av else "inf"
            if b is not None and b.result is not None:
                share = f"{bql_wait_share(b.result):.1%}"
            lines.append(f"{cells}{_metric_text(b):>18}  {_metric_text(a):>14}  {ratio:>12}  {share:>24}")
        else:
            r = runs.get(config_key(point))
            if r is None:
                continue
            share = f"{bql_wait_share(r.result):.1%}" if r.result is not None else "-"
            lines.append(f"{cells}{_metric_text(r):>18}  {share:>14}")
    for r in sweep.failed:
        c = r.config
        lines.append(f"failed: {_point_words(r.point)} (-smp {c['smp']['cpus']}, series {c['series']}): {r.error}")
    return "\n".join(lines)
