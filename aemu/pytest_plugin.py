"""pytest plugin: async tests in aemu's virtual time (registered through the ``pytest11`` entry
point, so installing aemu is enough).

``@pytest.mark.aemu`` runs a test on :class:`aemu.clock.VirtualTimeLoop`; ``aemu_virtual_time =
true`` (ini) or ``--aemu-virtual-time`` does it for every async test. A test that asks for the
``virtual_clock`` fixture is run in virtual time too. What a test writer can rely on:

* Virtual time starts at 0 for each test (``@pytest.mark.aemu(start=...)`` for another instant);
  ``loop.time()`` is in seconds, :func:`aemu.clock.now_ns` in integer nanoseconds. The test's
  async fixtures run on the same loop, in the same virtual time (a fixture that sleeps 5 s hands
  the test t=5 s). A loop shared wider than the test (pytest-asyncio's ``loop_scope="module"``)
  keeps its time running across the tests.
* ``asyncio.sleep``, ``asyncio.timeout``, ``wait_for``, ``call_later``, ``anyio.sleep`` and
  ``anyio.fail_after`` advance virtual time only: the loop jumps to the next timer.
* Threads, executors, child processes: virtual time holds while an executor job
  (``asyncio.to_thread``, ``run_in_executor``, the default executor's shutdown), one of anyio's
  worker threads (``anyio.to_thread.run_sync``) or a child process (``asyncio.create_subprocess_*``)
  is outstanding; the loop waits for it in real time.
* Sockets: while a socket or pipe is watched, the loop waits up to ``io_grace`` real seconds
  (default 0.1 s) after the last real I/O event before it jumps to the next timer; with no timer
  pending it waits up to ``io_timeout`` real seconds (default 5 s) for I/O, then reports a
  deadlock. So a test talking to a local server works as long as each reply comes within the grace.
* A deadlock fails the test inside the test: :class:`aemu.errors.SimulationDeadlock`, naming each
  blocked task and what it waits on, is raised in the test's task where it awaits, so
  ``pytest.raises(SimulationDeadlock)`` catches it and ``finally`` clauses run.

Runners: pytest-asyncio through its loop-factory hook (``pytest_asyncio_loop_factories``,
pytest-asyncio 1.4 and later; on older releases a marked test fails with a message saying so),
and anyio's pytest plugin (``anyio_backend`` ``"asyncio"`` gets ``loop_factory``; ``"trio"``
gets trio's own ``MockClock(autojump_threshold=0)``: virtual time, but no deadlock report).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from .clock import NS_PER_S, VirtualTimeLoop, running_loop, sleep_ns

__all__ = ["VirtualClock", "VirtualTimeOptions", "loop_factory", "virtual_clock", "virtual_time_options"]

MARK = "aemu"
DEFAULT_IO_GRACE = 0.1
DEFAULT_IO_TIMEOUT = 5.0
_MARK_KWARGS = frozenset({"start", "start_ns", "io_grace", "io_timeout"})


@dataclass(frozen=True, slots=True)
class VirtualTimeOptions:
    """How a test's :class:`~aemu.clock.VirtualTimeLoop` is made (see the module docstring)."""

    start_ns: int = 0
    io_grace: float = DEFAULT_IO_GRACE
    io_timeout: float | None = DEFAULT_IO_TIMEOUT


# -- configuration ---------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aemu", "aemu: virtual time for async tests")
    group.addoption("--aemu-virtual-time", action="store_true", default=None, dest="aemu_virtual_time",
                    help="run every async test on aemu's virtual-time loop (as if marked @pytest.mark.aemu)")
    parser.addini("aemu_virtual_time", type="bool", default=False,
                  help="run every async test on aemu's virtual-time loop (default: only @pytest.mark.aemu tests)")
    parser.addini("aemu_io_grace", default=str(DEFAULT_IO_GRACE),
                  help="real seconds to wait for socket I/O after the last I/O event before virtual time "
                       f"jumps (default {DEFAULT_IO_GRACE})")
    parser.addini("aemu_io_timeout", default=str(DEFAULT_IO_TIMEOUT),
                  help="real seconds to wait for socket I/O with no timer pending before a deadlock is "
                       f"reported; 'none' waits forever (default {DEFAULT_IO_TIMEOUT})")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "aemu(enabled=True, *, start=0.0, start_ns=None, io_grace=None, io_timeout=...): run this async "
        "test (and its async fixtures) on aemu's virtual-time loop; aemu(False) opts out of aemu_virtual_time")


def _seconds(config: pytest.Config, name: str) -> float | None:
    raw = str(config.getini(name)).strip()
    if raw.lower() == "none":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{name} must be a number of seconds (or 'none'), got {raw!r}") from None
    if not value >= 0:
        raise pytest.UsageError(f"{name} must be >= 0, got {raw!r}")
    return value


def virtual_time_options(node: pytest.Item | pytest.Collector) -> VirtualTimeOptions | None:
    """The virtual-time options for ``node`` (a test or a module, class...), None if it runs in real time.

    On if ``aemu_virtual_time``/``--aemu-virtual-time`` is set, if the node or a parent is marked
    ``aemu``, or if a test asks for ``virtual_clock``; the closest ``aemu`` mark decides, and
    ``aemu(False)`` turns it off.
    """
    config = node.config
    enabled: bool | None = True if (config.getoption("aemu_virtual_time") or config.getini("aemu_virtual_time")) else None
    kwargs: dict[str, Any] = {}
    for mark in reversed(list(node.iter_markers(MARK))):  # farthest first: the closest one wins
        enabled = bool(mark.args[0]) if mark.args else True
        kwargs.update(mark.kwargs)
    if enabled is None and "virtual_clock" in getattr(node, "fixturenames", ()):
        enabled = True
    if not enabled:
        return None
    unknown = set(kwargs) - _MARK_KWARGS
    if unknown:
        pytest.fail(f"{node.nodeid}: mark.aemu got unknown argument(s) {sorted(unknown)}; "
                    f"it takes {sorted(_MARK_KWARGS)}", pytrace=False)
    if "start_ns" in kwargs:
        start_ns = int(kwargs["start_ns"])
    else:
        start_ns = round(float(kwargs.get("start", 0.0)) * NS_PER_S)
    io_grace = kwargs.get("io_grace", _seconds(config, "aemu_io_grace"))
    io_timeout = kwargs["io_timeout"] if "io_timeout" in kwargs else _seconds(config, "aemu_io_timeout")
    if start_ns < 0:
        pytest.fail(f"{node.nodeid}: mark.aemu start must be >= 0, got {start_ns} ns", pytrace=False)
    return VirtualTimeOptions(start_ns, float(io_grace or 0.0), io_timeout)


_factories: dict[VirtualTimeOptions, Callable[[], VirtualTimeLoop]] = {}


def loop_factory(options: VirtualTimeOptions = VirtualTimeOptions()) -> Callable[[], VirtualTimeLoop]:
    """A factory of :class:`VirtualTimeLoop` with ``options``; the same object for equal options,
    so pytest-asyncio shares one loop among tests of a wider loop scope that ask for the same."""
    factory = _factories.get(options)
    if factory is None:
        factory = _factories[options] = functools.partial(
            VirtualTimeLoop, start_ns=options.start_ns, io_grace=options.io_grace, io_timeout=options.io_timeout,
            anyio_workers=True)
    return factory


# -- pytest-asyncio ----------------------------------------------------------------------------------

# Old-style hook wrappers (``hookwrapper=True``): the plugin loads in every pytest run of an
# environment that has aemu, whatever its pytest and pluggy, so it uses what all of them have.

@pytest.hookimpl(hookwrapper=True, optionalhook=True)
def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Generator[None, Any, None]:
    """pytest-asyncio (1.4+) asks which loops to run ``item`` on: aemu's for a virtual-time test,
    else what another implementation (a conftest) says, else asyncio's default loop."""
    outcome = yield
    options = virtual_time_options(item)
    factories: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None = outcome.get_result()
    if options is not None:
        outcome.force_result({"aemu": loop_factory(options)})
    elif factories is None:
        outcome.force_result({"asyncio": asyncio.new_event_loop})  # what pytest-asyncio does when no hook answers


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Module | pytest.Class, name: str, obj: object) -> None:
    """In pytest-asyncio's strict mode ``@pytest.mark.aemu`` is enough: it adds ``mark.asyncio``
    to a coroutine test that has neither an asyncio nor an anyio mark."""
    if not collector.config.pluginmanager.has_plugin("asyncio") or not collector.istestfunction(obj, name):
        return
    inner = getattr(getattr(obj, "hypothesis", None), "inner_test", obj)
    if not inspect.iscoroutinefunction(inner):
        return
    marks = [*getattr(obj, "pytestmark", ()), *collector.iter_markers()]
    names = {m.name for m in marks}
    own = [m for m in marks if m.name == MARK]
    if own and (not own[0].args or own[0].args[0]) and not names & {"asyncio", "anyio"}:
        pytest.mark.asyncio(obj)


# -- anyio -------------------------------------------------------------------------------------------

def _virtual_anyio_backend(backend: Any, options: VirtualTimeOptions) -> Any:
    """anyio's ``anyio_backend`` value for virtual time: asyncio on aemu's loop, trio on its MockClock."""
    name, opts = (backend, {}) if isinstance(backend, str) else backend
    if name == "asyncio" and "loop_factory" not in opts:
        return name, {**opts, "loop_factory": loop_factory(options)}
    if name == "trio" and "clock" not in opts:
        from trio.testing import MockClock

        return name, {**opts, "clock": MockClock(autojump_threshold=0)}
    return backend


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Generator[None, Any, None]:
    """An async fixture run by anyio's plugin gets the virtual-time ``anyio_backend`` (this runs
    inside anyio's own wrapper of the hook, after it has put its runner around the fixture)."""
    func = fixturedef.func
    options = None
    if getattr(func, "__module__", None) == "anyio.pytest_plugin" and "anyio_backend" in fixturedef.argnames:
        options = virtual_time_options(request.node)
    if options is None or not inspect.isgeneratorfunction(func):
        yield
        return

    def in_virtual_time(**kwargs: Any) -> Generator[Any, Any, Any]:
        kwargs["anyio_backend"] = _virtual_anyio_backend(kwargs["anyio_backend"], options)
        return (yield from func(**kwargs))

    fixturedef.func = in_virtual_time  # type: ignore[misc]
    try:
        yield
    finally:
        fixturedef.func = func  # type: ignore[misc]


# -- the test itself -------------------------------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, None]:
    """Run a virtual-time coroutine test through :func:`_in_virtual_time` (and give anyio's
    runner the virtual-time backend)."""
    options = None
    if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
        options = virtual_time_options(item)
    if options is None:
        yield
        return
    assert isinstance(item, pytest.Function)
    test, backend = item.obj, item.funcargs.get("anyio_backend")
    item.obj = _in_virtual_time(test, item, trio=backend is not None and _backend_name(backend) == "trio")
    if backend is not None:
        item.funcargs["anyio_backend"] = _virtual_anyio_backend(backend, options)
    try:
        yield
    finally:
        item.obj = test
        if backend is not None:
            item.funcargs["anyio_backend"] = backend


def _backend_name(backend: Any) -> str:
    return backend if isinstance(backend, str) else str(backend[0])


def _in_virtual_time(test: Callable[..., Any], item: pytest.Function, *, trio: bool = False) -> Callable[..., Any]:
    """``test``, checking that it runs on a VirtualTimeLoop and making its task the one a
    deadlock is raised in (under trio: as it is, on trio's MockClock)."""
    if trio:
        return test

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        if not isinstance(loop, VirtualTimeLoop):
            pytest.fail(_not_virtual(item, loop), pytrace=False)
        prev, loop._deadlock_task = loop._deadlock_task, asyncio.current_task()
        try:
            return await test(*args, **kwargs)
        finally:
            loop._deadlock_task = prev

    return run


def _not_virtual(item: pytest.Function, loop: asyncio.AbstractEventLoop) -> str:
    """Why a virtual-time test runs on another loop, and what to do about it."""
    where = f"{item.nodeid} asks for aemu's virtual time but runs on {type(loop).__module__}.{type(loop).__name__}"
    if "anyio_backend" in item.funcargs:
        return (f"{where}: anyio runs a test on the loop of the higher-scoped async fixtures alive, and one "
                "was started in real time; mark the module (pytestmark = pytest.mark.aemu) or set "
                "aemu_virtual_time = true")
    if not hasattr(item.config.hook, "pytest_asyncio_loop_factories"):
        try:
            from importlib.metadata import version

            found = f"pytest-asyncio {version('pytest-asyncio')}"
        except Exception:
            found = "this pytest-asyncio"
        return (f"{where}: {found} has no pytest_asyncio_loop_factories hook (added in pytest-asyncio 1.4); "
                "upgrade pytest-asyncio, or run the test through anyio's plugin")
    return f"{where}: another plugin chose its loop"


# -- the virtual_clock fixture ---------------------------------------------------------------------

class VirtualClock:
    """The running test's virtual clock: read it, or run the loop to an instant (asyncio only)."""

    __slots__ = ()

    @property
    def loop(self) -> VirtualTimeLoop:
        """The running :class:`VirtualTimeLoop` (RuntimeError outside a virtual-time test)."""
        loop = running_loop()
        if not isinstance(loop, VirtualTimeLoop):
            raise RuntimeError("virtual_clock is read inside an async test running on aemu's virtual-time "
                               f"loop; the running loop is {loop!r}")
        return loop

    def now_ns(self) -> int:
        """Virtual time in integer nanoseconds."""
        return self.loop.now_ns()

    def time(self) -> float:
        """Virtual time in seconds (``loop.time()``)."""
        return self.loop.time()

    async def run_until_ns(self, when_ns: int) -> None:
        """Let everything scheduled up to virtual instant ``when_ns`` run, and return at it
        (entries at ``when_ns`` itself that were scheduled before this call run first)."""
        now = self.loop.now_ns()
        if when_ns < now:
            raise ValueError(f"run_until_ns({when_ns}): virtual time is already {now} ns")
        await sleep_ns(when_ns - now)

    async def run_until(self, when: float) -> None:
        """:meth:`run_until_ns` in seconds."""
        await self.run_until_ns(round(when * NS_PER_S))

    async def advance(self, seconds: float) -> None:
        """Run the loop for ``seconds`` of virtual time."""
        if seconds < 0:
            raise ValueError(f"advance() needs a duration >= 0, got {seconds}")
        await sleep_ns(round(seconds * NS_PER_S))

    def __repr__(self) -> str:
        loop = running_loop()
        if isinstance(loop, VirtualTimeLoop):
            return f"<VirtualClock t={loop.now_ns()} ns>"
        return "<VirtualClock (no virtual-time loop running)>"


@pytest.fixture
def virtual_clock() -> VirtualClock:
    """The test's virtual clock (asking for it runs the test in virtual time)."""
    return VirtualClock()
