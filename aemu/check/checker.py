"""The checker: who touches device state holding which locks, and what QEMU's lock rules say of it.

A :class:`Checker` attaches to a built machine (:meth:`Checker.attach`) and watches, through
:mod:`aemu.check.watch`, every device's instance attributes, the BQL and every device mutex, and
the seqlocks the devices hold. For each access it knows the task (a vCPU ``vcpuN``, the main loop
``main-loop`` -- which also says which timer's callback runs -- or a device context such as the
replay's ``replay-devices``) and the locks that task holds. From that it finds:

* **race** -- :mod:`aemu.check.lockset`: a field written by one task and read or written by
  another with no lock in common, after the field left its first task (initialisation is not
  reported). Fields a device declares in ``atomic_fields`` (QEMU's ``qatomic_*``) or
  ``stat_fields`` (aemu's own counters) are not checked. A read inside a seqlock read section
  holds the seqlock for that read, and a write inside a write section holds it too: a reader that
  retries is not racing with the writer.
* **irq-without-bql** -- ``qemu_irq_*`` (:meth:`aemu.irq.IRQLine.set`) without the BQL, QEMU's
  rule since the follow-up to the series ("if you call qemu_irq_* then you must hold the BQL").
  Under the checker the update is applied instead of raising, and the run goes on.
* **lock-order** -- :mod:`aemu.check.order`: a cycle in the order graph of the BQL and the device
  mutexes (a device mutex taken holding the BQL, and the BQL taken holding that mutex elsewhere),
  whether or not the run deadlocked.

Main-loop timer callbacks run under the BQL, as in QEMU's ``main_loop_wait``; arming a timer
(``timer_mod``) is thread-safe in QEMU and is not a finding by itself: timers are not device
fields. Only one checker can be attached at a time in a process.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from .. import clock, irq as _irq, timer as _timer
from ..sync import Lock, SeqLock
from ..sync._task import _get_running_loop, _task_of
from . import watch
from .lockset import Access, Lockset, Race
from .order import Inversion, LockOrder
from .report import KINDS, CheckReport, Finding

from ..devices.base import Device

if TYPE_CHECKING:
    from ..irq import IRQLine
    from ..machine import Machine
    from ..timer import QEMUTimer
    from ..trace import Tracer

__all__ = ["Checker"]

_EMPTY: frozenset[str] = frozenset()
_HERE = str(Path(__file__).resolve().parent)
_SKIP_FILES = (_HERE, str(Path(_irq.__file__).resolve()))
#: Functions that only pass an IRQ update on: the site is their caller.
_SKIP_FUNCS = frozenset({"IRQOut.set", "IRQOut._apply", "IRQOut.flush"})
#: Distinct (line, call site) pairs reported at most (a storm of updates from one site is one).
_MAX_IRQ_SITES = 64
#: What QEMU's dispatch takes for a region that is not lockless_io: the default fix.
_DISPATCH_LOCK = "BQL"


def _seq(seq: SeqLock) -> str:
    return f"seqlock {seq.name}"


def _locks_text(locks: frozenset[str]) -> str:
    return ", ".join(sorted(locks, key=lambda n: (n != "BQL", n))) if locks else "no lock"


def _line_subject(line: IRQLine) -> str:
    name = line.name
    if name.startswith("gsi") and name[3:].isdigit():
        return f"gsi {name[3:]}"
    return name


class Checker:
    """Records device-field accesses, lock acquisitions and IRQ updates of one run (see module)."""

    def __init__(self, *, tracer: Tracer | None = None) -> None:
        self.lockset = Lockset()
        self.order = LockOrder()
        self.findings: list[Finding] = []
        #: Device-field accesses seen.
        self.accesses = 0
        #: Receives an instant event at each access of a finding (a timeline), or None.
        self.tracer = tracer
        self._held: dict[str, frozenset[str]] = {}
        self._reading: dict[str, frozenset[str]] = {}
        self._subjects: dict[tuple[int, str], str] = {}
        self._objects: dict[int, object] = {}
        self._irq_reported: set[tuple[str, str]] = set()
        self._timer: dict[str, str] = {}
        self._machine: Machine | None = None
        self._watched: list[object] = []
        self.devices: tuple[str, ...] = ()
        self.locks: tuple[str, ...] = ()
        self.seqlocks: tuple[str, ...] = ()

    # -- attaching ------------------------------------------------------------------------------
    def attach(self, machine: Machine) -> None:
        """Watch ``machine`` (built, not started) until :meth:`detach`: its devices (not those
        in KVM), the seqlocks they hold, the BQL and the device mutexes."""
        self._machine = machine
        self.watch([d for d in machine.devices if not getattr(d, "in_kernel", False)], machine.all_locks())

    def watch(self, devices: Iterable[Device], locks: Iterable[Lock]) -> None:
        """Watch these devices (and the seqlocks they hold) and locks until :meth:`detach`; the
        checker becomes the process's active one. :meth:`attach` does it for a whole machine."""
        if watch.active is not None and watch.active is not self:
            raise RuntimeError("another aemu checker is attached in this process; run one check at a time")
        names = list(self.devices)
        seqlocks = list(self.seqlocks)
        for dev in devices:
            if watch.watch_device(dev):
                self._watched.append(dev)
                names.append(type(dev).__name__)
            for value in vars(dev).values():
                if isinstance(value, SeqLock) and watch.watch_seqlock(value):
                    self._watched.append(value)
                    seqlocks.append(value.name)
        lock_names = list(self.locks)
        for lock in locks:
            if watch.watch_lock(lock):
                self._watched.append(lock)
                lock_names.append(lock.name)
        self.devices = tuple(dict.fromkeys(names))
        self.locks = tuple(lock_names)
        self.seqlocks = tuple(seqlocks)
        watch.active = self
        _irq.checker = self
        _timer.checker = self

    def detach(self) -> None:
        """Stop watching: every watched object gets its class back."""
        if watch.active is self:
            watch.active = None
            _irq.checker = None
            _timer.checker = None
        for obj in self._watched:
            watch.unwatch(obj)
        self._watched = []

    def report(self, **extra: Any) -> CheckReport:
        """The findings so far, sorted by kind (each kind in the order found)."""
        order = {k: i for i, k in enumerate(KINDS)}
        findings = sorted(self.findings, key=lambda f: order[f.kind])
        return CheckReport(findings, self.accesses, len(self.lockset), self.locks, self.seqlocks,
                           self.devices, **extra)

    # -- context: task, time, site ------------------------------------------------------------------
    @staticmethod
    def _task() -> str:
        loop = _get_running_loop()
        if loop is None:
            return "main"
        t = _task_of(loop)
        return "loop callback" if t is None else t.get_name()

    def _now(self) -> int:
        m = self._machine
        return clock.local_now_ns() - (m.start_ns if m is not None else 0) if _get_running_loop() else 0

    def _site(self, task: str) -> str:
        """The two innermost frames outside the checker and the IRQ plumbing."""
        f: FrameType | None = sys._getframe(1)
        parts: list[str] = []
        while f is not None and len(parts) < 2:
            code = f.f_code
            fn = code.co_filename
            if not fn.startswith(_SKIP_FILES) and code.co_qualname not in _SKIP_FUNCS:
                parts.append(f"{code.co_qualname} ({Path(fn).name}:{f.f_lineno})")
            f = f.f_back
        site = " <- ".join(parts) or "?"
        timer = self._timer.get(task)
        return f"{site} [timer {timer}]" if timer is not None else site

    def _locks(self, task: str, write: bool) -> frozenset[str]:
        locks = self._held.get(task, _EMPTY)
        if not write:
            reading = self._reading.get(task)
            if reading:
                locks = locks | reading
        return locks

    # -- what the watched objects report --------------------------------------------------------------
    def field(self, obj: Device, name: str, write: bool) -> None:
        """A device's instance attribute ``name`` was read or written."""
        self.accesses += 1
        task = self._task()
        key = (id(obj), name)
        if key not in self._subjects:
            self._subjects[key] = f"{type(obj).__name__}.{name}"
            self._objects[id(obj)] = obj  # kept alive: its id names the field
        race = self.lockset.access(key, task, write, self._locks(task, write),
                                   lambda: (self._site(task), self._now()))
        if race is not None:
            self._race(race)

    def acquired(self, lock: Lock) -> None:
        """The running task now holds ``lock``."""
        task = self._task()
        held = self._held.get(task, _EMPTY)
        real = [h for h in held if not h.startswith("seqlock ")]
        if real:
            for inv in self.order.acquired(real, lock.name, task, lambda: (self._site(task), self._now())):
                self._inversion(inv)
        self._held[task] = held | {lock.name}

    def released(self, lock: Lock, task: str) -> None:
        """``task`` released ``lock``."""
        self._held[task] = self._held.get(task, _EMPTY) - {lock.name}

    def seq_read(self, seq: SeqLock, begin: bool) -> None:
        """A read section of ``seq`` begins (``read_begin``) or ends (``read_retry``)."""
        task = self._task()
        r = self._reading.get(task, _EMPTY)
        self._reading[task] = r | {_seq(seq)} if begin else r - {_seq(seq)}

    def seq_write(self, seq: SeqLock, begin: bool) -> None:
        """A write section of ``seq`` begins or ends (the writer holds it as a pseudo-lock)."""
        task = self._task()
        held = self._held.get(task, _EMPTY)
        self._held[task] = held | {_seq(seq)} if begin else held - {_seq(seq)}

    def irq_without_bql(self, line: IRQLine, *, deferred: bool = False) -> bool:
        """``qemu_set_irq`` on ``line`` without the BQL: report it (once per line and site); True
        lets the update go on."""
        task = self._task()
        site = self._site(task)
        subject = _line_subject(line)
        if (subject, site) in self._irq_reported or len(self._irq_reported) >= _MAX_IRQ_SITES:
            return True
        self._irq_reported.add((subject, site))
        t = self._now()
        what = "qemu_set_irq" + (" (aemu defers it to the BQL; QEMU's device calls it here)" if deferred else "")
        text = f"{task} at {t:,} ns: {what} in {site}, holding {_locks_text(self._locks(task, True))}"
        for i, f in enumerate(self.findings):  # one finding per line, a site per distinct call site
            if f.kind == "irq-without-bql" and f.subject == subject:
                self.findings[i] = dataclasses.replace(f, sites=(*f.sites, text), marks=(*f.marks, (task, t)))
                if self.tracer is not None:
                    self._mark(f.kind, subject, task, t)
                return True
        self._add(Finding("irq-without-bql", subject, (text,),
                          "take the BQL around the qemu_irq_* call (BQL_LOCK_GUARD(), as QEMU commit "
                          "d99041a20328 does in hw/timer/hpet.c)", t, ((task, t),)))
        return True

    def timer_callback(self, timer: QEMUTimer) -> None:
        """The main loop is about to run ``timer``'s callback (with the BQL held)."""
        self._timer[self._task()] = timer.name

    # -- findings ---------------------------------------------------------------------------------
    def _add(self, finding: Finding) -> None:
        self.findings.append(finding)
        for task, t in finding.marks:
            self._mark(finding.kind, finding.subject, task, t)

    def _mark(self, kind: str, subject: str, task: str, t: int) -> None:
        """An instant event on ``task``'s timeline track at ``t`` (ns since the start)."""
        if self.tracer is not None:
            start = self._machine.start_ns if self._machine is not None else 0
            self.tracer.instant(task, f"{kind} {subject}", t + start)

    def _race(self, race: Race) -> None:
        a, b = race.first, race.second
        subject = self._subjects[race.field]  # type: ignore[index]
        self._add(Finding("race", subject, (_access_text(a), _access_text(b)), self._fix(race),
                          b.time_ns, ((a.task, a.time_ns), (b.task, b.time_ns))))

    def _fix(self, race: Race) -> str:
        """The lock that would fix a race: the one the other access holds (or, if neither holds
        one, what other accesses to the field hold, else the BQL dispatch would take)."""
        a, b = race.first, race.second
        if a.locks and not b.locks:
            return f"hold {_locks_text(a.locks)} in {b.task}'s {_rw(b)}, as {a.task}'s {_rw(a)} does"
        if b.locks and not a.locks:
            return f"hold {_locks_text(b.locks)} in {a.task}'s {_rw(a)}, as {b.task}'s {_rw(b)} does"
        if a.locks and b.locks:
            return (f"hold one lock at both: {a.task}'s {_rw(a)} holds {_locks_text(a.locks)}, "
                    f"{b.task}'s {_rw(b)} holds {_locks_text(b.locks)}")
        others = frozenset().union(*(x.locks for x in self.lockset.accesses(race.field)))
        lock = _locks_text(others) if others else _DISPATCH_LOCK
        return f"hold {lock} at both accesses (neither holds a lock)"

    def _inversion(self, inv: Inversion) -> None:
        names = " -> ".join((*inv.locks, inv.locks[0]))
        sites = tuple(f"{e.task} at {e.time_ns:,} ns: took {e.second} holding {e.first} in {e.site}"
                      for e in inv.edges)
        last = inv.edges[-1]
        self._add(Finding("lock-order", names, sites,
                          f"take {inv.locks[0]} and {inv.locks[1] if len(inv.locks) > 1 else inv.locks[0]} "
                          "in one order everywhere", last.time_ns,
                          tuple((e.task, e.time_ns) for e in inv.edges)))


def _rw(a: Access) -> str:
    return "write" if a.write else "read"


def _access_text(a: Access) -> str:
    return f"{a.task} at {a.time_ns:,} ns: {_rw(a)} in {a.site}, holding {_locks_text(a.locks)}"
