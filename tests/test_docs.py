"""README and docs/ say what the code does: the set-up a fresh clone needs, and pasted output and
plots that match what the commands print now (``tools/gen_docs.py`` regenerates them)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _load_gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_docs"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gen_docs = _load_gen_docs()


# -- set-up (issue 11 item 19) ------------------------------------------------------------------

class TestSetUp:
    def test_readme_opens_with_the_two_commands(self) -> None:
        assert README.startswith('# aemu\n\n```\npip install -e ".[test]" && aemu compare\n'
                                 'pip install -e ".[test]" && pytest\n```\n')

    def test_readme_names_the_python_version_and_a_virtual_environment(self) -> None:
        requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
        assert requires == ">=3.11"
        intro = README.split("\n## ", 1)[0]
        assert "Python 3.11 or newer" in intro and f'`requires-python = "{requires}"`' in intro
        assert "python3 -m venv .venv && . .venv/bin/activate" in intro
        assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()

    def test_nothing_in_the_clone_points_outside_it(self) -> None:
        """A user's clone has no ../shared/ or /work/...: README, docs, examples, scripts, the
        package and the tests read only files shipped in the repository."""
        offenders = []
        for top in ("README.md", "docs", "examples", "scripts", "traces", "aemu", "tests", "tools", "bench"):
            paths = [ROOT / top] if (ROOT / top).is_file() else sorted((ROOT / top).rglob("*"))
            for p in paths:
                kinds = {".py"} if top == "bench" else {".md", ".py", ".sh", ".toml", ".txt"}  # bench/profiles: listings
                if p.suffix not in kinds or not p.is_file():
                    continue
                for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                    if re.search(r"\.\./shared/|shared/reference|/work/", line) and p.name != "test_docs.py":
                        offenders.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()}")
        assert offenders == []


# -- generated blocks and plots (issue 11 item 20) --------------------------------------------------

@pytest.fixture(scope="module")
def outputs() -> dict[str, object]:
    """Every README block's command, run once (``aemu compare`` at -smp 240: the ~15 s of this file)."""
    pytest.importorskip("matplotlib")
    return gen_docs.run_all(README)  # type: ignore[no-any-return]


class TestGenerated:
    def test_readme_has_the_compare_blocks(self) -> None:
        assert gen_docs.commands(README) == ["aemu compare --plot docs", "aemu compare -smp 1 --no-ablation",
                                             "aemu run --workload help"]

    def test_readme_and_docs_match_what_the_commands_print(self, outputs: dict[str, object]) -> None:
        """Fails when a figure moved: rerun ``python tools/gen_docs.py`` and commit README and docs/."""
        assert "aemu compare --plot docs" in outputs
        problems = gen_docs.differences(README, outputs)
        assert not problems, "stale; run python tools/gen_docs.py:\n" + "\n\n".join(problems)

    def test_the_plots_are_the_ones_the_command_writes(self, outputs: dict[str, object]) -> None:
        out = outputs["aemu compare --plot docs"]
        assert sorted(out.files) == ["docs/bql-utilisation-boot.png", "docs/hpet-latency-cdf.png"]  # type: ignore[attr-defined]
        words = gen_docs.png_words((ROOT / "docs" / "hpet-latency-cdf.png").read_bytes())
        legend = [line for line in words["Description"].splitlines() if line.startswith("legend: ")]
        assert [line.split(":")[1].strip() for line in legend] == ["before", "after"]
        assert all(re.fullmatch(r"legend: \w+: p50 [\d,.]+ µs, p99 [\d,.]+ µs", line) for line in legend)
        reads = re.search(r"--param reads=(\d+)", gen_docs.commands(README)[0] + " " + README)
        assert words["Title"].startswith("hpet access latency CDF\nhpet-bench reads=")
        assert reads is None or f"reads={reads[1]}" in words["Title"]

    def test_a_changed_figure_in_the_table_is_caught(self, outputs: dict[str, object]) -> None:
        row = re.search(r"^boot: BQL acquisitions +([\d,]+)", README, re.MULTILINE)
        assert row is not None
        tampered = README.replace(row[0], row[0].replace(row[1], row[1] + "0"), 1)
        problems = gen_docs.differences(tampered, outputs)
        assert len(problems) == 1 and problems[0].startswith("README.md block `aemu compare --plot docs` differs")

    def test_wall_time_is_blanked(self) -> None:
        assert gen_docs.blank_wall_times("(wall time 7.5 s for 14 runs)\n  wall time     0.00 s\n") == \
            "(wall time … s for 14 runs)\n  wall time     … s\n"

    def test_regenerate_rewrites_only_the_body(self) -> None:
        text = "a\n<!-- generated: aemu x -->\nold\n<!-- end generated -->\nb\n"
        out = gen_docs.Output("aemu x", "new\n")
        assert gen_docs.regenerate(text, {"aemu x": out}) == \
            "a\n<!-- generated: aemu x -->\n```\n$ aemu x\nnew\n```\n<!-- end generated -->\nb\n"

    def test_check_mode_is_the_documented_command(self) -> None:
        assert "`python tools/gen_docs.py`" in README and "--check" in README
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_docs.py"), "--help"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "--check" in proc.stdout
