"""The ``aemu`` command: version, the foundation's comparison, usage errors."""

from __future__ import annotations

import pytest

from aemu import __version__
from aemu.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_compare_runs_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--readers", "8", "--reads", "20"]) == 0
    out = capsys.readouterr().out
    assert "before (BQL)" in out and "after (lockless_io)" in out
    bql_row = next(line for line in out.splitlines() if line.startswith("BQL acquisitions"))
    before, after = (int(x.replace(",", "")) for x in bql_row.split()[2:4])
    assert before >= 8 * 20  # every read took the BQL
    assert after < before  # only the main loop's timers took it


@pytest.mark.parametrize("argv, needle", [
    (["bogus"], "No such command 'bogus'"),
    (["compare", "--readers", "0"], "Invalid value for '--readers'"),
    (["compare", "--reads", "many"], "'many' is not a valid integer"),
])
def test_usage_errors_are_one_line_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
