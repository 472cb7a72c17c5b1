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
    assert "hpet-bench: average read (hpet_read_test)" in out and "ablation" in out and "verdict:" in out
    assert "published (Windows Server 2025" in out and "boot, hpet=on" in out and "boot, -cpu host,hv-time" in out
    row = next(line for line in out.splitlines() if line.startswith("boot: BQL acquisitions"))
    before, after = (int(x.replace(",", "")) for x in row.split()[-2:])
    assert before > 10 * after
    # each boot beside the hv-time boot after the series: the model's own ratio of boot times
    lines = out.splitlines()
    at = lines.index("each boot as a multiple of the hv-time boot after the series (published: about 1-2 min):")
    cells = [[c.strip() for c in line.split("  ") if c.strip()] for line in lines[at + 3:at + 7]]
    rel = {label: (published, model) for label, published, model in cells}
    assert [published for published, _ in rel.values()] == ["> 15", "1.0-2.0", "2.1-4.2", "1.2-2.4"]

    def model_ms(row: str) -> list[float]:  # a published-table row's model before and after, in ms
        cells = next(line for line in lines if line.startswith(row)).split()
        return [float(x.replace(",", "")) for x, unit in zip(cells, cells[1:]) if unit == "ms"]

    hv_after = model_ms("boot, -cpu host,hv-time")[1]
    hpet_before = model_ms("boot, hpet=on")[0]
    assert float(rel["boot, hpet=on, before"][1]) == pytest.approx(hpet_before / hv_after, abs=0.006)
    # each boot in two parts, split at the BSP's "APs started" milestone: they add up to the boot
    at = next(i for i, line in enumerate(lines) if line.startswith("the model's boots in two parts"))
    assert lines[at + 4].split() == ["start-up", "before", "after", "ratio", "phases", "before", "after", "ratio"]
    for line, row in zip(lines[at + 5:at + 8], ("boot, hpet=off (ACPI PM timer)", "boot, hpet=on", "boot, -cpu host,hv-time")):
        assert line.startswith(row)
        cells = line[len(row):].split()
        up0, up1, ph0, ph1 = (float(x.replace(",", "")) for x, unit in zip(cells, cells[1:]) if unit == "ms")
        total0, total1 = model_ms(row)
        assert up0 + ph0 == pytest.approx(total0, abs=0.011) and up1 + ph1 == pytest.approx(total1, abs=0.011)
        assert float(cells[-1].removesuffix("x")) == pytest.approx(ph0 / ph1, abs=0.006)


def test_compare_json_holds_every_run_and_the_published_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "compare.json"
    assert main(["compare", "-q", "--jobs", "1", "--no-ablation", "-smp", "2", "--param", "phases=1",
                 "--param", "reads=20", "--json", str(doc)]) == 0
    assert f"wrote {doc}" in capsys.readouterr().out
    d = json.loads(doc.read_text())
    assert d["schema"] == "aemu.compare/1"
    assert list(d) == ["schema", "boot", "hpet-bench", "hpet=on", "hv-time", "published"]
    for name in ("boot", "hpet-bench", "hpet=on", "hv-time"):
        assert set(d[name]) == {"before", "after"} and all(r["schema"] == "aemu.result/1" for r in d[name].values())
    assert d["boot"]["before"]["config"]["patches"] == [] and d["hpet=on"]["after"]["config"]["hpet"] is True
    assert "APs started" in d["boot"]["after"]["workload"]["milestones"]  # the parts compare splits the boots at
    assert d["published"] == published_document() and d["published"]["hpet=on"]["ratio"] == pytest.approx(253 / 141)
    assert all(p["source"] for p in d["published"].values())


def test_compare_names_a_host_scheduler_other_than_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "-q", "--jobs", "1", "--no-ablation", "-smp", "4", "--param", "phases=1",
                 "--host-cpus", "2", "--host-sched", "cfs"]) == 0
    assert "on 2 host CPUs scheduled by CFS (boot)" in capsys.readouterr().out
    assert main(["compare", "-q", "--jobs", "1", "--no-ablation", "-smp", "4", "--param", "phases=1",
                 "--host-cpus", "2", "--host-rq", "per-cpu"]) == 0
    assert "on 2 host CPUs with per-CPU run queues (boot)" in capsys.readouterr().out


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
    assert main(["replay", "tests/data/linux-boot-excerpt.trace", "-q", "--series", "before", "-accel", "kvm,kernel-irqchip=split",
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


# -- issue 11: what a new user trips over -----------------------------------------------------------------

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from aemu.cli import _MachineCommand, cli  # noqa: E402
from aemu.config import MachineConfig  # noqa: E402
from aemu.patches import ABLATION, PATCHES  # noqa: E402
from aemu.compare import SCENARIOS, published_document  # noqa: E402
from aemu.workloads import WORKLOADS  # noqa: E402

TRACE = "tests/data/linux-boot-excerpt.trace"
MACHINE_COMMANDS = ["run", "compare", "sweep", "replay", "mtree"]


@pytest.mark.parametrize("command", MACHINE_COMMANDS)
@pytest.mark.parametrize("spelling", [["--patch", "-hpet-lock"], ["--patch=-hpet-lock"], ["--patch", "hpet-lock"],
                                      ["--patch", "-irqchip-pre-run"], ["-machine", "q35"], ["--seed", "-1"]])
def test_machine_options_bypass_clicks_parser(command: str, spelling: list[str]) -> None:
    """Regression: ``--patch -hpet-...`` printed help and exited 0 (click read ``-h``); ``-machine`` too."""
    import click

    cmd = cli.commands[command]
    assert isinstance(cmd, _MachineCommand)
    with click.Context(cmd) as ctx:
        positional = [TRACE] if command == "replay" else []
        own, machine = cmd.split_args(ctx, [*positional, "-q", *spelling, "-smp", "4"] if command != "mtree"
                                      else [*spelling, "-f", "-smp", "4"])
    if command == "sweep" and spelling[0].startswith("--patch"):  # sweep's own option: one point per --patch
        assert machine == ["-smp", "4"] and own[-len(spelling):] == spelling
    else:
        assert machine == [*spelling, "-smp", "4"]
    assert "-h" not in own and "--help" not in own


@pytest.mark.parametrize("spelling", [["--patch", "-hpet-counter-lockless"], ["--patch=-hpet-counter-lockless"],
                                      ["--series", "before", "--patch", "lockless-io,hpet-lock,hpet-counter-lockless"]])
def test_run_with_every_patch_spelling(spelling: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert main(["run", "-q", "-smp", "2", "--param", "reads=5", *spelling, "--json", str(out)]) == 0
    assert "Usage:" not in capsys.readouterr().out
    patches = set(json.loads(out.read_text())["config"]["patches"])
    assert "hpet-counter-lockless" in patches if "before" in spelling else "hpet-counter-lockless" not in patches


def test_patch_off_with_what_needs_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-q", "--param", "reads=3", "--patch", "-hpet-lock"]) == 2
    assert "turn 'hpet-lock' on, or 'hpet-counter-lockless' off too" in capsys.readouterr().err
    assert main(["run", "-q", "--param", "reads=3", "--patch", "-hpet-lock,-hpet-counter-lockless"]) == 0
    series = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("series"))
    assert "custom (lockless-io, pmtimer-lockless, " in series and "hpet-lock" not in series


def test_compare_sweep_and_replay_take_patch_minus_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--patch -NAME takes a switch out of 'after' (compare and sweep ignored --patch before)."""
    assert main(["compare", "-q", "--jobs", "1", "--no-ablation", "-smp", "2", "--param", "phases=1",
                 "--param", "reads=5", "--patch", "-hpet-counter-lockless"]) == 0
    assert "after: the series without hpet-counter-lockless (--patch)" in capsys.readouterr().out
    out = tmp_path / "s.json"
    assert main(["sweep", "-q", "--jobs", "1", "--smp", "2", "--param", "reads=5", "--patch", "-hpet-counter-lockless",
                 "--json", str(out)]) == 0
    runs = {r["point"]["series"]: r for r in json.loads(out.read_text())["runs"]}
    assert runs["before"]["config"]["patches"] == [] == runs["before"]["result"]["config"]["patches"]
    assert "hpet-counter-lockless" not in runs["after"]["config"]["patches"]
    assert main(["replay", TRACE, "-q", "--patch", "-hpet-lock,-hpet-counter-lockless"]) == 0
    assert "custom" in capsys.readouterr().out


def _interrupt(argv: list[str], after_s: float, sig: signal.Signals) -> tuple[int, str, str, float]:
    """Run ``aemu ARGV``, send ``sig`` after ``after_s``; (exit code, out, err, seconds it took to stop)."""
    proc = subprocess.Popen([sys.executable, "-m", "aemu.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(after_s)
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err, time.monotonic() - t0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_compare_at_once_with_what_finished(sig: signal.Signals, tmp_path: Path) -> None:
    """Regression: Ctrl-C on compare waited 30+ s for every run and threw the results away."""
    out_json = tmp_path / "c.json"
    # boot 'before' stalls for seconds at phases=60 (it hits the 2 s virtual cap); 'after' takes about 2 s
    code, out, err, took = _interrupt(["compare", "-q", "--jobs", "2", "-smp", "64", "--param", "phases=60",
                                       "--json", str(out_json)], 4.0, sig)
    assert code == 130 and took < 3.0, (code, took, err)  # it waited 30+ s before
    assert "aemu: interrupted" in err and "Traceback" not in err
    line = next(x for x in out.splitlines() if x.startswith("interrupted:"))
    n = int(line.split()[1])
    names = ("boot", "hpet-bench", *SCENARIOS)  # the boot's ablation; the published scenarios before/after
    assert line == f"interrupted: {n} of {2 + len(ABLATION) + 2 + 2 * len(SCENARIOS)} runs finished"
    assert len([x for x in out.splitlines() if x.startswith(tuple(f"  {w} " for w in names))]) == n
    doc = json.loads(out_json.read_text())
    assert doc["interrupted"] is True and sum(len(doc[w]) for w in names) == n


def test_ctrl_c_stops_sweep_at_once() -> None:
    code, out, err, took = _interrupt(["sweep", "-q", "--jobs", "2", "--smp", "64,128,240", "--workload", "boot",
                                       "--param", "phases=60", "-accel", "kvm,kernel-irqchip=split"], 3.0, signal.SIGINT)
    assert code == 130 and took < 3.0, (code, took, err)
    assert out.startswith("interrupted: ") and "of 6 runs finished" in out and "Traceback" not in err


def test_sigterm_is_ctrl_c_report_json_and_qmp_socket(tmp_path: Path) -> None:
    """Regression: SIGTERM killed aemu run with no report, no JSON, and the QMP socket left behind."""
    out_json, sock = tmp_path / "r.json", tmp_path / "qmp.sock"
    argv = ["run", "-q", "-smp", "64", "-accel", "kvm,kernel-irqchip=split", "--workload", "boot", "--series",
            "before", "--param", "phases=200", "--duration", "60s", "--json", str(out_json),
            "-qmp", f"unix:{sock},server,wait=off"]
    proc = subprocess.Popen([sys.executable, "-m", "aemu.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 20
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "BQL" in out and f"wrote {out_json}" in out and "Traceback" not in err
    assert json.loads(out_json.read_text())["interrupted"] is True
    assert not sock.exists()


def test_ctrl_c_while_the_package_imports_exits_quietly() -> None:
    """Regression: a Ctrl-C in the first moments (aemu still importing) printed a KeyboardInterrupt
    traceback. The child sends itself SIGINT while ``aemu.machine`` is being imported."""
    code = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a shell, whatever the parent ignores\n"
        "sys.argv[0] = 'aemu'  # as the console script\n"
        "class Hook:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'aemu.machine':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Hook())\n"
        "import aemu.cli\n"
        "print('imported')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr and "imported" not in proc.stdout, proc.stderr
    # a program that imports aemu keeps Python's default: KeyboardInterrupt
    plain = subprocess.run([sys.executable, "-c", code.replace("sys.argv[0] = 'aemu'", "pass")],
                           capture_output=True, text=True, timeout=60)
    assert "KeyboardInterrupt" in plain.stderr


@pytest.mark.parametrize("delay", [1.0, 1.5, 2.5])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_prints_no_traceback(delay: float, sig: signal.Signals) -> None:
    """A signal once aemu's own code runs (imports done) ends it quietly: exit 130 or a clean finish."""
    code, _out, err, _took = _interrupt(["run", "-q", "-smp", "64", "-accel", "kvm,kernel-irqchip=split", "--workload",
                                         "boot", "--series", "before", "--param", "phases=20"], delay, sig)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert code in (0, 130, -sig), code  # -sig: the default action, before Python handles signals


@pytest.mark.parametrize("argv, needle", [
    (["run", "--lockless", ""], "--lockless: '' has an empty region name"),
    (["run", "--timeline", "/tmp/aemu-t.json", "--timeline-window", "5ms:1ms"], "END must be after START"),
    (["run", "--timeline-window", "0:1ms"], "--timeline-window needs --timeline FILE"),
    (["sweep", "--smp", "8", "-smp", "4"], "-smp: sweep sets the vCPU count of each run; give the counts with --smp"),
    (["sweep", "--series", "during"], "series: 'during'; accepted: before, after"),
    (["compare", "--series", "before"], "--series: compare runs both series"),
    (["compare", "--workload", "idle"], "--workload: compare runs boot and hpet-bench"),
    (["replay", TRACE, "--workload", "boot"], "--workload: replay's workload is the trace"),
    (["replay", TRACE, "--param", "reads=5"], "--param: replay's workload is the trace"),
    (["mtree", "--workload", "boot"], "--workload: the memory tree does not depend on the workload"),
    (["run", "--param", "reads=-1"], "workload 'hpet-bench': parameter reads must be an integer >= 1, got -1"),
    (["run", "--param", "reads=abc"], "parameter reads must be an integer >= 1, got 'abc'"),
    (["run", "--param", "bogus=1"], "unknown parameter 'bogus'; accepted: reads"),
    (["sweep", "--param", "reads=0"], "parameter reads must be an integer >= 1, got 0"),
    (["compare", "--param", "phases=0"], "parameter phases must be an integer >= 1, got 0"),
    (["compare", "--param", "reads=1.5"], "parameter reads must be an integer >= 1, got 1.5"),
    (["run", "--costs", "/dev/zero"], "is larger than 1 MiB"),
    (["costs", "--costs", "/dev/zero"], "is larger than 1 MiB"),
    (["run", "-hpet-lock"], "unknown option '-hpet-lock'"),
])
def test_ignored_or_unchecked_input_is_a_one_line_usage_error(argv: list[str], needle: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_a_misspelt_region_in_costs_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[handler_ns]\nnosuchregion = 10\n")
    assert main(["run", "--costs", str(p)]) == 2
    assert "[handler_ns] 'nosuchregion' is not a region aemu models" in capsys.readouterr().err


def test_one_default_per_option_in_run_and_sweep(tmp_path: Path) -> None:
    """Regression: run -smp 8 gave sockets=8,cores=1, sweep sockets=1,cores=8; irqchip and workload differed."""
    r, s = tmp_path / "r.json", tmp_path / "s.json"
    assert main(["run", "-q", "-smp", "8", "--param", "reads=3", "--json", str(r)]) == 0
    assert main(["sweep", "-q", "--jobs", "1", "--smp", "8", "--param", "reads=3", "--json", str(s)]) == 0
    run_config = json.loads(r.read_text())["config"]
    sweep_config = next(r["config"] for r in json.loads(s.read_text())["runs"] if r["point"]["series"] == "after")
    defaults = MachineConfig()
    for config in (run_config, sweep_config):
        assert (config["smp"]["sockets"], config["smp"]["cores"]) == (1, 8)  # QEMU >= 6.2: cores first
        assert config["kernel_irqchip"] == defaults.kernel_irqchip == "on"  # QEMU's default
        assert config["workload"] == defaults.workload


@pytest.mark.parametrize("command", ["run", "sweep", "mtree"])
def test_help_shows_the_machine_options_and_their_defaults(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Machine options (ARGS" in out and "ARGS" in out.split("Options:")[0]
    assert "[kvm,kernel-irqchip=on]" in out and "[q35,hpet=on]" in out
    assert ("[hpet-bench]" in out) == (command != "mtree")


def test_compare_help_shows_its_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--help"]) == 0
    out = capsys.readouterr().out
    assert "[kvm,kernel-irqchip=split]" in out and "[240,sockets=4]" in out and "--workload NAME" not in out


@pytest.mark.parametrize("command", [[], *([c] for c in ["compare", "run", "sweep", "replay", "mtree", "costs", "demo"])])
def test_help_texts_are_plain_words(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: help showed ``reStructuredText`` marks and words a user cannot know."""
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "`" not in out and "seed's" not in out and "foundation" not in out, out


@pytest.mark.parametrize("command", [["run"], ["compare"], ["sweep"], ["replay"], ["mtree"]])
@pytest.mark.parametrize("topic, needles", [
    (["-M", "help"], ["Supported machines are:", "q35 ", "pc ", "(default)"]),
    (["-machine", "?"], ["Supported machines are:"]),
    (["-accel", "help"], ["kvm", "kernel-irqchip", "split", "off"]),
    (["--workload", "help"], [f"  {name} " for name in WORKLOADS] + ["reads=300", "phases=3"]),
    (["--patch=help"], [f"  {name} " for name in PATCHES]),
    (["--lockless", "help"], ["  serial", "  acpi-tmr", "  rtc"]),
])
def test_help_values_list_what_is_accepted(command: list[str], topic: list[str], needles: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, *topic]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in needles), out


def test_lockless_help_lists_the_regions_of_the_machine_described(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-M", "pc", "-accel", "kvm,kernel-irqchip=off", "--lockless", "help"]) == 0
    off = capsys.readouterr().out
    assert main(["run", "--lockless", "help"]) == 0
    on = capsys.readouterr().out
    assert "  pic\n" in off and "  pic\n" not in on


def test_bare_aemu_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: bare aemu printed 'aemu: Usage: ...' and exited 2."""
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Usage: aemu [OPTIONS] COMMAND") and "Commands:" in out and err == ""


def test_debug_keeps_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: --debug turned a usage error's exit 2 into 1."""
    assert main(["--debug", "run", "-smp", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "aemu: -smp: cpus=0 is not allowed; use a positive number"
    assert main(["run", "-smp", "0"]) == 2  # and --debug does not stick to the next call
    assert "Traceback" not in capsys.readouterr().err


def test_replay_follows_the_same_irqchip_default(tmp_path: Path) -> None:
    """Regression: replay defaulted to kernel-irqchip=split where run and sweep use QEMU's default (on)."""
    out = tmp_path / "r.json"
    assert main(["replay", TRACE, "-q", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["kernel_irqchip"] == MachineConfig().kernel_irqchip == "on"


def test_compare_sets_a_run_beside_the_published_host_it_matches(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "c.json"
    assert main(["compare", "-q", "--jobs", "1", "--no-ablation", "-smp", "4", "--param", "phases=1",
                 "--host-cpus", "448", "--json", str(doc)]) == 0
    out = capsys.readouterr().out
    assert "published (Windows Server 2025 on 448 host cores) beside the model (the same options" in out
    assert "2 min 19 s" in out and "1.85x" in out and "> 30x" in out and "4 min 13 s" not in out
    assert json.loads(doc.read_text())["published"] == published_document(448)
    assert main(["compare", "-q", "--jobs", "1", "--no-ablation", "-smp", "4", "--param", "phases=1",
                 "--host-cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert ("published (Windows Server 2025 on 32 host cores) beside the model on 2 host CPUs (not the published "
            "host; a shortened boot)") in out and "4 min 13 s" in out
