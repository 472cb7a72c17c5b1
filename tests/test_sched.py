"""Host CPUs (aemu.sched): threads share N CPUs in time slices, blocked threads give theirs up."""

from __future__ import annotations

import pytest

from aemu import HostCPUs, MachineConfig, clock, simulate
from aemu.errors import ConfigError
from aemu.machine import Machine
from aemu.sched import PELT_HALFLIFE_NS, WAKE_AFFINE_BIAS_PCT, eevdf_slice_ns

MS = 1_000_000


class Books:
    def __init__(self) -> None:
        self.runnable_ns = 0
        self.runnable_in_lock_ns = 0


def test_slice_follows_eevdf_scaling() -> None:
    assert [eevdf_slice_ns(n) for n in (1, 2, 4, 8, 32, 240)] == [
        750_000, 1_500_000, 2_250_000, 3_000_000, 3_000_000, 3_000_000]


def test_two_threads_on_one_cpu_take_turns_in_slices() -> None:
    log: list[tuple[str, int]] = []

    async def main() -> None:
        host = HostCPUs(1, slice_ns=3 * MS)
        books = {name: Books() for name in "ab"}
        threads = {name: host.thread(name, books[name]) for name in "ab"}

        async def work(name: str) -> None:
            await threads[name].run(10 * MS)
            log.append((name, clock.now_ns()))
            threads[name].block()

        await _gather(work("a"), work("b"))
        assert books["a"].runnable_ns == 9 * MS  # waited while b ran three slices
        assert books["b"].runnable_ns == 10 * MS  # waited for a's first slice and three more
        assert host.statistics()["preemptions"] == 6

    clock.run(main())
    # a: 0-3, b: 3-6, a: 6-9, b: 9-12, a: 12-15, b: 15-18, a: 18-19 done, b: 19-20 done
    assert log == [("a", 19 * MS), ("b", 20 * MS)]


async def _gather(*aws: object) -> None:
    import asyncio

    await asyncio.gather(*aws)  # type: ignore[arg-type]


def test_a_thread_alone_is_never_preempted() -> None:
    async def main() -> None:
        host = HostCPUs(2, slice_ns=1 * MS)
        t = host.thread("a")
        await t.run(10 * MS)
        assert clock.now_ns() == 10 * MS
        assert host.statistics()["preemptions"] == 0

    clock.run(main())


def config(extra: str) -> str:
    return f"-M q35,hpet=on -smp 8 -accel kvm,kernel-irqchip=split --workload hpet-bench {extra}"


def test_enough_host_cpus_attach_no_scheduler() -> None:
    # 8 vCPU threads and the main-loop thread: 9 CPUs are enough
    m = Machine(MachineConfig.parse(config("--host-cpus 9")))
    assert m.host_cpus is None and all(c.keeper.thread is None for c in m.vcpus)
    assert m.host.main_loop.thread is None
    a = simulate(config("--host-cpus 9 --series before"))
    b = simulate(config("--series before"))
    assert a.metric == b.metric and a.vcpus == b.vcpus


def test_the_main_loop_thread_shares_the_host_cpus() -> None:
    """QEMU's main-loop thread runs on the same CPUs: it sleeps in ppoll, queues for a CPU when
    a timer is due, and is never a directed-yield target (it is not a vCPU)."""
    from aemu.runner import run_machine

    m = Machine(MachineConfig.parse(config("--host-cpus 8 --series before")))
    assert m.host_cpus is not None
    ml = m.host.main_loop.thread
    assert ml is not None and ml in m.host_cpus.threads and len(m.host_cpus.threads) == 9
    clock.run(run_machine(m))
    assert m.host.main_loop.callbacks > 0  # it ran its timers, on a CPU
    assert not ml.in_guest and not ml.on_cpu  # and went back to sleep


def test_oversubscribed_vcpus_wait_runnable_and_time_adds_up() -> None:
    reads = 4000  # 4000 x 3 us = 12 ms of CPU per vCPU: four 3 ms slices
    alone = simulate(config(f"--series after --param reads={reads}"))
    shared = simulate(config(f"--series after --param reads={reads} --host-cpus 2"))
    assert shared.finished
    for v in shared.vcpus:
        assert v.elapsed_ns == v.finish_ns - v.start_ns
        assert v.runnable_ns > 0
    # 7 reading APs on 2 CPUs: the run takes 3.5x as long as with a CPU each; the BSP's pause
    # loop gives its CPU to a preempted AP at each pause-loop exit (KVM's directed yield)
    assert shared.virtual_ns == pytest.approx(3.5 * alone.virtual_ns, rel=0.05)


def test_threads_blocked_on_the_bql_give_their_cpu_up() -> None:
    r = simulate(config("--series before --param reads=2000 --host-cpus 2 --lock-policy barging"))
    assert r.finished
    assert sum(v.lock_wait_ns for v in r.vcpus) > 0
    for v in r.vcpus:
        assert v.elapsed_ns == v.finish_ns - v.start_ns


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "5000"])
def test_host_cpus_must_be_a_positive_integer(bad: str) -> None:
    with pytest.raises(ConfigError, match="--host-cpus"):
        MachineConfig.parse(config(f"--host-cpus {bad}"))


def test_a_woken_thread_runs_before_a_preempted_one() -> None:
    """Linux places a waking thread with the sleeper's credit: it is picked at the next
    reschedule, ahead of the threads that were preempted at the end of their slices."""
    order: list[str] = []

    async def main() -> None:
        import asyncio

        host = HostCPUs(1, slice_ns=1 * MS)
        a, b, c = (host.thread(n) for n in "abc")

        async def runner(t: object, name: str, ns: int) -> None:
            await t.run(ns)  # type: ignore[attr-defined]
            order.append(name)
            t.block()  # type: ignore[attr-defined]

        async def sleeper() -> None:
            await c.run(100)  # c runs first, then sleeps (a futex) until 1.5 ms
            c.block()
            await clock.sleep_ns(1_500_000 - clock.now_ns())
            await c.run(100)
            order.append("c")
            c.block()

        await asyncio.gather(sleeper(), runner(a, "a", 3 * MS), runner(b, "b", 3 * MS))

    clock.run(main())
    # a runs 0.1-1.1 ms, b 1.1-2.1 ms; c wakes at 1.5 ms and runs at the 2.1 ms reschedule, before
    # a (preempted at 1.1 ms) gets its CPU back
    assert order[0] == "c"


def test_directed_yield_goes_only_to_a_ready_vcpu() -> None:
    """KVM's kvm_vcpu_on_spin yields to a vCPU preempted inside KVM_RUN, never to one that
    sleeps on (or was woken from) a QEMU futex or was preempted while QEMU handled its exit."""
    cases = {"preempted in KVM_RUN": (True, False), "preempted in QEMU": (False, False),
             "woken from a futex": (True, True)}
    got: dict[str, tuple[int, int]] = {}

    async def main(name: str, in_guest: bool, futex: bool) -> None:
        import asyncio

        host = HostCPUs(1, slice_ns=1 * MS)
        spinner, other = host.thread("spinner"), host.thread("other")
        await spinner.run(1)  # the spinner has the CPU
        done = asyncio.get_running_loop().create_future()
        ran_at: list[int] = []

        async def wants_a_cpu() -> None:
            await clock.sleep_ns(10_000)
            other.in_guest = in_guest
            if futex:
                other.block()  # a futex wait: not ready when woken
            else:
                other.ready, other.blocked = in_guest, False  # as a preemption leaves it
            await other.run(1_000)
            ran_at.append(clock.now_ns())
            other.block()
            done.set_result(None)

        asyncio.ensure_future(wants_a_cpu())
        yields = await spinner.spin(done)
        got[name] = (yields, ran_at[0])

    for name, (in_guest, futex) in cases.items():
        clock.run(main(name, in_guest, futex))
    # the ready vCPU queues at 10,001 ns and gets the CPU at the spinner's next pause-loop exit:
    # the window starts at 1,500 ns and doubles after each exit that found nobody (exits at 1,501,
    # 4,501 and 10,501 ns); the others wait for the spinner's slice to end at 1 ms
    assert got == {"preempted in KVM_RUN": (1, 11_501), "preempted in QEMU": (0, 1 * MS + 1_000),
                   "woken from a futex": (0, 1 * MS + 1_000)}


def test_the_ple_window_grows_while_nobody_is_ready_and_resets_when_scheduled_in() -> None:
    """KVM doubles a spinner's pause-loop window after each exit (grow_ple_window) and puts it
    back at the base when the thread is next scheduled in (shrink_ple_window)."""
    ran: dict[str, int] = {}

    async def main() -> None:
        import asyncio

        host = HostCPUs(1, slice_ns=1 * MS)
        spinner, b, c = host.thread("spinner"), host.thread("b"), host.thread("c")
        await spinner.run(1)
        done = asyncio.get_running_loop().create_future()

        async def busy_in_qemu() -> None:  # queued, not ready: it gets the CPU at the slice's end
            await clock.sleep_ns(100)
            b.in_guest = False
            await b.run(500_000)
            ran["b"] = clock.now_ns()
            b.block()

        async def ready_later() -> None:
            await clock.sleep_ns(1_600_000)
            c.ready = True  # as a preemption inside KVM_RUN leaves it
            await c.run(1_000)
            ran["c"] = clock.now_ns()
            c.block()
            done.set_result(None)

        asyncio.ensure_future(busy_in_qemu())
        asyncio.ensure_future(ready_later())
        await spinner.spin(done)

    clock.run(main())
    # b runs from the slice's end (1 ms) to 1.5 ms; the spinner is back at 1.5 ms with a 1,500 ns
    # window again: exits at 1,501,500, 1,504,500, ..., 1,594,500 and 1,690,500 ns, where it finds
    # c (queued at 1.6 ms). Without the reset its window would have been past 1 ms.
    assert ran == {"b": 1_500_000, "c": 1_691_500}


def _wake_after(sleep_until_ns: int, policy: str) -> tuple[int, int]:
    """c runs 0.1 ms and sleeps; a runs a 3 ms slice from 0.1 ms on the one CPU; c wakes at
    ``sleep_until_ns``. Returns when c ran again and how many wake-up preemptions there were."""
    ran_at: list[int] = []

    async def main() -> int:
        import asyncio

        host = HostCPUs(1, slice_ns=3 * MS, policy=policy)
        a, c = host.thread("a"), host.thread("c")

        async def runner() -> None:
            await a.run(5 * MS)
            a.block()

        async def sleeper() -> None:
            await c.run(100_000)
            c.block()
            await clock.sleep_ns(sleep_until_ns - clock.now_ns())
            await c.run(0)
            ran_at.append(clock.now_ns())
            await c.run(100_000)
            c.block()

        await asyncio.gather(sleeper(), runner())
        assert a.vruntime == 5 * MS and c.vruntime == 200_000  # CPU time, all of it booked
        return host.statistics()["wakeup_preemptions"]

    preemptions = clock.run(main())
    return ran_at[0], preemptions


def test_cfs_a_woken_thread_preempts_the_one_on_its_cpu_when_far_enough_ahead() -> None:
    """CFS on 1 CPU: sched_latency 6 ms (sleeper credit 3 ms), wakeup granularity 1 ms. c wakes
    at 1.5 ms with vruntime 0.1 ms while a, on c's CPU, is at 1.4 ms: 1.3 ms ahead, so c runs
    at once. EEVDF (no wake-up preemption) makes it wait for a's slice end at 3.1 ms."""
    assert _wake_after(1_500_000, "cfs") == (1_500_000, 1)
    assert _wake_after(1_500_000, "eevdf") == (3_100_000, 0)


def test_cfs_a_short_sleeper_does_not_preempt() -> None:
    """c wakes at 0.6 ms: a is 0.4 ms ahead of it, within the 1 ms granularity: c waits."""
    assert _wake_after(600_000, "cfs") == (3_100_000, 0)


def test_cfs_sleeper_credit_and_granularity_scale_with_the_cpus() -> None:
    from aemu.sched import CFS

    assert (CFS(1).sleeper_credit_ns, CFS(1).wakeup_gran_ns) == (3 * MS, 1 * MS)
    assert (CFS(32).sleeper_credit_ns, CFS(32).wakeup_gran_ns) == (12 * MS, 4 * MS)


@pytest.mark.parametrize("option, field, value", [("--host-sched", "host_sched", "cfs"),
                                                   ("--host-rq", "host_rq", "per-cpu")])
def test_a_host_what_if_on_a_machine_books_all_time_and_differs_from_the_default(option: str, field: str,
                                                                                 value: str) -> None:
    cfg = config("--series before --param reads=2000 --host-cpus 3")
    default = simulate(cfg)
    what_if = simulate(f"{cfg} {option} {value}")
    assert getattr(what_if.config, field) == value and getattr(default.config, field) != value
    assert what_if.finished
    for v in what_if.vcpus:
        assert v.elapsed_ns == v.finish_ns - v.start_ns
    assert what_if.virtual_ns != default.virtual_ns


def test_host_sched_must_be_known() -> None:
    with pytest.raises(ConfigError, match="--host-sched: 'bfs'; accepted: eevdf, cfs"):
        MachineConfig.parse(config("--host-sched bfs"))


def test_a_run_cancelled_inside_a_stretch_leaves_no_stretch_behind() -> None:
    """A run that ends (cap, Ctrl-C) while a thread holds its CPU: nothing is left for a later
    wake-up to preempt."""

    async def main() -> None:
        import asyncio

        host = HostCPUs(1, policy="cfs")
        t = host.thread("a")
        task = asyncio.ensure_future(t.run(10 * MS))
        await clock.sleep_ns(1 * MS)
        assert t._stop is not None and t.vruntime_now() == 1 * MS
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert t._stop is None

    clock.run(main())


def test_readme_host_scheduler_table_matches_the_code() -> None:
    """README's table of the host scheduler's values says what aemu/sched.py uses."""
    from pathlib import Path

    from aemu.sched import CFS, PLE_WINDOW_MAX_NS, PLE_WINDOW_NS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in readme.splitlines()
            if line.startswith("| ") and line.count("|") == 4}
    assert eevdf_slice_ns(8) == 3 * MS and "3 ms on 8 or more CPUs" in rows["time slice"]
    assert (PLE_WINDOW_NS, PLE_WINDOW_MAX_NS) == (1_500, 1_560_000_000)
    assert rows["pause-loop window"].startswith("1,500 ns") and "1.56 s" in rows["pause-loop window"]
    assert CFS(8).sleeper_credit_ns == 12 * MS and "12 ms on 8" in rows["CFS sleeper credit (`--host-sched cfs`)"]
    assert CFS(8).wakeup_gran_ns == 4 * MS and "4 ms on 8" in rows["CFS wake-up granularity (`--host-sched cfs`)"]
    assert WAKE_AFFINE_BIAS_PCT == 108 and "x 108%" in rows["wake-affine bias (`--host-rq per-cpu`)"]
    assert PELT_HALFLIFE_NS == 32_768_000 and "32.768 ms" in rows["PELT half-life (`--host-rq per-cpu`)"]
    from aemu.sched import BUSY_FACTOR, IMBALANCE_PCT, MIGRATION_COST_NS, NR_MIGRATE, domains

    interval = rows["periodic balancing interval (`--host-rq per-cpu`)"]
    node, across = domains(32, 2)[0], domains(32, 2)[-1]
    assert BUSY_FACTOR == 16 and "x 16 on a busy CPU" in interval
    assert node.busy_interval_ns() == 256 * MS and across.busy_interval_ns() == 512 * MS
    assert "256 ms in a 16-CPU node, 512 ms across 32 CPUs" in interval
    limits = rows["periodic balancing limits (`--host-rq per-cpu`)"]
    assert (IMBALANCE_PCT, MIGRATION_COST_NS, NR_MIGRATE) == (117, 500_000, 32)
    assert (node.cache_nice_tries, across.cache_nice_tries) == (1, 2)
    assert "117" in limits and "0.5 ms" in limits and "at most 32" in limits and "more than 1 time" in limits
    assert MachineConfig().host_nodes == 1
    assert rows["NUMA nodes (`--host-nodes`)"] == "1"


def _queued_wake(rq: str, a_ms: float) -> tuple[int, int, int]:
    """Two CPUs: c runs 0.1 ms on CPU 0 and sleeps; a takes CPU 1 at 0 for ``a_ms``; b takes CPU 0
    at 0.5 ms for 10 ms; c wakes at 1 ms with no CPU idle. Returns when c ran again, on which CPU,
    and how many pulls an idle CPU made."""
    ran: list[tuple[int, int]] = []

    async def main() -> int:
        import asyncio

        host = HostCPUs(2, slice_ns=3 * MS, rq=rq)
        a, b, c = (host.thread(n) for n in "abc")

        async def runner(t: object, start: int, ns: int) -> None:
            await clock.sleep_ns(start)
            await t.run(ns)  # type: ignore[attr-defined]
            t.block()  # type: ignore[attr-defined]

        async def sleeper() -> None:
            await c.run(100_000)
            assert c.last_cpu == 0
            c.block()
            await clock.sleep_ns(1 * MS - clock.now_ns())
            await c.run(0)
            ran.append((clock.now_ns(), c.cpu))
            await c.run(100_000)
            c.block()

        await asyncio.gather(sleeper(), runner(a, 0, int(a_ms * MS)), runner(b, 500_000, 10 * MS))
        return host.statistics()["pulls"]

    pulls = clock.run(main())
    return ran[0][0], ran[0][1], pulls


def test_per_cpu_run_queues_a_woken_thread_waits_for_its_own_cpu() -> None:
    """With one queue for all CPUs, c runs at the first slice end anywhere (a's, CPU 1, at 3 ms);
    with a queue per CPU it waits on CPU 0, its previous CPU, for b's slice end at 3.5 ms (a just
    starts a new slice: nobody waits for CPU 1)."""
    assert _queued_wake("global", 10) == (3 * MS, 1, 0)
    assert _queued_wake("per-cpu", 10) == (3_500_000, 0, 0)


def test_per_cpu_run_queues_an_idle_cpu_pulls_a_queued_thread() -> None:
    """a ends at 2 ms: CPU 1's queue is empty, so it pulls c from CPU 0's queue (newidle)."""
    assert _queued_wake("per-cpu", 2) == (2 * MS, 1, 1)


def test_host_rq_must_be_known() -> None:
    with pytest.raises(ConfigError, match="--host-rq: 'numa'; accepted: global, per-cpu"):
        MachineConfig.parse(config("--host-rq numa"))


def _lock_wake(crowded: bool, sleepers: bool = False) -> tuple[int, int, int]:
    """Two CPUs, per-CPU queues. c runs on CPU 0 and sleeps on a lock a holds; (with
    ``sleepers``, y and z run briefly on CPU 1 and sleep); a runs on CPU 1 from 0.05 ms, b on
    CPU 0 from 0.6 ms (with d queued behind it when ``crowded``); a releases at 1 ms, waking c from
    CPU 1. Returns when c ran again, on which CPU, and the wake-affine count."""
    import asyncio

    from aemu.clock import QuantumKeeper
    from aemu.sync import Lock

    ran: list[tuple[int, int]] = []

    async def main() -> int:
        host = HostCPUs(2, slice_ns=3 * MS, rq="per-cpu")
        lock = Lock("L", policy="barging")
        a, b, c, d, y, z = (host.thread(n) for n in "abcdyz")

        def keeper(t: object) -> None:
            k = QuantumKeeper()
            k.attach()
            k.thread = t

        async def holder() -> None:
            keeper(a)
            await lock.acquire("a")
            await clock.sleep_ns(50_000)
            await a.run(950_000)  # on CPU 1
            lock.release()  # futex_wake from CPU 1
            await a.run(5 * MS)
            a.block()

        async def waiter() -> None:
            keeper(c)
            await c.run(100_000)  # on CPU 0
            await lock.acquire("c")
            ran.append((clock.now_ns(), c.cpu))
            lock.release()
            c.block()

        async def runner(t: object, start: int, ns: int) -> None:
            await clock.sleep_ns(start)
            await t.run(ns)  # type: ignore[attr-defined]
            t.block()  # type: ignore[attr-defined]

        jobs = [waiter(), holder(), runner(b, 600_000, 10 * MS)]
        jobs += [runner(y, 0, 20_000), runner(z, 25_000, 20_000)] if sleepers else []
        jobs += [runner(d, 700_000, 10 * MS)] if crowded else []
        await asyncio.gather(*jobs)
        return host.statistics()["affine_wakeups"]

    affine = clock.run(main())
    return ran[0][0], ran[0][1], affine


def test_per_cpu_a_woken_thread_goes_to_its_wakers_cpu_when_that_one_is_less_loaded() -> None:
    """wake_affine_weight with PELT loads (each near 1: runnable all along, or asleep for under a
    ms): c's previous CPU 0 runs b with d queued, the waker's CPU 1 runs a alone; (1 + c) x 100 <
    (b + d + c - c) x 108, so c queues on CPU 1 and runs at a's slice end (3.05 ms). With b
    alone on CPU 0, (1 + c) x 100 < 1 x 108 fails: c stays on CPU 0 and runs at b's (3.6 ms)."""
    assert _lock_wake(crowded=True) == (3_050_000, 1, 1)
    assert _lock_wake(crowded=False) == (3_600_000, 0, 0)


def test_per_cpu_wake_affine_counts_the_load_of_threads_asleep_on_the_wakers_cpu() -> None:
    """y and z slept on CPU 1 well under a half-life ago: their load still counts there (PELT),
    so CPU 1 (a + y + z, about 3) is not less loaded than CPU 0 and c stays on CPU 0, although
    only one thread runs on CPU 1 at that instant."""
    assert _lock_wake(crowded=True, sleepers=True) == (3_600_000, 0, 0)


def test_per_cpu_a_kick_out_of_hlt_names_the_sending_vcpus_cpu_as_waker(monkeypatch: pytest.MonkeyPatch) -> None:
    """hpet_read_test's BSP starts the halted APs with IPIs: each AP's wake-up names the CPU
    the BSP runs on (the waker, a wake-affine candidate); the LAPIC timer's wake-ups name none."""
    from aemu.runner import run_machine
    from aemu.sched import HostThread

    seen: list[tuple[str, int]] = []
    woken = HostThread.woken

    def spy(self: HostThread) -> None:
        woken(self)
        seen.append((self.name, self.waker))

    monkeypatch.setattr(HostThread, "woken", spy)
    m = Machine(MachineConfig.parse("-M q35,hpet=on -smp 8 -accel kvm,kernel-irqchip=on --workload hpet-bench "
                                    "--series after --param reads=200 --host-cpus 2 --host-rq per-cpu"))
    clock.run(run_machine(m))
    assert m.host_cpus is not None
    bsp = m.host_cpus.threads[0]
    assert bsp.last_cpu in (0, 1)
    from_a_vcpu = [w for name, w in seen if name != bsp.name and w >= 0]
    assert from_a_vcpu and set(from_a_vcpu) <= {0, 1}


def test_pelt_load_decays_while_asleep_and_stays_on_the_cpu_it_slept_on() -> None:
    """PELT: a thread runnable all along has load 1; asleep for one half-life (32 x 1024 us) it
    has 1/2, and it still counts on the CPU it last ran on; runnable again, it climbs back."""
    async def main() -> None:
        host = HostCPUs(2, slice_ns=3 * MS, rq="per-cpu")
        a = host.thread("a")
        await a.run(1 * MS)
        assert a.home == 0 and host.cpu_load(0, clock.now_ns()) == 1.0
        a.block()
        await clock.sleep_ns(PELT_HALFLIFE_NS)
        assert host.cpu_load(0, clock.now_ns()) == pytest.approx(0.5)
        assert host.cpu_load(1, clock.now_ns()) == 0
        await a.run(PELT_HALFLIFE_NS)
        assert a.pelt(clock.now_ns()) == pytest.approx(0.75)

    clock.run(main())


# -- periodic load balancing (per-CPU queues) ------------------------------------------------


def test_domains_follow_the_nodes() -> None:
    """sd_init: a domain of w CPUs balances every w ms (x 16 on a busy CPU); within a node every
    CPU balances for itself (groups: single CPUs), across nodes each node's first CPU does."""
    from aemu.sched import domains

    two = domains(32, 2)
    llc = [d for d in two if d.name == "LLC"]
    numa = [d for d in two if d.name == "NUMA"]
    assert [d.cpu for d in llc] == list(range(32))
    assert llc[0].span == list(range(16)) and llc[16].span == list(range(16, 32))
    assert llc[0].groups == [[c] for c in range(16)]
    assert (llc[0].busy_interval_ns(), llc[0].max_ms, llc[0].cache_nice_tries) == (256 * MS, 32, 1)
    assert [d.cpu for d in numa] == [0, 16] and numa[0].groups == [list(range(16)), list(range(16, 32))]
    assert (numa[0].busy_interval_ns(), numa[0].cache_nice_tries) == (512 * MS, 2)
    one = domains(32, 1)
    assert len(one) == 32 and all(d.name == "LLC" and d.busy_interval_ns() == 512 * MS for d in one)
    # a one-CPU node has no domain of its own (Linux degenerates it)
    assert [(d.name, d.cpu) for d in domains(4, 3)] == [("LLC", 2), ("LLC", 3), ("NUMA", 0), ("NUMA", 1),
                                                        ("NUMA", 2)]
    assert HostCPUs(4, rq="global").domains == []


def _imbalanced(slice_ns: int, until_ms: int) -> tuple[list[int], list[int]]:
    """Two CPUs, per-CPU queues: x runs alone on CPU 1; a, b and c share CPU 0 in slices of
    ``slice_ns``. Returns the number of threads moved so far at 1 ms past each 32 ms, and the CPUs
    a, b and c are on at the end."""
    import asyncio

    moved: list[int] = []

    async def main() -> list[int]:
        host = HostCPUs(2, slice_ns=slice_ns, rq="per-cpu")
        x, a, b, c = (host.thread(n) for n in "xabc")
        x.last_cpu = 1
        for t in (a, b, c):
            t.last_cpu = 0
        host.start_balancing()

        async def watch() -> None:
            for k in range(1, until_ms // 32 + 1):
                await clock.sleep_ns(k * 32 * MS + MS - clock.now_ns())
                moved.append(host.migrations)

        async def runner(t: object) -> None:
            await t.run(until_ms * MS)  # type: ignore[attr-defined]

        jobs = [asyncio.ensure_future(j) for j in (runner(x), runner(a), runner(b), runner(c))]
        await watch()
        cpus = [t.home for t in (a, b, c)]
        host.stop_balancing()
        for j in jobs:
            j.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        return cpus

    cpus = clock.run(main())
    return moved, cpus


def test_periodic_balancing_pulls_a_queued_thread_to_the_less_loaded_cpu() -> None:
    """At 32 ms (2 CPUs: 2 ms x busy_factor 16) CPU 1 finds CPU 0 overloaded (load 3 against 1,
    average 2) and pulls one thread, the least recently run; one more would overshoot the
    average. Without balancing all three would stay on CPU 0 (no CPU ever goes idle)."""
    moved, cpus = _imbalanced(3 * MS, 40)
    assert moved == [1]
    assert sorted(cpus) == [0, 0, 1]


def test_periodic_balancing_leaves_cache_hot_threads_until_it_has_failed_enough() -> None:
    """In 0.13 ms slices both threads queued on CPU 0 ran within sysctl_sched_migration_cost
    (0.5 ms) of every pass: cache-hot. The passes at 32 and 64 ms move nothing
    (nr_balance_failed 0, then 1, not above cache_nice_tries 1); the one at 96 ms moves one."""
    moved, cpus = _imbalanced(130_000, 100)
    assert moved == [0, 0, 1]
    assert sorted(cpus) == [0, 0, 1]


def test_a_machine_with_per_cpu_queues_balances_and_leaves_no_timer_behind() -> None:
    import asyncio

    from aemu.runner import run_machine

    async def main() -> tuple[int, bool]:
        m = Machine(MachineConfig.parse(config("--series before --param reads=20000 --host-cpus 3 "
                                               "--host-rq per-cpu --host-nodes 1")))
        await run_machine(m)
        assert m.host_cpus is not None
        return m.host_cpus.migrations, m.host_cpus._balancer is None

    migrations, stopped = clock.run(main())
    assert migrations > 0 and stopped


@pytest.mark.parametrize("args, message", [
    ("--host-cpus 4 --host-nodes 0", "--host-nodes: must be a positive integer, got 0"),
    ("--host-cpus 2 --host-nodes 3", "--host-nodes: 3 NUMA nodes need at least as many --host-cpus, got 2"),
    ("--host-nodes 2", "--host-nodes: 2 NUMA nodes need at least as many --host-cpus, and none are given"),
])
def test_host_nodes_must_fit_the_host_cpus(args: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MachineConfig.parse(config(args))


def test_cfs_per_cpu_queues_each_have_a_min_vruntime_that_a_moved_thread_is_measured_against() -> None:
    """CFS on per-CPU queues: a woken thread is placed against its own queue's min_vruntime
    (place_entity), not the lowest of all CPUs; moved to another queue it keeps its distance
    from the min (migrate_task_rq_fair, enqueue_entity); a queue's min never goes back."""
    from aemu.sched import CFS

    host = HostCPUs(2, policy="cfs", rq="per-cpu")
    a, b, t, u = (host.thread(n) for n in "abtu")
    host.curr[0], host.curr[1] = a, b  # running, between two stretches (vruntime as booked)
    a.vruntime, b.vruntime = 10 * MS, 50 * MS
    policy = host.policy
    assert isinstance(policy, CFS) and policy.sleeper_credit_ns == 6 * MS  # sched_latency / 2 on 2 CPUs
    assert policy.wakeup_preempt(host, t, 1) is None  # b is not 4 ms ahead of t once placed
    assert t.vruntime == 44 * MS  # 50 ms (CPU 1's min) less the credit, not 10 ms less it
    u.vruntime = 12 * MS  # 2 ms above CPU 0's min
    policy.migrate(host, u, 0, 1)
    assert u.vruntime == 52 * MS
    a.vruntime = 5 * MS
    assert policy.queue_min_vruntime(host, 0) == 10 * MS
