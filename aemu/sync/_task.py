"""The running task, found cheaply: the lock's hot paths and :func:`~aemu.sync.bql_locked` ask it
on every call.

On CPython 3.11 ``asyncio.current_task()`` costs about 250 ns, because finding the running loop
makes a getpid() system call. The hot paths instead remember the loop they last ran on and look
its current task up directly. Only one loop runs at a time in a thread, so a task found for the
remembered loop is the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

Task = asyncio.Task[Any]

_current_task = asyncio.current_task
_get_running_loop = asyncio.events._get_running_loop  # None instead of an error when no loop runs

_running_tasks = getattr(asyncio.tasks, "_current_tasks", None)
if isinstance(_running_tasks, dict):
    #: The task a given loop is running right now, or None.
    _task_of: Callable[[Any], Task | None] = _running_tasks.get
else:  # pragma: no cover - other Pythons: current_task(loop) does not look for the running loop
    def _task_of(loop: Any) -> Task | None:
        return None if loop is None else _current_task(loop)


def _task_name(task: Task | None) -> str | None:
    return None if task is None else task.get_name()
