"""Hand-off policies: what a release of a :class:`~aemu.sync.Lock` does when tasks wait for it.

The lock owns the queue, the wake-ups and the books; a policy only decides who owns the lock
once the oldest waiter has been taken off the queue (SimPy's resources work the same way: the
base class queues, ``_do_put``/``_do_get`` decide). The waiter is woken ``handoff_ns`` later
(the futex wake-up latency). :data:`POLICIES` is the one list of them: ``Lock(policy=...)``,
:class:`aemu.config.MachineConfig` and the CLI's ``--lock-policy`` read it.
"""

from __future__ import annotations

import abc

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .lock import Lock, _Waiter

__all__ = ["Barging", "Fifo", "HandoffPolicy", "POLICIES"]


class HandoffPolicy(abc.ABC):
    """Base of the hand-off policies; subclasses set :attr:`name` and fill in :meth:`release`."""

    __slots__ = ()

    #: How ``Lock(policy=...)``, ``--lock-policy`` and the reports call it.
    name: ClassVar[str]
    #: Whether a release gives the lock to a waiter (else it stays free and the waiter competes).
    #: It also decides a request that comes before a release made ahead of global time.
    hands_over: ClassVar[bool]

    @abc.abstractmethod
    def release(self, lock: Lock, w: _Waiter, now: int) -> None:
        """A release at ``now`` freed the lock and took ``w``, the oldest waiter, off the queue:
        hand the lock to ``w`` or leave it free."""


class Fifo(HandoffPolicy):
    """A fair lock: the release hands the lock straight to the oldest waiter.

    A ticket lock, Go's mutex in starvation mode, a futex with forced hand-off such as a PI mutex
    (FUTEX_UNLOCK_PI gives the lock to the top waiter). Until the wakee runs the lock is held by
    it, and every other task queues behind: this is how lock convoys form. Nobody can barge.
    """

    __slots__ = ()
    name = "fifo"
    hands_over = True

    def release(self, lock: Lock, w: _Waiter, now: int) -> None:
        lock._hand_over(w.task, w.site, now)


class Barging(HandoffPolicy):
    r"""glibc's default mutex, which ``QemuMutex`` is (``pthread_mutex_init`` with no attributes,
    util/qemu-thread-posix.c), and aemu's default for the BQL and device mutexes. Step by step:

    * lock, free: one compare-and-swap 0 -> 1 takes it (``lll_lock``, sysdeps/nptl/lowlevellock.h)
      -- here :meth:`Lock.try_acquire`, whoever runs first, even with wakees on their way (a
      *barge*); no spinning (only ``PTHREAD_MUTEX_ADAPTIVE_NP`` spins);
    * lock, taken: ``__lll_lock_wait`` (nptl/lowlevellock.c) marks it contended (2) and sleeps
      in ``futex_wait`` -- here the task queues and, with ``--host-cpus``, gives its CPU up;
    * unlock: ``lll_unlock`` swaps in 0 and, if it was contended, ``futex_wake``\s one sleeper
      (the kernel wakes futex waiters in FIFO order) -- here the lock stays free and the oldest
      waiter is woken ``handoff_ns`` later;
    * the wakee runs (with ``--host-cpus``, once it has a CPU) and competes again: if somebody
      took the lock meanwhile it sleeps again at the tail of the futex queue -- a *requeue*, not
      a new contention. Every release that finds tasks queued wakes one, so several wakees can
      be on their way at once.

    A release made ahead of global time (a holder running ahead, ``QuantumKeeper(hold_ahead=True)``)
    is an unlock at that future instant: a request before it finds the lock taken and sleeps;
    the first one to do so is the sleeper that unlock wakes (if nobody slept when it was made).

    Not modelled: the spurious ``futex_wake`` an unlock makes after a contended acquisition when
    nobody waits any more, and the syscall's cost to the unlocker.
    """

    __slots__ = ()
    name = "barging"
    hands_over = False

    def release(self, lock: Lock, w: _Waiter, now: int) -> None:
        pass  # the lock stays free: ``w`` takes it when it runs, unless somebody barges first


#: Every policy by name: the one list ``Lock``, ``MachineConfig`` and ``--lock-policy`` accept.
POLICIES: dict[str, type[HandoffPolicy]] = {p.name: p for p in (Fifo, Barging)}
