"""aemu.embed: virtual-time runs from asyncio, uvloop and trio apps; snapshots; cancellation; real time.

These tests drive real host loops (``asyncio.run``, ``uvloop.run``, ``trio.run``) from plain test
functions: the simulation runs in a worker thread on its own virtual-time loop, so its results
are as deterministic as :func:`aemu.simulate`'s.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import trio

import aemu
from aemu.embed import THREAD_NAME_PREFIX, Snapshot, live, run_realtime, run_realtime_blocking, simulate_async
from aemu.errors import ConfigError
from aemu.machine import Machine
from aemu.result import Result
from aemu.workloads.boot import Boot

ROOT = Path(__file__).resolve().parent.parent

#: Small and fast (~0.1 s): 4 vCPUs contend for the BQL on every HPET read -- with the fifo hand-off
#: (3.3 ms of virtual time; under the default barging policy only 8 of its 627 acquisitions contend
#: and the run lasts 0.37 ms, too short for the snapshots these tests take).
HPET = ("-M q35,hpet=on -smp 4 -accel kvm,kernel-irqchip=split --workload hpet-bench --series before "
        "--param reads=100 --lock-policy fifo")
#: Runs for many wall seconds unless cancelled.
LONG_BOOT = "-M q35,hpet=off -smp 32 -accel kvm,kernel-irqchip=split --workload boot --series before --duration 10s"


@pytest.fixture(scope="module")
def reference() -> Result:
    return aemu.simulate(HPET)


def run_asyncio(coro: Coroutine[Any, Any, Any], loop: str) -> Any:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(coro)
    return asyncio.run(coro)


def sim_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)]


class SpyBoot(Boot):
    """The boot workload, keeping a reference to its machine (to check its locks afterwards)."""

    machine: Machine | None = None

    def setup(self, machine: Machine) -> None:
        super().setup(machine)
        self.machine = machine


def assert_same_run(r: Result, ref: Result) -> None:
    assert (r.metric, r.virtual_ns, r.finished) == (ref.metric, ref.virtual_ns, ref.finished)
    assert (r.bql.acquisitions, r.bql.contentions) == (ref.bql.acquisitions, ref.bql.contentions)


class TestSimulateAsync:
    @pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
    def test_from_asyncio_same_result_and_loop_keeps_running(self, loop: str, reference: Result) -> None:
        ticks = 0
        ticks_at_snapshot: list[int] = []

        async def main() -> Result:
            nonlocal ticks

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.001)
                    ticks += 1

            t = asyncio.create_task(ticker())
            r = await simulate_async(HPET, snapshot_every_ns=200_000,
                                     on_snapshot=lambda s: ticks_at_snapshot.append(ticks))
            t.cancel()
            return r

        r = run_asyncio(main(), loop)
        assert_same_run(r, reference)
        assert ticks > 0 and ticks_at_snapshot[-1] > ticks_at_snapshot[0]  # the host loop ran meanwhile

    def test_from_trio_same_result_and_loop_keeps_running(self, reference: Result) -> None:
        ticks = 0

        async def main() -> Result:
            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await trio.sleep(0.001)
                    ticks += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                r = await simulate_async(HPET)
                nursery.cancel_scope.cancel()
            return r

        r = trio.run(main)
        assert_same_run(r, reference)
        assert ticks > 0

    def test_async_callback_is_awaited(self) -> None:
        seen: list[int] = []

        async def on_snapshot(s: Snapshot) -> None:
            await trio.sleep(0)
            seen.append(s.virtual_ns)

        async def main() -> Result:
            return await simulate_async(HPET, snapshot_every_ns=500_000, on_snapshot=on_snapshot)

        r = trio.run(main)
        assert seen == list(range(500_000, r.virtual_ns + 1, 500_000)) and len(seen) >= 2

    def test_concurrent_calls_queue_and_stay_deterministic(self, reference: Result) -> None:
        async def main() -> list[Result]:
            return list(await asyncio.gather(*(simulate_async(HPET) for _ in range(3))))

        for r in asyncio.run(main()):
            assert_same_run(r, reference)

    def test_callback_error_stops_the_run_and_propagates(self) -> None:
        def on_snapshot(s: Snapshot) -> None:
            raise KeyError("dashboard broke")

        t0 = time.perf_counter()
        with pytest.raises(KeyError, match="dashboard broke"):
            trio.run(lambda: simulate_async(LONG_BOOT, snapshot_every_ns=100_000, on_snapshot=on_snapshot))
        assert time.perf_counter() - t0 < 5.0 and sim_threads() == []

    def test_errors_raised_as_themselves(self) -> None:
        with pytest.raises(ConfigError, match="needs the HPET"):
            asyncio.run(simulate_async("-M q35,hpet=off --workload hpet-bench"))
        with pytest.raises(ConfigError, match="runs until stopped"):
            trio.run(simulate_async, "--workload idle")


class TestSnapshots:
    def test_increasing_virtual_time_ending_before_the_result(self, reference: Result) -> None:
        snaps: list[Snapshot] = []

        async def main() -> Result:
            async with live(HPET, every_ns=250_000, buffer=1) as run:  # buffer=1: the run waits for us
                async for snap in run.snapshots():
                    snaps.append(snap)
                    await asyncio.sleep(0)
                return await run.result()

        r = asyncio.run(main())
        assert_same_run(r, reference)  # snapshots (and waiting for the reader) change nothing
        assert [s.virtual_ns for s in snaps] == list(range(250_000, r.virtual_ns + 1, 250_000))
        assert snaps[-1].virtual_ns <= r.virtual_ns
        acq = [s.bql.acquisitions for s in snaps]
        assert acq == sorted(acq) and acq[-1] <= r.bql.acquisitions
        assert {s.vcpus_total for s in snaps} == {4} and set(snaps[-1].locks) == set(r.locks)
        walls = [s.wall_s for s in snaps]
        assert walls == sorted(walls)

    # fifo: the 31 readers queue on the BQL at nearly every read (30-31 waiting in every snapshot);
    # barging (the default): the readers that run keep barging in, the futex sleepers (28 at first,
    # 7 by 5 ms) requeue at every wake-up that finds it taken -- a requeue is not a new contention.
    @pytest.mark.parametrize(("policy", "min_waiting"), [("fifo", 25), ("barging", 5)])
    def test_contentions_never_exceed_acquisitions_in_a_live_snapshot(self, policy: str, min_waiting: int) -> None:
        """32 vCPUs queue on the BQL at nearly every HPET read: a wait in flight is a waiting task,
        its contention is counted with its acquisition (counted when it began, nearly every
        snapshot here had more contentions than acquisitions). The partial report of a stopped run too."""
        config = f"-smp 32 --workload hpet-bench --series before --param reads=600 --lock-policy {policy}"
        snaps: list[Snapshot] = []

        async def main() -> Result:
            async with live(config, every_ns=250_000) as run:
                async for snap in run.snapshots():
                    snaps.append(snap)
                    if snap.virtual_ns == 5_000_000:
                        run.cancel()  # as Ctrl-C does: the queued waits are cancelled
                return await run.result()

        r = asyncio.run(main())
        assert len(snaps) >= 20 and min(s.bql.tasks_waiting for s in snaps) >= min_waiting
        for st in [*(s.bql for s in snaps), r.bql]:
            assert st.contentions == st.contended_acquisitions <= st.acquisitions
            assert st.waits_begun == st.contentions + st.cancelled_waits + st.tasks_waiting
        assert r.interrupted and r.bql.cancelled_waits > 0

    def test_no_snapshots_without_every(self) -> None:
        async def main() -> list[Snapshot]:
            async with live(HPET) as run:
                got = [s async for s in run.snapshots()]
                await run.result()
                return got

        assert trio.run(main) == []

    def test_bad_arguments(self) -> None:
        async def main(**kw: Any) -> None:
            async with live(HPET, **kw):
                pass

        with pytest.raises(ValueError, match="every_ns"):
            asyncio.run(main(every_ns=0))
        with pytest.raises(ValueError, match="buffer"):
            asyncio.run(main(buffer=0))


class TestCancellation:
    def test_asyncio_task_cancel_stops_the_run(self) -> None:
        spy = SpyBoot()

        async def main() -> float:
            first = asyncio.Event()
            task = asyncio.create_task(simulate_async(LONG_BOOT, workload=spy, snapshot_every_ns=100_000,
                                                      on_snapshot=lambda s: first.set()))
            await first.wait()
            t0 = time.perf_counter()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.perf_counter() - t0

        took = asyncio.run(main())
        assert took < 3.0
        assert sim_threads() == []
        m = spy.machine
        assert m is not None and m.interrupted and not m.finished
        assert not any(lock.locked() for lock in m.all_locks())
        assert all(c.task is not None and c.task.done() for c in m.vcpus)

    def test_trio_cancel_scope_stops_the_run(self) -> None:
        async def main() -> tuple[Any, float]:
            t0 = 0.0
            with trio.CancelScope() as scope:
                async with live(LONG_BOOT, every_ns=100_000) as run:
                    async for _ in run.snapshots():
                        t0 = time.perf_counter()
                        scope.cancel()
            assert scope.cancelled_caught
            return run, time.perf_counter() - t0

        run, took = trio.run(main)
        assert took < 3.0 and run.done and sim_threads() == []
        m = run.machine
        assert m is not None and m.interrupted
        assert not any(lock.locked() for lock in m.all_locks())

    def test_cancel_returns_the_partial_result(self) -> None:
        async def main() -> Result:
            async with live(LONG_BOOT, every_ns=100_000) as run:
                async for snap in run.snapshots():
                    if snap.virtual_ns >= 300_000:
                        run.cancel()
                return await run.result()

        r = trio.run(main)
        assert r.interrupted and not r.finished
        assert 300_000 <= r.virtual_ns < 10**9
        assert not any(st.locked for st in r.locks.values())

    def test_cancel_before_the_start(self) -> None:
        async def main() -> Result:
            async with live(LONG_BOOT) as run:
                run.cancel()
                return await run.result()

        r = asyncio.run(main())
        assert r.interrupted and not r.finished and r.virtual_ns == 0

    def test_leaving_the_block_stops_the_run(self) -> None:
        async def main() -> Any:
            async with live(LONG_BOOT, every_ns=100_000, buffer=1) as run:
                async for _ in run.snapshots():
                    break  # the worker is now blocked on a full buffer: leaving must still end it
            return run

        t0 = time.perf_counter()
        run = asyncio.run(main())
        assert time.perf_counter() - t0 < 5.0
        assert run.done and run.machine is not None and run.machine.interrupted


class TestRealtime:
    def test_idle_for_a_fifth_of_a_second(self) -> None:
        snaps: list[Snapshot] = []
        r = asyncio.run(run_realtime("-smp 2 --workload idle", duration_s=0.2, on_snapshot=snaps.append,
                                     every_s=0.05))
        assert 0.18e9 <= r.virtual_ns <= 0.6e9  # virtual time is wall time here
        assert sum(v.interrupts for v in r.vcpus) > 0 and r.metric.value > 0
        assert not r.finished and not r.interrupted  # idle never finishes; the duration ended it
        assert snaps and all(s.virtual_ns <= r.virtual_ns for s in snaps)
        assert len(r.bql_utilisation) <= r.virtual_ns // r.bql_utilisation_bin_ns + 1  # binned from the start

    def test_cancel_returns_the_partial_report(self) -> None:
        async def main() -> Result:
            task = asyncio.create_task(run_realtime("-smp 2 --workload idle"))
            await asyncio.sleep(0.1)
            task.cancel()
            return await task

        r = asyncio.run(main())
        assert r.interrupted and 0.05e9 <= r.virtual_ns <= 1e9

    def test_callback_error_ends_the_run(self) -> None:
        def on_snapshot(s: Snapshot) -> None:
            raise KeyError("dashboard broke")

        with pytest.raises(KeyError, match="dashboard broke"):
            asyncio.run(run_realtime("-smp 1 --workload idle", duration_s=5, on_snapshot=on_snapshot, every_s=0.02))

    def test_runs_to_the_end_and_blocking_helper(self) -> None:
        r = run_realtime_blocking("-smp 2 --workload hpet-bench --param reads=20")
        assert r.finished and not r.interrupted and r.metric.value > 0
        r = run_realtime_blocking("-smp 1 --workload idle --duration 50ms")
        assert 0.05e9 <= r.virtual_ns <= 0.5e9

    def test_a_finished_run_with_snapshots_ends_when_its_programs_do(self) -> None:
        snaps: list[Snapshot] = []
        t0 = time.perf_counter()
        r = asyncio.run(run_realtime("-smp 2 --workload hpet-bench --param reads=20", duration_s=30,
                                     on_snapshot=snaps.append, every_s=0.005))
        assert r.finished and not r.interrupted and time.perf_counter() - t0 < 10


class TestRealtimeNeedsAsyncio:
    """Real-time mode runs the vCPUs as tasks of the running asyncio loop: under trio it says so."""

    def test_under_trio_a_clear_error(self) -> None:
        async def enter() -> None:
            async with Machine("-smp 2 --workload idle", realtime=True):
                pass

        async def run() -> None:
            await Machine("-smp 2 --workload idle", realtime=True).run()

        for fn, what in ((enter, "Machine.start"), (run, "running a machine"),
                         (lambda: run_realtime("-smp 2 --workload idle", duration_s=0.05), "aemu.run_realtime")):
            with pytest.raises(aemu.NeedsAsyncioError) as e:
                trio.run(fn)
            assert str(e.value).startswith(f"{what} needs a running asyncio event loop")
            assert "trio.to_thread.run_sync(aemu.embed.run_realtime_blocking, config)" in str(e.value)

    def test_the_documented_way_from_trio(self) -> None:
        async def main() -> Result:
            return await trio.to_thread.run_sync(run_realtime_blocking, "-smp 2 --workload hpet-bench --param reads=20")

        r = trio.run(main)
        assert r.finished and not r.interrupted and r.metric.value > 0


class TestRealtimeClock:
    """Real time reads the host's monotonic clock in ns on every loop (uvloop's loop.time() ticks in ms)."""

    ARGS = "-smp 4 --workload hpet-bench --series before --param reads=100"

    @pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
    def test_no_negative_latency(self, loop: str) -> None:
        r = run_asyncio(run_realtime(self.ARGS), loop)
        assert r.finished and r.regions
        for region in r.regions:
            assert region.cdf[0][0] > 0 and region.p50 > 0  # the fastest access took some time
        assert r.metric.value > 0

    @pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
    def test_the_duration_is_never_cut_short(self, loop: str) -> None:
        for _ in range(5):  # uvloop's timers run in whole milliseconds of its cached clock: often early
            r = run_asyncio(run_realtime("-smp 1 --workload idle", duration_s=0.0105), loop)
            assert 10_500_000 <= r.virtual_ns < 200_000_000 and not r.finished

    def test_no_lock_wait_quantised_to_a_millisecond_on_uvloop(self) -> None:
        r = run_asyncio(run_realtime(self.ARGS), "uvloop")
        bql = r.bql
        assert bql.contentions > 0 and bql.wait_ns.total % 1_000_000 != 0
        assert any(s.wait_max_ns % 1_000_000 for s in bql.sites if s.wait_max_ns)
        assert bql.hold_ns.total % 1_000_000 != 0


class TestExamples:
    def run(self, name: str, *args: str) -> str:
        proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def test_asyncio_example(self) -> None:
        out = self.run("embed_asyncio.py", "--smp", "4", "--every", "5ms")
        assert "[before] virtual    5.00 ms" in out and "BQL acquisitions" in out
        assert "\nbefore: boot time" in out and "\nafter: boot time" in out
        assert "host loop stayed responsive" in out

    def test_trio_example(self) -> None:
        out = self.run("embed_trio.py", "--smp", "4", "--reads", "50", "--every", "100us")
        assert out.startswith("host loop: trio")
        assert "[before] virtual    0.10 ms" in out  # the 'before' run lasts about 0.2 ms
        # after: each of the 3 APs' counter delta is one 3,000 ns read then 50 x (3,000 read + 100 compute);
        # x 10 ns / 50 reads = 3,160 ns each, summed and divided by the 4 CPUs (as hpet_read_test does)
        assert "\nbefore: average read (hpet_read_test)" in out
        assert "\nafter: average read (hpet_read_test) 2,370.00 ns" in out
        assert "host loop stayed responsive" in out
