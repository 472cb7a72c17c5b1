"""A run with a QMP monitor: the machine and the QMP server on one loop (``aemu run -qmp ...``).

Real time (:func:`serve` with ``realtime=True``, or ``aemu run --realtime -qmp ...``): with
``wait=on`` (the default) the machine starts when the first client connects, as QEMU waits for
its ``server,wait=on`` chardev; ``stop`` parks the vCPUs at their next entry and holds the main
loop's timers (wall time goes on). Virtual time: with ``wait=on`` the machine starts paused
(``prelaunch``) and virtual time stands still until a client sends ``cont``; while paused the loop
serves only the sockets.

The run ends with a ``SHUTDOWN`` event (``data.reason``): ``quit`` ("host-qmp-quit"), every
vCPU's program returned ("guest-shutdown", ``guest: true``), ``--duration`` reached ("none"), or
Ctrl-C / cancellation ("host-signal", the Result then has ``interrupted`` set). The server is
closed (the unix socket removed) and the run's :class:`~aemu.result.Result` returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .. import clock
from ..config import MachineConfig
from ..machine import DEFAULT_CAP_NS, Machine
from ..result import Result
from ..workloads.base import Workload
from .commands import Monitor
from .qmp import QMPAddress, QMPServer, parse_qmp_option

__all__ = ["run_with_monitor", "serve"]

T = TypeVar("T")


async def serve(config: MachineConfig | str, address: QMPAddress | str, *, realtime: bool = True,
                workload: Workload | None = None, duration_s: float | None = None,
                on_listening: Callable[[QMPServer], object] | None = None) -> Result:
    """Run ``config`` with a QMP server on ``address`` until quit, the end, the duration, or cancel.

    ``duration_s`` defaults to the config's ``--duration`` (wall seconds in real time, virtual
    seconds otherwise; a virtual-time run of a workload that ends has the usual 2 s cap).
    ``on_listening(server)`` is called once the socket listens (``server.bound`` has the port).
    """
    if isinstance(config, str):
        config = MachineConfig.parse(config)
    if isinstance(address, str):
        address = parse_qmp_option(address)
    machine = Machine(config, workload, realtime=realtime)
    if duration_s is None and config.duration_ns is not None:
        duration_s = config.duration_ns / clock.NS_PER_S
    if duration_s is None and not realtime and not machine.workload.open_ended:
        duration_s = DEFAULT_CAP_NS / clock.NS_PER_S
    start_paused = address.wait and not realtime
    monitor = Monitor(machine, start_paused=start_paused)
    server = QMPServer(monitor, address)
    monitor.emit = server.emit_event
    await server.start()
    reason, guest = "host-signal", False
    entered = False
    try:
        if on_listening is not None:
            on_listening(server)
        if realtime and address.wait:
            await server.first_client.wait()
        if start_paused:
            machine.pause()
        await machine.__aenter__()
        entered = True
        tasks = [c.task for c in machine.vcpus if c.task is not None]
        cpus = asyncio.ensure_future(asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION))
        quit_ = asyncio.ensure_future(monitor.quit_requested.wait())
        try:
            done, _ = await asyncio.wait({cpus, quit_}, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cpus.cancel()
            quit_.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        if quit_ in done:
            reason = "host-qmp-quit"
        elif cpus in done:
            reason, guest = "guest-shutdown", True
        else:
            reason = "none"
    except asyncio.CancelledError:
        machine.interrupted = True
    finally:
        monitor.shutdown(reason, guest=guest)
        if entered:
            machine.resume()  # unfreeze a paused loop so the tasks can be cancelled
            await machine.stop()
            if machine.interrupted:
                machine.interrupted = not machine.finished
        # after `quit` the client hangs up itself (qmp-shell reads its next line first): give it
        # a moment, so it does not see EOF mid-read, as it would not with QEMU's slower teardown
        await server.close(linger_s=1.0 if reason == "host-qmp-quit" else 0.0)
    return Result.from_machine(machine)


def run_with_monitor(config: MachineConfig | str, address: QMPAddress | str, *, realtime: bool = True,
                     workload: Workload | None = None, duration_s: float | None = None,
                     on_listening: Callable[[QMPServer], object] | None = None) -> Result:
    """:func:`serve` on a fresh loop: uvloop (asyncio if missing) in real time, else a virtual-time loop.
    Ctrl-C ends the run with its partial report."""
    coro = serve(config, address, realtime=realtime, workload=workload, duration_s=duration_s,
                 on_listening=on_listening)
    if not realtime:
        return clock.run(coro)
    return _run_host_loop(coro)


def _run_host_loop(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
