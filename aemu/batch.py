"""Many runs at once: aemu's own process pool, or any ``concurrent.futures.Executor`` (Dask's too).

:class:`Batch` runs ``fn(arg)`` for every ``(key, arg)`` and yields ``(key, value or Failure)`` as
each finishes (in the order they finish). A run that raises is a :class:`Failure` naming the
error; the others go on.

The local pool (the default) is a few worker processes fed one run at a time over a pipe, so the
parent always knows which run each worker holds: a worker that dies (killed, out of memory) is
one :class:`Failure` for exactly the run it held, and a fresh worker takes the next. The workers
ignore SIGINT -- a terminal's Ctrl-C reaches the whole process group, and the parent decides --
and die on SIGTERM: when the parent is interrupted (``KeyboardInterrupt``) or the batch is closed,
every worker is terminated at once and the exception propagates; what was yielded before is the
caller's to report. (``multiprocessing.Pool`` waits forever for a run whose worker was killed, and
``concurrent.futures.ProcessPoolExecutor`` loses every pending run with it and waits for the runs
in flight at shutdown.)

With an executor (``concurrent.futures.ProcessPoolExecutor``, a Dask ``Client.get_executor()``,
...), runs are submitted to it and collected as they finish; closing the batch cancels what has
not started. :func:`open_executor` opens what ``--executor`` names: ``local``, ``dask`` (a
``distributed.LocalCluster`` on this machine) or ``dask://HOST:PORT`` / ``tcp://HOST:PORT`` (an
existing Dask scheduler).

:func:`run_all` is the simple form compare uses: every run must succeed (the first failure stops
the rest and is raised).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar

from .config import MachineConfig
from .errors import AemuError, ConfigError
from .result import Result

__all__ = ["Batch", "Failure", "RunFailed", "open_executor", "run_all", "DASK_CONNECT_TIMEOUT_S"]

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")
R = TypeVar("R")

#: How long ``--executor dask://HOST:PORT`` tries to reach the scheduler before it gives up.
DASK_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Failure:
    """A run that did not return a value: its error in one line (``"ConfigError: ..."``)."""

    error: str
    #: the exception itself, when the run raised in this process (not compared, not shown)
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return self.error


class RunFailed(AemuError):
    """A run of :func:`run_all` failed in a worker (the message names the run and the error)."""


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's "treat as Ctrl-C" handler


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    """A local worker: run each ``(fn, arg)`` it is sent and send back ``(True, value)`` or ``(False, error)``."""
    _init_worker()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, arg = msg
        try:
            reply: tuple[bool, Any] = (True, fn(arg))
        except Exception as e:
            reply = (False, _describe(e))
        try:
            conn.send(reply)
        except Exception as e:  # a value that does not pickle
            conn.send((False, f"the run's result cannot be sent back: {_describe(e)}"))


@dataclass(slots=True)
class _Worker:
    process: Any  # multiprocessing.Process (BaseProcess of the default context)
    conn: multiprocessing.connection.Connection
    task: tuple[Any, Any] | None = None  # (key, arg) it is running


class Batch(Generic[K, R]):
    """Runs ``fn(arg)`` for each ``(key, arg)``; iterate for ``(key, value | Failure)`` as each finishes.

    ``executor``: run there instead of the local pool of ``jobs`` processes (default one per core;
    ``jobs=1`` runs in this process). ``slots``: how many runs the executor runs at once, for
    :attr:`running` (default: its ``_max_workers`` if it has one). Use it as a context manager (or
    call :meth:`close`): leaving early terminates the local workers at once, or cancels what the
    executor has not started.
    """

    def __init__(self, items: Sequence[tuple[K, A]], fn: Callable[[A], R], *,
                 executor: cf.Executor | None = None, jobs: int | None = None, slots: int | None = None) -> None:
        self.total = len(items)
        self._running = 0
        self._slots = slots
        if executor is not None:
            self._gen: Iterator[tuple[K, R | Failure]] = self._on_executor(items, fn, executor)
        else:
            n = min(jobs or os.cpu_count() or 1, len(items))
            self._gen = self._in_process(items, fn) if n <= 1 else self._on_pool(items, fn, n)

    @property
    def running(self) -> int:
        """Runs started and not finished (for an executor: at most its slots)."""
        return self._running

    def __iter__(self) -> Iterator[tuple[K, R | Failure]]:
        return self._gen

    def __enter__(self) -> Batch[K, R]:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop: local workers are terminated at once, an executor's pending runs cancelled."""
        self._gen.close()  # type: ignore[attr-defined]

    def _in_process(self, items: Sequence[tuple[K, A]], fn: Callable[[A], R]) -> Iterator[tuple[K, R | Failure]]:
        for key, arg in items:
            self._running = 1
            try:
                value: R | Failure = fn(arg)
            except Exception as e:
                value = Failure(_describe(e), e)
            self._running = 0
            yield key, value

    def _on_pool(self, items: Sequence[tuple[K, A]], fn: Callable[[A], R], n: int) -> Iterator[tuple[K, R | Failure]]:
        ctx = multiprocessing.get_context()
        todo: deque[tuple[K, A]] = deque(items)
        workers: list[_Worker] = []

        def start() -> _Worker:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child,), daemon=True)
            p.start()
            child.close()
            return _Worker(p, parent)

        clean = False
        try:
            workers = [start() for _ in range(n)]
            while True:
                for w in workers:
                    if w.task is None and todo:
                        w.task = todo.popleft()
                        w.conn.send((fn, w.task[1]))
                busy = [w for w in workers if w.task is not None]
                self._running = len(busy)
                if not busy:
                    break
                ready = set(multiprocessing.connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
                for i, w in enumerate(workers):
                    if w.task is None or not (w.conn in ready or w.process.sentinel in ready):
                        continue
                    key = w.task[0]
                    try:
                        ok, value = w.conn.recv()
                    except (EOFError, OSError):  # the worker died with this run
                        w.process.join()
                        w.conn.close()
                        workers[i] = start()
                        self._running = min(n, sum(x.task is not None for x in workers) + len(todo))
                        yield key, Failure(f"worker process died ({_exit_words(w.process.exitcode)}) during the run")
                        continue
                    w.task = None
                    self._running = min(n, sum(x.task is not None for x in workers) + len(todo))  # it takes the next
                    yield key, (value if ok else Failure(value))
            clean = True
        finally:
            self._running = 0
            for w in workers:
                if clean:
                    w.conn.send(None)
                else:
                    w.process.terminate()  # SIGTERM, now: nothing waits for the runs in flight
            for w in workers:
                w.process.join()
                w.conn.close()

    def _on_executor(self, items: Sequence[tuple[K, A]], fn: Callable[[A], R],
                     executor: cf.Executor) -> Iterator[tuple[K, R | Failure]]:
        slots = self._slots or getattr(executor, "_max_workers", None) or len(items)
        futures: dict[cf.Future[R], K] = {}
        pending: set[cf.Future[R]] = set()
        try:
            for key, arg in items:
                f = executor.submit(fn, arg)
                futures[f] = key
                pending.add(f)
            while pending:
                self._running = min(len(pending), slots)
                # a short timeout keeps Ctrl-C prompt however the executor's futures wait
                done, pending = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    self._running = min(len(pending), slots)
                    try:
                        value: R | Failure = f.result()
                    except cf.CancelledError:
                        value = Failure("cancelled by the executor")
                    except Exception as e:
                        value = Failure(_describe(e), e)
                    yield futures[f], value
        finally:
            self._running = 0
            for f in pending:
                f.cancel()


def _exit_words(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _run_config(config: MachineConfig) -> Result:
    from .runner import simulate

    return simulate(config)


def run_all(configs: Sequence[tuple[K, MachineConfig]], *, jobs: int | None = None,
            done: Callable[[K, Result], None] | None = None) -> dict[K, Result]:
    """Run every ``(key, config)`` (over ``jobs`` processes, default: one per core); key -> result.

    ``done(key, result)`` is called as each finishes. A failed run stops the others and raises (its
    own exception when it ran in this process, :class:`RunFailed` naming it otherwise).
    """
    results: dict[K, Result] = {}
    with Batch(configs, _run_config, jobs=jobs) as batch:
        for key, r in batch:
            if isinstance(r, Failure):
                if r.exception is not None:
                    raise r.exception
                raise RunFailed(f"run {key!r} failed: {r.error}")
            results[key] = r
            if done is not None:
                done(key, r)
    return results


# -- --executor -------------------------------------------------------------------------------------------

_ADDRESS = re.compile(r"(?:dask|tcp)://(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")


@dataclass(frozen=True, slots=True)
class Opened:
    """What :func:`open_executor` opened: the executor (None: aemu's local pool), its slots, in words."""

    executor: cf.Executor | None
    slots: int | None
    words: str


@contextmanager
def open_executor(spec: str = "local", *, jobs: int | None = None,
                  timeout_s: float | None = None) -> Iterator[Opened]:
    """Open what ``--executor SPEC`` names, and close it afterwards.

    ``local`` (aemu's pool of ``jobs`` processes), ``dask`` (a ``distributed.LocalCluster`` of
    ``jobs`` single-threaded worker processes, default one per core) or ``dask://HOST:PORT`` /
    ``tcp://HOST:PORT`` (a running ``dask scheduler``; ConfigError when it cannot be reached
    within ``timeout_s``, default :data:`DASK_CONNECT_TIMEOUT_S`).
    """
    timeout_s = DASK_CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    if spec == "local":
        n = jobs or os.cpu_count() or 1
        yield Opened(None, jobs, f"local pool of {n} processes" if n > 1 else "in this process")
        return
    m = _ADDRESS.fullmatch(spec)
    if spec != "dask" and m is None:
        raise ConfigError(f"--executor: {spec!r}; accepted: local, dask (a LocalCluster here), "
                          "dask://HOST:PORT or tcp://HOST:PORT (a Dask scheduler)")
    if m is not None and not 0 < int(m["port"]) < 65536:
        raise ConfigError(f"--executor: port {m['port']} is not a TCP port (1-65535)")
    try:
        import logging

        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError(f"--executor {spec}: needs Dask's distributed package: pip install 'aemu[dask]'") from None
    if m is None:
        n = jobs or os.cpu_count() or 1
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = None
        try:
            client = Client(cluster)
            yield Opened(client.get_executor(), n, f"Dask LocalCluster of {n} worker processes")
        except BaseException:
            _kill_workers(cluster)  # Ctrl-C: the runs in flight are not waited for
            raise
        finally:
            _quietly_close(client, cluster)
        return
    address = f"tcp://{m['host']}:{m['port']}"
    t0 = time.monotonic()
    try:
        client = Client(address, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ConfigError(f"--executor {spec}: no Dask scheduler answered at {address} within "
                          f"{time.monotonic() - t0:.0f} s ({type(e).__name__}); start one with "
                          "'dask scheduler' and 'dask worker ADDRESS'") from None
    try:
        slots = sum(client.nthreads().values()) or None
        yield Opened(client.get_executor(), slots, f"Dask scheduler {address} ({slots or 0} worker threads)")
    finally:
        _quietly_close(client)


def _kill_workers(cluster: Any) -> None:
    """SIGKILL the worker processes of our own LocalCluster (their nannies then close at once)."""
    for nanny in list(getattr(cluster, "workers", {}).values()):
        pid = getattr(getattr(getattr(nanny, "process", None), "process", None), "pid", None)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _quietly_close(*things: Any) -> None:
    """Close a Dask client and cluster within about a second: a run in flight is not waited for
    (after Ctrl-C the cluster's workers are stopped, not drained); what does not close by then is
    left to the interpreter's exit."""
    for thing in things:
        if thing is None:
            continue
        try:
            thing.close(timeout=2)
        except Exception:
            pass
