"""Regenerate README's pasted command output and the plots in docs/ by running the commands.

    python tools/gen_docs.py            # rerun every command, rewrite README.md's blocks and docs/*.png
    python tools/gen_docs.py --check    # rerun them, say what differs, write nothing (exit 1 if anything does)

Run it after any change that moves a figure (the golden results' ``--regen`` is the other half).
A generated block in README.md names its command in its opening marker::

    <!-- generated: aemu compare --plot docs -->
    ```
    $ aemu compare --plot docs
    ...what the command printed on stdout...
    ```
    <!-- end generated -->

Each command runs once, in a scratch directory; the files it writes there (``--plot docs`` writes
``docs/*.png``) are copied to the same paths in the repository. Everything aemu prints is
deterministic (virtual time, fixed seeds) except host wall time, which is written as ``…``.
A plot is compared by the words on it (title, axis labels, legend: the PNG's text chunks, see
``aemu/report/plots.py``), not by its pixels, which depend on the matplotlib version.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

BLOCK = re.compile(r"^<!-- generated: (?P<cmd>[^\n]+?) -->\n(?P<body>.*?)^<!-- end generated -->$",
                   re.MULTILINE | re.DOTALL)
#: "(wall time 7.5 s for 14 runs)", "wall time     0.00 s": host time, different on every run
WALL_TIME = re.compile(r"(wall time\s+)\d[\d,.]*(\s*s\b)")
#: PNG text chunks that say what a plot shows (not "Software", the matplotlib version)
PLOT_WORDS = ("Title", "Description")


class GenDocsError(Exception):
    """A README command could not be run (not an ``aemu`` command, no ``aemu``, or it failed)."""


@dataclass(frozen=True, slots=True)
class Output:
    """What one command printed (wall times blanked) and the files it wrote, by relative path."""

    command: str
    stdout: str
    files: dict[str, bytes] = field(default_factory=dict)


def commands(readme: str) -> list[str]:
    """The commands of README's generated blocks, in order, each once."""
    return list(dict.fromkeys(m["cmd"] for m in BLOCK.finditer(readme)))


def blank_wall_times(text: str) -> str:
    """``(wall time 7.5 s for 14 runs)`` -> ``(wall time … s for 14 runs)``."""
    return WALL_TIME.sub(r"\1…\2", text)


def _aemu() -> str:
    """The ``aemu`` console script of this interpreter's environment (or the one on PATH)."""
    found = shutil.which("aemu", path=str(Path(sys.executable).parent)) or shutil.which("aemu")
    if found is None:
        raise GenDocsError("no `aemu` command; install aemu first: pip install -e '.[test]'")
    return found


def run(command: str) -> Output:
    """Run one README command (it must start with ``aemu``) in a scratch directory."""
    argv = shlex.split(command)
    if not argv or argv[0] != "aemu":
        raise GenDocsError(f"README block command {command!r} does not start with `aemu`")
    with tempfile.TemporaryDirectory(prefix="aemu-gen-docs-") as scratch:
        env = dict(os.environ, COLUMNS="120", NO_COLOR="1")
        proc = subprocess.run([_aemu(), *argv[1:]], cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            raise GenDocsError(f"`{command}` exited {proc.returncode}:\n{proc.stderr.rstrip()}")
        base = Path(scratch)
        files = {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}
    return Output(command, blank_wall_times(proc.stdout), files)


def run_all(readme: str) -> dict[str, Output]:
    """Every generated block's command, run once: command -> Output."""
    return {cmd: run(cmd) for cmd in commands(readme)}


def render(out: Output) -> str:
    """A block's body: the command and what it printed, as a fenced code block."""
    return f"```\n$ {out.command}\n{out.stdout.rstrip()}\n```\n"


def regenerate(readme: str, outputs: dict[str, Output]) -> str:
    """``readme`` with every generated block's body replaced by its command's output."""
    return BLOCK.sub(lambda m: f"<!-- generated: {m['cmd']} -->\n{render(outputs[m['cmd']])}<!-- end generated -->",
                     readme)


def png_words(data: bytes) -> dict[str, str]:
    """A PNG's text chunks (tEXt, zTXt, iTXt) as {keyword: text}."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    words: dict[str, str] = {}
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt":
            key, _, value = chunk.partition(b"\0")
            words[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = chunk.partition(b"\0")
            words[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = chunk.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            words[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
        elif kind == b"IEND":
            break
    return words


def _file_differs(rel: str, new: bytes, root: Path) -> str | None:
    """Why the repository's ``rel`` is not what the command wrote, or None."""
    old_path = root / rel
    if not old_path.is_file():
        return f"{rel}: not in the repository"
    old = old_path.read_bytes()
    if rel.endswith(".png"):
        try:
            a, b = png_words(old), png_words(new)
        except ValueError:
            return f"{rel}: not a PNG"
        a = {k: v for k, v in a.items() if k in PLOT_WORDS}
        b = {k: v for k, v in b.items() if k in PLOT_WORDS}
        if a == b:
            return None
        diff = difflib.unified_diff([f"{k}: {v}" for k in sorted(a) for v in a[k].splitlines()],
                                    [f"{k}: {v}" for k in sorted(b) for v in b[k].splitlines()],
                                    "committed", "regenerated", lineterm="")
        return f"{rel}: the plot's words differ\n" + "\n".join(diff)
    return None if old == new else f"{rel}: contents differ"


def differences(readme: str, outputs: dict[str, Output], root: Path = ROOT) -> list[str]:
    """What is stale: README blocks that differ from their command's output, and written files."""
    problems = []
    for m in BLOCK.finditer(readme):
        want = render(outputs[m["cmd"]])
        if m["body"] != want:
            diff = difflib.unified_diff(m["body"].splitlines(), want.splitlines(), "README.md", "regenerated",
                                        lineterm="")
            problems.append(f"README.md block `{m['cmd']}` differs from what it prints\n" + "\n".join(diff))
    for out in outputs.values():
        for rel, data in out.files.items():
            why = _file_differs(rel, data, root)
            if why:
                problems.append(why)
    return problems


def write(readme: str, outputs: dict[str, Output], root: Path = ROOT) -> list[str]:
    """Rewrite README's blocks and copy the commands' files into ``root``; returns what changed."""
    changed = []
    new = regenerate(readme, outputs)
    if new != readme:
        (root / "README.md").write_text(new, encoding="utf-8")
        changed.append("README.md")
    for out in outputs.values():
        for rel, data in out.files.items():
            path = root / rel
            if not path.is_file() or path.read_bytes() != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                changed.append(rel)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report what differs, write nothing (exit 1 if any)")
    a = ap.parse_args(argv)
    readme = README.read_text(encoding="utf-8")
    cmds = commands(readme)
    if not cmds:
        print("gen_docs: README.md has no <!-- generated: ... --> blocks", file=sys.stderr)
        return 1
    outputs = {}
    try:
        for cmd in cmds:
            print(f"running: {cmd}", file=sys.stderr)
            outputs[cmd] = run(cmd)
    except GenDocsError as e:
        print(f"gen_docs: {e}", file=sys.stderr)
        return 1
    if a.check:
        problems = differences(readme, outputs)
        for p in problems:
            print(p)
        print(f"gen_docs: {len(problems)} stale" if problems else "gen_docs: README.md and docs/ are up to date")
        return 1 if problems else 0
    changed = write(readme, outputs)
    print("\n".join(f"wrote {c}" for c in changed) or "nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
