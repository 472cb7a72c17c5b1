"""Many runs over the host's cores: a process pool that Ctrl-C and SIGTERM stop at once.

:func:`run_all` runs configurations with :func:`aemu.runner.simulate`, each in a worker process,
and hands every result to ``done`` as it finishes (in the order they finish). The workers ignore
SIGINT -- a terminal's Ctrl-C reaches the whole process group, and the parent decides -- and die
on SIGTERM. When the parent is interrupted (``KeyboardInterrupt``), or a run fails, the workers
are terminated at once and the exception propagates: the results already handed to ``done`` are
the caller's to report. (``concurrent.futures.ProcessPoolExecutor`` cannot do this: its workers
turn Ctrl-C into a result and go on with the next run, and its shutdown waits for every run.)
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from .config import MachineConfig
from .result import Result

__all__ = ["run_all"]

K = TypeVar("K", bound=Hashable)


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's "treat as Ctrl-C" handler


def _run(item: tuple[K, MachineConfig]) -> tuple[K, Result]:
    from .runner import simulate

    key, config = item
    return key, simulate(config)


def run_all(configs: Sequence[tuple[K, MachineConfig]], *, jobs: int | None = None,
            done: Callable[[K, Result], None] | None = None) -> dict[K, Result]:
    """Run every ``(key, config)`` (over ``jobs`` processes, default: one per core); key -> result."""
    from .runner import simulate

    jobs = min(jobs or os.cpu_count() or 1, len(configs))
    results: dict[K, Result] = {}
    if jobs <= 1:
        for key, config in configs:
            results[key] = r = simulate(config)
            if done is not None:
                done(key, r)
        return results
    pool = multiprocessing.Pool(jobs, initializer=_init_worker)
    try:
        for key, r in pool.imap_unordered(_run, configs):
            results[key] = r
            if done is not None:
                done(key, r)
    except BaseException:
        pool.terminate()  # SIGTERM to every worker, now: nothing waits for the runs in flight
        raise
    else:
        pool.close()
    finally:
        pool.join()
    return results
