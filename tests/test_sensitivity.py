"""aemu sensitivity (aemu/sensitivity.py): each cost one at a time around compare's verdict, small."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aemu.cli import main
from aemu.errors import ConfigError
from aemu.sensitivity import (Sensitivity, Variant, Verdict, distinct_runs, format_sensitivity, run_sensitivity,
                              sensitivity_configs)

# fifo: the hand-off is then the convoy's price, which the verdict must depend on
ARGS = "-M q35,hpet=off -smp 8 -accel kvm,kernel-irqchip=split --param phases=1 --param reads=50 --lock-policy fifo"
PARAMS = ["costs.bql_handoff_ns", "costs.default_handler_ns"]


@pytest.fixture(scope="module")
def small() -> Sensitivity:
    return run_sensitivity(ARGS, parameters=PARAMS, jobs=2)


def test_the_runs_are_compares_four_at_each_point() -> None:
    runs, values = sensitivity_configs(ARGS, parameters=PARAMS, factors=(0.5, 2.0))
    assert values == {"costs.bql_handoff_ns": 5000, "costs.default_handler_ns": 200}
    assert len(runs) == 4 * (1 + 2 * 2)
    c = runs["costs.bql_handoff_ns", 0.5, "hpet-bench", "before"]
    assert (c.costs.bql_handoff_ns, c.workload, c.hpet, c.series) == (2500, "hpet-bench", True, "before")
    assert runs[None, 1.0, "boot", "after"].costs.bql_handoff_ns == 5000


def test_which_costs_the_verdict_depends_on(small: Sensitivity) -> None:
    assert small.baseline is not None and small.baseline.boot_speedup > 1 and small.baseline.hpet_speedup > 1
    assert small.depends_on() == ["costs.bql_handoff_ns"]  # the hand-off is the convoy's price
    assert small.independent_of() == ["costs.default_handler_ns"]  # no region on the path uses it
    fast, slow = (v.verdict for v in small.variants if v.parameter == "costs.bql_handoff_ns")
    assert fast is not None and slow is not None
    assert fast.hpet_speedup < small.baseline.hpet_speedup < slow.hpet_speedup
    assert not small.flips()


def test_the_table(small: Sensitivity) -> None:
    text = format_sensitivity(small)
    lines = text.splitlines()
    assert lines[4].startswith("baseline: boot ") and "HPET read p50" in lines[4]
    assert lines[6].split()[:6] == ["parameter", "value", "boot", "0.5x", "boot", "2x"]
    assert lines[7].startswith("bql_handoff_ns ") and lines[8].startswith("default_handler_ns ")
    assert lines[7].split()[1:3] == ["5,000", "ns"]
    assert "the verdict depends on: bql_handoff_ns" in text and "it does not depend on: default_handler_ns" in text
    assert lines[8].split()[-2:] == ["0%", "0%"]


def test_values_carry_their_units() -> None:
    base = Verdict(2.0, False, 10.0)
    values = (("costs.handler_ns.hpet", 300), ("param.work_us", 2_000), ("param.phases", 3), ("param.qpc_per_s", 10_000))
    s = Sensitivity("ARGS", base, tuple(Variant(n, f, round(v * f), base) for n, v in values for f in (0.5, 2.0)), values)
    rows = {line.split()[0]: line.split()[1:3] for line in format_sensitivity(s).splitlines()[7:11]}
    assert rows == {"handler_ns.hpet": ["300", "ns"], "param.work_us": ["2,000", "µs"], "param.phases": ["3", "2.0x"],
                    "param.qpc_per_s": ["10,000/s", "2.0x"]}


def test_a_verdict_that_flips_is_named() -> None:
    base = Verdict(10.0, False, 50.0)
    s = Sensitivity("ARGS", base, (Variant("costs.x", 0.5, 1, Verdict(0.9, False, 40.0)),
                                   Variant("costs.x", 2.0, 4, Verdict(12.0, False, 55.0))), (("costs.x", 2),))
    assert s.depends_on() == ["costs.x"] and s.moves("costs.x") == pytest.approx((0.91, 0.2))
    assert "the series stops helping at: x 0.5x" in format_sensitivity(s)


def test_the_command_table_json_and_tornado(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc, plots = tmp_path / "s.json", tmp_path / "plots"
    assert main(["sensitivity", "-q", "--jobs", "2", "-smp", "8", "--param", "phases=1", "--param", "reads=50",
                 "--params", ",".join(PARAMS), "--json", str(doc), "--plot", str(plots)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("aemu sensitivity: -M q35,hpet=off -smp 8,sockets=1,cores=8,threads=1,maxcpus=8 "
                          "-accel kvm,kernel-irqchip=split --param phases=1 --param reads=50 on 32 host CPUs (boot)")
    assert "(20 runs; local pool of 2 processes; wall time" in out
    d = json.loads(doc.read_text())
    assert d["schema"] == "aemu.sensitivity/1" and d["depends_on"] == ["costs.bql_handoff_ns"]
    assert [v["factor"] for v in d["parameters"][0]["variants"]] == [0.5, 2.0]
    PIL = pytest.importorskip("PIL.Image")
    text = PIL.open(plots / "sensitivity-tornado.png").text
    assert text["Title"].splitlines() == ["boot", "hpet-bench"]
    assert "legend: value x0.5" in text["Description"] and "legend: value x2" in text["Description"]


@pytest.mark.parametrize("argv, message", [
    (["--params", "costs.nope"], "unknown cost 'costs.nope'"),
    (["--params", "smp"], "--params: 'smp' is neither a cost nor a boot parameter; give costs.NAME"),
    (["--params", "param.reads"], "--params: 'param.reads' is not a parameter of the boot; its parameters: "
                                  "param.phases, param.work_us"),
    (["--params", ""], "--params: empty list"),
    (["--factors", "0.5,x"], "--factors '0.5,x': give multiples such as 0.5,2"),
    (["--factors", "0,2"], "--factors: [0.0, 2.0]; give positive multiples"),
    (["--workload", "boot"], "--workload: sensitivity runs compare's boot and hpet-bench"),
])
def test_bad_input_is_one_line_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sensitivity", "-q", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_configs_reject_what_is_neither_a_cost_nor_a_boot_parameter() -> None:
    with pytest.raises(ConfigError, match="neither a cost nor a boot parameter"):
        sensitivity_configs(ARGS, parameters=["seed"])
    with pytest.raises(ConfigError, match="not a parameter of the boot"):
        sensitivity_configs(ARGS, parameters=["param.reads"])  # hpet-bench's


def test_a_boot_parameter_is_scaled_in_the_boots_runs_only_and_kept_in_range() -> None:
    runs, values = sensitivity_configs(ARGS, parameters=["param.phases", "param.work_us"], factors=(0.5, 2.0))
    assert values == {"param.phases": 1, "param.work_us": 2_000}  # ARGS gives phases=1; work_us its default
    assert dict(runs["param.work_us", 2.0, "boot", "before"].workload_params)["work_us"] == 4_000
    assert dict(runs["param.phases", 0.5, "boot", "after"].workload_params)["phases"] == 1  # not 0: its minimum
    slots, _ = sensitivity_configs(ARGS, parameters=["param.pci_slots"], factors=(2.0,))
    assert dict(slots["param.pci_slots", 2.0, "boot", "before"].workload_params)["pci_slots"] == 32  # its maximum
    assert runs["param.work_us", 2.0, "hpet-bench", "before"] == runs[None, 1.0, "hpet-bench", "before"]
    # the baseline's four, each parameter's boots at each factor, less phases at 0.5x (the baseline's)
    assert distinct_runs(runs) == 4 + 2 * 2 * 2 - 2


def test_a_boot_parameter_moves_the_boot_and_not_hpet_bench() -> None:
    s = run_sensitivity(ARGS, parameters=["param.work_us"], jobs=2)
    assert s.baseline is not None
    half, double = (v.verdict for v in s.variants)
    assert half is not None and double is not None
    assert half.hpet_speedup == double.hpet_speedup == s.baseline.hpet_speedup
    assert half.boot_speedup != s.baseline.boot_speedup != double.boot_speedup
    assert format_sensitivity(s).splitlines()[7].split()[:3] == ["param.work_us", "2,000", "µs"]


def test_the_command_runs_compare_machine_by_default() -> None:
    from aemu.compare import MACHINE_ARGS
    from aemu.sensitivity import DEFAULT_ARGS

    assert DEFAULT_ARGS == MACHINE_ARGS and "--host-cpus 32" in MACHINE_ARGS and "-smp 240,sockets=4" in MACHINE_ARGS
