"""aemu's pytest plugin: async tests in virtual time (aemu/pytest_plugin.py).

The tests marked ``aemu`` here run through the plugin itself (aemu's suite turns it on for every
async test, pyproject.toml); the ``pytester`` ones run pytest in a temporary project that has
nothing but aemu installed, as a user's project would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from aemu import pytest_plugin
from aemu.clock import VirtualTimeLoop, now_ns
from aemu.errors import SimulationDeadlock
from aemu.pytest_plugin import VirtualClock

S = 1_000_000_000


# -- virtual time, per test --------------------------------------------------------------------------

class TestTimeStartsAtZero:
    """Two tests that each sleep an hour: each starts at 0 (a loop of its own)."""

    @pytest.mark.aemu
    async def test_first(self) -> None:
        assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
        assert asyncio.get_running_loop().time() == 0.0 and now_ns() == 0
        await asyncio.sleep(3600)
        assert now_ns() == 3600 * S

    @pytest.mark.aemu
    async def test_second(self) -> None:
        assert now_ns() == 0
        await asyncio.sleep(3600)
        assert asyncio.get_running_loop().time() == 3600.0


@pytest.mark.aemu(start=100.5)
async def test_a_chosen_start() -> None:
    assert now_ns() == 100_500_000_000
    await asyncio.sleep(1)
    assert asyncio.get_running_loop().time() == 101.5


@pytest.mark.aemu(start_ns=7)
async def test_a_chosen_start_in_ns() -> None:
    assert now_ns() == 7


@pytest.fixture
async def slow_setup() -> AsyncIterator[list[int]]:
    await asyncio.sleep(5)  # the fixture's sleep is virtual, on the test's loop
    seen = [now_ns()]
    yield seen
    await asyncio.sleep(2)
    seen.append(now_ns())


@pytest.mark.aemu
async def test_async_fixtures_share_the_tests_virtual_time(slow_setup: list[int]) -> None:
    assert slow_setup == [5 * S] and now_ns() == 5 * S
    await asyncio.sleep(1)


@pytest.mark.aemu
async def test_sleep_timeout_wait_for_and_call_later_move_virtual_time_only() -> None:
    loop = asyncio.get_running_loop()
    wall = time.monotonic()
    log: list[tuple[str, int]] = []
    loop.call_later(30, lambda: log.append(("call_later", now_ns())))
    await asyncio.sleep(10)
    log.append(("sleep", now_ns()))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.sleep(3600)
    log.append(("timeout", now_ns()))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), 20)
    log.append(("wait_for", now_ns()))
    assert log == [("sleep", 10 * S), ("timeout", 15 * S), ("call_later", 30 * S), ("wait_for", 35 * S)]
    assert time.monotonic() - wall < 1.0


# -- threads, executors, child processes ----------------------------------------------------------------

@pytest.mark.aemu
async def test_to_thread_is_not_jumped_past() -> None:
    def work() -> str:
        time.sleep(0.05)
        return "done"

    async with asyncio.timeout(1):  # a timer that a jump would fire at once
        got = await asyncio.to_thread(work)
    assert got == "done" and now_ns() == 0  # virtual time held while the thread ran


@pytest.mark.aemu
async def test_anyio_to_thread_is_not_jumped_past() -> None:
    import anyio

    with anyio.fail_after(1):
        await anyio.to_thread.run_sync(time.sleep, 0.05)
    assert now_ns() == 0
    await anyio.sleep(1)
    assert now_ns() == S


@pytest.mark.aemu
async def test_run_in_executor_with_an_executor_of_its_own() -> None:
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        async with asyncio.timeout(0.001):
            results = await asyncio.gather(*(loop.run_in_executor(pool, time.sleep, 0.02) for _ in range(4)))
    assert results == [None] * 4 and now_ns() == 0
    await asyncio.sleep(1)
    assert now_ns() == S


@pytest.mark.aemu
async def test_a_child_process_is_waited_for_in_real_time() -> None:
    async with asyncio.timeout(1):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(0.1); print('hi')", stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
    assert out.strip() == b"hi" and proc.returncode == 0 and now_ns() == 0
    await asyncio.sleep(2)  # and once it has exited, time jumps again
    assert now_ns() == 2 * S


# -- sockets: the grace rule --------------------------------------------------------------------------------

@pytest.fixture
def slow_echo_server() -> Iterator[int]:
    """A TCP server in a thread (real time) that echoes each line after 30 ms."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)
    port = srv.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            while data := conn.recv(1024):
                time.sleep(0.03)
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield port
    srv.close()
    t.join(5)


async def _ask(port: int, line: bytes, rounds: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        out = []
        for _ in range(rounds):
            writer.write(line)
            async with asyncio.timeout(10):  # a timer the loop would otherwise jump to
                out.append(await reader.readline())
        return out
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.aemu
async def test_a_local_server_in_real_time_answers_within_the_grace(slow_echo_server: int) -> None:
    assert await _ask(slow_echo_server, b"ping\n", 3) == [b"ping\n"] * 3
    assert now_ns() == 0  # no jump while the reply could still come


@pytest.mark.aemu(io_grace=0)
async def test_without_a_grace_the_loop_jumps_past_a_slow_reply(slow_echo_server: int) -> None:
    with pytest.raises(TimeoutError):
        await _ask(slow_echo_server, b"ping\n", 1)
    assert now_ns() == 10 * S


@pytest.mark.aemu
async def test_a_quiet_socket_does_not_hold_time_for_long() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # listening, never called
    async with server:
        wall = time.monotonic()
        for _ in range(50):
            await asyncio.sleep(60)
        assert now_ns() == 3000 * S
        assert time.monotonic() - wall < 1.0  # one grace period (0.1 s) after the listen, then free


@pytest.mark.aemu(io_timeout=0.2)
async def test_a_deadlock_with_a_quiet_socket_is_reported_after_io_timeout() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    async with server:
        wall = time.monotonic()
        with pytest.raises(SimulationDeadlock, match="blocked with no event pending"):
            await asyncio.Event().wait()
        assert 0.15 < time.monotonic() - wall < 3.0


# -- deadlocks fail the test, inside the test -----------------------------------------------------------

@pytest.mark.aemu
async def test_a_deadlock_is_raised_in_the_tests_task() -> None:
    never = asyncio.Event()
    helper = asyncio.create_task(never.wait(), name="helper")
    await asyncio.sleep(3)
    with pytest.raises(SimulationDeadlock) as info:
        await never.wait()
    msg = str(info.value)
    assert msg.startswith("simulation deadlock at t=3000000000 ns: 2 task(s) blocked")
    me = asyncio.current_task()
    assert me is not None and set(info.value.blocked) == {"helper", me.get_name()}
    assert "in wait() at" in info.value.blocked["helper"]
    helper.cancel()
    await asyncio.sleep(1)  # the loop goes on after the report
    assert now_ns() == 4 * S


@pytest.mark.aemu
async def test_a_deadlock_in_an_awaited_task_reaches_the_test() -> None:
    async def stuck() -> None:
        await asyncio.get_running_loop().create_future()

    child = asyncio.create_task(stuck(), name="child")
    with pytest.raises(SimulationDeadlock) as info:
        await child
    assert "child" in info.value.blocked and child.done()


# -- the virtual_clock fixture ------------------------------------------------------------------------

async def test_virtual_clock_reads_and_runs_to_an_instant(virtual_clock: VirtualClock) -> None:
    fired: list[int] = []
    asyncio.get_running_loop().call_later(2.5, lambda: fired.append(now_ns()))
    assert virtual_clock.now_ns() == 0 and virtual_clock.time() == 0.0
    await virtual_clock.run_until(2.5)
    assert fired == [2_500_000_000] and virtual_clock.now_ns() == 2_500_000_000
    await virtual_clock.advance(0.5)
    assert virtual_clock.time() == 3.0
    await virtual_clock.run_until_ns(3 * S)  # already there: returns at once
    with pytest.raises(ValueError, match="already"):
        await virtual_clock.run_until(1)
    assert repr(virtual_clock) == "<VirtualClock t=3000000000 ns>"


def test_virtual_clock_outside_a_virtual_test() -> None:
    clock = VirtualClock()
    with pytest.raises(RuntimeError, match="inside an async test"):
        clock.now_ns()
    assert "no virtual-time loop" in repr(clock)


def test_the_message_when_pytest_asyncio_is_too_old() -> None:
    item = SimpleNamespace(nodeid="t.py::test_x", funcargs={}, config=SimpleNamespace(hook=object()))
    msg = pytest_plugin._not_virtual(item, asyncio.new_event_loop())  # type: ignore[arg-type]
    assert msg.startswith("t.py::test_x asks for aemu's virtual time but runs on asyncio.unix_events.")
    assert "has no pytest_asyncio_loop_factories hook (added in pytest-asyncio 1.4)" in msg


# -- in a temporary project (pytester) -----------------------------------------------------------------

_USER_TESTS = '''
import asyncio, time
import pytest
from aemu.clock import VirtualTimeLoop

@pytest.mark.aemu
async def test_marked():
    t0 = time.monotonic()
    await asyncio.sleep(86400)
    assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
    assert asyncio.get_running_loop().time() == 86400.0 and time.monotonic() - t0 < 1

async def test_unmarked():
    assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
'''


#: No cache files; and looptime, if installed beside aemu, would patch every pytest-asyncio loop.
_QUIET = ("-p", "no:cacheprovider", "-p", "no:looptime_plugin", "-p", "no:hypothesispytest")
_AUTO = '[tool.pytest.ini_options]\nasyncio_mode = "auto"\nasyncio_default_fixture_loop_scope = "function"\n'


class TestInATemporaryProject:
    def test_the_mark_alone_in_a_project_that_only_installs_aemu(self, pytester: pytest.Pytester) -> None:
        pytester.makepyprojecttoml(_AUTO)
        pytester.makepyfile(test_tmp_user=_USER_TESTS)
        result = pytester.runpytest_subprocess(*_QUIET)  # plugins from entry points
        result.assert_outcomes(passed=2)

    def test_readmes_example_runs_as_written(self, pytester: pytest.Pytester) -> None:
        readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
        block = readme.split("<!-- example: test_retry.py -->\n```python\n", 1)[1].split("```", 1)[0]
        pytester.makepyprojecttoml(_AUTO.replace('"auto"', '"strict"'))  # the mark alone, in strict mode too
        pytester.makepyfile(test_tmp_retry=block)
        t0 = time.monotonic()
        pytester.runpytest(*_QUIET).assert_outcomes(passed=2)
        assert time.monotonic() - t0 < 10

    def test_the_ini_option_and_the_flag_turn_it_on_for_every_test(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(test_tmp_all='''
            import asyncio, pytest
            from aemu.clock import VirtualTimeLoop

            async def test_unmarked():
                assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)

            @pytest.mark.aemu(False)
            async def test_opted_out():
                assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
        ''')
        pytester.makepyprojecttoml(_AUTO + 'aemu_virtual_time = true\n')
        pytester.runpytest(*_QUIET).assert_outcomes(passed=2)
        pytester.makepyprojecttoml(_AUTO)
        pytester.runpytest(*_QUIET, "--aemu-virtual-time").assert_outcomes(passed=2)
        pytester.runpytest(*_QUIET).assert_outcomes(passed=1, failed=1)

    def test_strict_mode_needs_only_the_aemu_mark(self, pytester: pytest.Pytester) -> None:
        pytester.makepyprojecttoml(_AUTO.replace('"auto"', '"strict"'))
        pytester.makepyfile(test_tmp_strict='''
            import asyncio, pytest
            from aemu.clock import VirtualTimeLoop

            @pytest.mark.aemu
            async def test_marked():
                await asyncio.sleep(60)
                assert asyncio.get_running_loop().time() == 60.0
        ''')
        pytester.runpytest(*_QUIET).assert_outcomes(passed=1)

    def test_a_users_loop_factories_still_serve_the_unmarked_tests(self, pytester: pytest.Pytester) -> None:
        pytester.makepyprojecttoml(_AUTO)
        pytester.makeconftest('''
            import asyncio
            class MyLoop(asyncio.SelectorEventLoop):
                pass
            def pytest_asyncio_loop_factories(config, item):
                return {"mine": MyLoop}
        ''')
        pytester.makepyfile(test_tmp_mix='''
            import asyncio, pytest
            from aemu.clock import VirtualTimeLoop

            async def test_unmarked():
                assert "MyLoop" in [c.__name__ for c in type(asyncio.get_running_loop()).__mro__]

            @pytest.mark.aemu
            async def test_marked():
                assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
        ''')
        pytester.runpytest(*_QUIET).assert_outcomes(passed=2)

    def test_virtual_clock_turns_it_on_and_teardown_runs_in_virtual_time(self, pytester: pytest.Pytester) -> None:
        pytester.makepyprojecttoml(_AUTO)
        pytester.makepyfile(test_tmp_clock='''
            import asyncio, pytest
            from aemu.clock import now_ns

            LOG = []

            @pytest.fixture
            async def resource():
                await asyncio.sleep(1)
                yield
                await asyncio.sleep(2)
                LOG.append(now_ns())

            async def test_uses_the_clock(virtual_clock, resource):
                assert virtual_clock.time() == 1.0
                await virtual_clock.advance(3)

            def test_teardown_ran_in_virtual_time():
                assert LOG == [6_000_000_000]
        ''')
        pytester.runpytest(*_QUIET).assert_outcomes(passed=2)

    def test_an_uncaught_deadlock_fails_the_test_naming_the_blocked_tasks(self, pytester: pytest.Pytester) -> None:
        pytester.makepyprojecttoml(_AUTO + 'aemu_virtual_time = true\n')
        pytester.makepyfile(test_tmp_stuck='''
            import asyncio

            async def test_stuck():
                lock = asyncio.Lock()
                await lock.acquire()
                other = asyncio.create_task(lock.acquire(), name="second-acquirer")
                await asyncio.sleep(1)
                await asyncio.Event().wait()

            async def test_next_one_still_runs():
                await asyncio.sleep(1)
        ''')
        t0 = time.monotonic()
        result = pytester.runpytest(*_QUIET)
        result.assert_outcomes(passed=1, failed=1)
        result.stdout.fnmatch_lines([
            "*SimulationDeadlock: simulation deadlock at t=1000000000 ns: 2 task(s) blocked with no event pending:",
            "*task 'second-acquirer' waits on a future that nothing will complete in acquire()*",
        ])
        assert "await asyncio.Event().wait()" in result.stdout.str()  # raised where the test waits
        assert time.monotonic() - t0 < 30

    def test_executors_leave_no_false_deadlock_at_teardown(self, pytester: pytest.Pytester) -> None:
        pytester.makepyprojecttoml(_AUTO + 'aemu_virtual_time = true\n')
        pytester.makepyfile(test_tmp_threads='''
            import asyncio, time

            async def test_to_thread():
                await asyncio.to_thread(time.sleep, 0.02)  # the default executor: shut down at close
        ''')
        result = pytester.runpytest(*_QUIET, "-W", "error::RuntimeWarning")
        result.assert_outcomes(passed=1)

    def test_anyio_plugin_asyncio_and_trio(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(test_tmp_any='''
            import time
            import anyio, pytest
            from aemu.clock import now_ns

            pytestmark = [pytest.mark.anyio, pytest.mark.aemu]

            @pytest.fixture(params=["asyncio", "trio"])
            def anyio_backend(request):
                return request.param

            @pytest.fixture
            async def warmed_up():
                await anyio.sleep(5)
                return anyio.current_time()

            async def test_sleep_and_fail_after(warmed_up, anyio_backend_name):
                assert warmed_up == 5.0
                with pytest.raises(TimeoutError):
                    with anyio.fail_after(10):
                        await anyio.sleep(3600)
                assert anyio.current_time() == 15.0
                if anyio_backend_name == "asyncio":  # on aemu's loop (trio: on its MockClock)
                    assert now_ns() == 15_000_000_000
                    with anyio.fail_after(1):  # anyio's worker threads are waited for too
                        await anyio.to_thread.run_sync(time.sleep, 0.05)
                    assert now_ns() == 15_000_000_000
        ''')
        pytester.runpytest(*_QUIET, "-p", "no:asyncio").assert_outcomes(passed=2)

    def test_anyio_deadlock_is_raised_in_the_test(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(test_tmp_any='''
            import anyio, pytest
            from aemu.errors import SimulationDeadlock

            @pytest.fixture
            def anyio_backend():
                return "asyncio"

            @pytest.mark.anyio
            @pytest.mark.aemu
            async def test_stuck():
                with pytest.raises(SimulationDeadlock):
                    await anyio.Event().wait()
        ''')
        pytester.runpytest(*_QUIET, "-p", "no:asyncio").assert_outcomes(passed=1)

    def test_anyio_loop_started_in_real_time_by_a_wider_fixture_is_named(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(test_tmp_any='''
            import anyio, pytest

            @pytest.fixture(scope="module")
            def anyio_backend():
                return "asyncio"

            @pytest.fixture(scope="module")
            async def server():
                yield "up"

            @pytest.mark.anyio
            @pytest.mark.aemu
            async def test_marked(server):
                pass
        ''')
        result = pytester.runpytest(*_QUIET, "-p", "no:asyncio")
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*asks for aemu's virtual time but runs on*mark the module*"])

    def test_a_bad_mark_argument_is_a_collection_error(self, pytester: pytest.Pytester) -> None:
        pytester.makepyprojecttoml(_AUTO)
        pytester.makepyfile(test_tmp_bad='''
            import pytest

            @pytest.mark.aemu(pace=2)
            async def test_x():
                pass
        ''')
        result = pytester.runpytest(*_QUIET)
        assert result.ret != 0
        assert "test_tmp_bad.py::test_x: mark.aemu got unknown argument(s) ['pace']; it takes" in result.stdout.str()
