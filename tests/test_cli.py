"""The ``aemu`` command: version, the foundation's comparison, usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from aemu import __version__
from aemu.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_compare_runs_the_seed_scenario_small(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--jobs", "1", "-smp", "8", "--param", "phases=1"]) == 0
    out = capsys.readouterr().out
    assert "-smp 8," in out and "kernel-irqchip=split" in out
    assert "hpet-bench: read latency p50" in out and "ablation" in out and "verdict:" in out
    row = next(line for line in out.splitlines() if line.startswith("boot: BQL acquisitions"))
    before, after = (int(x.replace(",", "")) for x in row.split()[-2:])
    assert before > 10 * after


def test_run_prints_a_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-smp", "2", "--workload", "pmtimer-bench", "--param", "reads=5", "--series", "before"]) == 0
    out = capsys.readouterr().out
    assert "median read latency" in out and "acpi-tmr read" in out


def test_demo_runs_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--readers", "8", "--reads", "20"]) == 0
    out = capsys.readouterr().out
    assert "before (BQL)" in out and "after (lockless_io)" in out
    bql_row = next(line for line in out.splitlines() if line.startswith("BQL acquisitions"))
    before, after = (int(x.replace(",", "")) for x in bql_row.split()[2:4])
    assert before >= 8 * 20  # every read took the BQL
    assert after < before  # only the main loop's timers took it


@pytest.mark.parametrize("argv, needle", [
    (["bogus"], "No such command 'bogus'"),
    (["demo", "--readers", "0"], "Invalid value for '--readers'"),
    (["demo", "--reads", "many"], "'many' is not a valid integer"),
    (["run", "-smp", "4,sockets=3"], "Invalid CPU topology"),
    (["run", "--workload", "nap"], "unknown workload 'nap'"),
    (["run", "--lockless", "nope"], "no I/O region named 'nope'"),
])
def test_usage_errors_are_one_line_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_ctrl_c_prints_the_partial_report_and_exits_130() -> None:
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "aemu.cli", "run", "-q", "-smp", "64", "-accel", "kvm,kernel-irqchip=split",
         "--workload", "boot", "--series", "before", "--param", "phases=200", "--duration", "60s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert "BQL" in out  # the partial report


def test_replay_command(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    out_json = tmp_path / "r.json"
    assert main(["replay", "tests/data/linux-boot-excerpt.trace", "-q", "--series", "before",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "per-region read/write counts equal the trace's" in out and "kvm_arch_pre_run" in out
    assert out_json.exists()
    bad = tmp_path / "bad.trace"
    bad.write_text("garbage\n")
    assert main(["replay", str(bad)]) == 2
    assert "bad.trace:1:" in capsys.readouterr().err


def test_costs_command_round_trips_through_toml(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert main(["costs"]) == 0
    assert "bql_handoff_ns" in capsys.readouterr().out
    assert main(["costs", "--toml"]) == 0
    toml = tmp_path / "c.toml"
    toml.write_text(capsys.readouterr().out.replace("bql_handoff_ns = 5000", "bql_handoff_ns = 7000"))
    assert main(["costs", "--costs", str(toml)]) == 0
    assert "7,000 ns" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["sweep", "--smp", "1", "--json", "/proc/aemu-test.json"], "cannot write it"),
    (["run", "--json", "/nonexistent-dir/x.json"], "does not exist"),
    (["run", "--plot", "/etc/passwd"], "is not a directory"),
    (["run", "--duration", "-5ms"], "--duration: expected a time"),
    (["compare", "-smp", "0"], "cpus=0 is not allowed"),
    (["sweep", "--smp", "1,x"], "'x' is not a vCPU count"),
    (["run", "--workload", "idle"], "give --duration"),
])
def test_bad_output_paths_and_options_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("mode", [[], ["--realtime"]])
def test_run_writes_a_timeline_in_virtual_and_real_time(mode: list[str], capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    """Regression: ``aemu run --realtime --timeline f.json`` wrote an empty timeline (the tracer was not passed on)."""
    import json

    path = tmp_path / "t.json"
    assert main(["run", *mode, "-q", "-smp", "2", "--workload", "hpet-bench", "--param", "reads=20",
                 "--timeline", str(path)]) == 0
    assert "timeline: 0 spans" not in capsys.readouterr().out
    doc = json.loads(path.read_text())
    spans = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert {e["cat"] for e in spans} >= {"guest", "exit"}
    assert len({e["tid"] for e in spans}) >= 2  # both vCPUs
    assert 0 <= min(e["ts"] for e in spans) < 1e6  # µs since the run's start, not the host's clock
