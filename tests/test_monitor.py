"""The QMP monitor, driven by QEMU's own client (``qemu.qmp``), ``qmp-shell`` and hostile raw sockets.

Real-time runs use their own asyncio loop (``asyncio.run``); virtual-time runs use a worker thread.
Every network peer is on loopback; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from aemu import __version__
from aemu.errors import ConfigError
from aemu.monitor import JSONStreamer, QMPError, QMPServer, parse_qmp_option, run_with_monitor, serve
from aemu.monitor.qmp import StreamLimitError, VerbatimNumber, encode_message, event_message

qmp = pytest.importorskip("qemu.qmp")
from qemu.qmp import EventListener, ExecuteError, QMPClient  # noqa: E402

IDLE = "-smp 4 --workload idle"


# -- helpers ------------------------------------------------------------------------------------------

def _sock_path() -> str:
    d = tempfile.mkdtemp(prefix="aemu-qmp-")
    return os.path.join(d, "qmp.sock")


@contextlib.asynccontextmanager
async def running(spec: str, config: str = IDLE, **kw: Any) -> AsyncIterator[tuple[QMPServer, asyncio.Task[Any]]]:
    """A real-time run with a monitor on this loop; quits it (bounded) on the way out."""
    got: list[QMPServer] = []
    ready = asyncio.Event()

    def listening(server: QMPServer) -> None:
        got.append(server)
        ready.set()

    task = asyncio.create_task(serve(config, spec, realtime=True, on_listening=listening, **kw))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        yield got[0], task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)


def run_async(fn: Callable[[], Awaitable[Any]], timeout: float = 9.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(fn(), timeout)
    return asyncio.run(main())


async def connect(server: QMPServer) -> QMPClient:
    c = QMPClient("test")
    a = server.bound
    await c.connect(a.path if a.kind == "unix" else (a.host, a.port))
    return c


async def close(c: QMPClient) -> None:
    with contextlib.suppress(EOFError, ConnectionError):
        await c.disconnect()


class Raw:
    """A raw client socket reading CRLF-terminated JSON (blocking, with a timeout)."""

    def __init__(self, server: QMPServer, timeout: float = 3.0) -> None:
        a = server.bound
        if a.kind == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(a.path)
        else:
            self.sock = socket.create_connection((a.host, a.port))
        self.sock.settimeout(timeout)
        self.buf = b""

    def send(self, data: bytes | str | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = json.dumps(data) + "\n"
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def recv(self) -> Any:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        assert line.endswith(b"\r")
        return json.loads(line)

    def nothing_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(3.0)
        self.buf += chunk
        return False

    def negotiate(self) -> dict[str, Any]:
        greeting = self.recv()
        self.send({"execute": "qmp_capabilities"})
        assert self.recv() == {"return": {}}
        return greeting  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


# -- -qmp option ----------------------------------------------------------------------------------------

class TestParseOption:
    def test_unix_and_tcp(self) -> None:
        a = parse_qmp_option("unix:/tmp/x.sock,server")
        assert (a.kind, a.path, a.wait) == ("unix", "/tmp/x.sock", True)
        assert parse_qmp_option("unix:/tmp/x.sock,server,wait=off").wait is False
        assert parse_qmp_option("unix:/tmp/a,,b,server=on,nowait").path == "/tmp/a,b"
        t = parse_qmp_option("tcp::4444,server,wait=off")
        assert (t.kind, t.host, t.port, t.wait) == ("tcp", "127.0.0.1", 4444, False)
        assert parse_qmp_option("tcp:0.0.0.0:4444,server").host == "0.0.0.0"
        assert parse_qmp_option("tcp:[::1]:4444,server").host == "::1"
        assert str(parse_qmp_option("tcp:localhost:5,server")) == "tcp:localhost:5"

    @pytest.mark.parametrize("bad", ["unix:/tmp/x", "unix:,server", "tcp:host,server", "tcp:h:99999,server",
                                     "stdio,server", "unix:/x,server,wait=maybe", "unix:/x,server,color=on"])
    def test_errors_are_one_line(self, bad: str) -> None:
        with pytest.raises(ConfigError) as e:
            parse_qmp_option(bad)
        assert str(e.value).startswith("-qmp") and "\n" not in str(e.value)


# -- framing -------------------------------------------------------------------------------------------

class TestStreamer:
    def test_messages_split_like_qemus_streamer(self) -> None:
        s = JSONStreamer()
        assert s.feed(b'{"a": 1}{"b": [2, {"c": "}"}]}\n') == [{"a": 1}, {"b": [2, {"c": "}"}]}]
        assert s.feed(b'{"x":\n') == [] and s.pending
        assert s.feed(b' "\\"{"}') == [{"x": '"{'}]
        assert s.feed(b"42 ") == [42]
        assert s.feed(b'"str"') == ["str"]

    def test_incomplete_waits_then_errors(self) -> None:
        s = JSONStreamer()
        assert s.feed(b"{not json\n") == []
        [err] = s.feed(b"}\n")
        assert isinstance(err, QMPError) and err.desc == "JSON parse error, invalid keyword 'not'"

    def test_errors(self) -> None:
        s = JSONStreamer()
        out = s.feed(b'} {"a": 1, "a": 2} {"n": NaN} \xff\n')
        assert [e.desc for e in out] == ["JSON parse error, stray '}'", "JSON parse error, duplicate key 'a'",
                                         "JSON parse error, invalid keyword 'NaN'",
                                         "JSON parse error, invalid UTF-8 sequence"]

    def test_numbers_beyond_a_double_keep_their_text(self) -> None:
        [msg] = JSONStreamer().feed(b'{"id": [1e999, -1E+400, 0.5]}')
        assert msg == {"id": [VerbatimNumber("1e999"), VerbatimNumber("-1E+400"), 0.5]}
        assert encode_message(msg) == b'{"id": [1e999, -1E+400, 0.5]}\r\n'
        assert encode_message({"a": float("nan"), "b": [float("inf")]}) == b'{"a": null, "b": [null]}\r\n'

    def test_limits(self) -> None:
        [e] = JSONStreamer(max_bytes=100).feed(b'{"a": "' + b"x" * 200)
        assert isinstance(e, StreamLimitError) and "exceeds 100 bytes" in e.desc
        [e] = JSONStreamer(max_depth=8).feed(b"[" * 9)
        assert isinstance(e, StreamLimitError) and e.desc == "JSON nesting depth limit exceeded"


# -- qemu.qmp's QMPClient -----------------------------------------------------------------------------

class TestQMPClient:
    def test_unix_session(self) -> None:
        path = _sock_path()

        async def main() -> None:
            async with running(f"unix:{path},server") as (server, task):
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
                c = await connect(server)
                q = c.greeting.QMP
                assert q.capabilities == []
                major, minor, micro = (int(x) for x in __version__.split(".")[:3])
                assert q.version["qemu"] == {"micro": micro, "minor": minor, "major": major}
                assert await c.execute("query-status") == {"status": "running", "singlestep": False,
                                                           "running": True}
                assert (await c.execute("query-version"))["package"] == f"aemu {__version__}"
                names = {d["name"] for d in await c.execute("query-commands")}
                assert {"qmp_capabilities", "stop", "cont", "quit", "query-cpus-fast",
                        "human-monitor-command", "x-aemu-query-locks", "x-aemu-set-patch"} <= names
                cpus = await c.execute("query-cpus-fast")
                assert [x["cpu-index"] for x in cpus] == [0, 1, 2, 3]
                assert set(cpus[0]) >= {"thread-id", "props", "qom-path", "cpu-index", "target", "halted",
                                        "x-aemu-current-exit"}
                assert cpus[0]["target"] == "x86_64"

                listener = EventListener(("STOP", "RESUME", "SHUTDOWN"))
                with c.listen(listener):
                    assert await c.execute("stop") == {}
                    ev = await asyncio.wait_for(listener.get(), 3)
                    assert ev["event"] == "STOP" and set(ev["timestamp"]) == {"seconds", "microseconds"}
                    assert (await c.execute("query-status"))["status"] == "paused"
                    hmp = await c.execute("human-monitor-command", {"command-line": "info status"})
                    assert hmp == "VM status: paused\r\n"
                    await c.execute("cont")
                    assert (await asyncio.wait_for(listener.get(), 3))["event"] == "RESUME"
                    assert (await c.execute("query-status"))["running"] is True

                    with pytest.raises(ExecuteError) as e:
                        await c.execute("no-such-command")
                    assert e.value.error_class == "CommandNotFound"
                    assert e.value.error.error.desc == "The command no-such-command has not been found"
                    with pytest.raises(ExecuteError) as e:
                        await c.execute("query-status", {"bogus": 1})
                    assert (e.value.error_class, e.value.error.error.desc) == ("GenericError", "Parameter 'bogus' is unexpected")
                    with pytest.raises(ExecuteError) as e:
                        await c.execute("human-monitor-command", {"command-line": 5})
                    assert e.value.error.error.desc == "Invalid parameter type for 'command-line', expected: string"
                    with pytest.raises(ExecuteError) as e:
                        await c.execute("x-aemu-set-patch", {"name": "lockless-io", "on": False})
                    assert e.value.error_class == "GenericError" and "needs it" in e.value.error.error.desc

                    locks = await c.execute("x-aemu-query-locks")
                    assert set(locks) == {"bql", "hpet"}
                    assert set(locks["bql"]) == {"acquisitions", "contentions", "wait_ns", "hold_ns", "sites",
                                                 "holder_sites"}
                    ret = await c.execute("x-aemu-set-patch", {"name": "hpet-counter-lockless", "on": False})
                    assert {p["name"]: p["on"] for p in ret["patches"]}["hpet-counter-lockless"] is False

                    assert await c.execute("quit") == {}
                    ev = await asyncio.wait_for(listener.get(), 3)
                    assert ev["event"] == "SHUTDOWN" and ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
                result = await asyncio.wait_for(task, 5)
                await close(c)
                assert not result.interrupted and result.workload == "idle"
            assert not os.path.exists(path)

        run_async(main)

    def test_tcp_session_and_hmp(self) -> None:
        async def main() -> None:
            async with running("tcp:127.0.0.1:0,server", "-smp 2 -accel kvm,kernel-irqchip=split "
                               "--workload pmtimer-bench --series before --param reads=1000000") as (server, task):
                assert server.bound.host == "127.0.0.1" and server.bound.port > 0
                c = await connect(server)

                async def hmp(line: str) -> str:
                    out = await c.execute("human-monitor-command", {"command-line": line})
                    assert isinstance(out, str)
                    return out

                await asyncio.sleep(0.05)
                prof = await hmp("info sync-profile -n 5")
                lines = prof.split("\r\n")
                assert lines[0].startswith("Type               Object  Call site")
                assert any(line.startswith("BQL mutex") for line in lines)
                assert await hmp("sync-profile") == "sync-profile is on\r\n"
                assert await hmp("sync-profile reset") == ""
                assert await hmp("sync-profile bogus") == "invalid parameter 'bogus', expecting 'on', 'off', or 'reset'\r\n"
                assert "acpi-tmr" in await hmp("info mtree")
                assert (await hmp("info mtree -f")).startswith("FlatView #0")
                assert (await hmp("info cpus")).startswith("* CPU #0: thread_id=")
                assert await hmp("foo") == "unknown command: 'foo'\r\n"
                assert await hmp("info foo") == "unknown command: 'info foo'\r\n"
                assert "info sync-profile [-m] [-n] [max] -- " in await hmp("info")
                assert "stop|s  -- stop emulation\r\n" in await hmp("help")
                await c.execute("quit")
                await asyncio.wait_for(task, 5)
                await close(c)

        run_async(main)


# -- the protocol on the wire ---------------------------------------------------------------------------

class TestWire:
    def test_reference_shapes(self) -> None:
        path = _sock_path()

        async def main() -> None:
            async with running(f"unix:{path},server"):
                def talk() -> None:
                    r = Raw_(path)
                    g = r.recv()
                    assert list(g) == ["QMP"] and list(g["QMP"]) == ["version", "capabilities"]
                    r.send('{"execute": "query-status", "id": 1}\n')
                    line = r.recv_line()
                    assert line == (b'{"id": 1, "error": {"class": "CommandNotFound", "desc": '
                                    b'"Expecting capabilities negotiation with \'qmp_capabilities\'"}}')
                    r.send('{"execute": "qmp_capabilities", "arguments": {}, "id": 2}\n')
                    assert r.recv_line() == b'{"return": {}, "id": 2}'
                    r.send({"execute": "qmp_capabilities", "id": 3})
                    assert r.recv()["error"]["desc"] == "Capabilities negotiation is already complete, command ignored"
                    # id may be any JSON value; two messages on one line
                    r.send('{"execute": "query-status", "id": {"a": [1]}}{"execute": "cont", "id": "x"}\n')
                    assert r.recv()["id"] == {"a": [1]}
                    assert r.recv() == {"return": {}, "id": "x"}
                    # an incomplete message gets no reply until completed
                    r.send("{not json\n")
                    assert r.nothing_within(0.3)
                    r.send("}\n")
                    assert r.recv() == {"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'not'"}}
                    for bad, desc in [("[1, 2]", "QMP input must be a JSON object"),
                                      ("42", "QMP input must be a JSON object"),
                                      ('{"execute": 1, "id": 5}', "QMP input member 'execute' must be a string"),
                                      ('{"execute": "stop", "arguments": [], "id": 5}',
                                       "QMP input member 'arguments' must be an object"),
                                      ('{"execute": "stop", "foo": 1, "id": 5}', "QMP input member 'foo' is unexpected"),
                                      ('{"id": 5}', "QMP input lacks member 'execute'"),
                                      ('{"execute": "human-monitor-command", "arguments": {}, "id": 5}',
                                       "Parameter 'command-line' is missing"),
                                      ('{"execute": "x-aemu-set-patch", "arguments": {"name": "hpet-lock", "on": 1}}',
                                       "Invalid parameter type for 'on', expected: boolean"),
                                      ('{"execute": "human-monitor-command", "arguments": '
                                       '{"command-line": "help", "cpu-index": 99}}',
                                       "Parameter 'cpu-index' expects a CPU number"),
                                      ('{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}',
                                       "Capabilities negotiation is already complete, command ignored")]:
                        r.send(bad + "\n")
                        reply = r.recv()
                        assert reply["error"]["desc"] == desc, bad
                        assert ("id" in reply) == ('"id"' in bad)
                    # stop: the STOP event comes before the return
                    r.send({"execute": "stop", "id": 8})
                    ev = r.recv()
                    assert list(ev) == ["timestamp", "event"] and ev["event"] == "STOP"
                    assert r.recv() == {"return": {}, "id": 8}
                    r.send({"execute": "cont", "id": 9})
                    assert r.recv()["event"] == "RESUME" and r.recv() == {"return": {}, "id": 9}
                    r.close()

                await in_thread(talk)

        run_async(main)

    def test_an_id_beyond_a_double_is_echoed_verbatim_as_json(self) -> None:
        path = _sock_path()

        def strict(line: bytes) -> Any:
            return json.loads(line, parse_constant=lambda name: pytest.fail(f"not JSON: {name} in {line!r}"))

        async def main() -> None:
            async with running(f"unix:{path},server"):
                def talk() -> None:
                    r = Raw_(path)
                    r.negotiate()
                    r.send('{"execute": "cont", "id": 1e999}\n')
                    assert r.recv_line() == b'{"return": {}, "id": 1e999}'
                    r.send('{"execute": "cont", "id": [-1E+400, 2.5, {"k": 1e309}]}\n')
                    line = r.recv_line()
                    assert line == b'{"return": {}, "id": [-1E+400, 2.5, {"k": 1e309}]}'
                    assert strict(line)["id"][1] == 2.5
                    # as an argument it is a number of the wrong type, and the reply is JSON too
                    r.send('{"execute": "human-monitor-command", "arguments": {"command-line": 1e999}, "id": 1e999}\n')
                    line = r.recv_line()
                    assert strict(line)["error"]["desc"] == "Invalid parameter type for 'command-line', expected: string"
                    assert line.startswith(b'{"id": 1e999, "error": ')
                    r.close()

                await in_thread(talk)

        run_async(main)


class Raw_(Raw):
    """A raw unix-socket client on a path."""

    def __init__(self, path: str, timeout: float = 3.0) -> None:  # noqa: D107
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(timeout)
        self.buf = b""

    def recv_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line


# -- hostile clients ---------------------------------------------------------------------------------------

async def _alive(server: QMPServer) -> None:
    """Another client still gets served and the machine still runs."""
    c = await connect(server)
    assert (await c.execute("query-status"))["status"] in ("running", "paused")
    before = sum(c2["cpu-index"] for c2 in await c.execute("query-cpus-fast"))
    assert before == sum(range(4))
    await close(c)


class TestHostile:
    def test_2mb_line_gets_an_error_and_is_closed(self) -> None:
        path = _sock_path()

        async def main() -> None:
            async with running(f"unix:{path},server") as (server, task):
                def attack() -> None:
                    r = Raw_(path)
                    r.negotiate()
                    try:
                        r.send(b'{"execute": "' + b"a" * (2 << 20) + b'"}\n')
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # closed while we were still sending
                    reply = r.recv()
                    assert reply["error"]["class"] == "GenericError"
                    assert "exceeds 1048576 bytes" in reply["error"]["desc"]
                    with pytest.raises((EOFError, ConnectionResetError)):
                        r.recv()
                    r.close()

                await in_thread(attack)
                await _alive(server)
                assert not task.done()

        run_async(main)

    def test_deep_nesting_and_garbage(self) -> None:
        path = _sock_path()

        async def main() -> None:
            async with running(f"unix:{path},server") as (server, task):
                def attack() -> None:
                    r = Raw_(path)
                    r.negotiate()
                    r.send(b"\x00\xff garbage ] {\"execute\": \"query-status\", \"id\": 1}\n")
                    replies = [r.recv() for _ in range(4)]
                    assert replies[-1]["id"] == 1 and replies[-1]["return"]["running"] is True
                    r.send(b"[" * 10_000)
                    assert r.recv()["error"]["desc"] == "JSON nesting depth limit exceeded"
                    r.close()

                await in_thread(attack)
                await _alive(server)

        run_async(main)

    def test_disconnect_mid_command(self) -> None:
        path = _sock_path()

        async def main() -> None:
            async with running(f"unix:{path},server") as (server, task):
                def hit_and_run() -> None:
                    for cmd in ("stop", "cont", "query-cpus-fast", "stop"):
                        r = Raw_(path)
                        r.send(b'{"execute": "qmp_capabilities"}{"execute": "%s"}{"execute": "query-status"}'
                               % cmd.encode())
                        r.close()

                await in_thread(hit_and_run)
                c = await connect(server)
                # whether a client's last commands were read before it hung up is a race of real
                # sockets; what must hold is that the server goes on serving, in either state
                for _ in range(200):  # the hit-and-run clients are gone once the server has read them
                    if len(server.clients) == 1:
                        break
                    await asyncio.sleep(0.025)
                await c.execute("stop")
                assert (await c.execute("query-status"))["status"] == "paused"
                await c.execute("cont")
                assert (await c.execute("query-status"))["running"] is True
                await close(c)
                assert len(server.clients) == 0

        run_async(main)

    def test_32_clients_at_once(self) -> None:
        async def main() -> None:
            async with running("tcp:127.0.0.1:0,server") as (server, task):
                clients = await asyncio.gather(*(connect(server) for _ in range(32)))
                assert len(server.clients) == 32
                stats = await asyncio.gather(*(c.execute("query-status") for c in clients))
                assert all(s["running"] for s in stats)
                outs = await asyncio.gather(*(c.execute("human-monitor-command", {"command-line": "info cpus"})
                                              for c in clients))
                assert all(o.count("CPU #") == 4 for o in outs)
                listener = EventListener("STOP")
                with clients[5].listen(listener):
                    await clients[0].execute("stop")
                    assert (await asyncio.wait_for(listener.get(), 3))["event"] == "STOP"
                await clients[1].execute("cont")
                await asyncio.gather(*(close(c) for c in clients))

        run_async(main)

    def test_slow_client_is_bounded(self) -> None:
        path = _sock_path()

        async def main() -> None:
            async with running(f"unix:{path},server") as (server, task):
                server.max_output_bytes = 64 << 10
                slow = Raw_(path)
                await in_thread(slow.negotiate)
                slow.sock.setblocking(False)
                req = b'{"execute": "human-monitor-command", "arguments": {"command-line": "info mtree -f"}}'
                sent = blocked = 0
                deadline = time.monotonic() + 3
                while blocked < 10 and time.monotonic() < deadline:  # never read a reply
                    try:
                        slow.sock.send(req)
                        sent += 1
                        blocked = 0
                    except BlockingIOError:  # the server stopped reading it: backpressure
                        blocked += 1
                        await asyncio.sleep(0.01)
                assert blocked == 10
                await asyncio.sleep(0.2)
                [state] = [c for c in server.clients if c.negotiated]
                from aemu.monitor.qmp import OUTPUT_HIGH_WATER
                assert state.peak_queued <= OUTPUT_HIGH_WATER + (64 << 10)  # replies are paced, not piled up
                await _alive(server)  # others are served meanwhile
                # events that overflow the slow client's queue drop it
                c = await connect(server)
                for _ in range(400):
                    await c.execute("stop")
                    await c.execute("cont")
                    if server.dropped_clients:
                        break
                assert server.dropped_clients == 1
                assert (await c.execute("query-status"))["running"] is True
                await close(c)
                slow.close()

        run_async(main)


    def test_idle_connections_make_room_for_a_new_client(self) -> None:
        async def main() -> None:
            async with running("tcp:127.0.0.1:0,server") as (server, task):
                server.evict_idle_s = 0.3
                first = Raw(server)
                await in_thread(first.negotiate)
                idle = [Raw(server) for _ in range(server.max_clients - 1)]  # connect, never negotiate
                for r in idle:
                    await in_thread(r.recv)  # the greeting
                assert len(server.clients) == server.max_clients == 64

                def refused() -> None:  # nobody has been quiet for evict_idle_s yet
                    r = Raw(server)
                    with pytest.raises((EOFError, ConnectionResetError)):
                        r.recv()
                    r.close()

                await in_thread(refused)
                assert (server.refused_clients, server.evicted_clients) == (1, 0)
                await asyncio.sleep(0.35)
                c = await connect(server)  # evicts the oldest client that never negotiated
                assert (await c.execute("query-status"))["running"] is True
                assert server.evicted_clients == 1 and len(server.clients) == 64

                def check_victim() -> None:
                    with pytest.raises((EOFError, ConnectionResetError)):
                        idle[0].recv()
                    first.send({"execute": "query-status", "id": 1})  # a negotiated one kept its place
                    assert first.recv()["id"] == 1

                await in_thread(check_victim)
                await close(c)
                for r in [first, *idle]:
                    r.close()

        run_async(main)

    def test_a_client_that_does_not_read_costs_its_cap_not_more(self) -> None:
        class Stub:
            def greeting(self) -> dict[str, Any]:
                return {"QMP": {"version": {}, "capabilities": []}}

            async def handle(self, msg: Any, client: Any) -> Any:
                client.negotiated = True
                return {"return": {}}

        cap = 1 << 20

        async def main() -> None:
            server = QMPServer(Stub(), parse_qmp_option(f"unix:{_sock_path()},server"), max_output_bytes=cap)
            await server.start()
            slow = Raw_(server.address.path)
            await in_thread(slow.negotiate)
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                sent = 0
                while not server.dropped_clients:  # small events, as STOP/RESUME are
                    server.emit_event("STOP")
                    sent += 1
                    if sent % 100 == 0:
                        await asyncio.sleep(0)  # let the writer hand chunks to the transport
                peak = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
            assert sent * len(encode_message(event_message("STOP"))) > cap  # the cap was reached
            assert peak <= cap + (96 << 10), f"{peak:,} bytes held for a client capped at {cap:,}"
            slow.close()
            await server.close()

        run_async(main)


# -- qmp-shell ----------------------------------------------------------------------------------------------

def _qmp_shell(*args: str, stdin: str) -> str:
    exe = shutil.which("qmp-shell")
    cmd = [exe] if exe else [sys.executable, "-m", "qemu.qmp.qmp_shell"]
    p = subprocess.run([*cmd, *args], input=stdin, capture_output=True, text=True, timeout=8)
    assert p.returncode == 0, p.stderr
    return p.stdout


class TestQMPShell:
    def test_qmp_shell_and_hmp_shell(self) -> None:
        path = _sock_path()

        async def main() -> None:
            async with running(f"unix:{path},server") as (server, task):
                out = await in_thread(lambda: _qmp_shell(path, stdin="query-status\nno-such\nstop\nquery-status\n"))
                assert "Connected to QEMU 0.1.0" in out or f"Connected to QEMU {__version__}" in out
                assert '{"return": {"status": "running", "singlestep": false, "running": true}}' in out
                assert '"class": "CommandNotFound"' in out
                assert '"status": "paused"' in out
                out = await in_thread(lambda: _qmp_shell("-H", path, stdin="info status\ncont\ninfo status\n"
                                                         "info sync-profile 3\nsync-profile reset\nquit\n"))
                assert "VM status: paused" in out and "VM status: running" in out
                assert "Type               Object  Call site" in out
                result = await asyncio.wait_for(task, 5)
                assert not result.interrupted
            assert not os.path.exists(path)

        run_async(main)


# -- virtual time and the CLI ------------------------------------------------------------------------------

class TestVirtualTime:
    def test_wait_on_starts_paused_until_cont(self) -> None:
        path = _sock_path()
        got: dict[str, Any] = {}
        ready = threading.Event()

        def sim() -> None:
            got["result"] = run_with_monitor("-smp 4 --workload hpet-bench --param reads=50", f"unix:{path},server",
                                             realtime=False, on_listening=lambda s: ready.set())

        t = threading.Thread(target=sim, daemon=True)
        t.start()
        assert ready.wait(5)

        async def main() -> None:
            c = QMPClient("virtual")
            await c.connect(path)
            assert (await c.execute("query-status"))["status"] == "prelaunch"
            await asyncio.sleep(0.2)  # virtual time stands still: nothing ran
            cpus = await c.execute("query-cpus-fast")
            assert not any(x["x-aemu-finished"] for x in cpus)
            assert (await c.execute("x-aemu-query-locks"))["bql"]["acquisitions"] == 0
            listener = EventListener(("RESUME", "SHUTDOWN"))
            with c.listen(listener):
                await c.execute("cont")
                assert (await asyncio.wait_for(listener.get(), 3))["event"] == "RESUME"
                ev = await asyncio.wait_for(listener.get(), 5)
                assert ev["data"] == {"guest": True, "reason": "guest-shutdown"}
            await close(c)

        run_async(main)
        t.join(5)
        assert got["result"].finished and not os.path.exists(path)

    def test_a_tracer_and_a_duration_go_through(self) -> None:
        from aemu.trace import Tracer

        t = Tracer()
        r = run_with_monitor("-smp 2 --workload idle", f"unix:{_sock_path()},server,wait=off", realtime=False,
                             duration_s=0.002, tracer=t)
        assert r.virtual_ns == 2_000_000 and not r.finished and not r.interrupted
        assert t.spans and max(s[3] for s in t.spans) <= 2_000_000


class TestCLI:
    def test_aemu_run_realtime_qmp_quit_prints_report(self) -> None:
        path = _sock_path()
        p = subprocess.Popen([sys.executable, "-m", "aemu.cli", "run", "--realtime", "-smp", "2",
                              "--workload", "idle", "-qmp", f"unix:{path},server"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 6
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.02)

            async def main() -> None:
                c = QMPClient("cli")
                await c.connect(path)
                assert (await c.execute("query-status"))["running"] is True
                await c.execute("quit")
                await close(c)

            run_async(main)
            out, err = p.communicate(timeout=8)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 0, err
        assert f"QMP monitor on unix:{path}" in err
        assert "idle" in out
        assert not os.path.exists(path)

    def test_bad_qmp_option_is_one_line_exit_2(self) -> None:
        p = subprocess.run([sys.executable, "-m", "aemu.cli", "run", "-qmp", "unix:/tmp/x"],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 2
        assert p.stderr.startswith("aemu: -qmp") and p.stderr.count("\n") == 1

    def test_failed_tcp_bind_is_one_line_exit_2(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            # a port in use; an address that is not this host's (TEST-NET-1, RFC 5737)
            for spec, reason in ((f"tcp:127.0.0.1:{port},server", "Address already in use"),
                                 ("tcp:192.0.2.1:4444,server", "Cannot assign requested address")):
                p = subprocess.run([sys.executable, "-m", "aemu.cli", "run", "-smp", "2", "-qmp", spec],
                                   capture_output=True, text=True, timeout=20)
                assert p.returncode == 2, p.stderr
                assert p.stderr == f"aemu: -qmp: cannot listen on {spec.removesuffix(',server')}: {reason}\n"

    def test_failed_tcp_bind_raises_config_error(self) -> None:
        async def main() -> None:
            server = QMPServer(None, parse_qmp_option("tcp:nosuchhost.invalid:4444,server"))
            with pytest.raises(ConfigError, match=r"^-qmp: cannot listen on tcp:nosuchhost.invalid:4444: "):
                await server.start()

        run_async(main)


class TestVirtualStop:
    def test_stop_freezes_virtual_time_and_cont_resumes(self) -> None:
        path = _sock_path()
        got: dict[str, Any] = {}
        ready = threading.Event()
        config = ("-smp 2 -accel kvm,kernel-irqchip=split --series before --workload pmtimer-bench "
                  "--param reads=100000000 --duration 100s")

        def sim() -> None:
            got["result"] = run_with_monitor(config, f"unix:{path},server,wait=off", realtime=False,
                                             on_listening=lambda s: ready.set())

        t = threading.Thread(target=sim, daemon=True)
        t.start()
        assert ready.wait(5)

        async def main() -> None:
            c = QMPClient("virtual")
            await c.connect(path)
            assert (await c.execute("query-status"))["running"] is True
            await c.execute("stop")
            a = (await c.execute("x-aemu-query-locks"))["bql"]["acquisitions"]
            await asyncio.sleep(0.2)
            b = (await c.execute("x-aemu-query-locks"))["bql"]["acquisitions"]
            assert a == b > 0  # nothing moves while stopped
            await c.execute("cont")
            await asyncio.sleep(0.2)
            assert (await c.execute("x-aemu-query-locks"))["bql"]["acquisitions"] > b
            await c.execute("quit")
            await close(c)

        run_async(main)
        t.join(5)
        assert not t.is_alive() and not got["result"].interrupted
