"""Sweeps (aemu/sweep.py) on aemu's pool (aemu/batch.py) and on Dask: grids, rows, failures, resume.

The grids are tiny (hpet-bench with a few reads at -smp 1..4) so the whole module takes seconds
on 2 cores; the Dask tests share one session-scoped ``LocalCluster(n_workers=2, processes=True)``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aemu import MachineConfig
from aemu.batch import Batch, Failure
from aemu.cli import main
from aemu.errors import ConfigError
from aemu.sweep import (Grid, Sweep, SweepRun, config_key, format_sweep, iter_sweep, load_runs, parse_values,
                        run_document, run_sweep)

BASE = MachineConfig.parse("--param reads=20")
SMALL = {"smp": [1, 4], "costs.bql_handoff_ns": [2000, 5000], "series": ["before", "after"]}


def _no_wall(doc: Any) -> Any:
    """A document with every result's wall time taken out (the one figure that is host time)."""
    doc = json.loads(json.dumps(doc))
    for row in doc["runs"]:
        if row.get("result"):
            row["result"].pop("wall_s")
    return doc


# -- the grid -------------------------------------------------------------------------------------------

class TestGrid:
    def test_points_are_the_product_last_dimension_fastest(self) -> None:
        g = Grid.of(BASE, {"smp": [1, 4], "series": ["before", "after"]})
        assert g.points() == [{"smp": 1, "series": "before"}, {"smp": 1, "series": "after"},
                              {"smp": 4, "series": "before"}, {"smp": 4, "series": "after"}]

    def test_series_then_patch_then_the_rest(self) -> None:
        g = Grid.of(BASE, {"patch": ["none", "-hpet-counter-lockless"], "series": ["before", "after"],
                           "costs.bql_handoff_ns": [2000], "lock-policy": ["barging"], "host-cpus": [2, "none"]})
        c = g.config({"patch": "-hpet-counter-lockless", "series": "after", "costs.bql_handoff_ns": 2000,
                      "lock-policy": "barging", "host-cpus": 2})
        assert "hpet-counter-lockless" not in c.patches and "hpet-lock" in c.patches
        assert (c.costs.bql_handoff_ns, c.lock_policy, c.host_cpus) == (2000, "barging", 2)
        assert g.config({"patch": "-hpet-counter-lockless", "series": "before", "costs.bql_handoff_ns": 2000,
                         "lock-policy": "barging", "host-cpus": None}).patches == frozenset()

    def test_the_host_cpus_before_the_nodes_that_must_fit_in_them(self) -> None:
        """Whatever order the dimensions come in, a point's host CPUs are set before its NUMA
        nodes (--host-nodes 2 needs at least 2 --host-cpus)."""
        g = Grid.of(BASE, {"host-nodes": [1, 2], "host-rq": ["per-cpu"], "host-cpus": [4]})
        c = g.config({"host-nodes": 2, "host-rq": "per-cpu", "host-cpus": 4})
        assert (c.host_nodes, c.host_rq, c.host_cpus) == (2, "per-cpu", 4)

    def test_costs_handlers_params_and_text_values(self) -> None:
        assert parse_values("costs.bql_handoff_ns", "2us,5000") == (2000, 5000)
        assert parse_values("smp", "1, 8,32") == (1, 8, 32)
        assert parse_values("patch", "-hpet-lock,-hpet-counter-lockless") == ("-hpet-lock,-hpet-counter-lockless",)
        g = Grid.of(BASE, {"costs.handler_ns.hpet": ["600"], "param.reads": [10]})
        c = g.config(g.points()[0])
        assert c.costs.handler("hpet") == 600 and dict(c.workload_params) == {"reads": 10}

    @pytest.mark.parametrize("dims, message", [
        ({"bogus": [1]}, "unknown parameter 'bogus'; accepted: smp, series, patch"),
        ({"costs.bql_handof_ns": [1]}, "unknown cost 'costs.bql_handof_ns'; accepted: costs.pio_exit_ns"),
        ({"costs.handler_ns.nope": [1]}, "unknown cost 'costs.handler_ns.nope': no region 'nope'"),
        ({"smp": []}, "smp: empty list"),
        ({"costs.bql_handoff_ns": ["fast"]}, "costs.bql_handoff_ns: 'fast' is not a time in ns"),
        ({"smp": ["x"]}, "smp: 'x' is not a vCPU count"),
        ({"smp": [True]}, "smp: True is not a value of smp"),
        ({"smp": [1, 1]}, "smp: [1, 1] repeats a value"),
        ({"lock-policy": ["fair"]}, "lock-policy: 'fair'; accepted: fifo, barging"),
        ({"series": ["before"], "patch": ["hpet-lock"]},
         "series=before patch=hpet-lock: --patch: 'hpet-lock' needs 'lockless-io'"),
        ({"param.reads": [0]}, "parameter reads must be an integer >= 1, got 0"),
    ])
    def test_bad_input_is_one_line(self, dims: dict[str, Any], message: str) -> None:
        with pytest.raises(ConfigError) as e:
            Grid.of(BASE, dims)
        assert message in str(e.value) and "\n" not in str(e.value)

    def test_a_grid_file(self, tmp_path: Path) -> None:
        f = tmp_path / "study.toml"
        f.write_text('args = "-M q35,hpet=off --workload boot --param phases=1"\n'
                     '[grid]\nsmp = [2, 4]\ncosts.bql_handoff_ns = [2000, 9000]\nseries = "after"\n')
        g = Grid.from_toml(f, ["-accel", "kvm,kernel-irqchip=split"], {"lock-policy": ["fifo", "barging"]})
        assert g.names == ["smp", "costs.bql_handoff_ns", "series", "lock-policy"] and len(g.points()) == 8
        assert (g.base.workload, g.base.hpet, g.base.kernel_irqchip) == ("boot", False, "split")
        f.write_text("[grid]\nsmp = []\n")
        with pytest.raises(ConfigError, match="smp: empty list"):
            Grid.from_toml(f)
        f.write_text("smp = [1]\n")
        with pytest.raises(ConfigError, match="unknown key 'smp'; a grid file has args"):
            Grid.from_toml(f)


# -- running ---------------------------------------------------------------------------------------------

def _fails_at_4(config: MachineConfig) -> dict[str, Any]:
    if config.smp.cpus == 4 and config.series == "before":
        raise RuntimeError("no such luck at -smp 4")
    return run_document(config)


def _dies_at_4(config: MachineConfig) -> dict[str, Any]:
    if config.smp.cpus == 4 and config.series == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    return run_document(config)


@pytest.fixture(scope="module")
def local_sweep() -> Sweep:
    return run_sweep(Grid.of(BASE, SMALL), jobs=2)


class TestRun:
    def test_rows_in_grid_order_with_full_configuration(self, local_sweep: Sweep) -> None:
        s = local_sweep
        assert [r.point for r in s.runs] == s.grid.points() and all(r.ok for r in s.runs)
        for r in s.runs:
            assert r.config == s.grid.config(r.point).to_dict() == r.result["config"]  # type: ignore[index]
        doc = s.to_dict()
        assert doc["schema"] == "aemu.sweep/2" and doc["total"] == 8 and doc["failed"] == 0
        assert doc["dimensions"] == {"smp": [1, 4], "costs.bql_handoff_ns": [2000, 5000], "series": ["before", "after"]}
        # the model: 'before' takes the BQL for every read, 'after' none (so the hand-off cost cannot
        # matter after); with glibc's barging mutex 3 readers at 4 vCPUs do not wait here at all
        avg = {tuple(r.point.values()): r.result["workload"]["metric"]["value"] for r in s.runs}  # type: ignore[index]
        assert avg[4, 5000, "before"] >= avg[4, 2000, "before"] >= avg[4, 2000, "after"] == avg[4, 5000, "after"]

    def test_the_table_puts_before_and_after_side_by_side(self, local_sweep: Sweep) -> None:
        lines = format_sweep(local_sweep).splitlines()
        assert lines[0] == "hpet-bench: average read (hpet_read_test) (ns) before vs after the BQL-free series"
        assert lines[2].split() == ["smp", "costs.bql_handoff_ns", "before", "after", "before/after", "BQL", "wait",
                                    "share", "(before)"]
        assert [line.split()[:2] for line in lines[3:]] == [["1", "2000"], ["1", "5000"], ["4", "2000"], ["4", "5000"]]

    @pytest.mark.parametrize("jobs", [1, 2])
    def test_a_failed_run_is_reported_and_the_others_go_on(self, jobs: int) -> None:
        s = run_sweep(Grid.of(BASE, {"smp": [1, 4], "series": ["before", "after"]}), jobs=jobs, run=_fails_at_4)
        assert [(r.point["smp"], r.point["series"], r.error) for r in s.runs if not r.ok] == [
            (4, "before", "RuntimeError: no such luck at -smp 4")]
        assert sum(r.ok for r in s.runs) == 3
        assert format_sweep(s).splitlines()[-1] == ("failed: smp=4 series=before (-smp 4, series before): "
                                                    "RuntimeError: no such luck at -smp 4")

    def test_a_killed_local_worker_loses_exactly_its_run(self) -> None:
        s = run_sweep(Grid.of(BASE, {"smp": [1, 2, 4], "series": ["before", "after"]}), jobs=2, run=_dies_at_4)
        lost = [(r.point, r.error) for r in s.runs if not r.ok]
        assert lost == [({"smp": 4, "series": "before"}, "worker process died (killed by SIGKILL) during the run")]
        assert len(s.runs) == 6

    def test_points_with_one_configuration_share_one_run(self) -> None:
        seen: list[int] = []

        def run(c: MachineConfig) -> dict[str, Any]:
            seen.append(c.smp.cpus)
            return run_document(c)

        # before minus a switch is still before: two points, one run
        s = run_sweep(Grid.of(BASE, {"series": ["before"], "patch": ["none", "-hpet-counter-lockless"]}), jobs=1, run=run)
        assert len(s.runs) == 2 and seen == [1] and s.runs[0].result == s.runs[1].result

    def test_batch_on_any_executor(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as ex, Batch([(i, i) for i in range(5)], lambda i: 10 // (i - 2), executor=ex) as b:
            out = dict(b)
        assert out[0] == -5 and out[4] == 5 and isinstance(out[2], Failure)
        assert out[2].error == "ZeroDivisionError: integer division or modulo by zero"


class TestResume:
    def test_an_interrupted_sweep_resumes_with_only_what_is_missing(self) -> None:
        grid = Grid.of(BASE, {"smp": [1, 2, 3], "series": ["before", "after"]})
        it = iter_sweep(grid, jobs=1)
        first = [next(it) for _ in range(4)]
        it.close()  # what Ctrl-C does: the rest never runs
        ran: list[str] = []

        def run(c: MachineConfig) -> dict[str, Any]:
            ran.append(f"{c.smp.cpus} {c.series}")
            return run_document(c)

        rows = [r.to_dict() for r in first]
        rest = list(iter_sweep(grid, jobs=1, done_rows=rows, run=run))
        assert sorted(ran) == ["3 after", "3 before"]
        assert [r.resumed for r in rest] == [True] * 4 + [False] * 2
        full = run_sweep(grid, jobs=1)
        assert _no_wall(Sweep.collect(grid, rest).to_dict()) == _no_wall(full.to_dict())

    def test_load_runs_drops_a_last_line_cut_short(self, tmp_path: Path) -> None:
        f = tmp_path / "rows.jsonl"
        row = SweepRun({"smp": 1}, {"x": 1}, {"r": 1}).to_dict()
        f.write_text(json.dumps(row) + "\n" + json.dumps(row)[:20])
        assert load_runs(f) == [row]
        f.write_text("{not json\n" + json.dumps(row) + "\n")
        with pytest.raises(ConfigError, match="line 1 is not a JSON row"):
            load_runs(f)


# -- the command ------------------------------------------------------------------------------------------

SMALL_ARGV = ["sweep", "-q", "--jobs", "2", "--smp", "1,4", "--param", "reads=20", "--set", "costs.bql_handoff_ns=2000,5000"]


class TestCommand:
    def test_jsonl_json_plot(self, tmp_path: Path, capsys: pytest.CaptureFixture[str], local_sweep: Sweep) -> None:
        rows, doc, plots = tmp_path / "rows.jsonl", tmp_path / "s.json", tmp_path / "plots"
        assert main([*SMALL_ARGV, "--jsonl", str(rows), "--json", str(doc), "--plot", str(plots)]) == 0
        out = capsys.readouterr().out
        assert "(8 runs; local pool of 2 processes; wall time" in out
        assert _no_wall(json.loads(doc.read_text())) == _no_wall(local_sweep.to_dict())
        assert sorted(config_key(r["point"]) for r in load_runs(rows)) == sorted(
            config_key(p) for p in local_sweep.grid.points())
        png = plots / "sweep-hpet-bench-smp.png"
        PIL = pytest.importorskip("PIL.Image")
        text = PIL.open(png).text
        assert text["Title"].splitlines() == ["average read (hpet_read_test) vs vCPUs (-smp 1,4)", "hpet-bench reads=20, q35,hpet=on, kernel-irqchip=on"]
        assert "legend: costs.bql_handoff_ns=2000, series=before" in text["Description"]

    def test_resume_runs_only_the_missing_rows(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        rows = tmp_path / "rows.jsonl"
        assert main([*SMALL_ARGV, "--jsonl", str(rows)]) == 0
        lines = rows.read_text().splitlines()
        rows.write_text("\n".join(lines[:5]) + "\n" + lines[5][:30])  # as a kill mid-write leaves it
        capsys.readouterr()
        assert main([*SMALL_ARGV, "--resume", str(rows)]) == 0
        assert f"(3 runs, 5 from {rows}; " in capsys.readouterr().out
        assert len(load_runs(rows)) == 8
        assert main([*SMALL_ARGV, "--resume", str(rows)]) == 0
        assert f"(0 runs, 8 from {rows}; " in capsys.readouterr().out

    def test_ctrl_c_keeps_the_rows_that_finished(self, tmp_path: Path) -> None:
        rows = tmp_path / "rows.jsonl"
        # -smp 1 and 2 finish at once; boot before at -smp 64 runs for many seconds
        argv = ["sweep", "-q", "--jobs", "2", "--smp", "1,2,64", "--series", "before", "--workload", "boot",
                "--param", "phases=60", "-accel", "kvm,kernel-irqchip=split", "--jsonl", str(rows)]
        proc = subprocess.Popen([sys.executable, "-m", "aemu.cli", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(load_runs(rows)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and time.monotonic() - t0 < 1.5, (proc.returncode, err)
        assert out.startswith("interrupted: 2 of 3 runs finished") and "Traceback" not in err
        assert sorted(r["point"]["smp"] for r in load_runs(rows)) == [1, 2]
        assert f"--resume {rows} runs the rest" in out

    @pytest.mark.parametrize("argv, message", [
        (["--set", "bogus=1,2"], "unknown parameter 'bogus'; accepted: smp, series"),
        (["--set", "costs.nope=1"], "unknown cost 'costs.nope'; accepted: costs.pio_exit_ns"),
        (["--set", "costs.bql_handoff_ns="], "costs.bql_handoff_ns: empty list"),
        (["--set", "costs.bql_handoff_ns=2000,,5000"], "an empty value in '2000,,5000'"),
        (["--set", "costs.bql_handoff_ns=fast"], "'fast' is not a time in ns"),
        (["--set", "costs.bql_handoff_ns"], "expected NAME=VALUE[,VALUE...]"),
        (["--host-cpus", "2,x"], "host-cpus: 'x' is not an integer"),
        (["--smp", "1", "--set", "smp=2"], "smp: given twice"),
        (["--grid", "/nonexistent.toml"], "--grid: no such file"),
        (["--smp", "1", "--plot-x", "seed"], "--plot-x 'seed' is not swept"),
        (["--executor", "spark"], "--executor: 'spark'; accepted: local, dask"),
        (["--executor", "dask://host:99999"], "port 99999 is not a TCP port"),
    ])
    def test_bad_input_is_one_line_exit_2(self, argv: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["sweep", "-q", "--param", "reads=5", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err

    def test_an_unreachable_scheduler_is_a_one_line_error_in_bounded_time(
            self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        pytest.importorskip("distributed")
        import aemu.batch

        monkeypatch.setattr(aemu.batch, "DASK_CONNECT_TIMEOUT_S", 1.0)
        t0 = time.monotonic()
        assert main(["sweep", "-q", "--smp", "1", "--executor", "dask://127.0.0.1:1"]) == 2
        assert time.monotonic() - t0 < 10
        err = capsys.readouterr().err.strip()
        assert err.startswith("aemu: --executor dask://127.0.0.1:1: no Dask scheduler answered at tcp://127.0.0.1:1")
        assert len(err.splitlines()) == 1


# -- Dask -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed", reason="the Dask tests need pip install 'aemu[dask]'")
    import logging

    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


class TestDask:
    def test_the_same_documents_as_the_local_pool(self, dask_client: Any, local_sweep: Sweep) -> None:
        dask_client.wait_for_workers(2)
        s = run_sweep(Grid.of(BASE, SMALL), executor=dask_client.get_executor(), slots=2)
        assert _no_wall(s.to_dict()) == _no_wall(local_sweep.to_dict())

    def test_the_command_on_a_running_scheduler(self, dask_client: Any, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], local_sweep: Sweep) -> None:
        dask_client.wait_for_workers(2)
        doc = tmp_path / "s.json"
        address = dask_client.scheduler.address  # tcp://127.0.0.1:PORT
        assert main([*SMALL_ARGV, "--executor", address.replace("tcp://", "dask://"), "--json", str(doc)]) == 0
        assert f"(8 runs; Dask scheduler {address} (2 worker threads); wall time" in capsys.readouterr().out
        assert _no_wall(json.loads(doc.read_text())) == _no_wall(local_sweep.to_dict())

    def test_a_killed_worker_mid_sweep(self, dask_client: Any) -> None:
        """Dask reschedules the killed worker's run (its nanny starts a new worker); whatever it
        cannot is a failed row naming the error, and every point is accounted for exactly once."""
        dask_client.wait_for_workers(2)
        grid = Grid.of(MachineConfig.parse("--param reads=400"), {"smp": [16, 24, 32, 40], "series": ["before", "after"]})
        pids = dask_client.run(os.getpid)
        runs: list[SweepRun] = []
        killed = False
        for r in iter_sweep(grid, executor=dask_client.get_executor(), slots=2):
            runs.append(r)
            if not killed:
                os.kill(next(iter(pids.values())), signal.SIGKILL)
                killed = True
        assert sorted(config_key(r.point) for r in runs) == sorted(config_key(p) for p in grid.points())
        for r in runs:
            assert r.ok or "KilledWorker" in (r.error or ""), r.error
        dask_client.wait_for_workers(2, timeout=60)
