"""The switches of QEMU's BQL-free PIO/MMIO series, in patch order: the one list of them.

Each switch turns on one step of the series, or (``hpet-irq-bql``) the follow-up fix merged with
it in QEMU 10.2; a switch may need earlier ones on. The set of switches
that are on lives in :attr:`aemu.devices.base.DeviceHost.patches` (a plain ``set``, read by the
vCPU loop and the devices); :func:`check_patches` validates a whole set and :func:`set_patch` flips
one, both raising :class:`aemu.errors.ConfigError` with a message a user can act on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import ConfigError

__all__ = ["ABLATION", "PATCHES", "SWITCHES", "Patch", "check_patches", "set_patch"]


@dataclass(frozen=True, slots=True)
class Patch:
    """One switch of the series: its name, the switches it needs on, and what it changes."""

    name: str
    #: Switches that must be on for this one to be on.
    needs: tuple[str, ...]
    #: Which patches of the series it models ("1/6", "4-5/6").
    part: str
    #: What turning it on changes, in one line.
    summary: str


#: The switches in patch order.
SWITCHES: tuple[Patch, ...] = (
    Patch("lockless-io", (), "1/6",
          "MemoryRegion.lockless_io: dispatch may skip the BQL for regions that ask"),
    Patch("pmtimer-lockless", ("lockless-io",), "2/6",
          "the ACPI PM timer region is lockless (it only reads the virtual clock)"),
    Patch("hpet-lock", ("lockless-io",), "3/6",
          "the HPET takes its own mutex; its region is lockless"),
    Patch("hpet-counter-lockless", ("hpet-lock",), "4-5/6",
          "HPET main-counter reads take no lock (state_version sequence lock)"),
    Patch("irqchip-pre-run", (), "6/6",
          "kvm_arch_pre_run takes the BQL only when an interrupt needs it"),
    Patch("hpet-irq-bql", (), "fix",
          "the HPET takes the BQL around its IRQ updates (QEMU commit d99041a20328, the follow-up "
          "to 3/6); off, it raises its IRQ under its own mutex only, as the merged 3/6 did"),
)

#: Switch name -> its prerequisites, in patch order (read-only).
PATCHES: Mapping[str, tuple[str, ...]] = MappingProxyType({p.name: p.needs for p in SWITCHES})

#: The switches ``aemu compare``'s ablation turns off one at a time: the six patches of the series.
#: The follow-up fix (part "fix") is a correctness fix, not a step of the speed-up: ``aemu check``
#: shows what turning it off breaks (:mod:`aemu.check`).
ABLATION: tuple[str, ...] = tuple(p.name for p in SWITCHES if p.part != "fix")


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"unknown patch {name!r}; accepted: {', '.join(PATCHES)}")


def check_patches(names: Iterable[str]) -> frozenset[str]:
    """``names`` as a set, if every name is a switch and every prerequisite is in it (else ConfigError)."""
    on = frozenset(names)
    unknown = sorted(on - PATCHES.keys())
    if unknown:
        raise _unknown(unknown[0])
    for name, needs in PATCHES.items():
        if name in on:
            for pre in needs:
                if pre not in on:
                    raise ConfigError(f"patch {name!r} needs {pre!r}, which is off")
    return on


def set_patch(on: set[str], name: str, value: bool) -> None:
    """Turn switch ``name`` on or off in the set ``on``: ConfigError, ``on`` unchanged, if ``name``
    is unknown, if turning it on misses a prerequisite, or if turning it off leaves a dependant on."""
    needs = PATCHES.get(name)
    if needs is None:
        raise _unknown(name)
    if value:
        missing = [p for p in needs if p not in on]
        if missing:
            raise ConfigError(f"patch {name!r} needs {missing[0]!r}, which is off")
        on.add(name)
    else:
        dependants = [p for p, pre in PATCHES.items() if name in pre and p in on]
        if dependants:
            raise ConfigError(f"cannot turn off {name!r}: {dependants[0]!r} needs it")
        on.discard(name)
