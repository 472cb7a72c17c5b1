"""The cost model: defaults with sources, TOML loading, validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aemu.costs import COST_SOURCES, CostModel
from aemu.errors import ConfigError


def test_every_default_cites_a_source() -> None:
    for f in dataclasses.fields(CostModel):
        assert f.name in COST_SOURCES and COST_SOURCES[f.name]


def test_frozen_and_handler_lookup() -> None:
    c = CostModel()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.pio_exit_ns = 1  # type: ignore[misc]
    assert c.handler("acpi-tmr") == 250 and c.handler("no-such-region") == c.default_handler_ns


def test_from_toml(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('pio_exit_ns = 1500\nbql_handoff_ns = 9000\n[handler_ns]\nhpet = 123\n')
    c = CostModel.from_toml(p)
    assert (c.pio_exit_ns, c.bql_handoff_ns, c.handler("hpet"), c.handler("acpi-tmr")) == (1500, 9000, 123, 250)
    assert CostModel.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("text, needle", [
    ("pio_exit_ns = -1", "pio_exit_ns must be an integer number of nanoseconds >= 0"),
    ("warp_ns = 1", "unknown cost 'warp_ns'"),
    ("pio_exit_ns = ", "is not valid TOML"),
    ("[handler_ns]\nhpet = 'fast'", "handler_ns.hpet must be an integer"),
])
def test_bad_toml(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        CostModel.from_toml(p)


def test_a_costs_file_is_read_up_to_a_cap(tmp_path: Path) -> None:
    """Regression: ``--costs /dev/zero`` read until memory ran out."""
    with pytest.raises(ConfigError, match="is larger than 1 MiB"):
        CostModel.from_toml("/dev/zero")
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="is larger than 1 MiB"):
        CostModel.from_toml(big)


def test_a_misspelt_region_in_a_costs_file_is_an_error(tmp_path: Path) -> None:
    """Regression: ``[handler_ns] nosuchregion = 10`` was accepted and costed nothing."""
    p = tmp_path / "c.toml"
    p.write_text("[handler_ns]\nnosuchregion = 10\n")
    with pytest.raises(ConfigError, match=r"\[handler_ns\] 'nosuchregion' is not a region aemu models; regions: "
                                          r"acpi-cnt, acpi-evt, acpi-tmr"):
        CostModel.from_toml(p)
    p.write_text("[handler_ns]\npic = 10\nelcr = 20\n")
    assert CostModel.from_toml(p).handler("pic") == 10


def test_handler_regions_are_the_regions_the_boards_model() -> None:
    """Every I/O region of every board variant can be costed by name, and nothing else."""
    from aemu import Machine, MachineConfig
    from aemu.costs import HANDLER_REGIONS

    names: set[str] = set()
    for machine in ("q35", "pc"):
        for irqchip in ("on", "off", "split"):
            m = Machine(MachineConfig.parse(f"-M {machine} -accel kvm,kernel-irqchip={irqchip} --workload idle"))
            names |= {mr.name for mr in m.regions() if mr.kind == "io"}
    assert HANDLER_REGIONS == names - {"io", "kvm-apic-msi"}  # the in-kernel MSI window is costed as apic-msi
