"""Every example runs (small sizes) and prints what it promises: CI's smoke test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=120)
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


def test_sweep_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "scaling.png"
    out = run_example("sweep_plot.py", "--smp", "1,4", "--out", str(png))
    assert "before/after" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
