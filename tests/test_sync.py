"""The accounted lock and the sequence lock: hand-off and barging in virtual time, exact
accounting, cancellation safety, percentiles, a queueing-theory check, and the seqlock protocol."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from hdrh.histogram import HdrHistogram

from aemu import clock
from aemu.clock import now_ns, sleep_ns
from aemu.errors import ConfigError, SimulationDeadlock
from aemu.config import LOCK_POLICIES
from aemu.sync import (
    HDR_HIGHEST_NS,
    HDR_LOWEST_NS,
    HDR_SIGNIFICANT_DIGITS,
    Lock,
    LockStatistics,
    SeqLock,
    bql_locked,
)
from aemu.sync.policy import POLICIES, Barging, Fifo

Log = list[tuple[int, str]]
T = TypeVar("T")


def check_invariants(st: LockStatistics) -> None:
    """Identities every snapshot must satisfy, whatever happened."""
    assert st.contentions == st.contended_acquisitions <= st.acquisitions  # in-flight waits are not counted yet
    assert st.waits_begun == st.contentions + st.cancelled_waits + st.tasks_waiting
    assert sum(p.count for p in st.holder_sites) == st.contentions
    assert sum(p.count for p in st.waiter_sites) == st.contentions
    assert st.wait_ns.count == st.acquisitions
    assert sum(s.acquisitions for s in st.sites) == st.acquisitions
    assert sum(s.contentions for s in st.sites) == st.contentions
    assert sum(s.cancelled_waits for s in st.sites) == st.cancelled_waits
    assert sum(s.wait_total_ns for s in st.sites) == st.wait_ns.total
    assert sum(s.hold_total_ns for s in st.sites) == st.hold_ns.total
    assert sum(t.acquisitions for t in st.tasks) == st.acquisitions
    assert sum(t.wait_total_ns for t in st.tasks) == st.wait_ns.total
    assert sum(t.hold_total_ns for t in st.tasks) == st.hold_ns.total
    assert st.locked == (st.owner is not None)


def spawn(name: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    return asyncio.create_task(coro, name=name)


async def settle(*tasks: asyncio.Task[Any]) -> None:
    """Wait for all tasks; cancellation is expected, any other exception is re-raised."""
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result


class TestLock:
    # -- construction, repr ---------------------------------------------------------------------
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"name": ""}, "non-empty name"),
            ({"name": "BQL", "handoff_ns": -1}, "handoff_ns must be"),
            ({"name": "BQL", "handoff_ns": 1.5}, "handoff_ns must be"),
            ({"name": "BQL", "policy": "lifo"}, "unknown policy 'lifo'; use 'fifo' or 'barging'"),
        ],
    )
    def test_bad_config(self, kwargs: dict[str, object], match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            Lock(**kwargs)  # type: ignore[arg-type]

    def test_repr(self) -> None:
        lock = Lock("BQL")
        assert repr(lock) == "<unlocked Lock 'BQL'>"
        seen: list[str] = []

        async def holder() -> None:
            async with lock.held("a"):
                await sleep_ns(100)

        async def waiter() -> None:
            async with lock.held("b"):
                pass

        async def main() -> None:
            tasks = [spawn("vcpu3", holder()), spawn("vcpu1", waiter()), spawn("vcpu2", waiter())]
            await sleep_ns(50)
            seen.append(repr(lock))
            await asyncio.gather(*tasks)
            seen.append(repr(lock))

        clock.run(main())
        assert seen == ["<locked Lock 'BQL' owner='vcpu3' with 2 waiters>", "<unlocked Lock 'BQL'>"]

    # -- exact behaviour in virtual time ----------------------------------------------------------
    def test_fifo_event_order(self) -> None:
        """Three vCPUs, hold 1000 ns, hand-off latency 100 ns: the wakee runs 100 ns after release."""
        lock = Lock("BQL", handoff_ns=100)
        log: Log = []

        async def vcpu(name: str, start: int) -> None:
            await sleep_ns(start)
            log.append((now_ns(), f"{name} calls acquire"))
            async with lock.held(f"{name} site"):
                log.append((now_ns(), f"{name} runs"))
                await sleep_ns(1000)
                log.append((now_ns(), f"{name} releases"))

        async def probe() -> None:
            await sleep_ns(1050)  # inside B's hand-off window: the lock is B's, though B has not run
            log.append((now_ns(), f"owner {lock.owner.get_name() if lock.owner else None}"))

        async def main() -> None:
            await asyncio.gather(spawn("A", vcpu("A", 0)), spawn("B", vcpu("B", 10)),
                                 spawn("C", vcpu("C", 20)), probe())

        clock.run(main())
        assert log == [
            (0, "A calls acquire"), (0, "A runs"),
            (10, "B calls acquire"),
            (20, "C calls acquire"),
            (1000, "A releases"),
            (1050, "owner B"),
            (1100, "B runs"),
            (2100, "B releases"),
            (2200, "C runs"),
            (3200, "C releases"),
        ]

    def test_contention_accounting_by_hand(self) -> None:
        """A, B, C call at t=0; hold 500 ns; hand-off 100 ns.

        A: wait 0, runs 0..500. B: runs at 600 (wait 600) until 1100. C: runs at 1200
        (wait 1200) until 1700. B and C both contended while A held the lock at site 'a'.
        """
        lock = Lock("hpet", handoff_ns=100)

        async def vcpu(site: str) -> None:
            async with lock.held(site):
                await sleep_ns(500)

        async def main() -> None:
            await asyncio.gather(*(spawn(f"vcpu-{s}", vcpu(s)) for s in "abc"))

        clock.run(main())
        st = lock.statistics()
        check_invariants(st)
        assert (st.acquisitions, st.contentions, st.contended_acquisitions, st.cancelled_waits) == (3, 2, 2, 0)
        assert st.handoffs == 2 and st.barges == 0 and st.requeues == 0
        assert (st.wait_ns.count, st.wait_ns.total, st.wait_ns.min, st.wait_ns.max) == (3, 1800, 0, 1200)
        assert st.wait_ns.mean == 600.0
        assert (st.wait_ns.p50, st.wait_ns.p90, st.wait_ns.p99) == (600, 1200, 1200)
        assert (st.hold_ns.count, st.hold_ns.total, st.hold_ns.min, st.hold_ns.max) == (3, 1500, 500, 500)
        assert [(p.site, p.count) for p in st.holder_sites] == [("a", 2)]
        assert [(p.site, p.count) for p in st.waiter_sites] == [("b", 1), ("c", 1)]
        assert [(s.site, s.acquisitions, s.contentions, s.wait_total_ns, s.wait_max_ns, s.hold_total_ns)
                for s in st.sites] == [("c", 1, 1, 1200, 1200, 500), ("b", 1, 1, 600, 600, 500),
                                       ("a", 1, 0, 0, 0, 500)]
        assert [(t.task, t.acquisitions, t.contentions, t.wait_total_ns, t.hold_total_ns)
                for t in st.tasks] == [("vcpu-c", 1, 1, 1200, 500), ("vcpu-b", 1, 1, 600, 500),
                                       ("vcpu-a", 1, 0, 0, 500)]
        assert (st.locked, st.owner, st.tasks_waiting) == (False, None, 0)
        assert (st.window_start_ns, st.window_ns) == (0, 1700)

    @pytest.mark.parametrize("policy", ["fifo", "barging"])
    def test_barging_vs_fifo(self, policy: str) -> None:
        """H holds 0..1000; W queues at 10; R (running) calls acquire at 1200, inside W's
        500 ns hand-off window. fifo: the lock is W's, R queues behind. barging: the lock is
        free, R takes it; W arrives at 1500, finds it taken and goes back to waiting."""
        lock = Lock("BQL", handoff_ns=500, policy=policy)
        log: Log = []

        async def user(name: str, start: int, hold: int) -> None:
            await sleep_ns(start)
            async with lock.held(name):
                log.append((now_ns(), f"{name} runs"))
                await sleep_ns(hold)

        async def main() -> None:
            await asyncio.gather(spawn("H", user("H", 0, 1000)), spawn("W", user("W", 10, 1000)),
                                 spawn("R", user("R", 1200, 1000)))

        clock.run(main())
        st = lock.statistics()
        check_invariants(st)
        if policy == "fifo":
            assert log == [(0, "H runs"), (1500, "W runs"), (3000, "R runs")]
            assert (st.contentions, st.handoffs, st.barges, st.requeues) == (2, 2, 0, 0)
            assert [(t.task, t.wait_total_ns) for t in st.tasks] == [("R", 1800), ("W", 1490), ("H", 0)]
        else:
            # R barges at 1200 and holds until 2200, which wakes W again: W runs at 2700.
            assert log == [(0, "H runs"), (1200, "R runs"), (2700, "W runs")]
            assert (st.contentions, st.handoffs, st.barges, st.requeues) == (1, 0, 1, 1)
            assert [(t.task, t.wait_total_ns) for t in st.tasks] == [("W", 2690), ("H", 0), ("R", 0)]

    def test_barging_with_no_latency_lets_the_releaser_reacquire(self) -> None:
        """glibc-style: a holder that releases and re-acquires at once keeps the lock while the
        woken waiter has not run yet; the waiter re-queues each time (no starvation bound)."""
        lock = Lock("m", policy="barging")
        log: Log = []

        async def greedy() -> None:
            for _ in range(3):
                async with lock.held("greedy"):
                    await sleep_ns(100)
            log.append((now_ns(), "greedy done"))

        async def waiter() -> None:
            await sleep_ns(1)
            async with lock.held("waiter"):
                log.append((now_ns(), "waiter runs"))

        async def main() -> None:
            await asyncio.gather(spawn("g", greedy()), spawn("w", waiter()))

        clock.run(main())
        st = lock.statistics()
        check_invariants(st)
        assert log == [(300, "greedy done"), (300, "waiter runs")]
        assert (st.contentions, st.requeues, st.barges) == (1, 2, 2)

    def test_barging_loser_requeues_at_the_tail(self) -> None:
        """H holds 0..100 with W1 (t=1) and W2 (t=2) queued; hand-off latency 50. H's release wakes
        W1; R barges at 120 and holds to 200; W1 arrives at 150, finds the lock taken and goes
        behind W2, so R's release wakes W2 (runs at 250), and W2's release wakes W1 (runs at 310)."""
        lock = Lock("m", policy="barging", handoff_ns=50)
        log: Log = []

        async def user(name: str, start: int, hold: int) -> None:
            await sleep_ns(start)
            async with lock.held(name):
                log.append((now_ns(), f"{name} runs"))
                await sleep_ns(hold)

        async def main() -> None:
            await asyncio.gather(spawn("H", user("H", 0, 100)), spawn("W1", user("W1", 1, 10)),
                                 spawn("W2", user("W2", 2, 10)), spawn("R", user("R", 120, 80)))

        clock.run(main())
        assert log == [(0, "H runs"), (120, "R runs"), (250, "W2 runs"), (310, "W1 runs")]
        st = lock.statistics()
        check_invariants(st)
        assert (st.contentions, st.barges, st.requeues) == (2, 1, 1)

    # -- queueing theory --------------------------------------------------------------------------
    def test_machine_repairman_mean_wait(self) -> None:
        """N vCPUs, exponential think (rate λ) and hold (rate μ), FIFO, no hand-off latency: a
        closed M/M/1//N queue. Mean wait (queueing delay only) matches the closed form."""
        n, think_ns, hold_ns, total = 8, 40_000, 5_000, 100_000
        lam, mu = 1 / think_ns, 1 / hold_ns
        r = lam / mu
        p0 = 1 / sum(math.factorial(n) / math.factorial(n - k) * r**k for k in range(n + 1))
        in_system = n - (mu / lam) * (1 - p0)
        lam_eff = mu * (1 - p0)
        wq = in_system / lam_eff - 1 / mu

        lock = Lock("BQL")
        rng = random.Random(2025)
        expo = rng.expovariate

        async def vcpu() -> None:
            for _ in range(total // n):
                await sleep_ns(round(expo(lam)))
                async with lock.held("mmio"):
                    await sleep_ns(round(expo(mu)))

        async def main() -> None:
            await asyncio.gather(*(vcpu() for _ in range(n)))

        clock.run(main())
        st = lock.statistics()
        check_invariants(st)
        assert st.acquisitions == total
        assert st.wait_ns.mean == pytest.approx(wq, rel=0.05)
        assert st.hold_ns.mean == pytest.approx(hold_ns, rel=0.02)

    async def test_async_test_style(self) -> None:
        """The same lock inside a pytest-asyncio test (virtual-time loop from conftest)."""
        lock = Lock("BQL", handoff_ns=20)
        t0 = now_ns()

        async def user() -> None:
            async with lock.held("x"):
                await sleep_ns(100)

        await asyncio.gather(user(), user())
        assert now_ns() - t0 == 220
        assert lock.statistics().wait_ns.max == 120

    # -- ownership ------------------------------------------------------------------------------
    def test_reacquire_by_owner(self) -> None:
        lock = Lock("BQL")

        async def main() -> None:
            async with lock.held("x"):
                with pytest.raises(RuntimeError, match=r"^Lock 'BQL' is already held by this task "
                                                       r"\(acquired at site 'x'\); aemu locks are not recursive$"):
                    await lock.acquire("y")
                with pytest.raises(RuntimeError, match="not recursive"):
                    lock.try_acquire("y")
            assert not lock.locked()

        clock.run(main())
        check_invariants(lock.statistics())
        assert lock.statistics().contentions == 0

    def test_release_by_non_owner_and_unlocked(self) -> None:
        lock = Lock("hpet")

        async def other() -> None:
            with pytest.raises(RuntimeError, match=r"^Lock 'hpet' released by task 'vcpu2', but it is held "
                                                   r"by task 'vcpu1' \(acquired at site 'hpet read'\); "
                                                   r"only the owner can release it$"):
                lock.release()

        async def main() -> None:
            with pytest.raises(RuntimeError, match=r"^Lock 'hpet' released while it is not held$"):
                lock.release()
            await lock.acquire(site="hpet read")
            await spawn("vcpu2", other())
            lock.release()

        async def outer() -> None:
            await spawn("vcpu1", main())

        clock.run(outer())
        with pytest.raises(RuntimeError, match="not held"):
            lock.release()  # outside any loop

    def test_acquire_outside_a_task(self) -> None:
        lock = Lock("BQL")
        errors: list[str] = []

        def callback() -> None:
            try:
                lock.try_acquire("cb")
            except RuntimeError as e:
                errors.append(str(e))

        async def main() -> None:
            asyncio.get_running_loop().call_soon(callback)
            await sleep_ns(1)

        clock.run(main())
        assert errors == ["Lock 'BQL' must be acquired from inside an asyncio task, not from a plain callback"]

    def test_try_acquire(self) -> None:
        lock = Lock("m")

        async def other() -> bool:
            return lock.try_acquire("other")

        async def main() -> None:
            assert lock.try_acquire("me")
            assert not await spawn("o", other())
            lock.release()
            assert await spawn("o2", other())

        clock.run(main())
        st = lock.statistics()
        assert (st.acquisitions, st.contentions, st.owner) == (2, 0, "o2")

    def test_uncontended_acquire_does_not_yield(self) -> None:
        lock = Lock("BQL")
        order: list[str] = []

        async def other() -> None:
            order.append("other")

        async def main() -> None:
            o = spawn("o", other())
            await lock.acquire("x")
            order.append("acquired")
            lock.release()
            async with lock.held("z"):
                order.append("held")
            await o

        clock.run(main())
        assert order == ["acquired", "held", "other"]

    def test_moves_between_runs_and_works_on_a_real_time_loop(self) -> None:
        """A lock can be reused by a later run; on a stock asyncio loop time is the loop's clock
        and the hand-off latency is a plain timer."""
        lock = Lock("BQL", handoff_ns=1000)
        order: list[str] = []

        async def user(name: str) -> None:
            async with lock.held(name):
                order.append(name)
                await asyncio.sleep(0)

        async def main() -> None:
            await asyncio.gather(spawn("a", user("a")), spawn("b", user("b")), spawn("c", user("c")))

        clock.run(main())
        asyncio.run(main())
        clock.run(main())
        assert order == ["a", "b", "c"] * 3
        st = lock.statistics()
        check_invariants(st)
        assert (st.acquisitions, st.contentions, lock.locked()) == (9, 6, False)

    # -- cancellation ---------------------------------------------------------------------------
    def test_cancel_queued_waiter(self) -> None:
        lock = Lock("BQL", handoff_ns=10)
        log: Log = []

        async def user(name: str, start: int) -> None:
            await sleep_ns(start)
            try:
                async with lock.held(name):
                    log.append((now_ns(), f"{name} runs"))
                    await sleep_ns(100)
            except asyncio.CancelledError:
                log.append((now_ns(), f"{name} cancelled"))
                raise

        async def main() -> None:
            h, w1, w2 = spawn("H", user("H", 0)), spawn("W1", user("W1", 1)), spawn("W2", user("W2", 2))
            await sleep_ns(50)
            w1.cancel()
            await settle(h, w2, w1)

        clock.run(main())
        assert log == [(0, "H runs"), (50, "W1 cancelled"), (110, "W2 runs")]
        st = lock.statistics()
        check_invariants(st)
        assert (st.acquisitions, st.contentions, st.contended_acquisitions, st.cancelled_waits) == (2, 1, 1, 1)
        assert st.waits_begun == 2  # W1's cancelled wait is not a contention: it acquired nothing
        assert {t.task: t.cancelled_waits for t in st.tasks} == {"H": 0, "W1": 1, "W2": 0}
        assert not lock.locked()

    @pytest.mark.parametrize("handoff_ns", [0, 100])
    def test_cancel_wakee_after_handoff_before_it_runs(self, handoff_ns: int) -> None:
        """The lock was handed to W1, which is cancelled before it runs: W2 gets it, handoff_ns
        after the cancellation; nobody is stranded."""
        lock = Lock("BQL", handoff_ns=handoff_ns)
        log: Log = []
        tasks: dict[str, asyncio.Task[None]] = {}

        async def user(name: str, start: int) -> None:
            await sleep_ns(start)
            try:
                async with lock.held(name):
                    log.append((now_ns(), f"{name} runs"))
                    await sleep_ns(100)
            except asyncio.CancelledError:
                log.append((now_ns(), f"{name} cancelled, owner {lock.owner.get_name() if lock.owner else None}"))
                raise
            if name == "H":  # the release handed the lock to W1; cancel W1 before it can run
                assert lock.owner is tasks["W1"]
                tasks["W1"].cancel()

        async def main() -> None:
            for name, start in (("H", 0), ("W1", 1), ("W2", 2)):
                tasks[name] = spawn(name, user(name, start))
            await settle(*tasks.values())

        clock.run(main())
        # W1 is cancelled while it owns the lock (handed over at 100), and passes it to W2 at once
        assert log == [(0, "H runs"), (100, "W1 cancelled, owner W2"), (100 + handoff_ns, "W2 runs")]
        st = lock.statistics()
        check_invariants(st)
        assert (st.acquisitions, st.contentions, st.contended_acquisitions, st.cancelled_waits) == (2, 1, 1, 1)
        assert st.waits_begun == 2  # W1's cancelled wait is not a contention: it acquired nothing
        assert st.handoffs == 2
        assert not lock.locked() and st.tasks_waiting == 0

    def test_cancel_wakee_in_window_with_nobody_behind_frees_the_lock(self) -> None:
        lock = Lock("BQL", handoff_ns=100)
        seen: list[object] = []

        async def holder() -> None:
            async with lock.held("h"):
                await sleep_ns(10)

        async def waiter() -> None:
            async with lock.held("w"):
                seen.append("waiter ran")

        async def main() -> None:
            h = spawn("H", holder())
            w = spawn("W", waiter())
            await sleep_ns(50)  # H released at 10; W's hand-off window is 10..110
            seen.append((lock.owner is w, lock.locked()))
            w.cancel()
            await settle(h, w)
            seen.append((lock.owner, lock.locked()))
            await lock.acquire("main")  # the lock is usable again
            lock.release()

        clock.run(main())
        assert seen == [(True, True), (None, False)]
        st = lock.statistics()
        check_invariants(st)
        assert (st.acquisitions, st.cancelled_waits) == (2, 1)

    @pytest.mark.parametrize("policy", ["fifo", "barging"])
    def test_cancel_then_release_in_the_same_step(self, policy: str) -> None:
        """W1 is cancelled but has not run its cancellation yet when the holder releases: the
        release must skip or pass through W1 and the lock must end with W2."""
        lock = Lock("BQL", policy=policy)
        log: Log = []
        tasks: dict[str, asyncio.Task[None]] = {}

        async def holder() -> None:
            await lock.acquire("h")
            await sleep_ns(100)
            tasks["W1"].cancel()
            lock.release()

        async def waiter(name: str) -> None:
            async with lock.held(name):
                log.append((now_ns(), f"{name} runs"))

        async def main() -> None:
            tasks["H"] = spawn("H", holder())
            await sleep_ns(1)
            tasks["W1"] = spawn("W1", waiter("W1"))
            tasks["W2"] = spawn("W2", waiter("W2"))
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
            assert [type(r).__name__ for r in results] == ["NoneType", "CancelledError", "NoneType"]

        clock.run(main())
        assert log == [(100, "W2 runs")]
        st = lock.statistics()
        check_invariants(st)
        assert (st.cancelled_waits, st.contended_acquisitions, lock.locked()) == (1, 1, False)

    def test_cancel_holder_inside_held(self) -> None:
        lock = Lock("BQL", handoff_ns=5)
        log: Log = []

        async def holder() -> None:
            async with lock.held("h"):
                await sleep_ns(1_000_000)

        async def waiter() -> None:
            async with lock.held("w"):
                log.append((now_ns(), "W runs"))

        async def main() -> None:
            h, w = spawn("H", holder()), spawn("W", waiter())
            await sleep_ns(100)
            h.cancel()
            await settle(h, w)

        clock.run(main())
        assert log == [(105, "W runs")]
        st = lock.statistics()
        check_invariants(st)
        assert [(t.task, t.hold_total_ns) for t in sorted(st.tasks, key=lambda t: t.task)] == [("H", 100), ("W", 0)]
        assert not lock.locked()

    def test_timeout_while_waiting(self) -> None:
        lock = Lock("BQL")
        log: Log = []

        async def holder() -> None:
            async with lock.held("h"):
                await sleep_ns(1000)

        async def impatient() -> None:
            try:
                async with asyncio.timeout(200e-9):
                    await lock.acquire("w")
            except TimeoutError:
                log.append((now_ns(), "gave up"))

        async def main() -> None:
            await asyncio.gather(spawn("H", holder()), spawn("W", impatient()))

        clock.run(main())
        assert log == [(200, "gave up")]
        st = lock.statistics()
        check_invariants(st)
        assert (st.cancelled_waits, lock.locked()) == (1, False)

    def test_barging_cancelled_wakee_passes_the_wakeup_on(self) -> None:
        """barging: W1 is woken at release (on its way for 100 ns) and cancelled meanwhile while
        the lock is free: the wake-up goes to W2 instead of being lost."""
        lock = Lock("m", policy="barging", handoff_ns=100)
        log: Log = []

        async def user(name: str, start: int) -> None:
            await sleep_ns(start)
            async with lock.held(name):
                log.append((now_ns(), f"{name} runs"))
                await sleep_ns(10)

        async def main() -> None:
            h, w1, w2 = spawn("H", user("H", 0)), spawn("W1", user("W1", 1)), spawn("W2", user("W2", 2))
            await sleep_ns(50)  # H released at 10; W1 is on its way until 110
            w1.cancel()
            await settle(h, w1, w2)

        clock.run(main())
        assert log == [(0, "H runs"), (150, "W2 runs")]
        st = lock.statistics()
        check_invariants(st)
        assert (st.cancelled_waits, st.contended_acquisitions, lock.locked()) == (1, 1, False)

    @pytest.mark.parametrize("policy", ["fifo", "barging"])
    def test_random_cancellations_keep_invariants(self, policy: str) -> None:
        """Many tasks, random holds, hand-off latency, random cancellations at random instants:
        everything left runs to completion and the books balance."""
        lock = Lock("BQL", policy=policy, handoff_ns=37)
        rng = random.Random(11)
        snapshots: list[LockStatistics] = []

        async def vcpu(i: int) -> None:
            for _ in range(20):
                await sleep_ns(rng.randrange(0, 300))
                async with lock.held(f"site{i % 3}"):
                    await sleep_ns(rng.randrange(0, 100))

        async def chaos(tasks: list[asyncio.Task[None]]) -> None:
            for _ in range(15):
                await sleep_ns(rng.randrange(50, 400))
                rng.choice(tasks).cancel()
                snapshots.append(lock.statistics())

        async def main() -> None:
            tasks = [spawn(f"vcpu{i}", vcpu(i)) for i in range(12)]
            c = spawn("chaos", chaos(tasks))
            await settle(*tasks)
            await c

        clock.run(main())
        st = lock.statistics()
        for s in [*snapshots, st]:
            check_invariants(s)
        assert st.cancelled_waits > 0
        assert (st.locked, st.tasks_waiting) == (False, 0)

    # -- accounting windows and percentiles -----------------------------------------------------------
    @pytest.mark.parametrize("policy", list(POLICIES))
    def test_contentions_never_exceed_acquisitions_mid_run(self, policy: str) -> None:
        """Eight vCPU-like tasks take the lock 5 times each, 100 ns holds, every take but the first
        contended; snapshots every 30 ns, mid-run with up to seven waiters queued, then a Ctrl-C
        (every task cancelled) at 1,000 ns. A contention counts with its acquisition; in-flight
        and cancelled waits are labelled separately."""
        lock = Lock("BQL", policy=policy, handoff_ns=10)
        snaps: list[LockStatistics] = []

        async def vcpu(i: int) -> None:
            for _ in range(5):
                async with lock.held(f"vcpu{i}"):
                    await sleep_ns(100)

        async def main() -> None:
            tasks = [spawn(f"CPU {i}", vcpu(i)) for i in range(8)]
            for _ in range(33):
                await sleep_ns(30)
                snaps.append(lock.statistics())
            for t in tasks:
                t.cancel()
            await settle(*tasks)

        clock.run(main())
        final = lock.statistics()
        for st in [*snaps, final]:
            check_invariants(st)
        st = snaps[0]  # at 30 ns: CPU 0 holds, the other seven wait
        assert (st.acquisitions, st.contentions, st.tasks_waiting, st.waits_begun) == (1, 0, 7, 7)
        assert min(st.tasks_waiting for st in snaps) >= 6  # a full queue all along
        # the partial report after Ctrl-C: the queued waits were cancelled, not counted as contentions
        assert final.tasks_waiting == 0 and final.cancelled_waits >= 6
        if policy == "fifo":  # every take after the first waited: counted at the start, the waits would outnumber them
            assert final.contentions == final.acquisitions - 1 < final.acquisitions < final.waits_begun

    def test_reset_clips_in_flight_work(self) -> None:
        """Holder H runs 0..1000, W waits from 10; reset at 400. The new window sees: H's hold
        from 400 (600 ns, no acquisition), W's contention with its wait from 400 (600 ns)."""
        lock = Lock("BQL")
        before: list[LockStatistics] = []

        async def user(name: str, start: int, hold: int) -> None:
            await sleep_ns(start)
            async with lock.held(name):
                await sleep_ns(hold)

        async def main() -> None:
            tasks = [spawn("H", user("H", 0, 1000)), spawn("W", user("W", 10, 50))]
            await sleep_ns(400)
            before.append(lock.statistics())
            lock.reset()
            await asyncio.gather(*tasks)

        clock.run(main())
        old = before[0]
        assert (old.acquisitions, old.contentions, old.tasks_waiting, old.window_ns) == (1, 0, 1, 400)
        assert old.waits_begun == 1 and [(p.site, p.count) for p in old.waiter_sites] == []
        st = lock.statistics()
        check_invariants(st)
        assert (st.window_start_ns, st.window_ns) == (400, 650)
        assert (st.acquisitions, st.contentions, st.contended_acquisitions) == (1, 1, 1)
        assert (st.wait_ns.count, st.wait_ns.total) == (1, 600)
        assert (st.hold_ns.count, st.hold_ns.total, st.hold_ns.max) == (2, 650, 600)
        assert {s.site: (s.acquisitions, s.holds, s.hold_total_ns) for s in st.sites} == {
            "H": (0, 1, 600), "W": (1, 1, 50)}
        assert [(p.site, p.count) for p in st.holder_sites] == [("H", 1)]

    def test_percentiles_of_a_known_distribution(self) -> None:
        """Holds of 1..1000 ns, once each: below 2048 ns the histogram is exact."""
        lock = Lock("dev")
        values = list(range(1, 1001))
        random.Random(3).shuffle(values)

        async def main() -> None:
            for v in values:
                async with lock.held("x"):
                    await sleep_ns(v)

        clock.run(main())
        h = lock.statistics().hold_ns
        assert (h.count, h.min, h.max, h.total, h.mean) == (1000, 1, 1000, 500_500, 500.5)
        assert (h.p50, h.p90, h.p99, h.p999) == (500, 900, 990, 999)
        assert h.percentile(100) == 1000 and h.percentile(0) == 1 and h.percentile(25) == 250
        cdf = h.cdf()
        assert cdf[0] == (1, 0.001) and cdf[499] == (500, 0.5) and cdf[-1] == (1000, 1.0)

    def test_percentiles_large_values_match_hdrhistogram(self) -> None:
        """Microsecond-to-hour values: percentiles agree with HdrHistogram and are within 0.1 %."""
        rng = random.Random(5)
        values = [round(rng.lognormvariate(math.log(50_000), 2.5)) + 1 for _ in range(3000)]
        values.append(3_600 * 10**9)  # an hour
        lock = Lock("dev")

        async def main() -> None:
            for v in values:
                async with lock.held("x"):
                    await sleep_ns(v)

        clock.run(main())
        st = lock.statistics().hold_ns
        ref = HdrHistogram(HDR_LOWEST_NS, HDR_HIGHEST_NS, HDR_SIGNIFICANT_DIGITS)
        for v in values:
            ref.record_value(v)
        ordered = sorted(values)
        assert (st.min, st.max, st.total) == (ordered[0], ordered[-1], sum(values))
        for q, got in ((50, st.p50), (90, st.p90), (99, st.p99), (99.9, st.p999), (12.5, st.percentile(12.5))):
            assert got == min(ref.get_value_at_percentile(q), ordered[-1])
            exact = ordered[max(1, int(q * len(values) / 100 + 0.5)) - 1]
            assert exact <= got <= exact * 1.001
        assert st.percentile(100) == 3_600 * 10**9

    def test_repeated_snapshots_reuse_the_fold(self) -> None:
        lock = Lock("dev")

        async def main() -> None:
            for _ in range(10):
                async with lock.held("x"):
                    await sleep_ns(7)

        clock.run(main())
        a, b = lock.statistics(), lock.statistics()
        assert a.hold_ns is b.hold_ns and a.wait_ns is b.wait_ns
        assert a == b

    def test_periodic_folds_give_the_same_numbers(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Raw samples are folded into the histogram every _FOLD_EVERY samples to bound memory;
        the result must not depend on when folds happen."""

        def scenario() -> LockStatistics:
            lock = Lock("dev", handoff_ns=3)
            rng = random.Random(9)

            async def vcpu() -> None:
                for _ in range(40):
                    await sleep_ns(rng.randrange(0, 50))
                    async with lock.held("x"):
                        await sleep_ns(rng.randrange(0, 30))

            async def main() -> None:
                await asyncio.gather(*(spawn(f"vcpu{i}", vcpu()) for i in range(4)))

            clock.run(main())
            return lock.statistics()

        once = scenario()
        monkeypatch.setattr("aemu.sync.lockstat._FOLD_EVERY", 3)
        folded = scenario()
        assert folded == once
        assert folded.wait_ns.buckets == once.wait_ns.buckets and once.contentions > 0

    def test_snapshot_is_frozen(self) -> None:
        lock = Lock("BQL")
        st = lock.statistics()
        with pytest.raises(dataclasses.FrozenInstanceError):
            st.acquisitions = 5  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            st.wait_ns.p99 = 1  # type: ignore[misc]
        assert st.wait_ns.count == 0 and st.wait_ns.p99 == 0 and st.wait_ns.percentile(50) == 0
        assert st.sites == () and st.hold_ns.cdf() == ()

    # -- the BQL ------------------------------------------------------------------------------------
    def test_bql_locked_only_in_the_holding_task(self) -> None:
        bql = Lock("BQL", bql=True)
        dev = Lock("hpet")
        seen: dict[str, bool] = {}

        async def other() -> None:
            seen["other while vcpu0 holds"] = bql_locked()

        async def vcpu0() -> None:
            seen["before"] = bql_locked()
            async with dev.held("hpet"):
                seen["device mutex only"] = bql_locked()
            async with bql.held("mmio"):
                seen["holding"] = bql_locked()
                await spawn("other", other())
            seen["after"] = bql_locked()

        clock.run(spawn_main("vcpu0", vcpu0))
        assert seen == {"before": False, "device mutex only": False, "holding": True,
                        "other while vcpu0 holds": False, "after": False}
        assert bql_locked() is False  # no loop running

    def test_bql_locked_after_contended_hand_off(self) -> None:
        bql = Lock("BQL", bql=True, handoff_ns=50)
        seen: list[tuple[str, bool]] = []

        async def vcpu(name: str) -> None:
            async with bql.held(name):
                seen.append((name, bql_locked()))
                await sleep_ns(10)
            seen.append((name, bql_locked()))

        async def main() -> None:
            await asyncio.gather(spawn("a", vcpu("a")), spawn("b", vcpu("b")))

        clock.run(main())
        assert seen == [("a", True), ("a", False), ("b", True), ("b", False)]

    # -- deadlock reports -----------------------------------------------------------------------------
    def test_deadlock_names_the_lock_and_its_holder(self) -> None:
        a, b = Lock("A"), Lock("B")

        async def one() -> None:
            async with a.held("one-a"):
                await sleep_ns(10)
                async with b.held("one-b"):
                    pass

        async def two() -> None:
            async with b.held("two-b"):
                await sleep_ns(10)
                async with a.held("two-a"):
                    pass

        async def main() -> None:
            await asyncio.gather(spawn("vcpu1", one()), spawn("vcpu2", two()))

        with pytest.raises(SimulationDeadlock) as info:
            clock.run(main())
        blocked = info.value.blocked
        assert blocked["vcpu1"] == "lock 'B' (held by 'vcpu2' at site 'two-b' since 0 ns) from site 'one-b'"
        assert blocked["vcpu2"] == "lock 'A' (held by 'vcpu1' at site 'one-a' since 0 ns) from site 'two-a'"


def _contention_model(workers: int, rounds: int, *, keeper_quantum: int | None, handoff_ns: int = 0,
                      hold_ns: int = 1_000) -> LockStatistics:
    """The reference model (seeded think times); with ``keeper_quantum`` the workers run ahead
    (QuantumKeeper with hold_ahead) and sync only before taking the lock."""
    lock = Lock("L", handoff_ns=handoff_ns)

    async def worker(i: int) -> None:
        rng = random.Random(i)
        k = None
        if keeper_quantum is not None:
            k = clock.QuantumKeeper(keeper_quantum, hold_ahead=True)
            k.attach()
        for _ in range(rounds):
            think = rng.randint(1_000, 10_000)
            if k is None:
                await sleep_ns(think)
            elif k.advance(think):
                await k.sync()
            await lock.acquire("site")
            if k is None:
                await sleep_ns(hold_ns)
            elif k.advance(hold_ns):
                await k.sync()
            lock.release()
        if k is not None:
            await k.sync()
            k.detach()

    async def main() -> LockStatistics:
        await asyncio.gather(*(spawn(f"w{i}", worker(i)) for i in range(workers)))
        return lock.statistics()

    return clock.run(main())


class TestGrantsFromRunAheadReleases:
    """Holders running ahead (QuantumKeeper(hold_ahead=True)) release "in the future"; later
    requests are granted from the release's local time: the books equal a lockstep run's."""

    @pytest.mark.parametrize("quantum", [0, 3_000, 1_000_000])
    @pytest.mark.parametrize("handoff_ns", [0, 150])
    def test_same_books_as_plain_sleeps(self, quantum: int, handoff_ns: int) -> None:
        plain = _contention_model(12, 15, keeper_quantum=None, handoff_ns=handoff_ns)
        ahead = _contention_model(12, 15, keeper_quantum=quantum, handoff_ns=handoff_ns)
        check_invariants(ahead)
        for field in ("acquisitions", "contentions", "contended_acquisitions", "handoffs"):
            assert getattr(ahead, field) == getattr(plain, field), field
        for dist in ("wait_ns", "hold_ns"):
            a, b = getattr(ahead, dist), getattr(plain, dist)
            assert (a.count, a.total, a.max, a.p50, a.p99) == (b.count, b.total, b.max, b.p50, b.p99), dist
        assert [(t.task, t.acquisitions, t.contentions, t.wait_total_ns, t.hold_total_ns) for t in ahead.tasks] == \
            [(t.task, t.acquisitions, t.contentions, t.wait_total_ns, t.hold_total_ns) for t in plain.tasks]
        assert plain.contentions > 100  # the model is contended enough to test something

    def test_release_ahead_holds_the_lock_until_global_time_gets_there(self) -> None:
        lock = Lock("L")
        seen: list[tuple[str, object]] = []

        async def ahead() -> None:
            k = clock.QuantumKeeper(10_000, hold_ahead=True)
            k.attach()
            await lock.acquire("a")
            k.advance(1_000)  # holds until local 1000 without yielding
            lock.release()
            seen.append(("released at global", now_ns()))
            await k.sync()
            k.detach()

        async def other() -> None:
            await sleep_ns(400)
            seen.append(("trylock at 400", lock.try_acquire("b")))
            await lock.acquire("b")  # granted at the release, 1000
            seen.append(("granted", now_ns()))
            lock.release()

        async def main() -> LockStatistics:
            await asyncio.gather(spawn("a", ahead()), spawn("b", other()))
            return lock.statistics()

        st = clock.run(main())
        assert seen == [("released at global", 0), ("trylock at 400", False), ("granted", 1_000)]
        assert (st.contentions, st.wait_ns.total, st.wait_ns.max) == (1, 600, 600)
        assert [(p.site, p.count) for p in st.holder_sites] == [("a", 1)]
        assert st.hold_ns.total == 1_000
        check_invariants(st)

    def test_cancel_in_the_granted_window_frees_the_lock(self) -> None:
        lock = Lock("L", handoff_ns=100)

        async def ahead() -> None:
            k = clock.QuantumKeeper(10_000, hold_ahead=True)
            k.attach()
            await lock.acquire("a")
            k.advance(1_000)
            lock.release()
            await k.sync()
            k.detach()

        async def victim() -> None:
            await sleep_ns(10)
            await lock.acquire("v")  # no keeper: sleeps through the window [1000, 1100]

        async def main() -> LockStatistics:
            a, v = spawn("a", ahead()), spawn("v", victim())
            await sleep_ns(500)
            assert lock.owner is v
            v.cancel()
            await settle(a, v)
            assert not lock.locked()
            await lock.acquire("main")  # nobody is stranded; free at 1000
            lock.release()
            return lock.statistics()

        st = clock.run(main())
        assert st.cancelled_waits == 1
        check_invariants(st)


    @pytest.mark.parametrize("ahead", [False, True])
    def test_barging_release_ahead_wakes_a_sleeper_and_lets_a_later_task_barge(self, ahead: bool) -> None:
        """glibc: a request before the (future) unlock sleeps and is woken by it, handoff_ns later;
        a task arriving after the unlock takes the free lock first. Same log as holding in lockstep."""
        lock = Lock("L", handoff_ns=500, policy="barging")
        log: list[tuple[str, int]] = []

        async def holder() -> None:
            k = clock.QuantumKeeper(10_000, hold_ahead=True) if ahead else None
            if k is not None:
                k.attach()
            await lock.acquire("a")
            if k is not None:
                k.advance(1_000)  # holds until local 1000 without yielding: released at global 0
            else:
                await sleep_ns(1_000)
            lock.release()
            if k is not None:
                await k.sync()
                k.detach()

        async def user(name: str, arrive: int) -> None:
            await sleep_ns(arrive)
            await lock.acquire(name)
            log.append((name, now_ns()))
            await sleep_ns(1_000)
            lock.release()

        async def main() -> LockStatistics:
            await asyncio.gather(spawn("a", holder()), spawn("b", user("b", 400)), spawn("c", user("c", 1_200)))
            return lock.statistics()

        st = clock.run(main())
        # b sleeps at 400, is woken by the unlock at 1000 and runs at 1500; c took the free lock
        # at 1200 (a barge), so b sleeps again and is woken by c's unlock at 2200: runs at 2700
        assert log == [("c", 1_200), ("b", 2_700)]
        assert (st.contentions, st.barges, st.requeues, st.handoffs) == (1, 1, 1, 0)
        assert (st.wait_ns.total, st.hold_ns.total) == (2_300, 3_000)
        check_invariants(st)


class TestContendedPath:
    """Every contended acquisition -- queued, granted from a run-ahead release after a sleep, or
    run ahead to that grant -- ends in Lock._granted, once: the one place to instrument."""

    @pytest.fixture
    def granted_sites(self, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        sites: list[str] = []
        granted = Lock._granted

        def spy(self: Lock, *args: Any) -> None:
            sites.append(args[2])
            granted(self, *args)

        monkeypatch.setattr(Lock, "_granted", spy)
        return sites

    @pytest.mark.parametrize("keeper_quantum", [None, 1_000_000])
    def test_queued_or_run_ahead(self, keeper_quantum: int | None, granted_sites: list[str]) -> None:
        st = _contention_model(12, 15, keeper_quantum=keeper_quantum, handoff_ns=150)
        assert len(granted_sites) == st.contended_acquisitions > 100
        check_invariants(st)

    def test_granted_after_a_sleep(self, granted_sites: list[str]) -> None:
        lock = Lock("L")

        async def ahead() -> None:
            k = clock.QuantumKeeper(10_000, hold_ahead=True)
            k.attach()
            await lock.acquire("a")
            k.advance(1_000)
            lock.release()  # free at local time 1000, global time 0
            await k.sync()
            k.detach()

        async def plain() -> None:
            await sleep_ns(400)
            await lock.acquire("b")  # no keeper: sleeps until 1000
            lock.release()

        async def main() -> None:
            await asyncio.gather(spawn("a", ahead()), spawn("b", plain()))

        clock.run(main())
        assert granted_sites == ["b"]


class TestPolicies:
    def test_one_list_of_policies(self) -> None:
        """Lock, MachineConfig and --lock-policy all read aemu.sync.policy.POLICIES."""
        assert POLICIES == {"fifo": Fifo, "barging": Barging}
        assert LOCK_POLICIES == tuple(POLICIES)
        for name, cls in POLICIES.items():
            assert cls.name == name
            assert Lock("m", policy=name).statistics().policy == name


def spawn_main(name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> Coroutine[Any, Any, None]:
    async def main() -> None:
        await spawn(name, fn())

    return main()


class TestSeqLock:
    def test_counts_and_versions(self) -> None:
        seq = SeqLock("hpet state_version")
        state = {"counter": 0}

        async def main() -> None:
            assert seq.read(lambda: state["counter"]) == 0
            async with seq.write("hpet config"):
                assert seq.sequence == 1
                state["counter"] = 42
            assert seq.read(lambda: state["counter"]) == 42
            v = seq.read_begin()
            assert not seq.read_retry(v)

        clock.run(main())
        st = seq.statistics()
        assert (st.sequence, st.write_in_progress, st.reads, st.retries, st.writes) == (2, False, 3, 0, 1)

    def test_reader_retries_when_a_writer_yields_mid_write(self) -> None:
        mutex = Lock("hpet")
        seq = SeqLock("hpet state_version", writer_lock=mutex)
        state = {"enabled": False, "counter": 100}
        log: Log = []

        async def writer() -> None:
            async with seq.write("hpet config write"):
                state["enabled"] = True
                await sleep_ns(100)  # models handler cost: readers see an odd version meanwhile
                state["counter"] = 200
            log.append((now_ns(), "write done"))

        async def reader() -> None:
            await sleep_ns(50)
            v = seq.read_begin()  # begun during the write: must fail
            x = state["counter"]
            log.append((now_ns(), f"manual read {x} retry={seq.read_retry(v)}"))
            with pytest.raises(RuntimeError, match="write is in progress"):
                seq.read(lambda: state["counter"])
            x = await seq.read_async(lambda: state["counter"])
            log.append((now_ns(), f"read_async {x}"))

        async def main() -> None:
            await asyncio.gather(spawn("cfg", writer()), spawn("vcpu1", reader()))

        clock.run(main())
        assert log == [(50, "manual read 100 retry=True"), (100, "write done"), (100, "read_async 200")]
        st = seq.statistics()
        assert (st.reads, st.retries, st.writes, st.sequence) == (3, 2, 1, 2)
        assert mutex.statistics().acquisitions == 1 and not mutex.locked()

    def test_retry_when_a_write_happens_inside_the_read_section(self) -> None:
        seq = SeqLock("v")
        calls = []

        async def main() -> None:
            def fn() -> int:
                calls.append(seq.sequence)
                if len(calls) == 1:  # a write sneaks in during the first attempt
                    seq.write_begin()
                    seq.write_end()
                return len(calls)

            assert seq.read(fn) == 2

        clock.run(main())
        assert calls == [0, 2]
        st = seq.statistics()
        assert (st.reads, st.retries, st.writes) == (2, 1, 1)

    def test_writer_must_hold_the_writer_lock(self) -> None:
        mutex = Lock("hpet")
        seq = SeqLock("hpet state_version", writer_lock=mutex)

        async def other() -> None:
            with pytest.raises(RuntimeError, match="needs the writer lock 'hpet' held by this task"):
                seq.write_begin()

        async def main() -> None:
            with pytest.raises(RuntimeError, match=r"needs the writer lock 'hpet' held by this task \(it is free\)"):
                seq.write_begin()
            async with mutex.held("cfg"):
                await spawn("other", other())
                seq.write_begin()
                with pytest.raises(RuntimeError, match="already in progress"):
                    seq.write_begin()
                seq.write_end()
            with pytest.raises(RuntimeError, match="write_end without write_begin"):
                seq.write_end()

        clock.run(main())
        assert seq.statistics().writes == 1

    def test_deadlock_names_a_reader_waiting_for_a_stuck_writer(self) -> None:
        seq = SeqLock("v")
        never: list[asyncio.Future[None]] = []

        async def writer() -> None:
            seq.write_begin()
            fut = asyncio.get_running_loop().create_future()
            never.append(fut)
            await fut

        async def reader() -> None:
            await sleep_ns(1)
            await seq.read_async(lambda: 0)

        async def main() -> None:
            await asyncio.gather(spawn("writer", writer()), spawn("reader", reader()))

        with pytest.raises(SimulationDeadlock) as info:
            clock.run(main())
        assert info.value.blocked["reader"] == "seqlock 'v' (write in progress by 'writer', version 1)"

    def test_statistics_frozen_and_repr(self) -> None:
        seq = SeqLock("v")
        with pytest.raises(dataclasses.FrozenInstanceError):
            seq.statistics().reads = 3  # type: ignore[misc]
        assert repr(seq) == "<idle SeqLock 'v' version=0>"
        with pytest.raises(ConfigError):
            SeqLock("")
