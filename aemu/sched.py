"""Host CPUs: the machine's threads share ``--host-cpus N`` physical CPUs, as Linux schedules them.

QEMU runs one thread per vCPU plus the main-loop thread; with ``-smp 240`` on a 32-core host at
most 32 of them run at once. Here each vCPU's :class:`~aemu.clock.QuantumKeeper` carries a
:class:`HostThread`, and every stretch of work the vCPU does (guest compute, exit handling,
handler work under a lock: what ``QuantumKeeper.sync`` sleeps) runs on a CPU; the main loop
(:class:`aemu.timer.MainLoop`) has a thread too, for its timer callbacks:

* A runnable thread with no CPU waits in the run queue; its wait is booked as *runnable* time.
* A thread keeps its CPU for a time slice; when the slice is used up and others are queued, it
  is preempted and goes to the tail of the queue -- holding whatever locks it holds (lock-holder
  preemption).
* A thread that blocks -- waits for a futex (a contended lock) or halts -- gives its CPU up; when
  it is woken it queues for a CPU again before it runs, ahead of the preempted threads: Linux
  places a waking thread with the sleeper's credit (CFS ``place_entity``; EEVDF keeps its lag),
  so it is picked at the next reschedule, while a preempted one has used its slice.
* KVM's directed yield: a vCPU spinning in a PAUSE loop takes pause-loop exits, and
  ``kvm_vcpu_on_spin`` (virt/kvm/kvm_main.c) gives its CPU to another vCPU of the VM that is
  *ready* -- ``vcpu->ready`` is set by ``kvm_sched_out`` when the thread is preempted inside
  ``KVM_RUN`` and by ``kvm_vcpu_wake_up`` when it is woken from HLT. A vCPU thread that sleeps
  on a QEMU futex, or is preempted while QEMU handles its exit (holding the BQL, say), is
  outside ``KVM_RUN`` (its preempt notifier is unregistered by ``vcpu_put``) and is never a
  target: spinners keep their CPUs while it waits. A spinner is not a target either (KVM's
  ``dy_eligible`` skips vCPUs in a spin loop). The exits come at KVM's window
  (:data:`PLE_WINDOW_NS`), which doubles after each exit and resets when the thread is next
  scheduled in.

The slice is EEVDF's (Linux >= 6.6, kernel/sched/fair.c): ``sysctl_sched_base_slice`` 0.75 ms
scaled by ``1 + ilog2(min(ncpus, 8))`` (``SCHED_TUNABLESCALING_LOG``, ``sched_update_scaling``),
3 ms on 8 or more CPUs; under CFS, ``sched_min_granularity`` scales the same way to the same
3 ms, which is the slice whenever more than ``sched_latency/min_granularity`` = 8 threads share
a CPU. A run queue is FIFO, woken threads first: one for all CPUs (``--host-rq global``, the
default: perfect load balancing, a thread runs on whichever CPU frees first) or one per CPU
(``per-cpu``, see :class:`HostCPUs`). Assumption: all threads have the default weight (nice 0). What a wake-up does when no CPU is idle is the policy (``--host-sched``): under
:class:`EEVDF`, the default, the woken thread waits for the next reschedule (no wake-up
preemption of a running one); under :class:`CFS` (Linux < 6.6) it preempts the thread on the CPU
it last ran on if that one has run far enough ahead of it (sleeper credit and wake-up
granularity). The host kernel of the series' measurements is not stated, and the boot's figures
depend on this choice (README, "Host CPUs").
With at least as many CPUs as threads (the vCPUs and the main loop) nobody ever queues and the
model costs nothing: the machine then attaches no :class:`HostThread` at all.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable, Protocol

from .clock import _keepers, call_at_ns, now_ns, sleep_ns
from .errors import ConfigError

__all__ = ["CFS", "EEVDF", "HOST_SCHEDULERS", "RUN_QUEUES", "Domain", "HostCPUs", "HostScheduler", "HostThread",
           "domains", "eevdf_slice_ns"]

BASE_SLICE_NS = 750_000  # sysctl_sched_base_slice (EEVDF) = sysctl_sched_min_granularity (CFS)
#: KVM's pause-loop exiting window: KVM_VMX_DEFAULT_PLE_WINDOW, 4096 cycles (arch/x86/kvm/x86.h),
#: at the ~2.75 GHz the kernel-exit cost implies (~1,100 cycles in 0.4 us); it doubles after each
#: exit (KVM_DEFAULT_PLE_WINDOW_GROW 2) up to KVM_VMX_DEFAULT_PLE_WINDOW_MAX, UINT_MAX cycles, and
#: is back at the base when the thread is scheduled in (KVM_DEFAULT_PLE_WINDOW_SHRINK 0).
PLE_WINDOW_NS = 1_500
PLE_WINDOW_MAX_NS = 1_560_000_000
#: ``wake_affine_weight``'s bias for the wakee's previous CPU, in percent: 100 + (imbalance_pct -
#: 100) / 2 with the LLC domain's ``imbalance_pct`` 117 (kernel/sched/topology.c, ``sd_init``).
WAKE_AFFINE_BIAS_PCT = 100 + (117 - 100) // 2
#: PELT's half-life: a load average decays by y per 1024 us period with y^32 = 1/2
#: (kernel/sched/pelt.c), so by half in 32 periods.
PELT_HALFLIFE_NS = 32 * 1_024_000
#: Periodic load balancing (kernel/sched/topology.c ``sd_init``, kernel/sched/fair.c): a domain of
#: ``w`` CPUs balances every ``balance_interval`` ms, from ``min_interval`` = w to ``max_interval``
#: = 2w, times ``busy_factor`` 16 on a busy CPU; ``imbalance_pct`` 117; a task that ran within
#: ``sysctl_sched_migration_cost`` 0.5 ms is cache-hot and stays unless the domain has failed to
#: balance more than ``cache_nice_tries`` times (1 within a node, 2 across nodes); one pass moves
#: at most ``sysctl_sched_nr_migrate`` 32 tasks.
BUSY_FACTOR = 16
IMBALANCE_PCT = 117
MIGRATION_COST_NS = 500_000
NR_MIGRATE = 32


def eevdf_slice_ns(ncpus: int) -> int:
    """The scheduler's time slice on ``ncpus`` CPUs: 0.75 ms x (1 + ilog2(min(ncpus, 8)))."""
    return BASE_SLICE_NS * (1 + (min(max(ncpus, 1), 8).bit_length() - 1))


class Books(Protocol):
    """Where a thread's runnable time is booked (a vCPU's :class:`~aemu.cpu.VCPUAccount`)."""

    runnable_ns: int
    runnable_in_lock_ns: int


class HostThread:
    """One host thread (a vCPU's): whether it has a CPU, how much of its slice it has used."""

    __slots__ = ("host", "name", "on_cpu", "ran_ns", "books", "_wakeup", "preemptions", "ready", "spinning", "in_guest",
                 "blocked", "cpu", "last_cpu", "waker", "vruntime", "_stop", "_t0", "load", "load_ns", "sleeping",
                 "home", "off_ns")

    def __init__(self, host: HostCPUs, name: str, books: Books | None = None) -> None:
        self.host = host
        self.name = name
        self.on_cpu = False
        self.ran_ns = 0  # CPU time used in the current slice
        self.books = books
        self.preemptions = 0
        #: KVM's ``vcpu->ready``: queued after being preempted or woken from HLT (a directed-yield target)
        self.ready = False
        self.spinning = False  # in a pause loop: not a directed-yield target
        #: inside KVM_RUN (KVM's preempt notifiers are registered): only then does a preemption
        #: make the vCPU ready; one preempted in QEMU (handling an exit, holding the BQL) is not
        self.in_guest = True
        self.blocked = False  # asleep (futex, HLT): when woken it queues ahead of preempted threads
        self._wakeup: asyncio.Future[None] | None = None  # set when a queued thread gets a CPU
        self.cpu = -1  # the CPU it runs on, -1 when off CPU
        self.last_cpu = -1  # the CPU it ran on last (where a wake-up lands when no CPU is idle)
        self.waker = -1  # the CPU of the thread that woke it (per-CPU queues: a wake-affine candidate)
        #: per-CPU queues: PELT's load average (1.0: runnable all along; a new task starts at its
        #: full weight, ``init_entity_runnable_average``) as of ``load_ns``, whether it is asleep
        #: since then, and the CPU whose load it counts in (where it runs, queues, or last ran)
        self.load = 1.0
        self.load_ns = 0
        self.sleeping = False
        self.home = -1
        self.off_ns = 0  # when it last left a CPU (periodic balancing leaves a cache-hot thread where it is)
        self.vruntime = 0  # CPU time used (nice 0: vruntime is runtime), as placed at wake-ups by CFS
        self._stop: Awaitable[None] | None = None  # the CPU stretch it is in, settled early by a preemption
        self._t0 = 0  # when that stretch began

    async def run(self, ns: int) -> None:
        """Spend ``ns`` of CPU time: queue for a CPU if it has none, be preempted at slice ends
        (and, under a policy with wake-up preemption, when a woken thread takes its CPU)."""
        host = self.host
        while True:
            if not self.on_cpu:
                await host.dispatch(self)
            left = host.slice_ns - self.ran_ns
            last = ns <= left
            step = ns if last else left
            if last or step > 0:
                self._t0 = now_ns()
                self._stop = fut = sleep_ns(step)
                try:
                    await fut
                except BaseException:  # the run ends (cap, Ctrl-C) inside the stretch
                    self._stop = None
                    raise
                if not self.on_cpu:  # preempted by a wake-up: queue again for the rest
                    ns -= self._held(step, cut=True)
                    continue
                self._stop = None
                self.ran_ns += step
                self.vruntime += step
                if last:
                    return
                ns -= step
            self._slice_end()

    def _held(self, step: int, cut: bool) -> int:
        """Book a stretch of ``step`` on the CPU that has ended, or was ``cut`` short (a wake-up
        preemption, a spin's end): the CPU time used, to the slice and to ``vruntime``."""
        self._stop = None
        ran = min(max(now_ns() - self._t0, 0), step) if cut else step
        self.ran_ns += ran
        self.vruntime += ran
        return ran

    def vruntime_now(self) -> int:
        """``vruntime`` including the stretch it is in (CFS's ``update_curr``)."""
        return self.vruntime + (now_ns() - self._t0 if self._stop is not None else 0)

    def _slice_end(self) -> None:
        """The slice is used up: preempted if somebody waits (KVM marks the vCPU ready if that
        happens inside KVM_RUN), else a new slice on the same CPU."""
        host = self.host
        d = self.cpu if host.percpu else 0
        if host.wokens[d] or host.queues[d]:
            host.preempt(self)
        else:
            self.ran_ns = 0

    async def woken_for_lock(self) -> None:
        """Woken from a futex wait: it runs (and competes for the lock again) once it has a CPU;
        that wait is runnable time inside the lock wait."""
        waited = await self.host.dispatch(self)
        if self.books is not None:
            self.books.runnable_in_lock_ns += waited

    def woken(self) -> None:
        """Somebody wakes this sleeping thread now (a futex wake, a kick out of HLT): with per-CPU
        queues, note the CPU of the thread whose code runs now, the waker (``select_task_rq_fair``'s
        ``this_cpu``); a wake-up from a timer has none."""
        if self.host.percpu:
            task = asyncio.current_task()
            k = _keepers.get(task) if task is not None else None
            thread = k.thread if k is not None else None
            self.waker = thread.cpu if thread is not None and thread.host is self.host else -1

    def block(self, ready: bool = False) -> None:
        """The thread sleeps (futex wait, or HLT with ``ready``: KVM marks a vCPU woken from HLT
        ready): its CPU goes to the next queued thread."""
        self.ready = ready
        self.blocked = True
        if self.host.percpu and not self.sleeping:
            self._pelt_sleeping(True)
        if self.on_cpu:
            self.host.release(self)

    def _pelt_sleeping(self, sleeping: bool) -> None:
        """Fall asleep or wake: the load average is brought to now under the state that ends."""
        self.pelt(now_ns())
        self.sleeping = sleeping

    def pelt(self, now: int) -> float:
        """Bring the load average to ``now`` (PELT, kernel/sched/pelt.c, as a continuous decay):
        runnable time pulls it towards 1, sleeping lets it decay; returns it."""
        dt = now - self.load_ns
        if dt > 0:
            decay = 0.5 ** (dt / PELT_HALFLIFE_NS)
            self.load = self.load * decay if self.sleeping else 1.0 - (1.0 - self.load) * decay
            self.load_ns = now
        return self.load

    async def spin(self, done: asyncio.Future[None]) -> int:
        """Spin on a CPU until ``done``, as KVM runs a PAUSE loop: preempted at slice ends like any
        thread; at each pause-loop exit the CPU goes to a ready vCPU if one is queued (and this
        one queues again), else the window doubles (``grow_ple_window``) until the thread is
        next scheduled in (``shrink_ple_window`` back to the base). Returns how many times it
        handed its CPU over."""
        host = self.host
        loop = asyncio.get_running_loop()
        yields = 0
        window = PLE_WINDOW_NS
        self.spinning = True
        try:
            while not done.done():
                if not self.on_cpu:
                    await host.dispatch(self)
                    window = PLE_WINDOW_NS  # scheduled in: the window is back at the base
                    continue
                left = host.slice_ns - self.ran_ns
                if left <= 0:  # preempted inside KVM_RUN, but a spinner: not a target
                    self._slice_end()
                    continue
                # spin until done, the next pause-loop exit, the slice's end or a preemption
                wait = min(window, left)
                self._t0 = t0 = now_ns()
                self._stop = stop = loop.create_future()
                timer = call_at_ns(t0 + wait, _settle, stop)
                wake = lambda _: _settle(stop)  # noqa: E731
                done.add_done_callback(wake)
                try:
                    await stop
                finally:
                    done.remove_done_callback(wake)
                    timer.cancel()
                    self._held(wait, cut=True)
                if not self.on_cpu or done.done() or wait < window:
                    continue
                target = host.yield_target()  # a pause-loop exit: kvm_vcpu_on_spin
                if target is not None:
                    yields += 1
                    host.yields += 1
                    host.grant(target, self)
                else:
                    window = min(window * 2, PLE_WINDOW_MAX_NS)
        finally:
            self.spinning = False
        return yields

    def __repr__(self) -> str:
        return f"<HostThread {self.name} {'running' if self.on_cpu else 'off cpu'}>"


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class HostScheduler(Protocol):
    """A host scheduling policy: what a wake-up does when no CPU is idle."""

    name: str

    def wakeup_preempt(self, host: HostCPUs, t: HostThread, cpu: int) -> HostThread | None: ...

    def migrate(self, host: HostCPUs, t: HostThread, old: int, new: int) -> None: ...


class EEVDF:
    """Linux >= 6.6 (the default): a woken thread waits for the next reschedule. EEVDF's
    ``RUN_TO_PARITY`` keeps the current thread while it is eligible, so the model has no
    wake-up preemption of a running one."""

    name = "eevdf"

    def wakeup_preempt(self, host: HostCPUs, t: HostThread, cpu: int) -> HostThread | None:
        """The running thread that woken ``t``, landing on ``cpu``, preempts, or None."""
        return None

    def migrate(self, host: HostCPUs, t: HostThread, old: int, new: int) -> None:
        """``t`` moves from CPU ``old``'s queue to ``new``'s (nothing to carry over here)."""


class CFS:
    """Linux < 6.6 (kernel/sched/fair.c): a woken thread is placed with the sleeper's credit
    (``place_entity``: vruntime = max(its own, min_vruntime - sched_latency / 2), the halving is
    ``GENTLE_FAIR_SLEEPERS``) and preempts the thread running on the CPU it lands on if that one
    is more than ``sched_wakeup_granularity`` ahead (``check_preempt_wakeup``,
    ``wakeup_preempt_entity``). Both tunables scale like the slice: 6 ms and 1 ms x (1 +
    ilog2(min(ncpus, 8))). With no idle CPU the wake-up lands where ``select_task_rq_fair`` puts it
    (:meth:`HostCPUs._target`): with per-CPU queues the waker's CPU or the previous one; with one
    queue the previous one (assumption: no wake-affine pull). Each run queue has its own
    ``min_vruntime``, and a thread that moves to another CPU's queue keeps its vruntime relative
    to the queue it leaves (``migrate_task_rq_fair`` subtracts the old queue's ``min_vruntime``,
    ``enqueue_entity`` adds the new one's)."""

    name = "cfs"

    def __init__(self, ncpus: int) -> None:
        factor = eevdf_slice_ns(ncpus) // BASE_SLICE_NS
        self.sleeper_credit_ns = 6_000_000 * factor // 2
        self.wakeup_gran_ns = 1_000_000 * factor
        self.min_vruntime = [0] * ncpus  # cfs_rq->min_vruntime of each queue (one queue: [0]); never goes back

    def queue_min_vruntime(self, host: HostCPUs, d: int) -> int:
        """``update_min_vruntime`` of queue ``d``: the lowest vruntime of its running and queued
        threads, never lower than before."""
        if host.percpu:
            curr = host.curr[d]
            members = [*((curr,) if curr is not None else ()), *host.wokens[d], *host.queues[d]]
        else:
            members = [*(c for c in host.curr if c is not None), *host.queued()]
        low = min((m.vruntime_now() for m in members), default=self.min_vruntime[d])
        self.min_vruntime[d] = max(self.min_vruntime[d], low)
        return self.min_vruntime[d]

    def wakeup_preempt(self, host: HostCPUs, t: HostThread, cpu: int) -> HostThread | None:
        """Place woken ``t``; the running thread on ``cpu`` it preempts, or None."""
        floor = self.queue_min_vruntime(host, cpu if host.percpu else 0)
        t.vruntime = max(t.vruntime, floor - self.sleeper_credit_ns)
        curr = host.curr[cpu] if cpu >= 0 else None
        if curr is None or curr._stop is None:  # not in a stretch of CPU time at this instant
            return None
        return curr if curr.vruntime_now() - t.vruntime > self.wakeup_gran_ns else None

    def migrate(self, host: HostCPUs, t: HostThread, old: int, new: int) -> None:
        """``t`` moves from CPU ``old``'s queue to ``new``'s: its vruntime keeps its distance
        from the queue's ``min_vruntime``."""
        t.vruntime += self.queue_min_vruntime(host, new) - self.queue_min_vruntime(host, old)


class Domain:
    """A sched domain as the CPU that balances it sees it (``struct sched_domain``): its CPUs, split
    into groups (single CPUs within a node, whole nodes across them), and the CPU's balancing state
    there. Only a group's first CPU balances a domain for it (``should_we_balance`` on busy CPUs)."""

    __slots__ = ("name", "cpu", "span", "groups", "min_ms", "max_ms", "interval_ms", "cache_nice_tries", "failed",
                 "next_ns")

    def __init__(self, name: str, cpu: int, groups: list[list[int]], cache_nice_tries: int) -> None:
        self.name = name
        self.cpu = cpu
        self.groups = groups
        self.span = [c for g in groups for c in g]
        self.min_ms = len(self.span)  # min_interval = balance_interval = sd_weight
        self.max_ms = 2 * len(self.span)
        self.interval_ms = self.min_ms
        self.cache_nice_tries = cache_nice_tries
        self.failed = 0  # nr_balance_failed
        self.next_ns = 0

    def busy_interval_ns(self) -> int:
        """How long a busy CPU waits before it balances this domain again (``get_sd_balance_interval``)."""
        return self.interval_ms * BUSY_FACTOR * 1_000_000


def domains(n: int, nodes: int) -> list[Domain]:
    """The domains of ``n`` CPUs in ``nodes`` NUMA nodes of consecutive CPUs (as even as they
    go), each node one last-level cache: a domain per node whose groups are its CPUs (every CPU
    balances it), and with several nodes one over all of them whose groups are the nodes (each
    node's first CPU balances it). A one-CPU domain is left out, as Linux degenerates it."""
    cut = [n * k // nodes for k in range(nodes + 1)]
    node_cpus = [list(range(cut[k], cut[k + 1])) for k in range(nodes)]
    out = [Domain("LLC", c, [[x] for x in cpus], 1) for cpus in node_cpus if len(cpus) > 1 for c in cpus]
    if nodes > 1:
        out += [Domain("NUMA", cpus[0], node_cpus, 2) for cpus in node_cpus]
    return out


#: ``--host-sched`` names -> policy factories (taking the number of CPUs).
HOST_SCHEDULERS: dict[str, Callable[[int], HostScheduler]] = {"eevdf": lambda n: EEVDF(), "cfs": CFS}


#: ``--host-rq`` names: one run queue for all CPUs, or one per CPU.
RUN_QUEUES = ("global", "per-cpu")


class HostCPUs:
    """``n`` physical CPUs shared by the threads attached to them (see the module docstring).

    Run queues (``rq``): ``global`` is one queue for all CPUs (perfect load balancing: a queued
    thread runs on whichever CPU frees first); ``per-cpu`` gives each CPU its own, as Linux does:
    a thread that finds no idle CPU queues on the CPU it last ran on (or, woken, on its waker's
    when that one is less loaded: wake-affine, :meth:`_target`), a CPU serves its own queue, and a
    CPU with an empty queue pulls the longest-waiting thread of the longest queue before it goes
    idle (newidle balancing), and busy CPUs balance periodically (:class:`Domain`,
    :meth:`_balance`). ``nodes`` splits the CPUs into NUMA nodes of consecutive CPUs, each one
    last-level cache: a domain per node, and one over all nodes when there are several
    (assumptions: no SMT, one LLC per node)."""

    __slots__ = ("n", "slice_ns", "free", "curr", "queues", "wokens", "percpu", "threads", "dispatches", "yields",
                 "policy", "wakeup_preemptions", "pulls", "affine_wakeups", "members", "domains", "migrations",
                 "_balancer")

    def __init__(self, n: int, slice_ns: int | None = None, policy: str = "eevdf", rq: str = "global",
                 nodes: int = 1) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"host CPUs must be a positive integer, got {n!r}")
        if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= n:
            raise ConfigError(f"host NUMA nodes must be an integer from 1 to the number of host CPUs ({n}), "
                              f"got {nodes!r}")
        if policy not in HOST_SCHEDULERS:
            raise ConfigError(f"host scheduler must be one of {', '.join(HOST_SCHEDULERS)}, got {policy!r}")
        if rq not in RUN_QUEUES:
            raise ConfigError(f"host run queues must be one of {', '.join(RUN_QUEUES)}, got {rq!r}")
        self.n = n
        self.slice_ns = eevdf_slice_ns(n) if slice_ns is None else slice_ns
        self.policy = HOST_SCHEDULERS[policy](n)
        self.free = list(range(n - 1, -1, -1))  # idle CPUs, taken from the end
        self.curr: list[HostThread | None] = [None] * n  # what each CPU runs
        self.percpu = rq == "per-cpu"
        nq = n if self.percpu else 1
        self.queues: list[deque[HostThread]] = [deque() for _ in range(nq)]  # preempted (and yielding) threads
        self.wokens: list[deque[HostThread]] = [deque() for _ in range(nq)]  # woken from a sleep: served first
        self.threads: list[HostThread] = []
        #: per CPU: the threads whose load counts there (dicts: summed in a fixed order)
        self.members: list[dict[HostThread, None]] = [{} for _ in range(n if self.percpu else 0)]
        self.dispatches = 0
        self.yields = 0
        self.wakeup_preemptions = 0
        self.pulls = 0  # threads an idle CPU took from another CPU's queue (per-cpu)
        self.affine_wakeups = 0  # wake-ups queued on the waker's CPU rather than their previous one (per-cpu)
        self.migrations = 0  # threads periodic balancing moved (per-cpu)
        #: per-CPU queues: the sched domains, lowest level first (:func:`domains`)
        self.domains: list[Domain] = domains(n, nodes) if self.percpu else []
        self._balancer: asyncio.TimerHandle | None = None

    def thread(self, name: str, books: Books | None = None) -> HostThread:
        """A new thread on these CPUs (not running until it first needs a CPU)."""
        t = HostThread(self, name, books)
        self.threads.append(t)
        return t

    def queued(self) -> list[HostThread]:
        """Every queued thread, woken ones first."""
        return [t for qs in (self.wokens, self.queues) for q in qs for t in q]

    async def dispatch(self, t: HostThread) -> int:
        """Give ``t`` a CPU: an idle one at once, else (woken, under CFS) a preempted thread's,
        else wait in a run queue; returns the wait (runnable time, booked to the thread)."""
        waited = 0
        if t.on_cpu:
            return 0
        if t.sleeping:  # per CPU: woken, runnable from now (PELT)
            t._pelt_sleeping(False)
        free = self.free
        if free and (self.percpu or not (self.queues[0] or self.wokens[0])):
            if self.percpu and t.last_cpu in free:  # select_idle_sibling: its previous CPU if idle
                free.remove(t.last_cpu)
                t.cpu = t.last_cpu
            else:
                t.cpu = free.pop()
        else:
            cpu = self._target(t)
            if self.percpu:
                self._move(t, cpu)
            if t.blocked and (victim := self.policy.wakeup_preempt(self, t, cpu)) is not None:
                self.wakeup_preemptions += 1
                t.cpu = victim.cpu
                self.preempt(victim, hand_on=False)
            else:
                loop = asyncio.get_running_loop()
                fut = t._wakeup = loop.create_future()
                q = (self.wokens if t.blocked else self.queues)[cpu if self.percpu else 0]
                q.append(t)
                t0 = now_ns()
                try:
                    await fut
                except BaseException:
                    t._wakeup = None
                    if t in q:
                        q.remove(t)
                    elif fut.done() and not fut.cancelled():  # granted a CPU, cancelled before it ran
                        self._hand_on(t.cpu)
                        t.cpu = -1
                    raise
                finally:  # the wait is booked even when the run ends (cap, Ctrl-C) while it queues
                    waited = now_ns() - t0
                    if t.books is not None:
                        t.books.runnable_ns += waited
                t._wakeup = None
        if self.percpu:
            self._move(t, t.cpu)
        self.curr[t.cpu] = t
        t.last_cpu = t.cpu
        t.on_cpu = True
        t.ready = t.blocked = False
        t.waker = -1
        t.ran_ns = 0
        self.dispatches += 1
        return waited

    def _queued(self, d: int) -> int:
        """Threads waiting in queue ``d`` (newidle pulls from the longest; a new thread joins the shortest)."""
        return len(self.wokens[d]) + len(self.queues[d])

    def _target(self, t: HostThread) -> int:
        """The CPU ``t`` goes to when no CPU is idle (``select_task_rq_fair``): the one it last ran
        on, or for a wake-up with per-CPU queues the waker's if ``wake_affine_weight`` finds that
        one less loaded: (load(waker's) + own) x 100 < (load(previous) - own) x
        :data:`WAKE_AFFINE_BIAS_PCT`, with PELT loads (:meth:`cpu_load`). Assumption: wake-ups
        are never "wide" (``wake_wide`` holds when one waker wakes many more distinct threads
        than its wakee does; the vCPU threads wake each other alike)."""
        prev, this = t.last_cpu, t.waker
        if not self.percpu:
            return prev
        if prev < 0:
            return min(range(self.n), key=self._queued)
        if this >= 0 and this != prev and t.blocked:
            now = now_ns()
            own = t.pelt(now)
            if (self.cpu_load(this, now) + own) * 100 < (self.cpu_load(prev, now) - own) * WAKE_AFFINE_BIAS_PCT:
                self.affine_wakeups += 1
                return this
        return prev

    def cpu_load(self, cpu: int, now: int) -> float:
        """``cpu_load()``: the PELT load averages of the threads counted on ``cpu`` (running,
        queued, or asleep since they last ran there: a sleeper's load decays where it slept)."""
        return sum(t.pelt(now) for t in self.members[cpu])

    def _move(self, t: HostThread, cpu: int) -> None:
        """``t``'s load now counts on ``cpu`` (a migration takes it off its old CPU, and the
        policy carries its place in the queue over)."""
        if t.home != cpu:
            if t.home >= 0:
                del self.members[t.home][t]
                self.policy.migrate(self, t, t.home, cpu)
            self.members[cpu][t] = None
            t.home = cpu

    def release(self, t: HostThread) -> None:
        """``t`` blocks or is preempted: its CPU goes to the next queued thread, or becomes idle
        (a preempted ``t`` then queues at the tail when it next needs a CPU)."""
        cpu = t.cpu
        t.on_cpu = False
        t.cpu = -1
        t.off_ns = now_ns()
        self.curr[cpu] = None
        self._hand_on(cpu)

    def preempt(self, t: HostThread, hand_on: bool = True) -> None:
        """Take ``t``'s CPU (slice end, or a wake-up preemption that takes the CPU itself when not
        ``hand_on``); KVM marks the vCPU ready if this happens inside KVM_RUN."""
        t.preemptions += 1
        t.ready = t.in_guest
        stop = t._stop
        if stop is not None:  # cut the stretch it is in short
            t._stop = None
            if isinstance(stop, asyncio.Future):  # (a fast-forwarded sleep has already ended)
                _settle(stop)
        if hand_on:
            self.release(t)
        else:
            t.on_cpu = False
            t.off_ns = now_ns()
            self.curr[t.cpu] = None
            t.cpu = -1

    def _hand_on(self, cpu: int) -> None:
        """``cpu`` is free: to the head of its queue (woken first), else, per CPU, to the head of
        the longest queue (newidle balancing), else idle."""
        d = cpu if self.percpu else 0
        pulled = False
        while True:
            woken, queue = self.wokens[d], self.queues[d]
            while woken or queue:
                nxt = (woken or queue).popleft()
                w = nxt._wakeup
                if w is not None and not w.done():
                    nxt.cpu = cpu
                    w.set_result(None)
                    self.pulls += pulled
                    return
            if not self.percpu:
                break
            d = max(range(self.n), key=self._queued)
            if not self._queued(d):
                break
            pulled = True
        self.free.append(cpu)

    def start_balancing(self) -> None:
        """Start periodic load balancing (per-CPU queues): every domain's first pass is one busy
        interval after now, as all domains start with ``last_balance`` at the same jiffy."""
        if not self.domains or self._balancer is not None:
            return
        now = now_ns()
        for d in self.domains:
            d.next_ns = now + d.busy_interval_ns()
        self._balancer = call_at_ns(min(d.next_ns for d in self.domains), self._balance_due)

    def stop_balancing(self) -> None:
        """Stop periodic load balancing (the run is over)."""
        if self._balancer is not None:
            self._balancer.cancel()
            self._balancer = None

    def _balance_due(self) -> None:
        """Run the passes that are due, lowest domain first, one after another (each sees what the
        previous one moved; assumption), and wake again at the next one."""
        now = now_ns()
        for d in self.domains:
            if d.next_ns <= now:
                if self.curr[d.cpu] is not None:  # balancing runs from the busy CPU's tick
                    self._balance(d, now)
                d.next_ns = now + d.busy_interval_ns()
        self._balancer = call_at_ns(min(d.next_ns for d in self.domains), self._balance_due)

    def _nr_running(self, cpu: int) -> int:
        return (self.curr[cpu] is not None) + len(self.wokens[cpu]) + len(self.queues[cpu])

    def _balance(self, d: Domain, now: int) -> int:
        """One ``load_balance`` pass of domain ``d`` on its CPU: find the busiest overloaded group
        and its busiest CPU, compute the load to move (``calculate_imbalance``, migrate_load:
        neither group may end up on the other side of the domain's average), and pull queued
        threads, least recently run first, that are not cache-hot and whose load fits
        (``detach_tasks``). Running threads are never moved (no active balancing; assumption).
        Returns how many threads moved."""
        this = d.cpu
        loads = {c: self.cpu_load(c, now) for c in d.span}
        avg = sum(loads.values()) / len(d.span)
        local = next(g for g in d.groups if this in g)
        local_avg = sum(loads[c] for c in local) / len(local)
        busiest: list[int] | None = None
        busiest_avg = 0.0
        for g in d.groups:
            if g is local or sum(self._nr_running(c) for c in g) <= len(g):  # only overloaded groups
                continue
            g_avg = sum(loads[c] for c in g) / len(g)
            if busiest is None or g_avg > busiest_avg:
                busiest, busiest_avg = g, g_avg
        if (busiest is None or local_avg >= busiest_avg or local_avg >= avg
                or (sum(self._nr_running(c) for c in local) > len(local)
                    and 100 * busiest_avg <= IMBALANCE_PCT * local_avg)):  # balanced
            d.failed = 0
            d.interval_ms = min(d.interval_ms * 2, d.max_ms)
            return 0
        imbalance = min((busiest_avg - avg) * len(busiest), (avg - local_avg) * len(local))
        src = max((c for c in busiest if self._nr_running(c) > 1), key=loads.__getitem__, default=-1)
        moved = 0
        if src >= 0:
            waiting = [t for q in (self.wokens[src], self.queues[src]) for t in q
                       if t._wakeup is not None and not t._wakeup.done()]
            waiting.sort(key=lambda t: t.off_ns)
            for t in waiting[:min(NR_MIGRATE, self._nr_running(src))]:
                if now - t.off_ns < MIGRATION_COST_NS and d.failed <= d.cache_nice_tries:
                    continue  # cache-hot
                load = t.pelt(now)
                if load / (1 << d.failed) > imbalance:
                    continue
                woken = t in self.wokens[src]
                (self.wokens if woken else self.queues)[src].remove(t)
                self._move(t, this)
                (self.wokens if woken else self.queues)[this].append(t)
                moved += 1
                imbalance -= load
                if imbalance <= 0:
                    break
        self.migrations += moved
        d.failed = 0 if moved else d.failed + 1
        d.interval_ms = d.min_ms  # it was unbalanced
        return moved

    def yield_target(self) -> HostThread | None:
        """The queued vCPU a pause-loop exit would yield to: ready, not spinning itself (KVM's
        ``kvm_vcpu_on_spin`` skips vCPUs that are not ``ready`` and, by ``dy_eligible``, spinners).
        It runs on the yielding CPU (per CPU: a migration; assumption)."""
        for qs in (self.wokens, self.queues):
            for q in qs:
                for t in q:
                    if t.ready and not t.spinning and t._wakeup is not None and not t._wakeup.done():
                        return t
        return None

    def grant(self, t: HostThread, giver: HostThread) -> None:
        """Hand the CPU ``giver`` is giving up to queued ``t`` (a directed yield)."""
        for q in (*self.wokens, *self.queues):
            if t in q:
                q.remove(t)
                break
        assert t._wakeup is not None
        t.cpu = giver.cpu
        self.curr[giver.cpu] = None
        giver.on_cpu = False
        giver.cpu = -1
        giver.off_ns = now_ns()
        t._wakeup.set_result(None)

    def statistics(self) -> dict[str, int]:
        """Dispatches, preemptions and the run queue's length now."""
        return {"cpus": self.n, "slice_ns": self.slice_ns, "dispatches": self.dispatches,
                "preemptions": sum(t.preemptions for t in self.threads), "queued": len(self.queued()),
                "directed_yields": self.yields, "wakeup_preemptions": self.wakeup_preemptions, "pulls": self.pulls,
                "affine_wakeups": self.affine_wakeups, "migrations": self.migrations}
