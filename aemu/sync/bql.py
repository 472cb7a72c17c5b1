"""Who holds the Big QEMU Lock: QEMU's thread-local ``bql_locked()`` (system/cpus.c).

Any :class:`~aemu.sync.Lock` made with ``bql=True`` records its holder here on acquisition and
forgets it on release; :func:`bql_locked` asks whether the current task is one of them.
"""

from __future__ import annotations

import threading
from typing import Any

from ._task import Task, _get_running_loop, _task_of

# Task -> number of BQL-type locks it holds (a task holds at most one BQL in practice), and the
# loop of the latest BQL acquisition: if the caller holds a BQL, that loop is the running one.
_bql_holders: dict[Task, int] = {}
# Per thread: the loop of that thread's latest BQL acquisition (threads run separate simulations,
# each on its own loop, so a task found through another thread's loop must never count).
_bql_tls = threading.local()


def bql_locked() -> bool:
    """Whether the current task holds a Big QEMU Lock (QEMU's thread-local ``bql_locked()``)."""
    task = _task_of(getattr(_bql_tls, "loop", None))
    if task is None and _bql_holders:  # the latest BQL ran on another loop than the running one
        loop = _get_running_loop()
        task = None if loop is None else _task_of(loop)
    return task in _bql_holders


def _bql_enter(task: Task, loop: Any) -> None:
    _bql_holders[task] = _bql_holders.get(task, 0) + 1
    _bql_tls.loop = loop


def _bql_release(task: Task) -> None:
    n = _bql_holders.get(task, 0)
    if n <= 1:
        _bql_holders.pop(task, None)
    else:
        _bql_holders[task] = n - 1
