"""QEMU timers on the main loop (aemu.timer): arming, re-arming and deleting, the order callbacks
run in, the ``timer_cb_ns`` each costs, and that they run in the main loop with the BQL held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aemu.clock import now_ns, sleep_ns
from aemu.sync import Lock, bql_locked
from aemu.timer import MainLoop, QEMUTimer

CB_NS = 50
Log = list[tuple[int, str, bool]]


@pytest.fixture
def bql() -> Lock:
    return Lock("BQL", bql=True)


@pytest.fixture
async def main_loop(bql: Lock) -> AsyncIterator[MainLoop]:
    ml = MainLoop(bql, CB_NS)
    ml.start()
    yield ml
    await ml.stop()
    assert not bql.locked()


def logging_timer(ml: MainLoop, name: str, log: Log) -> QEMUTimer:
    """A timer whose callback logs (virtual time, its name, whether it holds the BQL)."""
    return ml.timer_new_ns(name, lambda: log.append((now_ns(), name, bql_locked())))


async def hold_bql(bql: Lock, start: int, until: int, site: str = "vcpu") -> None:
    await sleep_ns(start)
    async with bql.held(site):
        await sleep_ns(until - now_ns())


class TestArming:
    async def test_fires_after_expiry_with_the_bql_held(self, main_loop: MainLoop) -> None:
        log: Log = []
        t = logging_timer(main_loop, "a", log)
        t.mod_ns(1_000)
        assert t.pending and t.expire_ns == 1_000
        await sleep_ns(2_000)
        assert log == [(1_000 + CB_NS, "a", True)]
        assert not t.pending and t.expire_ns == -1 and t.fired == 1

    async def test_mod_ns_rearms_later_and_earlier(self, main_loop: MainLoop) -> None:
        log: Log = []
        later, earlier = logging_timer(main_loop, "later", log), logging_timer(main_loop, "earlier", log)
        later.mod_ns(100)
        later.mod_ns(500)
        earlier.mod_ns(900)
        earlier.mod_ns(300)
        await sleep_ns(1_000)
        assert log == [(300 + CB_NS, "earlier", True), (500 + CB_NS, "later", True)]
        assert (later.fired, earlier.fired, main_loop.callbacks) == (1, 1, 2)

    async def test_delete_disarms(self, main_loop: MainLoop) -> None:
        log: Log = []
        t = logging_timer(main_loop, "a", log)
        t.mod_ns(100)
        t.delete()
        assert not t.pending and t.expire_ns == -1
        t.delete()  # deleting an idle timer is harmless (timer_del)
        await sleep_ns(1_000)
        assert log == [] and t.fired == 0 and main_loop.wakeups == 0

    async def test_rearmed_from_its_own_callback_is_periodic(self, main_loop: MainLoop) -> None:
        log: list[int] = []

        def tick() -> None:
            log.append(now_ns())
            t.mod_ns(now_ns() + 1_000)

        t = main_loop.timer_new_ns("tick", tick)
        t.mod_ns(1_000)
        await sleep_ns(3_500)
        # each period starts when the callback runs, after its timer_cb_ns
        assert log == [1_050, 2_100, 3_150]
        assert t.pending and t.expire_ns == 4_150

    def test_repr(self, bql: Lock) -> None:
        t = MainLoop(bql, CB_NS).timer_new_ns("hpet-timer0", lambda: None)
        assert repr(t) == "<QEMUTimer 'hpet-timer0' idle>"


class TestOrder:
    async def test_callbacks_run_in_expiry_order(self, main_loop: MainLoop) -> None:
        log: Log = []
        for name, when in (("c", 300), ("a", 100), ("b", 200)):
            logging_timer(main_loop, name, log).mod_ns(when)
        await sleep_ns(1_000)
        assert log == [(150, "a", True), (250, "b", True), (350, "c", True)]
        assert (main_loop.wakeups, main_loop.callbacks, main_loop.busy_ns) == (3, 3, 3 * CB_NS)

    async def test_same_instant_fifo_in_one_bql_section_paying_each(self, main_loop: MainLoop, bql: Lock) -> None:
        log: Log = []
        for name in ("x", "y", "z"):
            logging_timer(main_loop, name, log).mod_ns(100)
        await sleep_ns(1_000)
        assert log == [(150, "x", True), (200, "y", True), (250, "z", True)]
        assert (main_loop.wakeups, main_loop.callbacks, main_loop.busy_ns) == (1, 3, 3 * CB_NS)
        st = bql.statistics()
        assert st.acquisitions == 1 and [(s.site, s.acquisitions) for s in st.sites] == [("main-loop timers", 1)]
        assert st.hold_ns.total == 3 * CB_NS

    async def test_a_timer_expiring_during_a_callback_runs_in_the_same_section(self, main_loop: MainLoop) -> None:
        log: Log = []
        logging_timer(main_loop, "first", log).mod_ns(100)
        logging_timer(main_loop, "second", log).mod_ns(120)  # expires while "first" pays its cost
        await sleep_ns(1_000)
        assert log == [(150, "first", True), (200, "second", True)]
        assert main_loop.wakeups == 1


class TestUnderTheBQL:
    async def test_expired_timers_wait_for_the_bql(self, main_loop: MainLoop, bql: Lock) -> None:
        log: Log = []
        logging_timer(main_loop, "a", log).mod_ns(100)
        logging_timer(main_loop, "b", log).mod_ns(400)
        await hold_bql(bql, 0, 1_000)
        await sleep_ns(1_000)
        assert log == [(1_050, "a", True), (1_100, "b", True)]
        assert main_loop.wakeups == 1
        waits = {t.task: t.wait_total_ns for t in bql.statistics().tasks}
        assert waits["main-loop"] == 1_000 - 100

    async def test_a_vcpu_waits_for_the_main_loop(self, main_loop: MainLoop, bql: Lock) -> None:
        logging_timer(main_loop, "a", []).mod_ns(100)
        await sleep_ns(120)
        t0 = now_ns()
        async with bql.held("vcpu"):
            got = now_ns()
        assert (t0, got) == (120, 100 + CB_NS)

    async def test_rearmed_while_waiting_for_the_bql_fires_once_at_the_new_time(
            self, main_loop: MainLoop, bql: Lock) -> None:
        log: Log = []
        t = logging_timer(main_loop, "a", log)
        t.mod_ns(100)

        async def vcpu() -> None:
            async with bql.held("vcpu"):
                await sleep_ns(500)
                t.mod_ns(2_000)  # expired at 100, not yet run: re-armed for later
                await sleep_ns(500)

        await vcpu()
        await sleep_ns(2_000)
        assert log == [(2_000 + CB_NS, "a", True)]

    async def test_coroutine_callback_is_awaited_with_the_bql_held(self, main_loop: MainLoop, bql: Lock) -> None:
        log: list[tuple[int, str]] = []

        async def slow() -> None:
            log.append((now_ns(), f"slow start bql={bql_locked()}"))
            await sleep_ns(200)
            log.append((now_ns(), f"slow end bql={bql_locked()}"))

        main_loop.timer_new_ns("slow", slow).mod_ns(100)
        main_loop.timer_new_ns("next", lambda: log.append((now_ns(), "next"))).mod_ns(100)
        await sleep_ns(1_000)
        assert log == [(150, "slow start bql=True"), (350, "slow end bql=True"), (400, "next")]
        assert bql.statistics().hold_ns.total == 2 * CB_NS + 200

    async def test_stop_while_waiting_for_the_bql_leaves_it_free(self, bql: Lock) -> None:
        ml = MainLoop(bql, CB_NS)
        ml.start()
        holder = asyncio.get_running_loop().create_task(hold_bql(bql, 0, 1_000))
        ml.timer_new_ns("a", lambda: None).mod_ns(100)
        await sleep_ns(200)
        assert not ml.idle()
        await ml.stop()
        await holder
        assert not bql.locked() and ml.callbacks == 0


class TestExpiredThenChanged:
    """QEMU's timerlist_run_timers sees a timer once, as it is when the main loop gets to it."""

    async def test_deleted_after_expiry_before_running_does_not_fire(self, main_loop: MainLoop, bql: Lock) -> None:
        log: Log = []
        t = logging_timer(main_loop, "a", log)
        t.mod_ns(100)
        async with bql.held("vcpu"):
            await sleep_ns(500)
            t.delete()  # e.g. the guest disables the HPET comparator under the BQL
        await sleep_ns(1_000)
        assert log == []

    async def test_expired_twice_before_running_fires_once(self, main_loop: MainLoop, bql: Lock) -> None:
        log: Log = []
        t = logging_timer(main_loop, "a", log)
        t.mod_ns(100)
        async with bql.held("vcpu"):
            await sleep_ns(200)
            t.mod_ns(400)
            await sleep_ns(800)
        await sleep_ns(1_000)
        assert log == [(1_000 + CB_NS, "a", True)]
