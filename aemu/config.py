"""The machine's configuration in QEMU's words: one frozen dataclass, :class:`MachineConfig`.

``MachineConfig.parse("-M q35,hpet=off -smp 240,sockets=4 -accel kvm,kernel-irqchip=split
--workload boot --series before")`` reads QEMU-style options plus aemu's own; the same fields can
be set from Python. Every mistake raises :class:`aemu.errors.ConfigError` with one line naming the
option and what it accepts.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .costs import CostModel
from .errors import ConfigError
from .patches import PATCHES
from .sched import HOST_SCHEDULERS, RUN_QUEUES
from .sync.policy import POLICIES

__all__ = ["MachineConfig", "OPTIONS_WITH_VALUE", "SMP", "SERIES", "parse_duration"]

#: Presets of the BQL-free series.
SERIES: dict[str, frozenset[str]] = {
    "before": frozenset(),
    "after": frozenset(PATCHES),
}

MACHINES = ("q35", "pc")
IRQCHIP_MODES = ("on", "off", "split")
#: The BQL's hand-off policies (--lock-policy): the names of aemu.sync.policy.POLICIES.
LOCK_POLICIES = tuple(POLICIES)
HOST_SCHEDS = tuple(HOST_SCHEDULERS)
HOST_RQS = RUN_QUEUES
#: QEMU options that are accepted and ignored (they change nothing aemu models).
_IGNORED_WITH_VALUE = {"-m", "-display", "-name", "-vga"}
#: ``-cpu`` models aemu accepts, and the CPU flags it models (QEMU docs/system/i386/hyperv.rst).
CPU_MODELS = ("host", "max")
CPU_FLAGS = ("hv-time",)
_IGNORED_FLAGS = {"-enable-kvm", "-nographic", "-no-reboot", "-S"}

#: Most vCPUs a machine takes: QEMU's pc-q35 limit since 9.0 (commit e4e98c7eebfa, "pc: q35: Bump
#: max_cpus to 4096 vcpus"; needs KVM and x2APIC in real life).
MAX_CPUS = 4096


@dataclass(frozen=True, slots=True)
class SMP:
    """``-smp N[,sockets=S,cores=C,threads=T,maxcpus=M]``, completed as QEMU (since 6.2) does."""

    cpus: int = 1
    sockets: int = 1
    cores: int = 1
    threads: int = 1
    maxcpus: int = 1

    @classmethod
    def parse(cls, text: str) -> SMP:
        """Parse and validate an ``-smp`` value (QEMU's ``machine_parse_smp_config``)."""
        vals: dict[str, int] = {}
        for i, part in enumerate(text.split(",")):
            key, eq, val = part.partition("=")
            if not eq:
                if i != 0:
                    raise ConfigError(f"-smp: expected key=value, got {part!r}")
                key, val = "cpus", key
            if key not in ("cpus", "sockets", "dies", "clusters", "cores", "threads", "maxcpus"):
                raise ConfigError(f"-smp: invalid parameter {key!r}; accepted: cpus, sockets, cores, threads, maxcpus")
            try:
                n = int(val)
            except ValueError:
                raise ConfigError(f"-smp: parameter {key!r} expects a number, got {val!r}") from None
            if n <= 0:
                raise ConfigError(f"-smp: {key}={n} is not allowed; use a positive number")
            vals[key] = n
        return cls.complete(**vals)

    @classmethod
    def complete(cls, cpus: int = 0, sockets: int = 0, cores: int = 0, threads: int = 0,
                 maxcpus: int = 0, dies: int = 1, clusters: int = 1) -> SMP:
        """Fill in the missing values and check the topology like QEMU.

        QEMU's rule since 6.2 (``machine_parse_smp_config`` in hw/core/machine-smp.c, "prefer cores
        over sockets over threads since 6.2"): ``-smp 8`` is 1 socket of 8 cores; a missing
        ``cores`` is what is left after sockets and threads (sockets and threads default to 1), a
        missing ``sockets`` what is left after cores and threads, and threads are computed last.
        """
        mult = dies * clusters
        if not cpus and not maxcpus:
            sockets, cores, threads = sockets or 1, cores or 1, threads or 1
        else:
            maxcpus = maxcpus or cpus
            if not cores:
                sockets, threads = sockets or 1, threads or 1
                cores = maxcpus // (sockets * mult * threads)
            elif not sockets:
                threads = threads or 1
                sockets = maxcpus // (mult * cores * threads)
            if not threads:
                threads = maxcpus // (sockets * mult * cores)
        maxcpus = maxcpus or sockets * mult * cores * threads
        cpus = cpus or maxcpus
        if sockets * mult * cores * threads != maxcpus:
            raise ConfigError(
                f"-smp: Invalid CPU topology: product of the hierarchy must match maxcpus: "
                f"sockets ({sockets}) * cores ({cores}) * threads ({threads}) != maxcpus ({maxcpus})")
        if maxcpus < cpus:
            raise ConfigError(f"-smp: Invalid CPU topology: maxcpus must be equal to or greater than "
                              f"smp: sockets ({sockets}) * cores ({cores}) * threads ({threads}) == "
                              f"maxcpus ({maxcpus}) < smp_cpus ({cpus})")
        if cpus > MAX_CPUS:
            raise ConfigError(f"-smp: {cpus} CPUs requested; aemu's machines support at most {MAX_CPUS}")
        return cls(cpus, sockets, cores, threads, maxcpus)

    def __str__(self) -> str:
        return f"{self.cpus},sockets={self.sockets},cores={self.cores},threads={self.threads},maxcpus={self.maxcpus}"


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """Everything a run depends on (the single source of truth; see module docstring)."""

    machine: str = "q35"
    hpet: bool = True
    smp: SMP = field(default_factory=SMP)
    kernel_irqchip: str = "on"
    workload: str = "hpet-bench"
    workload_params: tuple[tuple[str, Any], ...] = ()
    patches: frozenset[str] = SERIES["after"]
    lockless: tuple[str, ...] = ()
    costs: CostModel = field(default_factory=CostModel)
    lock_policy: str = "barging"  # glibc's default pthread mutex, as QemuMutex is (aemu.sync.policy)
    seed: int = 1
    quantum_ns: int = 10_000
    duration_ns: int | None = None
    #: physical CPUs the machine's threads share (``--host-cpus``); None: one per thread
    host_cpus: int | None = None
    #: how the host kernel schedules them (``--host-sched``): eevdf (Linux >= 6.6) or cfs (older)
    host_sched: str = "eevdf"
    #: their run queues (``--host-rq``): one for all CPUs (global) or one per CPU (per-cpu)
    host_rq: str = "global"
    #: NUMA nodes the host CPUs are split into (``--host-nodes``), each one last-level cache: the
    #: per-CPU queues' periodic balancing works within a node, then across nodes
    host_nodes: int = 1
    #: ``-cpu host,hv-time``: the Hyper-V reference TSC page (a clock the guest reads with no exit)
    hv_time: bool = False

    def __post_init__(self) -> None:
        if self.machine not in MACHINES:
            raise ConfigError(f"-M: unknown machine {self.machine!r}; accepted: {', '.join(MACHINES)}")
        if self.kernel_irqchip not in IRQCHIP_MODES:
            raise ConfigError(f"-accel: kernel-irqchip={self.kernel_irqchip!r}; accepted: on, off, split")
        if self.lock_policy not in LOCK_POLICIES:
            raise ConfigError(f"--lock-policy: {self.lock_policy!r}; accepted: {', '.join(LOCK_POLICIES)}")
        unknown = sorted(set(self.patches) - set(PATCHES))
        if unknown:
            raise ConfigError(f"--patch: unknown patch {unknown[0]!r}; accepted: {', '.join(PATCHES)}")
        for name in PATCHES:
            if name in self.patches:
                for pre in PATCHES[name]:
                    if pre not in self.patches:
                        raise ConfigError(f"--patch: {name!r} needs {pre!r}, which is off; turn {pre!r} on, "
                                          f"or {name!r} off too (--patch -{pre},-{name})")
        if self.quantum_ns < 0:
            raise ConfigError(f"--quantum: must be >= 0 ns, got {self.quantum_ns}")
        if self.host_cpus is not None and (isinstance(self.host_cpus, bool) or not isinstance(self.host_cpus, int)
                                           or not 1 <= self.host_cpus <= MAX_CPUS):
            raise ConfigError(f"--host-cpus: must be an integer from 1 to {MAX_CPUS}, got {self.host_cpus!r}")
        if self.host_sched not in HOST_SCHEDS:
            raise ConfigError(f"--host-sched: {self.host_sched!r}; accepted: {', '.join(HOST_SCHEDS)}")
        if self.host_rq not in HOST_RQS:
            raise ConfigError(f"--host-rq: {self.host_rq!r}; accepted: {', '.join(HOST_RQS)}")
        if isinstance(self.host_nodes, bool) or not isinstance(self.host_nodes, int) or self.host_nodes < 1:
            raise ConfigError(f"--host-nodes: must be a positive integer, got {self.host_nodes!r}")
        if self.host_nodes > 1 and (self.host_cpus is None or self.host_nodes > self.host_cpus):
            raise ConfigError(f"--host-nodes: {self.host_nodes} NUMA nodes need at least as many --host-cpus"
                              + (f", got {self.host_cpus}" if self.host_cpus is not None else ", and none are given"))
        if self.duration_ns is not None and self.duration_ns <= 0:
            raise ConfigError(f"--duration: must be positive, got {self.duration_ns} ns")

    @property
    def series(self) -> str:
        """'before', 'after', or 'custom'."""
        for name, preset in SERIES.items():
            if self.patches == preset:
                return name
        return "custom"

    def replace(self, **changes: Any) -> MachineConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the result document."""
        return {
            "machine": self.machine, "hpet": self.hpet, "smp": dataclasses.asdict(self.smp),
            "accel": "kvm", "kernel_irqchip": self.kernel_irqchip, "workload": self.workload,
            "workload_params": dict(self.workload_params), "series": self.series,
            "patches": sorted(self.patches, key=list(PATCHES).index), "lockless": list(self.lockless),
            "lock_policy": self.lock_policy, "seed": self.seed, "quantum_ns": self.quantum_ns,
            "duration_ns": self.duration_ns, "host_cpus": self.host_cpus,
            "host_sched": self.host_sched, "host_rq": self.host_rq, "host_nodes": self.host_nodes,
            "hv_time": self.hv_time,
            "costs": self.costs.to_dict(),
        }

    def host_text(self) -> str:
        """The host the threads run on, in words ("32 host CPUs scheduled by CFS with per-CPU run
        queues"; the defaults unsaid), or "" with a CPU per thread (no ``--host-cpus``)."""
        if not self.host_cpus:
            return ""
        cpus = f"{self.host_cpus} host CPU{'s' if self.host_cpus != 1 else ''}"
        sched = f" scheduled by {self.host_sched.upper()}" if self.host_sched != "eevdf" else ""
        rq = " with per-CPU run queues" if self.host_rq != "global" else ""
        nodes = f" in {self.host_nodes} NUMA nodes" if self.host_nodes > 1 else ""
        return cpus + nodes + sched + rq

    def qemu_args(self) -> str:
        """The configuration as QEMU-style options."""
        return (f"-M {self.machine},hpet={'on' if self.hpet else 'off'} -smp {self.smp} "
                f"-accel kvm,kernel-irqchip={self.kernel_irqchip}" + (" -cpu host,hv-time" if self.hv_time else ""))

    @classmethod
    def parse(cls, args: str | Sequence[str]) -> MachineConfig:
        """Parse QEMU-style and aemu options from a string or an argv list."""
        argv = shlex.split(args) if isinstance(args, str) else list(args)
        kw: dict[str, Any] = {}
        patches: set[str] | None = None
        patch_edits: list[tuple[bool, str]] = []
        lockless: list[str] = []
        params: dict[str, Any] = {}
        it = iter(range(len(argv)))
        i = 0

        def value(opt: str) -> str:
            nonlocal i
            if i + 1 >= len(argv):
                raise ConfigError(f"option {opt} needs a value")
            i += 1
            return argv[i]

        while i < len(argv):
            tok = argv[i]
            opt, eq, inline = tok.partition("=") if tok.startswith("--") else (tok, "", "")
            if opt.startswith("--") and not eq and opt in _LONG_WITH_VALUE:
                inline = value(opt)
            if opt in ("-M", "-machine"):
                kw.update(_parse_machine(value(opt)))
            elif opt == "-smp":
                kw["smp"] = SMP.parse(value(opt))
            elif opt == "-accel":
                kw.update(_parse_accel(value(opt)))
            elif opt == "-cpu":
                kw.update(_parse_cpu(value(opt)))
            elif opt in _IGNORED_FLAGS:
                pass
            elif opt in _IGNORED_WITH_VALUE:
                value(opt)
            elif opt == "--workload":
                kw["workload"] = inline
            elif opt == "--series":
                if inline not in SERIES:
                    raise ConfigError(f"--series: {inline!r}; accepted: {', '.join(SERIES)}")
                patches = set(SERIES[inline])
            elif opt == "--patch":
                for item in inline.split(","):
                    item = item.strip()
                    on = not (item.startswith("-") or item.startswith("no-"))
                    name = item.lstrip("+-").removeprefix("no-")
                    if name not in PATCHES:
                        raise ConfigError(f"--patch: unknown patch {name!r}; accepted: {', '.join(PATCHES)}")
                    patch_edits.append((on, name))
            elif opt == "--lockless":
                names = [r.strip() for r in inline.split(",")]
                if not all(names):
                    raise ConfigError(f"--lockless: {inline!r} has an empty region name; give REGION[,REGION...] "
                                      "('--lockless help' lists the regions)")
                lockless += names
            elif opt == "--costs":
                kw["costs"] = CostModel.from_toml(inline)
            elif opt == "--seed":
                kw["seed"] = _int(opt, inline)
            elif opt == "--quantum":
                kw["quantum_ns"] = parse_duration(inline, opt)
            elif opt == "--duration":
                kw["duration_ns"] = parse_duration(inline, opt)
            elif opt == "--lock-policy":
                kw["lock_policy"] = inline
            elif opt == "--host-cpus":
                kw["host_cpus"] = _int(opt, inline)
            elif opt == "--host-sched":
                kw["host_sched"] = inline
            elif opt == "--host-rq":
                kw["host_rq"] = inline
            elif opt == "--host-nodes":
                kw["host_nodes"] = _int(opt, inline)
            elif opt == "--param":
                key, eq2, val = inline.partition("=")
                if not eq2 or not key:
                    raise ConfigError(f"--param: expected KEY=VALUE, got {inline!r}")
                params[key] = _number(val)
            else:
                raise ConfigError(f"unknown option {tok!r}; accepted: -M, -smp, -accel, "
                                  f"{', '.join(sorted(_LONG_WITH_VALUE))}")
            i += 1
        del it
        base = set(SERIES["after"]) if patches is None else patches
        for on, name in patch_edits:
            (base.add if on else base.discard)(name)
        kw["patches"] = frozenset(base)
        kw["lockless"] = tuple(lockless)
        kw["workload_params"] = tuple(sorted(params.items()))
        return cls(**kw)


_LONG_WITH_VALUE = {"--workload", "--series", "--patch", "--lockless", "--costs", "--seed", "--quantum",
                    "--duration", "--lock-policy", "--param", "--host-cpus", "--host-sched",
                    "--host-rq", "--host-nodes"}

#: Every option :meth:`MachineConfig.parse` takes a value for: the next argument, whatever it looks
#: like (``--patch -hpet-lock``, ``--seed -1``), or ``--option=value`` for the long ones.
OPTIONS_WITH_VALUE: frozenset[str] = frozenset({"-M", "-machine", "-smp", "-accel", "-cpu", *_IGNORED_WITH_VALUE,
                                                *_LONG_WITH_VALUE})


def _parse_machine(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, part in enumerate(text.split(",")):
        key, eq, val = part.partition("=")
        if not eq and i == 0:
            key, val = "type", key
        if key == "type":
            if val not in MACHINES:
                raise ConfigError(f"-M: unknown machine {val!r}; accepted: {', '.join(MACHINES)}")
            out["machine"] = val
        elif key == "hpet":
            out["hpet"] = _onoff("-M hpet", val)
        elif key in ("accel",):
            out.update(_parse_accel(val))
        elif key == "kernel-irqchip":
            out.update(_parse_accel("kvm,kernel-irqchip=" + val))
        else:
            raise ConfigError(f"-M: unknown property {key!r}; accepted: hpet, kernel-irqchip")
    return out


def _parse_cpu(text: str) -> dict[str, Any]:
    """``-cpu MODEL[,FLAG[=on|off]...]``: the model is not modelled beyond its name; of the flags
    only ``hv-time`` is (any other is an error, not silently ignored)."""
    model, *flags = text.split(",")
    if model not in CPU_MODELS:
        raise ConfigError(f"-cpu: model {model!r} is not modelled; accepted: {', '.join(CPU_MODELS)}")
    out: dict[str, Any] = {}
    for flag in flags:
        name, eq, val = flag.partition("=")
        on = True
        if name.startswith(("+", "-")) and not eq:
            on, name = name[0] == "+", name[1:]
        elif eq:
            on = _onoff(f"-cpu {name}", val)
        if name not in CPU_FLAGS:
            raise ConfigError(f"-cpu: flag {name!r} is not modelled; aemu models: {', '.join(CPU_FLAGS)}")
        out["hv_time"] = on
    return out


def _parse_accel(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, part in enumerate(text.split(",")):
        key, eq, val = part.partition("=")
        if not eq and i == 0:
            if key != "kvm":
                raise ConfigError(f"-accel: {key!r} is not modelled; aemu models kvm only")
            continue
        if key == "kernel-irqchip":
            if val not in IRQCHIP_MODES:
                raise ConfigError(f"-accel: kernel-irqchip={val!r}; accepted: on, off, split")
            out["kernel_irqchip"] = val
        else:
            raise ConfigError(f"-accel: unknown property {key!r}; accepted: kernel-irqchip")
    return out


def _onoff(opt: str, val: str) -> bool:
    if val in ("on", "yes", "true"):
        return True
    if val in ("off", "no", "false"):
        return False
    raise ConfigError(f"{opt}: expected on or off, got {val!r}")


def _int(opt: str, val: str) -> int:
    try:
        return int(val)
    except ValueError:
        raise ConfigError(f"{opt}: expected an integer, got {val!r}") from None


def _number(val: str) -> Any:
    for conv in (int, float):
        try:
            return conv(val)
        except ValueError:
            pass
    return val


_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


def parse_duration(text: str, opt: str = "duration") -> int:
    """``"250ms"``, ``"2s"``, ``"10us"``, ``"5000"`` (ns) -> integer nanoseconds."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(ns|us|µs|ms|s)?\s*", text)
    if not m:
        raise ConfigError(f"{opt}: expected a time such as 500ns, 10us, 2ms or 1s, got {text!r}")
    return round(float(m.group(1)) * _UNITS[m.group(2) or "ns"])
