"""PNG plots: each writes a real image; bad paths and a missing matplotlib are one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import aemu
import aemu.compare
from aemu.errors import ConfigError
from aemu.report.plots import plot_bql_utilisation, plot_latency_cdf, plot_scaling, write_comparison_plots
from aemu.result import Result

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BENCH = "-smp 4 --workload hpet-bench --param reads=20"


def assert_png(p: Path) -> None:
    data = p.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1024


@pytest.fixture(scope="module")
def bench() -> dict[str, Result]:
    return {s: aemu.simulate(f"{BENCH} --series {s}") for s in ("before", "after")}


@pytest.fixture(scope="module")
def scaling() -> dict[str, list[tuple[int, Result]]]:
    """Boot at 1 and 4 vCPUs; 'before' at 4 vCPUs hits a 1 ms cap."""
    out: dict[str, list[tuple[int, Result]]] = {"before": [], "after": []}
    for s in out:
        for n in (1, 4):
            cap = " --duration 1ms" if (s, n) == ("before", 4) else ""
            out[s].append((n, aemu.simulate(f"-smp {n} -accel kvm,kernel-irqchip=split --workload boot "
                                             f"--param phases=1 --series {s}{cap}")))
    return out


class TestPlots:
    def test_latency_cdf(self, bench: dict[str, Result], tmp_path: Path) -> None:
        p = plot_latency_cdf(bench, "hpet", tmp_path / "cdf.png")
        assert p == tmp_path / "cdf.png"
        assert_png(p)

    def test_latency_cdf_of_a_region_nobody_touched_names_the_regions(self, bench: dict[str, Result],
                                                                       tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"region 'serial'.*regions: .*hpet"):
            plot_latency_cdf(bench, "serial", tmp_path / "cdf.png")

    def test_scaling_with_series_and_a_capped_run(self, scaling: dict[str, list[tuple[int, Result]]],
                                                  tmp_path: Path) -> None:
        assert not scaling["before"][1][1].finished and all(r.finished for _, r in scaling["after"])
        assert_png(plot_scaling(scaling, tmp_path / "scaling.png"))

    def test_scaling_with_one_sequence_and_a_label(self, scaling: dict[str, list[tuple[int, Result]]],
                                                   tmp_path: Path) -> None:
        assert_png(plot_scaling(scaling["after"], tmp_path / "one.png", metric_label="boot time (ms)"))

    def test_bql_utilisation(self, bench: dict[str, Result], tmp_path: Path) -> None:
        assert bench["before"].bql_utilisation
        assert_png(plot_bql_utilisation(bench, tmp_path / "util.png"))

    def test_comparison_plots_go_into_a_new_directory(self, tmp_path: Path) -> None:
        c = aemu.compare.compare("-smp 4 --param phases=1 --param reads=20", ablation=False, jobs=1)
        out = tmp_path / "new" / "plots"
        paths = write_comparison_plots(c, out)
        assert [p.name for p in paths] == ["hpet-latency-cdf.png", "bql-utilisation-boot.png"]
        for p in paths:
            assert p.parent == out
            assert_png(p)


class TestErrors:
    def test_an_unwritable_path_is_one_line_naming_it(self, bench: dict[str, Result], tmp_path: Path) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        with pytest.raises(ConfigError) as err:
            plot_bql_utilisation(bench, blocker / "util.png")
        assert str(blocker / "util.png") in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(ConfigError, match="a-file"):
            write_comparison_plots(aemu.compare.Comparison({}, {}, {}), blocker / "plots")

    def test_without_matplotlib_the_error_says_how_to_install_it(self, bench: dict[str, Result],
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        with pytest.raises(ConfigError, match=r"^plots need matplotlib: pip install matplotlib$"):
            plot_latency_cdf(bench, "hpet", tmp_path / "cdf.png")
        assert not (tmp_path / "cdf.png").exists()

    def test_importing_aemu_and_the_plot_module_does_not_import_matplotlib(self) -> None:
        code = "import sys, aemu, aemu.report.plots; assert 'matplotlib' not in sys.modules"
        subprocess.run([sys.executable, "-c", code], check=True)
