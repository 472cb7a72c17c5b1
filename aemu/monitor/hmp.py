"""HMP, the human monitor, as QMP's ``human-monitor-command`` runs it.

Commands (``help`` prints them in QEMU's ``name params -- help`` form, which ``qmp-shell -H`` reads
for completion): ``info mtree [-f] [-D]``, ``info sync-profile [-m] [-n] [max]``,
``sync-profile [on|off|reset]``, ``info cpus``, ``info status``, ``info version``, ``stop``,
``cont``, ``quit``, ``help [cmd]``. Output lines end with CRLF, as QEMU's monitor writes them. As in
QEMU, a mistake in an HMP command line is reported in the returned text (``unknown command:
'foo'``), not as a QMP error. The command line is only split on whitespace and looked up in the
fixed tables below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..errors import AemuError
from ..memory import mtree_text
from ..report.sync_profile import format_sync_profile, parse_sync_profile_args
from .commands import Monitor, version_info

__all__ = ["HMP_COMMANDS", "INFO_COMMANDS", "HMPCommand", "execute_hmp"]

HMPHandler = Callable[[Monitor, list[str], int], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class HMPCommand:
    """One HMP command: ``names`` as QEMU writes them (``cont|c``), its params and help text."""

    names: str
    params: str
    help: str
    handler: HMPHandler

    def matches(self, word: str) -> bool:
        return word in self.names.split("|")

    def help_line(self, prefix: str = "") -> str:
        """``help_cmd_dump_one``: ``prefix name params -- help``."""
        return f"{prefix}{self.names} {self.params} -- {self.help}\n"


# -- info subcommands --------------------------------------------------------------------------------

async def _info_cpus(mon: Monitor, args: list[str], cpu_index: int) -> str:
    out = []
    for cpu in mon.machine.vcpus:
        mark = "*" if cpu.index == cpu_index else " "
        state = " (halted)" if cpu.halted else (" (finished)" if cpu.finished else "")
        out.append(f"{mark} CPU #{cpu.index}: thread_id={mon.thread_id(cpu.index)}{state} exit={cpu.current_exit}\n")
    return "".join(out)


async def _info_status(mon: Monitor, args: list[str], cpu_index: int) -> str:
    if mon.runstate == "running":
        return "VM status: running\n"
    if mon.runstate == "paused":
        return "VM status: paused\n"
    return f"VM status: paused ({mon.runstate})\n"


async def _info_version(mon: Monitor, args: list[str], cpu_index: int) -> str:
    v = version_info()
    q = v["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']} ({v['package']})\n"


async def _info_mtree(mon: Monitor, args: list[str], cpu_index: int) -> str:
    flat = disabled = False
    for tok in args:
        if tok == "-f":
            flat = True
        elif tok == "-D":
            disabled = True
        else:
            return f"info mtree: unsupported option {tok!r}; usage: info mtree [-f] [-D]\n"
    m = mon.machine
    return mtree_text(m.io, m.memory, flat=flat, disabled=disabled)


async def _info_sync_profile(mon: Monitor, args: list[str], cpu_index: int) -> str:
    try:
        opts = parse_sync_profile_args(" ".join(args))
        return format_sync_profile(mon.lock_statistics(), **opts)
    except AemuError as e:
        return f"{e}\n"


INFO_COMMANDS: list[HMPCommand] = [
    HMPCommand("cpus", "", "show infos for each CPU", _info_cpus),
    HMPCommand("mtree", "[-f][-D]", "show memory tree (-f: dump flat view for address spaces; "
               "-D: dump disabled regions)", _info_mtree),
    HMPCommand("status", "", "show the current VM status (running|paused)", _info_status),
    HMPCommand("sync-profile", "[-m] [-n] [max]", "show synchronization profiling info, up to max entries "
               "(default: 10), sorted by total wait time. (-m: sort by mean wait time; -n: do not "
               "coalesce objects with the same call site)", _info_sync_profile),
    HMPCommand("version", "", "show the version of QEMU", _info_version),
]


# -- top-level commands ------------------------------------------------------------------------------

def _help_text(args: list[str]) -> str:
    if not args:
        return "".join(c.help_line() for c in HMP_COMMANDS)
    if args[0] == "info":
        if len(args) == 1:
            return "".join(c.help_line("info ") for c in INFO_COMMANDS)
        for c in INFO_COMMANDS:
            if c.matches(args[1]):
                return c.help_line("info ")
        return f"unknown command: 'info {args[1]}'\n"
    for c in HMP_COMMANDS:
        if c.matches(args[0]):
            return c.help_line()
    return f"unknown command: '{args[0]}'\n"


async def _help(mon: Monitor, args: list[str], cpu_index: int) -> str:
    return _help_text(args)


async def _info(mon: Monitor, args: list[str], cpu_index: int) -> str:
    if not args:
        return _help_text(["info"])
    for c in INFO_COMMANDS:
        if c.matches(args[0]):
            return await c.handler(mon, args[1:], cpu_index)
    return f"unknown command: 'info {args[0]}'\n"


async def _stop(mon: Monitor, args: list[str], cpu_index: int) -> str:
    await mon.stop()
    return ""


async def _cont(mon: Monitor, args: list[str], cpu_index: int) -> str:
    try:
        await mon.cont()
    except Exception as e:
        return f"{e}\n"
    return ""


async def _quit(mon: Monitor, args: list[str], cpu_index: int) -> str:
    mon.request_quit()
    return ""


async def _sync_profile(mon: Monitor, args: list[str], cpu_index: int) -> str:
    if not args:
        return f"sync-profile is {'on' if mon.profiling else 'off'}\n"
    op = args[0]
    if len(args) > 1:
        return f"sync-profile: too many arguments; usage: sync-profile [on|off|reset]\n"
    if op == "on":
        mon.set_profiling(True)
    elif op == "off":
        mon.set_profiling(False)
    elif op == "reset":
        mon.reset_profile()
    else:
        return f"invalid parameter '{op}', expecting 'on', 'off', or 'reset'\n"
    return ""


HMP_COMMANDS: list[HMPCommand] = [
    HMPCommand("cont|c", "", "resume emulation", _cont),
    HMPCommand("help|?", "[cmd]", "show the help", _help),
    HMPCommand("info", "[subcommand]", "show various information about the system state", _info),
    HMPCommand("quit|q", "", "quit the emulator", _quit),
    HMPCommand("stop|s", "", "stop emulation", _stop),
    HMPCommand("sync-profile", "[on|off|reset]", "enable, disable or reset synchronization profiling. "
               "With no arguments, prints whether profiling is on or off.", _sync_profile),
]


async def execute_hmp(mon: Monitor, command_line: str, cpu_index: int = 0) -> str:
    """Run one HMP command line; its output with CRLF line ends (QEMU's monitor output)."""
    words = command_line.split()
    if not words:
        return ""
    for c in HMP_COMMANDS:
        if c.matches(words[0]):
            text = await c.handler(mon, words[1:], cpu_index)
            break
    else:
        text = f"unknown command: '{words[0]}'\n"
    return text.replace("\r\n", "\n").replace("\n", "\r\n")
