"""QEMU's sequence lock, ``QemuSeqLock`` (include/qemu/seqlock.h): lock-free readers and
serialized writers, in virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..clock import register_wait_source
from ..errors import ConfigError
from ._task import Task, _current_task, _get_running_loop, _task_name
from .lock import Lock

__all__ = ["SeqLock", "SeqLockStatistics"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SeqLockStatistics:
    """A frozen snapshot of a :class:`SeqLock`."""

    name: str
    sequence: int
    write_in_progress: bool
    #: Read sections begun (``read_begin`` calls), retried ones included.
    reads: int
    #: Read sections that had to be retried (``read_retry`` returned True).
    retries: int
    #: Write sections completed (``write_end`` calls).
    writes: int


class SeqLock:
    """QEMU's ``QemuSeqLock`` (include/qemu/seqlock.h): lock-free readers, serialized writers.

    ``read_begin()`` returns the version with the low bit cleared (``seqlock_read_begin``), so a
    read section begun during a write always fails ``read_retry()`` (``seqlock_read_retry``: the
    version changed). Writers bump the version to odd in ``write_begin()`` and back to even in
    ``write_end()``; if ``writer_lock`` is given (HPET: its device mutex), writers must hold it.

    Readers never await. In this cooperative model a reader can only see a write in progress if the
    writer yields inside its write section; :meth:`read` then cannot succeed without yielding and
    raises, while :meth:`read_async` waits for the write to end (a spinning reader's virtual time).
    """

    __slots__ = ("name", "_sequence", "_writer_lock", "_writer", "_reads", "_retries", "_writes",
                 "_write_done", "_readers_waiting", "__weakref__")

    def __init__(self, name: str, *, writer_lock: Lock | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a SeqLock needs a non-empty name, got {name!r}")
        if writer_lock is not None and not isinstance(writer_lock, Lock):
            raise ConfigError(f"SeqLock {name!r}: writer_lock must be an aemu.sync.Lock, got {writer_lock!r}")
        self.name = name
        self._sequence = 0
        self._writer_lock = writer_lock
        self._writer: Task | None = None
        self._reads = 0
        self._retries = 0
        self._writes = 0
        self._write_done: asyncio.Future[None] | None = None
        self._readers_waiting: dict[Task, int] = {}
        register_wait_source(self)

    @property
    def sequence(self) -> int:
        """The version counter (odd while a write is in progress)."""
        return self._sequence

    @property
    def writer_lock(self) -> Lock | None:
        """The lock writers must hold, if any."""
        return self._writer_lock

    def read_begin(self) -> int:
        """Start a read section; returns the version to pass to :meth:`read_retry`."""
        self._reads += 1
        return self._sequence & ~1

    def read_retry(self, start: int) -> bool:
        """End a read section: True if it must be retried (a write began or is in progress)."""
        if self._sequence != start:
            self._retries += 1
            return True
        return False

    def read(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a read section until it completes without a concurrent write."""
        while True:
            if self._sequence & 1:
                raise RuntimeError(
                    f"SeqLock {self.name!r}: a write is in progress (its writer yielded inside the "
                    f"write section) and a synchronous reader would spin forever; use "
                    f"'await seq.read_async(fn)' or do not await between write_begin and write_end")
            v = self.read_begin()
            x = fn()
            if not self.read_retry(v):
                return x

    async def read_async(self, fn: Callable[[], T]) -> T:
        """Like :meth:`read`, but waits for a write in progress to end instead of raising."""
        while True:
            v = self.read_begin()
            x = fn()
            if not self.read_retry(v):
                return x
            while self._sequence & 1:
                await self._wait_write_end()

    async def _wait_write_end(self) -> None:
        task = _current_task()
        assert task is not None
        fut = self._write_done
        if fut is None:
            fut = self._write_done = asyncio.get_running_loop().create_future()
        self._readers_waiting[task] = self._sequence
        try:
            await asyncio.shield(fut)
        finally:
            self._readers_waiting.pop(task, None)

    def write_begin(self) -> None:
        """Start a write section (``seqlock_write_begin``): the version becomes odd."""
        task = _current_task() if _get_running_loop() is not None else None
        self._check_writer_lock(task, "write_begin")
        if self._sequence & 1:
            raise RuntimeError(
                f"SeqLock {self.name!r}: write_begin while a write is already in progress "
                f"(by task {_task_name(self._writer)!r}); writers must be serialized")
        self._writer = task
        self._sequence += 1

    def write_end(self) -> None:
        """End a write section (``seqlock_write_end``): the version becomes even again."""
        task = _current_task() if _get_running_loop() is not None else None
        if not self._sequence & 1:
            raise RuntimeError(f"SeqLock {self.name!r}: write_end without write_begin")
        if task is not self._writer:
            raise RuntimeError(
                f"SeqLock {self.name!r}: write_end by {_task_name(task)!r}, but the write was begun by "
                f"{_task_name(self._writer)!r}")
        self._check_writer_lock(task, "write_end")
        self._sequence += 1
        self._writes += 1
        self._writer = None
        fut = self._write_done
        if fut is not None:
            self._write_done = None
            if not fut.done():
                fut.set_result(None)

    def write(self, site: str = "unknown") -> _SeqWrite:
        """``async with seq.write(site=...)``: take the writer lock (if any) and bracket a write."""
        return _SeqWrite(self, site)

    def statistics(self) -> SeqLockStatistics:
        """A frozen snapshot of the counters."""
        return SeqLockStatistics(self.name, self._sequence, bool(self._sequence & 1),
                                 self._reads, self._retries, self._writes)

    def describe_waiters(self) -> dict[Task, str]:
        """For deadlock reports: readers waiting for a write to end."""
        writer = _task_name(self._writer)
        return {task: f"seqlock {self.name!r} (write in progress by {writer!r}, version {seq})"
                for task, seq in self._readers_waiting.items()}

    def __repr__(self) -> str:
        state = "writing" if self._sequence & 1 else "idle"
        return f"<{state} SeqLock {self.name!r} version={self._sequence}>"

    def _check_writer_lock(self, task: Task | None, what: str) -> None:
        lock = self._writer_lock
        if lock is not None and not lock._runs_holding(task):
            raise RuntimeError(
                f"SeqLock {self.name!r}: {what} needs the writer lock {lock.name!r} held by this task "
                f"(it is {'held by ' + repr(_task_name(lock.owner)) if lock.locked() else 'free'})")


class _SeqWrite:
    """``async with seq.write(site=...)``."""

    __slots__ = ("_seq", "_site")

    def __init__(self, seq: SeqLock, site: str) -> None:
        self._seq = seq
        self._site = site

    async def __aenter__(self) -> None:
        lock = self._seq._writer_lock
        if lock is not None:
            await lock.acquire(self._site)
        try:
            self._seq.write_begin()
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        lock = self._seq._writer_lock
        try:
            self._seq.write_end()
        finally:
            if lock is not None:
                lock.release()
