"""aemu's pytest plugin beside looptime: one small async suite (sleeps, timeouts, retries) run
under each, and probes for the feature table.

    pip install -e ".[test,bench]"        # looptime is in the bench extra
    python bench/bench_looptime.py [--rounds 3] [--n 20] [--real]

The suite (written to a temporary directory) has ``4 * n`` tests: a retry with exponential
back-off (up to 3 failures: 1 + 2 + 4 s), a 5 s timeout around an hour's sleep, 500 sleeps of
1 ms, and a 50 ms ticker watched for 10 s under ``wait_for``. Each variant runs it in a fresh
pytest process: looptime (``--looptime``, aemu's plugin off) and aemu (``--aemu-virtual-time``,
looptime's plugin off); ``--real`` adds plain asyncio in real time (minutes). Rounds are
interleaved; reported: pytest's own session time and the child's CPU seconds, best and median.

Probes (one small test each, run under both, a 10 s limit): a deadlock, a thread in the
default executor, an async fixture that sleeps, anyio on asyncio, anyio on trio.
Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib.metadata import version
from pathlib import Path

SUITE = '''
import asyncio
import pytest

N = {n}


class Flaky:
    def __init__(self, failures):
        self.left = failures

    async def call(self):
        await asyncio.sleep(0.2)  # the request's round trip
        if self.left:
            self.left -= 1
            raise ConnectionError("try again")
        return "ok"


async def retry(fn, attempts=5, delay=1.0):
    for attempt in range(attempts):
        try:
            return await fn()
        except ConnectionError:
            await asyncio.sleep(delay * 2 ** attempt)
    raise TimeoutError


@pytest.mark.parametrize("i", range(N))
async def test_retry_with_backoff(i):
    assert await retry(Flaky(i % 4).call) == "ok"


@pytest.mark.parametrize("i", range(N))
async def test_timeout(i):
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.sleep(3600)


@pytest.mark.parametrize("i", range(N))
async def test_many_small_sleeps(i):
    for _ in range(500):
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("i", range(N))
async def test_ticker_under_wait_for(i):
    ticks = []

    async def ticker():
        while True:
            await asyncio.sleep(0.05)
            ticks.append(1)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ticker(), 10)
    assert len(ticks) >= 150
'''

def _anyio_case(backend: str) -> tuple[str, str]:
    """A test sleeping 3 s under anyio's plugin on ``backend`` (asyncio or trio)."""
    return (f'''
import anyio, pytest

@pytest.fixture
def anyio_backend():
    return "{backend}"

@pytest.mark.anyio
@pytest.mark.aemu
@pytest.mark.looptime
async def test_{backend}():
    await anyio.sleep(3)
''', "anyio")


PROBES = {
    "deadlock": ('''
import asyncio

async def test_deadlock():
    lock = asyncio.Lock()
    await lock.acquire()
    asyncio.create_task(lock.acquire(), name="second-acquirer")
    await asyncio.Event().wait()
''', ""),
    "executor": ('''
import asyncio, time

async def test_executor():
    async with asyncio.timeout(1):
        await asyncio.to_thread(time.sleep, 0.05)
    print("PROBE loop.time() after a 50 ms thread:", round(asyncio.get_running_loop().time(), 4))
''', ""),
    "fixture": ('''
import asyncio, pytest

@pytest.fixture
async def slow_fixture():
    await asyncio.sleep(3)
    yield

async def test_fixture(slow_fixture):
    print("PROBE loop.time() after a fixture's 3 s sleep:", round(asyncio.get_running_loop().time(), 4))
''', ""),
    "anyio-asyncio": _anyio_case("asyncio"),
    "anyio-trio": _anyio_case("trio"),
}

BASE = ["-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:randomly"]
VARIANTS = {
    "looptime": ["-p", "no:aemu", "--looptime"],
    "aemu plugin": ["-p", "no:looptime_plugin", "--aemu-virtual-time"],
    "real time": ["-p", "no:aemu", "-p", "no:looptime_plugin"],
}
INI = '[tool.pytest.ini_options]\nasyncio_mode = "{mode}"\nasyncio_default_fixture_loop_scope = "function"\n'


def run_pytest(project: Path, args: list[str], limit: float | None = None) -> tuple[float, float, float | None, str]:
    """Run pytest in ``project``: (wall s, child CPU s, pytest's session s, output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", *BASE, *args], cwd=project, capture_output=True,
                              text=True, timeout=limit)
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        out = f"HUNG: killed after {limit:g} s\n" + (e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or ""))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = re.search(r" in ([0-9.]+)s", out)
    return wall, cpu, float(m.group(1)) if m else None, out


def project(root: Path, name: str, text: str, mode: str = "auto") -> Path:
    d = root / name
    d.mkdir()
    (d / "pyproject.toml").write_text(INI.format(mode=mode))
    (d / f"test_{name.replace('-', '_')}.py").write_text(textwrap.dedent(text))
    return d


def summary(out: str) -> str:
    if out.startswith("HUNG"):
        return out.splitlines()[0]
    probe = re.findall(r"PROBE (.*)", out)
    lines = [ln for ln in out.splitlines() if re.search(r"\b(passed|failed|error)", ln)]
    dead = re.search(r"(SimulationDeadlock: simulation deadlock.*?blocked with no event pending:)", out)
    named = re.findall(r"task '([^']+)' waits on", out)
    tail = lines[-1].strip("= ") if lines else out.strip().splitlines()[-1][:80]
    bits = [*probe, tail]
    if dead:
        bits.append(f"SimulationDeadlock names {sorted(set(named))}")
    return "; ".join(bits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=20, help="tests per kind (4 kinds)")
    ap.add_argument("--real", action="store_true", help="also run the suite in real time (minutes)")
    args = ap.parse_args()
    variants = {k: v for k, v in VARIANTS.items() if args.real or k != "real time"}
    print(f"python {sys.version.split()[0]}, pytest {version('pytest')}, pytest-asyncio {version('pytest-asyncio')}, "
          f"looptime {version('looptime')}, aemu {version('aemu')}, anyio {version('anyio')}, trio {version('trio')}; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        suite = project(root, "suite", SUITE.format(n=args.n))
        results: dict[str, list[tuple[float, float, float | None]]] = {k: [] for k in variants}
        outcome: dict[str, str] = {}
        run_pytest(suite, ["--collect-only"])  # warm the bytecode caches
        for _ in range(args.rounds):
            for name, extra in variants.items():
                wall, cpu, session, out = run_pytest(suite, extra)
                results[name].append((wall, cpu, session))
                outcome[name] = summary(out)
        covered = sum(((i % 4) + 1) * 0.2 + (2 ** (i % 4) - 1) + 5 + 0.5 + 10 for i in range(args.n))
        print(f"\nsuite: {4 * args.n} tests (retry with back-off, timeout, 500 x 1 ms sleeps, ticker under wait_for), "
              f"{covered:.0f} s of virtual time; best / median of {args.rounds} interleaved rounds")
        print(f"{'variant':<12} {'pytest session s':>18} {'child CPU s':>14} {'wall s':>12}  outcome")
        for name, rows in results.items():
            ses = [r[2] for r in rows if r[2] is not None]
            cpu = [r[1] for r in rows]
            wall = [r[0] for r in rows]
            print(f"{name:<12} {min(ses):>8.2f} / {statistics.median(ses):>6.2f} "
                  f"{min(cpu):>6.2f} / {statistics.median(cpu):>5.2f} {min(wall):>5.2f} / {statistics.median(wall):>5.2f}"
                  f"  {outcome[name]}")

        print("\nprobes (10 s limit each):")
        for probe, (text, kind) in PROBES.items():
            d = project(root, probe, text, mode="strict" if kind == "anyio" else "auto")
            for name in ("looptime", "aemu plugin"):
                extra = [*variants[name], "-s"]  # anyio probes: pytest-asyncio in strict mode leaves them to anyio
                wall, _cpu, _ses, out = run_pytest(d, extra, limit=10)
                print(f"  {probe:<14} {name:<12} {wall:>6.2f} s wall  {summary(out)}")


if __name__ == "__main__":
    main()
