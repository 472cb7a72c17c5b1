"""The virtual-time loop: time jumps, FIFO at equal instants, asyncio/anyio interplay, pacing,
deadlock detection."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

from aemu import clock
from aemu.clock import REALTIME, VIRTUAL, VirtualTimeLoop, clock_get_ns, now_ns, sleep_ns
from aemu.errors import SimulationDeadlock


class TestVirtualTime:
    def test_run_returns_result_and_time_jumps(self) -> None:
        async def main() -> int:
            await sleep_ns(3_600 * 10**9)  # an hour of virtual time, instantly
            return now_ns()

        t0 = time.monotonic()
        assert clock.run(main()) == 3_600 * 10**9
        assert time.monotonic() - t0 < 1.0

    def test_same_instant_events_run_fifo(self) -> None:
        log: list[tuple[int, str]] = []

        async def worker(name: str, delay: int) -> None:
            await sleep_ns(delay)
            log.append((now_ns(), name))
            await asyncio.sleep(1e-6)  # asyncio's own timers share the same heap
            log.append((now_ns(), name + "'"))

        async def main() -> None:
            await asyncio.gather(*(worker(n, d) for n, d in [("a", 10), ("b", 5), ("c", 10), ("d", 0), ("e", 10)]))

        clock.run(main())
        assert log == [
            (0, "d"), (5, "b"), (10, "a"), (10, "c"), (10, "e"),
            (1000, "d'"), (1005, "b'"), (1010, "a'"), (1010, "c'"), (1010, "e'"),
        ]

    def test_identical_runs_give_identical_traces(self) -> None:
        import random

        def once() -> list[tuple[int, int]]:
            rng = random.Random(7)
            log: list[tuple[int, int]] = []

            async def w(i: int) -> None:
                for _ in range(50):
                    await sleep_ns(rng.randrange(0, 100))
                    log.append((now_ns(), i))

            async def main() -> None:
                await asyncio.gather(*(w(i) for i in range(20)))

            clock.run(main())
            return log

        assert once() == once()

    def test_loop_time_is_seconds_and_timeouts_work(self) -> None:
        async def main() -> list[object]:
            loop = asyncio.get_running_loop()
            out: list[object] = [loop.time()]
            async with asyncio.timeout(1):
                await asyncio.sleep(0.25)
            out.append(now_ns())
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(2):
                    await asyncio.sleep(5)
            out.append(now_ns())
            out.append(await asyncio.wait_for(asyncio.sleep(1, result="ok"), 3))
            out.append(loop.time())
            return out

        assert clock.run(main()) == [0.0, 250_000_000, 2_250_000_000, "ok", 3.25]

    def test_cancelled_timer_does_not_fire_or_move_time(self) -> None:
        async def main() -> int:
            fired: list[int] = []
            loop = asyncio.get_running_loop()
            h = loop.call_later(100, fired.append, 1)
            clock.call_at_ns(50, fired.append, 2)
            await sleep_ns(10)
            h.cancel()
            await sleep_ns(100)
            assert fired == [2]
            return now_ns()

        assert clock.run(main()) == 110

    def test_anyio_runs_in_virtual_time(self) -> None:
        async def main() -> int:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 2)
                tg.start_soon(anyio.sleep, 1)
            return now_ns()

        assert clock.run(main()) == 2 * 10**9

    def test_executor_work_is_not_a_deadlock(self) -> None:
        async def main() -> int:
            await asyncio.to_thread(time.sleep, 0.05)
            return now_ns()

        assert clock.run(main()) == 0

    def test_time_holds_while_an_executor_job_runs(self) -> None:
        async def main() -> tuple[str, int]:
            def work() -> str:
                time.sleep(0.05)
                return "done"

            async with asyncio.timeout(1):  # a jump would fire this at once
                got = await asyncio.get_running_loop().run_in_executor(None, work)
            return got, now_ns()

        assert clock.run(main()) == ("done", 0)

    def test_sleep_ns_does_not_skip_past_an_executor_job(self) -> None:
        seen: list[int] = []

        async def ticker() -> None:
            for _ in range(100):
                await sleep_ns(10)  # may skip its loop turn, but not while a job is outstanding

        async def main() -> None:
            t = asyncio.create_task(ticker())
            await asyncio.to_thread(time.sleep, 0.05)
            seen.append(now_ns())
            await t

        clock.run(main())
        assert seen == [0]

    def test_anyio_worker_threads_hold_time_when_watched(self) -> None:
        async def main() -> tuple[str, int]:
            with anyio.fail_after(1):  # a jump would fire it
                got = await anyio.to_thread.run_sync(lambda: (time.sleep(0.05), "done")[1])
            await anyio.sleep(2)
            return got, now_ns()

        with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(anyio_workers=True)) as runner:
            assert runner.run(main()) == ("done", 2 * 10**9)

    def test_the_default_executors_shutdown_is_not_a_deadlock(self) -> None:
        async def main() -> int:
            await asyncio.to_thread(time.sleep, 0.01)
            await asyncio.sleep(2)
            return now_ns()

        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:  # closing it shuts the executor down
            assert runner.run(main()) == 2 * 10**9

    def test_time_holds_while_a_child_process_runs(self) -> None:
        import sys

        async def main() -> tuple[int | None, int]:
            async with asyncio.timeout(1):
                proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(0.1)")
                await proc.wait()
            return proc.returncode, now_ns()

        assert clock.run(main()) == (0, 0)

    def test_bad_io_options(self) -> None:
        with pytest.raises(ValueError, match="io_grace must be"):
            VirtualTimeLoop(io_grace=-1)
        with pytest.raises(ValueError, match="io_timeout must be"):
            VirtualTimeLoop(io_timeout=-0.5)

    def test_clocks(self) -> None:
        async def main() -> tuple[int, int]:
            await sleep_ns(42)
            return clock_get_ns(VIRTUAL), clock_get_ns(REALTIME)

        v, r = clock.run(main())
        assert v == 42 and r > 10**6

    def test_bad_input(self) -> None:
        with pytest.raises(ValueError, match="pace must be a positive number"):
            clock.run(asyncio.sleep(0), pace=0)

        async def neg() -> None:
            await sleep_ns(-1)

        with pytest.raises(ValueError, match="sleep_ns needs a duration >= 0"):
            clock.run(neg())
        with pytest.raises(RuntimeError, match="needs a running event loop"):
            now_ns()


class TestPace:
    def test_pace_holds_virtual_time_to_wall_time(self) -> None:
        async def main() -> None:
            for _ in range(10):
                await sleep_ns(10_000_000)  # 100 ms of virtual time in all

        t0 = time.monotonic()
        clock.run(main(), pace=2.0)  # at most 2 virtual seconds per wall second: >= 50 ms
        elapsed = time.monotonic() - t0
        assert 0.045 <= elapsed < 2.0


class TestDeadlock:
    def test_deadlock_names_every_blocked_task(self) -> None:
        async def stuck(ev: asyncio.Event) -> None:
            await ev.wait()

        async def main() -> None:
            ev = asyncio.Event()
            a = asyncio.create_task(stuck(ev), name="vcpu0")
            b = asyncio.create_task(stuck(ev), name="vcpu1")
            await sleep_ns(5)
            await asyncio.gather(a, b)

        with pytest.raises(SimulationDeadlock) as info:
            clock.run(main())
        msg = str(info.value)
        assert msg.startswith("simulation deadlock at t=5 ns")
        assert "'vcpu0' waits on" in msg and "'vcpu1' waits on" in msg and "in wait()" in msg
        assert set(info.value.blocked) >= {"vcpu0", "vcpu1"}

    def test_deadlock_lists_waits_from_registered_sources(self) -> None:
        class Gate:
            def __init__(self) -> None:
                self.waiters: dict[asyncio.Task[None], str] = {}

            def describe_waiters(self) -> dict[asyncio.Task[None], str]:
                return dict(self.waiters)

        gate = Gate()
        clock.register_wait_source(gate)

        async def main() -> None:
            task = asyncio.current_task()
            assert task is not None
            gate.waiters[task] = "gate 'g' (closed forever)"
            await asyncio.get_running_loop().create_future()

        with pytest.raises(SimulationDeadlock, match="waits on gate 'g' \\(closed forever\\)"):
            clock.run(main())


    def test_deadlock_is_raised_where_the_main_task_waits(self) -> None:
        async def main() -> tuple[bool, int]:
            helper = asyncio.create_task(asyncio.Event().wait(), name="helper")
            me = asyncio.current_task()
            assert me is not None
            await sleep_ns(7)
            try:
                await asyncio.Event().wait()
            except SimulationDeadlock as e:  # inside the task: its except and finally run
                helper.cancel()
                await sleep_ns(3)  # and the loop goes on
                return set(e.blocked) == {"helper", me.get_name()}, now_ns()
            return False, -1

        assert clock.run(main()) == (True, 10)

    def test_deadlock_under_run_forever_is_raised_out_of_the_loop(self) -> None:
        loop = VirtualTimeLoop()
        try:
            loop.create_task(asyncio.Event().wait(), name="orphan")
            with pytest.raises(SimulationDeadlock, match="'orphan' waits on"):
                loop.run_forever()
        finally:
            for t in asyncio.all_tasks(loop):
                t.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()


class TestRealIO:
    """Sockets: time waits up to ``io_grace`` after the last real I/O before jumping; with no timer
    pending it waits up to ``io_timeout`` for I/O, then reports a deadlock."""

    @staticmethod
    def _late_reply(delay: float) -> tuple[int, object]:
        import socket
        import threading

        srv = socket.create_server(("127.0.0.1", 0))

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(16)
                time.sleep(delay)
                conn.sendall(b"pong\n")
            srv.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        return srv.getsockname()[1], t

    def _ask(self, loop: VirtualTimeLoop, delay: float) -> tuple[object, int]:
        port, thread = self._late_reply(delay)

        async def main() -> tuple[object, int]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping\n")
            try:
                async with asyncio.timeout(60):
                    got: object = await reader.readline()
            except TimeoutError:
                got = "timeout"
            writer.close()
            return got, now_ns()

        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()
            thread.join(5)  # type: ignore[attr-defined]

    def test_a_reply_within_the_grace_comes_before_the_jump(self) -> None:
        assert self._ask(VirtualTimeLoop(io_grace=0.5), 0.05) == (b"pong\n", 0)

    def test_without_a_grace_time_jumps_past_a_late_reply(self) -> None:
        assert self._ask(VirtualTimeLoop(), 0.05) == ("timeout", 60 * 10**9)

    def test_io_timeout_bounds_a_wait_on_a_quiet_socket(self) -> None:
        async def main() -> None:
            server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
            async with server:
                await asyncio.Event().wait()

        loop = VirtualTimeLoop(io_timeout=0.1)
        t0 = time.monotonic()
        try:
            with pytest.raises(SimulationDeadlock):
                loop.run_until_complete(main())
        finally:
            loop.close()
        assert 0.09 < time.monotonic() - t0 < 3.0


class TestFastForward:
    """A sleep that nothing can interleave with skips its loop turn; the schedule is unchanged."""

    @staticmethod
    def _log(loop: VirtualTimeLoop | None = None) -> tuple[list[tuple[int, str]], int]:
        log: list[tuple[int, str]] = []

        async def worker(name: str, gaps: list[int]) -> None:
            for g in gaps:
                await sleep_ns(g)
                log.append((now_ns(), name))

        async def main() -> int:
            t = asyncio.get_running_loop()
            asyncio.get_running_loop().call_at(250e-9, lambda: log.append((now_ns(), "timer")))
            await asyncio.gather(worker("a", [100, 100, 5, 300, 0, 7]), worker("b", [150, 50, 400, 3]))
            return t.fast_forwards  # type: ignore[attr-defined,no-any-return]

        if loop is None:
            return log, clock.run(main())
        try:
            return log, loop.run_until_complete(main())
        finally:
            loop.close()

    def test_same_order_as_lockstep(self) -> None:
        log, skipped = self._log()
        assert log == [(100, "a"), (150, "b"), (200, "a"), (200, "b"), (205, "a"), (250, "timer"),
                       (505, "a"), (505, "a"), (512, "a"), (600, "b"), (603, "b")]
        assert skipped > 0
        paced, none = self._log(VirtualTimeLoop(pace=1e9))  # paced: every sleep takes its turn
        assert paced == log and none == 0

    def test_a_timeout_still_interrupts_a_sleep(self) -> None:
        async def main() -> int:
            try:
                async with asyncio.timeout(100e-9):
                    await sleep_ns(50)  # may skip its turn: the timeout is later
                    await sleep_ns(1_000)  # may not: the timeout comes first
            except TimeoutError:
                return now_ns()
            return -1

        assert clock.run(main()) == 100

    def test_a_lone_task_still_gives_the_loop_turns(self) -> None:
        async def main() -> int:
            for _ in range(1_000):
                await sleep_ns(10)
            assert now_ns() == 10_000
            return asyncio.get_running_loop().fast_forwards  # type: ignore[attr-defined,no-any-return]

        # at most 64 skips in a row (clock._SKIP_BUDGET), then a real loop turn
        assert clock.run(main()) == 1_000 - 1_000 // (clock._SKIP_BUDGET + 1)


def test_a_raising_callback_is_reported_and_the_loop_goes_on() -> None:
    seen: list[str] = []

    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx["message"]))
        loop.call_soon(lambda: 1 / 0)
        loop.call_later(5e-9, lambda: [][1])
        await sleep_ns(10)
        return now_ns()

    assert clock.run(main()) == 10
    assert len(seen) == 2 and all(m.startswith("Exception in callback") for m in seen)


async def test_async_tests_run_on_the_virtual_loop() -> None:
    assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
    await asyncio.sleep(10)
    assert now_ns() == 10 * 10**9


class TestRunningLoopSlot:
    """Hot paths find the running VirtualTimeLoop in a per-thread slot, not through asyncio's
    ``_get_running_loop()`` (a getpid() system call per call on CPython 3.11)."""

    def test_slot_is_the_running_loop_only_while_it_runs(self) -> None:
        async def main() -> bool:
            loop = asyncio.get_running_loop()
            return clock._running.loop is loop and clock.running_loop() is loop

        assert clock._running.loop is None
        assert clock.run(main())
        assert clock._running.loop is None and clock.running_loop() is None
        with pytest.raises(RuntimeError):
            now_ns()
        with pytest.raises(RuntimeError):
            sleep_ns(1)

    def test_slot_is_cleared_when_the_run_raises(self) -> None:
        async def main() -> None:
            await sleep_ns(5)
            raise KeyError("boom")

        with pytest.raises(KeyError):
            clock.run(main())
        assert clock._running.loop is None

    def test_threads_each_see_their_own_loop(self) -> None:
        import threading

        barrier = threading.Barrier(3)
        out: dict[str, list[int]] = {}

        def sim(name: str, step: int) -> None:
            async def main() -> list[int]:
                seen = []
                for _ in range(50):
                    await sleep_ns(step)
                    seen.append(now_ns())
                    await asyncio.sleep(0)  # let the other thread's loop interleave
                return seen

            barrier.wait()
            out[name] = clock.run(main())

        threads = [threading.Thread(target=sim, args=(n, s)) for n, s in [("a", 3), ("b", 7), ("c", 11)]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == {n: [s * (i + 1) for i in range(50)] for n, s in [("a", 3), ("b", 7), ("c", 11)]}

    def test_a_stock_loop_still_gets_real_time(self) -> None:
        async def main() -> tuple[bool, int]:
            t0 = now_ns()
            await sleep_ns(1_000_000)  # asyncio.sleep on a non-virtual loop
            return clock.running_loop() is asyncio.get_running_loop(), now_ns() - t0

        same, elapsed = asyncio.run(main())
        assert same and elapsed >= 900_000

    def test_an_executor_thread_has_no_running_loop(self) -> None:
        async def main() -> object:
            return await asyncio.to_thread(clock.running_loop)

        assert clock.run(main()) is None

    @pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
    def test_a_forked_child_has_no_running_loop(self) -> None:
        import os

        async def main() -> int:
            pid = os.fork()
            if pid == 0:  # child: like asyncio, no loop runs here
                os._exit(0 if clock._running.loop is None and clock.running_loop() is None else 1)
            return os.waitpid(pid, 0)[1]

        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads alive
            assert clock.run(main()) == 0
