"""The cost model: what each step of the machine costs in virtual nanoseconds.

One frozen dataclass, :class:`CostModel`, read from Python, from a TOML file (``--costs``) or left
at its defaults. Results come from the model running with these costs; nothing is tuned per
scenario. Every default says where it comes from (``docs/CALIBRATION.md`` in the repository collects
the published figures); where nothing is published it says "assumption".
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ConfigError

__all__ = ["CostModel", "COST_SOURCES", "DEFAULT_HANDLER_NS", "HANDLER_REGIONS", "MAX_COSTS_FILE_BYTES"]

#: Handler cost per region name (ns of device work inside the handler, under whatever lock the
#: access takes). Sources in COST_SOURCES["handler_ns"].
DEFAULT_HANDLER_NS: Mapping[str, int] = MappingProxyType({
    "acpi-tmr": 250,   # CALIBRATION: PM-timer handler ~530-710 cycles over a no-op port (nested, derived)
    "hpet": 300,       # assumption (CALIBRATION "reasonable defaults": HPET register read ~300 ns)
    "serial": 500,     # assumption: 16550 register + chardev write
    "rtc": 300,        # assumption
    "rtc-index": 100,  # assumption: latch an index
    "pit": 300,        # assumption
    "pcspk": 100,      # assumption
    "port92": 100,     # assumption
    "ioport80": 50,    # assumption: a write that does nothing
    "pci-conf-idx": 100,   # assumption: latch an address
    "pci-conf-data": 400,  # assumption: config-space lookup
    "i8042-data": 200,  # assumption
    "i8042-cmd": 200,   # assumption
    "ioapic": 300,      # assumption: redirection-table access
    "apic-msi": 300,    # assumption: MSI decode + kvm_irqchip_send_msi
})

#: Every name aemu's devices look their handler cost up by (the I/O regions of ``-M q35`` and
#: ``-M pc`` under every kernel-irqchip mode; the MSI window is costed as ``apic-msi`` whether it
#: is QEMU's ``apic-msi`` or ``kvm-apic-msi``). A costs file may name only these.
HANDLER_REGIONS: frozenset[str] = frozenset(DEFAULT_HANDLER_NS) | {"acpi-evt", "acpi-cnt", "pic", "elcr",
                                                                   "lpc-reset-control"}

#: The most a costs file may hold: it is a short TOML table, and ``--costs /dev/zero`` must not
#: read until memory runs out.
MAX_COSTS_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class CostModel:
    """Costs of the machine's steps in integer ns of virtual time (see :data:`COST_SOURCES`)."""

    #: PIO exit to userspace and back into the guest (KVM_EXIT_IO round trip), lock waits excluded.
    pio_exit_ns: int = 2_000
    #: MMIO exit round trip (page walk + instruction decode on top of a PIO exit).
    mmio_exit_ns: int = 2_700
    #: An exit handled in the kernel (in-kernel LAPIC: EOI, IPI, timer MSR, HLT wake-up).
    kernel_exit_ns: int = 400
    #: Wake-up latency of a contended BQL hand-off (release to the waiter running).
    bql_handoff_ns: int = 5_000
    #: Wake-up latency of a contended device mutex hand-off (a QemuMutex like the BQL).
    mutex_handoff_ns: int = 5_000
    #: Work kvm_arch_pre_run does under the BQL (PIC check, TPR/cr8 sync, window request).
    pre_run_ns: int = 150
    #: Injecting an interrupt (KVM_INTERRUPT ioctl from pre_run, or in-kernel LAPIC injection).
    irq_inject_ns: int = 400
    #: Sending an IPI through the in-kernel LAPIC (ICR write exit handled in the kernel).
    ipi_ns: int = 1_300
    #: Guest compute between back-to-back exits in micro-benchmarks (loop body, compare, store).
    guest_compute_ns: int = 100
    #: Main loop (iothread) work per expired device timer, under the BQL.
    timer_cb_ns: int = 1_000
    #: Handler cost of a region not listed in ``handler_ns``.
    default_handler_ns: int = 200
    #: Handler cost per region name.
    handler_ns: Mapping[str, int] = field(default_factory=lambda: DEFAULT_HANDLER_NS)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "handler_ns":
                if not isinstance(v, Mapping):
                    raise ConfigError(f"costs: handler_ns must be a table of region name = ns, got {v!r}")
                for k, ns in v.items():
                    _check_ns(f"handler_ns.{k}", ns)
                object.__setattr__(self, "handler_ns", MappingProxyType({**DEFAULT_HANDLER_NS, **v}))
            else:
                _check_ns(f.name, v)

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return (CostModel.from_dict, (self.to_dict(),))  # MappingProxyType does not pickle

    def handler(self, region: str) -> int:
        """The handler cost of the region named ``region``."""
        return self.handler_ns.get(region, self.default_handler_ns)

    def replace(self, **changes: Any) -> CostModel:
        """A copy with some costs changed (unknown names raise ConfigError)."""
        return CostModel.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for the result document and for TOML round trips)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["handler_ns"] = dict(self.handler_ns)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostModel:
        """Build from a mapping; unknown keys raise ConfigError naming the accepted ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"costs: unknown cost {unknown[0]!r}; accepted: {', '.join(sorted(names))}")
        return cls(**dict(data))

    @classmethod
    def from_toml(cls, path: str | Path) -> CostModel:
        """Load costs from a TOML file: top-level keys as in the dataclass, ``[handler_ns]`` table.

        The file may hold at most :data:`MAX_COSTS_FILE_BYTES`, and ``[handler_ns]`` may name only
        :data:`HANDLER_REGIONS` (a misspelt region would otherwise be costed nowhere, silently).
        """
        p = Path(path)
        try:
            with open(p, "rb") as f:
                raw = f.read(MAX_COSTS_FILE_BYTES + 1)
        except FileNotFoundError:
            raise ConfigError(f"--costs: no such file: {p}") from None
        except OSError as e:
            raise ConfigError(f"--costs: cannot read {p}: {e.strerror or e}") from None
        if len(raw) > MAX_COSTS_FILE_BYTES:
            raise ConfigError(f"--costs: {p} is larger than {MAX_COSTS_FILE_BYTES >> 20} MiB; "
                              "a costs file is a short TOML table ('aemu costs --toml' prints one)")
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"--costs: {p} is not UTF-8 text; a costs file is a TOML table") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--costs: {p} is not valid TOML: {e}") from None
        handlers = data.get("handler_ns")
        if isinstance(handlers, Mapping):
            unknown = sorted(set(handlers) - HANDLER_REGIONS)
            if unknown:
                raise ConfigError(f"--costs: {p}: [handler_ns] {unknown[0]!r} is not a region aemu models; "
                                  f"regions: {', '.join(sorted(HANDLER_REGIONS))}")
        return cls.from_dict(data)


def _check_ns(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"costs: {name} must be an integer number of nanoseconds >= 0, got {v!r}")


#: Where each default comes from (shown by README and ``aemu costs``).
COST_SOURCES: Mapping[str, str] = MappingProxyType({
    "pio_exit_ns": "assumption: ~3x a kernel-handled exit (vmexit cpuid ~1,100 cycles, kvm list Dec 2024) "
                   "plus ioctl return/entry; nested inl_from_qemu/cpuid ratio ~3.3x (VMX optimizations, 2019)",
    "mmio_exit_ns": "assumption: PIO exit plus page walk and instruction decode; 'much slower than PIO' "
                    "(Linux commit 68c3b4d1676d)",
    "kernel_exit_ns": "kvm-unit-tests vmexit cpuid: ~1,020-1,100 cycles (~0.4 us), kvm list Dec 2024",
    "bql_handoff_ns": "assumption: bounded by ~8.9 us per forced OS-mutex hand-off (zio PR #573)",
    "mutex_handoff_ns": "assumption: same as the BQL (both are QemuMutex / pthread mutexes)",
    "pre_run_ns": "assumption (CALIBRATION 'reasonable defaults')",
    "irq_inject_ns": "assumption: one kernel-handled exit (~0.4 us)",
    "ipi_ns": "kvm-unit-tests vmexit ipi: ~3,200-3,300 cycles (Skylake, 2020)",
    "guest_compute_ns": "assumption: a read loop's body (hpet_read_test: read, compare, store)",
    "timer_cb_ns": "assumption: QEMU timer callback plus main-loop dispatch",
    "default_handler_ns": "assumption",
    "handler_ns": "acpi-tmr: derived from nested inl_from_pmtimer - inl_from_qemu (~530-710 cycles); "
                  "hpet 300 ns: CALIBRATION default; others: assumptions",
})
