"""Every example runs (small sizes) and prints what it promises: CI's smoke test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quickstart() -> None:
    out = run_example("quickstart.py", "--smp", "8", "--reads", "20")
    assert "before: median HPET read" in out and "lower after the series" in out


def test_custom_device() -> None:
    out = run_example("custom_device.py", "--smp", "8")
    lines = out.splitlines()
    assert lines[0].strip().startswith("BQL:") and lines[1].strip().startswith("lockless:")
    assert "BQL acquisitions      0" in lines[1]
    # the checker: the lockless doorbell's plain read races with its locked write; the safe one is clean
    assert "race: Doorbell.count" in out and "fix: hold doorbell in vcpu" in out
    assert out.rstrip().endswith("no findings")


def test_sweep_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "scaling.png"
    out = run_example("sweep_plot.py", "--smp", "1,4", "--out", str(png))
    assert "before/after" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_plot_writes_under_out_by_default_and_titles_what_it_swept(tmp_path: Path) -> None:
    """Not into the current directory (the repository root, run from there): into out/, said so;
    the title names the swept -smp counts and every fixed option the example sets."""
    PIL = pytest.importorskip("PIL.Image")
    out = run_example("sweep_plot.py", "--smp", "4,1", "--phases", "2", cwd=tmp_path)
    png = tmp_path / "out" / "scaling.png"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert out.splitlines()[-1] == "wrote out/scaling.png"
    assert out.startswith("sweeping -smp 1,4 with -M q35,hpet=off -accel kvm,kernel-irqchip=split "
                          "--workload boot --param phases=2\n")
    title = PIL.open(png).text["Title"]
    assert title.splitlines() == ["boot time vs vCPUs (-smp 1,4)",
                                  "boot phases=2, q35,hpet=off, kernel-irqchip=split"]


def test_sweep_plot_out_may_be_a_directory(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = run_example("sweep_plot.py", "--smp", "1", "--out", str(tmp_path))
    assert out.splitlines()[-1] == f"wrote {tmp_path / 'scaling.png'}"
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
