"""QMP commands: request checking, capability negotiation, argument typing, and the command table.

:class:`Monitor` is what the commands act on: the :class:`~aemu.machine.Machine`, the run state
(``prelaunch``/``running``/``paused``/``shutdown``, as ``query-status`` reports it) and the run's
controls (``quit``). :meth:`Monitor.handle` turns one decoded message into its reply the way
``qmp_dispatch()`` does, with QEMU 7.2's error classes and messages:

* not an object: ``GenericError`` "QMP input must be a JSON object";
* members: "QMP input lacks member 'execute'", "QMP input member 'execute' must be a string",
  "QMP input member 'arguments' must be an object", "QMP input member 'X' is unexpected";
* before ``qmp_capabilities``: ``CommandNotFound`` "Expecting capabilities negotiation with
  'qmp_capabilities'"; unknown: ``CommandNotFound`` "The command X has not been found";
* arguments (declared per command, checked in declaration order like QAPI's input visitor):
  "Parameter 'X' is missing", "Invalid parameter type for 'X', expected: string", then
  "Parameter 'X' is unexpected".

Commands: ``qmp_capabilities``, ``query-version``, ``query-commands``, ``query-status``,
``stop``/``cont`` (``STOP``/``RESUME`` events), ``query-cpus-fast``, ``quit`` (``SHUTDOWN``),
``human-monitor-command`` (see :mod:`aemu.monitor.hmp`), and aemu's ``x-aemu-query-locks`` (the
result document's ``locks``), ``x-aemu-query-patches`` and ``x-aemu-set-patch`` (flip a switch of
the BQL-free series at run time).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..patches import PATCHES
from ..errors import AemuError
from ..result import lock_dict
from ..sync import LockStatistics
from .qmp import STOP_TIMEOUT_S, QMPError

if TYPE_CHECKING:
    from ..machine import Machine

__all__ = ["COMMANDS", "Command", "Monitor", "aemu_version_triple"]

#: QAPI type name -> (check, name in the error message)
_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "string"),
    "bool": (lambda v: isinstance(v, bool), "boolean"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "integer"),
    "strlist": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "array of strings"),
}


def aemu_version_triple() -> dict[str, int]:
    """aemu's version as QEMU's ``{"micro", "minor", "major"}`` (key order as QEMU prints it)."""
    nums = [int(x) for x in re.findall(r"\d+", __version__)[:3]]
    nums += [0] * (3 - len(nums))
    return {"micro": nums[2], "minor": nums[1], "major": nums[0]}


def version_info() -> dict[str, Any]:
    """``VersionInfo``: the greeting's and ``query-version``'s payload."""
    return {"qemu": aemu_version_triple(), "package": f"aemu {__version__}"}


Handler = Callable[["Monitor", Any, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Command:
    """A QMP command: its handler and its typed arguments (name -> (type, required))."""

    name: str
    handler: Handler
    args: dict[str, tuple[str, bool]] = field(default_factory=dict)

    def check_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """Validate ``args`` like QAPI's input visitor; returns them with Python names."""
        out: dict[str, Any] = {}
        for name, (typ, required) in self.args.items():
            if name not in args:
                if required:
                    raise QMPError(f"Parameter '{name}' is missing")
                continue
            check, type_name = _TYPES[typ]
            if not check(args[name]):
                raise QMPError(f"Invalid parameter type for '{name}', expected: {type_name}")
            out[name.replace("-", "_")] = args[name]
        for name in args:
            if name not in self.args:
                raise QMPError(f"Parameter '{name}' is unexpected")
        return out


class Monitor:
    """The monitor's side of a run: the machine, the run state and the run's controls.

    ``emit(name, data)`` sends an event (the runner connects it to the server). ``quit`` sets
    :attr:`quit_requested` right after its reply is queued.
    """

    def __init__(self, machine: Machine, *, start_paused: bool = False) -> None:
        self.machine = machine
        #: QEMU's RunState as query-status reports it.
        self.runstate = "prelaunch" if start_paused else "running"
        self.emit: Callable[[str, dict[str, Any] | None], None] = _no_event
        self.quit_requested = asyncio.Event()
        #: ``sync-profile on|off``: while off, ``info sync-profile`` shows the snapshot taken at ``off``.
        self.profiling = True
        self._profile_frozen: list[LockStatistics] | None = None
        self._busy = asyncio.Lock()
        self._stand_in_tid = os.getpid() + 1

    # -- protocol ------------------------------------------------------------------------------
    def greeting(self) -> dict[str, Any]:
        """The greeting sent on connect."""
        return {"QMP": {"version": version_info(), "capabilities": []}}

    async def handle(self, msg: Any, client: Any) -> dict[str, Any] | None:
        """One request -> its reply (``client.negotiated`` is updated by ``qmp_capabilities``)."""
        if not isinstance(msg, dict):
            return {"error": QMPError("QMP input must be a JSON object").to_dict()}
        has_id = "id" in msg
        try:
            name, args = _check_request(msg)
            if not client.negotiated and name != "qmp_capabilities":
                raise QMPError("Expecting capabilities negotiation with 'qmp_capabilities'", "CommandNotFound")
            cmd = COMMANDS.get(name)
            if cmd is None:
                raise QMPError(f"The command {name} has not been found", "CommandNotFound")
            kwargs = cmd.check_args(args)
            async with self._busy:  # one command at a time, as in QEMU's main loop
                ret = await cmd.handler(self, client, kwargs)
        except QMPError as e:
            return {"id": msg["id"], "error": e.to_dict()} if has_id else {"error": e.to_dict()}
        reply: dict[str, Any] = {"return": ret}
        if has_id:
            reply["id"] = msg["id"]
        return reply

    # -- run control (shared with HMP) -----------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the VM runs (query-status's ``running``)."""
        return self.runstate == "running"

    async def stop(self) -> None:
        """``stop``: park the vCPUs, hold virtual time / the main loop's timers; STOP event."""
        if self.runstate == "running":
            self.machine.pause()
            await self.machine.wait_paused(STOP_TIMEOUT_S)
            self.runstate = "paused"
            self.emit("STOP", None)
        elif self.runstate == "prelaunch":
            self.runstate = "paused"

    async def cont(self) -> None:
        """``cont``: resume the vCPUs and time; RESUME event."""
        if self.runstate == "shutdown":
            raise QMPError("The machine has shut down")
        if self.runstate != "running":
            self.machine.resume()
            self.runstate = "running"
            self.emit("RESUME", None)

    def request_quit(self) -> None:
        """``quit``: end the run once the reply is on its way."""
        asyncio.get_running_loop().call_soon(self.quit_requested.set)

    def shutdown(self, reason: str, *, guest: bool = False) -> None:
        """The run ends: SHUTDOWN event (once)."""
        if self.runstate == "shutdown":
            return
        self.runstate = "shutdown"
        self.emit("SHUTDOWN", {"guest": guest, "reason": reason})

    # -- views -------------------------------------------------------------------------------------
    def thread_id(self, index: int) -> int:
        """A stand-in for the vCPU thread's id (vCPUs are tasks, not threads, in aemu)."""
        return self._stand_in_tid + index

    def lock_statistics(self) -> list[LockStatistics]:
        """Every lock's statistics now (or as frozen by ``sync-profile off``)."""
        if not self.profiling and self._profile_frozen is not None:
            return self._profile_frozen
        return [lock.statistics() for lock in self.machine.all_locks()]

    def set_profiling(self, on: bool) -> None:
        """``sync-profile on|off``."""
        if on:
            self.profiling = True
            self._profile_frozen = None
        elif self.profiling:
            self._profile_frozen = [lock.statistics() for lock in self.machine.all_locks()]
            self.profiling = False

    def reset_profile(self) -> None:
        """``sync-profile reset``: a new accounting window for every lock."""
        for lock in self.machine.all_locks():
            lock.reset()
        if self._profile_frozen is not None:
            self._profile_frozen = [lock.statistics() for lock in self.machine.all_locks()]


def _no_event(name: str, data: dict[str, Any] | None = None) -> None:
    return None


def _check_request(msg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``qmp_dispatch_check_obj``: the command name and its arguments."""
    for key, val in msg.items():
        if key == "execute":
            if not isinstance(val, str):
                raise QMPError("QMP input member 'execute' must be a string")
        elif key == "arguments":
            if not isinstance(val, dict):
                raise QMPError("QMP input member 'arguments' must be an object")
        elif key != "id":
            raise QMPError(f"QMP input member '{key}' is unexpected")
    if "execute" not in msg:
        raise QMPError("QMP input lacks member 'execute'")
    return msg["execute"], msg.get("arguments", {})


# -- the commands ------------------------------------------------------------------------------------

async def _qmp_capabilities(mon: Monitor, client: Any, a: dict[str, Any]) -> dict[str, Any]:
    if client.negotiated:
        raise QMPError("Capabilities negotiation is already complete, command ignored", "CommandNotFound")
    for cap in a.get("enable", []):
        if cap == "oob":
            raise QMPError("Capability 'oob' not available")
        raise QMPError(f"Parameter 'enable' does not accept value '{cap}'")
    client.negotiated = True
    return {}


async def _query_version(mon: Monitor, client: Any, a: dict[str, Any]) -> dict[str, Any]:
    return version_info()


async def _query_commands(mon: Monitor, client: Any, a: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": name} for name in COMMANDS]


async def _query_status(mon: Monitor, client: Any, a: dict[str, Any]) -> dict[str, Any]:
    return {"status": mon.runstate, "singlestep": False, "running": mon.running}


async def _stop(mon: Monitor, client: Any, a: dict[str, Any]) -> dict[str, Any]:
    await mon.stop()
    return {}


async def _cont(mon: Monitor, client: Any, a: dict[str, Any]) -> dict[str, Any]:
    await mon.cont()
    return {}


async def _quit(mon: Monitor, client: Any, a: dict[str, Any]) -> dict[str, Any]:
    mon.request_quit()
    return {}


async def _query_cpus_fast(mon: Monitor, client: Any, a: dict[str, Any]) -> list[dict[str, Any]]:
    smp = mon.machine.config.smp
    threads, cores = max(1, smp.threads), max(1, smp.cores)
    out = []
    for cpu in mon.machine.vcpus:
        i = cpu.index
        out.append({
            "thread-id": mon.thread_id(i),
            "props": {"core-id": (i // threads) % cores, "thread-id": i % threads,
                      "socket-id": i // (threads * cores)},
            "qom-path": f"/machine/unattached/device[{i}]",
            "cpu-index": i,
            "target": "x86_64",
            "halted": cpu.halted,
            "x-aemu-current-exit": cpu.current_exit,
            "x-aemu-finished": cpu.finished,
        })
    return out


async def _human_monitor_command(mon: Monitor, client: Any, a: dict[str, Any]) -> str:
    from .hmp import execute_hmp

    cpu_index = a.get("cpu_index", 0)
    if not 0 <= cpu_index < len(mon.machine.vcpus):
        raise QMPError("Parameter 'cpu-index' expects a CPU number")
    return await execute_hmp(mon, a["command_line"], cpu_index)


async def _query_locks(mon: Monitor, client: Any, a: dict[str, Any]) -> dict[str, Any]:
    return {("bql" if st.name == "BQL" else st.name): lock_dict(st) for st in mon.lock_statistics()}


def _patches(mon: Monitor) -> dict[str, Any]:
    on = mon.machine.host.patches
    return {"patches": [{"name": p, "on": p in on, "needs": list(PATCHES[p])} for p in PATCHES]}


async def _query_patches(mon: Monitor, client: Any, a: dict[str, Any]) -> dict[str, Any]:
    return _patches(mon)


async def _set_patch(mon: Monitor, client: Any, a: dict[str, Any]) -> dict[str, Any]:
    try:
        mon.machine.set_patch(a["name"], a["on"])
    except AemuError as e:
        raise QMPError(str(e)) from None
    return _patches(mon)


COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("qmp_capabilities", _qmp_capabilities, {"enable": ("strlist", False)}),
    Command("query-version", _query_version),
    Command("query-commands", _query_commands),
    Command("query-status", _query_status),
    Command("stop", _stop),
    Command("cont", _cont),
    Command("quit", _quit),
    Command("query-cpus-fast", _query_cpus_fast),
    Command("human-monitor-command", _human_monitor_command,
            {"command-line": ("str", True), "cpu-index": ("int", False)}),
    Command("x-aemu-query-locks", _query_locks),
    Command("x-aemu-query-patches", _query_patches),
    Command("x-aemu-set-patch", _set_patch, {"name": ("str", True), "on": ("bool", True)}),
]}
