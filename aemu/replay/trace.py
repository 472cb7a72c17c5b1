"""QEMU trace-event logs: the parser and the trace summary.

QEMU traces every call of a region's read/write handler (``memory_region_read_accessor`` /
``memory_region_write_accessor`` in ``system/memory.c``, ``softmmu/memory.c`` before 8.0) as the
trace events ``memory_region_ops_read`` / ``memory_region_ops_write``::

    [pid@seconds.micros:]memory_region_ops_read cpu 0 mr 0x5565... addr 0x71 value 0x0 size 1 name 'rtc'

* ``cpu`` is ``current_cpu->cpu_index``, or -1 when no vCPU is running the access (a device's own
  DMA or MSI write, e.g. the HPET or AHCI signalling an interrupt); below -1 the line is malformed.
* ``addr`` is **absolute**: the accessor passes ``memory_region_to_absolute_addr(mr, addr)``, which
  adds the region's offset and that of every container up to the root of its address space. It is
  an I/O port for regions in the ``I/O`` space and a guest-physical address for regions in
  ``memory`` (``rtc`` at 0x71, ``apic-msi`` at 0xfee00000), not the offset inside the region.
* One line is one handler call, after ``access_with_adjusted_size`` split or widened the guest's
  access to the region's ``impl`` sizes; ``size`` is the handler's size.
* The ``pid@seconds.micros:`` prefix appears with ``-msg timestamp=on``; the "pid" is the id of
  the thread that logged (one per vCPU under MTTCG), the time is host wall-clock.

:func:`load_trace` reads a file (plain text or gzip, told apart by the magic bytes) into a
:class:`Trace` of :class:`Access` records; :func:`parse_trace` does the same for lines already in
memory. Lines of other trace events are ignored (and counted); anything else is a
:class:`TraceError` naming the line, unless ``lenient=True``, which skips and counts it: so is a
line cut short inside the event name, and a line that is not UTF-8 text (binary data, named by its
byte offset and never echoed). A file with no lines at all is an empty file, not a trace.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from ..errors import AemuError

__all__ = ["Access", "Trace", "TraceError", "TraceSummary", "load_trace", "parse_trace"]

_GZIP_MAGIC = b"\x1f\x8b"
_SIZES = (1, 2, 4, 8)
#: the two events replayed
EVENTS = ("memory_region_ops_read", "memory_region_ops_write")

_ACCESS_RE = re.compile(
    r"(?:(\d+)@(\d+)\.(\d+):)?memory_region_ops_(read|write) cpu (-?\d+) mr (\S+) "
    r"addr 0x([0-9a-fA-F]+) value 0x([0-9a-fA-F]+) size (\d+) name '(.*)'\s*\Z")
_PREFIX_RE = re.compile(r"(\d+)@(\d+)\.(\d+):")
#: another trace event (QEMU's event names are lower-case words joined by underscores)
_OTHER_EVENT_RE = re.compile(r"(?:\d+@\d+\.\d+:)?[a-z0-9]+_[a-z0-9_]*(?:\s|\Z)")
#: how many line numbers of skipped lines a Trace keeps (the count goes on)
MAX_SKIPPED_LINES = 20


class TraceError(AemuError, ValueError):
    """A trace file that cannot be replayed: unreadable, empty, without access lines, or a
    malformed line (``line`` is then its 1-based number)."""

    def __init__(self, message: str, *, source: str = "", line: int | None = None) -> None:
        where = f"{source}:{line}: " if source and line is not None else (f"{source}: " if source else "")
        super().__init__(where + message)
        self.source = source
        self.line = line


@dataclass(frozen=True, slots=True)
class Access:
    """One ``memory_region_ops_read/write`` line: a handler call QEMU made."""

    #: 1-based line number in the file
    line: int
    #: ``current_cpu->cpu_index``; -1 for an access from no vCPU (device DMA/MSI)
    cpu: int
    is_write: bool
    #: absolute address: I/O port or guest-physical (``memory_region_to_absolute_addr``)
    addr: int
    #: the value written, or the value the handler returned for a read
    value: int
    size: int
    #: the region's name (``mr->name``)
    region: str
    #: host time of the line in ns since the epoch (``-msg timestamp=on``), or None
    time_ns: int | None


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """What a trace holds: per-region counts, vCPUs, time span."""

    source: str
    lines: int
    accesses: int
    skipped: int
    other_events: int
    #: region name -> (reads, writes), as in the trace
    regions: dict[str, tuple[int, int]]
    #: vCPU indices seen (cpu -1 excluded)
    cpus: tuple[int, ...]
    #: accesses per vCPU index (cpu -1 included)
    per_cpu: dict[int, int]
    #: accesses with cpu -1 (from device context)
    device_accesses: int
    start_ns: int | None
    end_ns: int | None

    @property
    def span_ns(self) -> int | None:
        """Time from the first to the last access (None without timestamps)."""
        if self.start_ns is None or self.end_ns is None:
            return None
        return self.end_ns - self.start_ns

    def format(self) -> str:
        """A short text table (for ``aemu replay`` and the examples)."""
        span = "no timestamps" if self.span_ns is None else f"{self.span_ns / 1e6:,.3f} ms (host time)"
        cpus = ", ".join(f"{c}: {self.per_cpu.get(c, 0):,}" for c in self.cpus)
        out = [f"trace {self.source}: {self.lines:,} lines, {self.accesses:,} accesses, span {span}",
               f"  vCPUs {cpus}; cpu -1 (device context): {self.device_accesses:,}"]
        if self.skipped or self.other_events:
            out.append(f"  skipped {self.skipped:,} malformed lines, ignored {self.other_events:,} other events")
        width = max((len(n) for n in self.regions), default=6)
        out.append(f"  {'region':<{width}} {'reads':>9} {'writes':>9}")
        for name, (r, w) in sorted(self.regions.items(), key=lambda kv: (-sum(kv[1]), kv[0])):
            out.append(f"  {name:<{width}} {r:>9,} {w:>9,}")
        return "\n".join(out)


@dataclass(frozen=True, slots=True)
class Trace:
    """A parsed trace: its access records in file order, and how the lines went."""

    source: str
    accesses: tuple[Access, ...]
    lines: int
    #: malformed lines skipped with ``lenient=True``
    skipped: int = 0
    #: line numbers of the first skipped lines (at most MAX_SKIPPED_LINES)
    skipped_lines: tuple[int, ...] = ()
    #: lines of other trace events (ignored)
    other_events: int = 0

    @property
    def has_timestamps(self) -> bool:
        """True if every access carries a ``pid@seconds.micros:`` time."""
        return all(a.time_ns is not None for a in self.accesses)

    @property
    def cpus(self) -> tuple[int, ...]:
        """The vCPU indices that made accesses (cpu -1 excluded), sorted."""
        return tuple(sorted({a.cpu for a in self.accesses if a.cpu >= 0}))

    @property
    def recorded_vcpus(self) -> int:
        """How many vCPUs made accesses (at least 1): what ``aemu replay`` runs on without ``-smp``."""
        return max(len(self.cpus), 1)

    def by_cpu(self) -> dict[int, list[Access]]:
        """Each vCPU's accesses (cpu -1 included) in file order."""
        out: dict[int, list[Access]] = {}
        for a in self.accesses:
            out.setdefault(a.cpu, []).append(a)
        return out

    def region_counts(self) -> dict[str, tuple[int, int]]:
        """Region name -> (reads, writes)."""
        reads: dict[str, int] = {}
        writes: dict[str, int] = {}
        for a in self.accesses:
            d = writes if a.is_write else reads
            d[a.region] = d.get(a.region, 0) + 1
        return {n: (reads.get(n, 0), writes.get(n, 0)) for n in sorted(reads.keys() | writes.keys())}

    def summary(self) -> TraceSummary:
        """Per-region counts, vCPUs seen, time span, cpu -1 count."""
        per_cpu: dict[int, int] = {}
        for a in self.accesses:
            per_cpu[a.cpu] = per_cpu.get(a.cpu, 0) + 1
        times = [a.time_ns for a in self.accesses if a.time_ns is not None]
        return TraceSummary(self.source, self.lines, len(self.accesses), self.skipped, self.other_events,
                            self.region_counts(), self.cpus, dict(sorted(per_cpu.items())),
                            per_cpu.get(-1, 0), min(times) if times else None, max(times) if times else None)

    def head(self, n: int) -> Trace:
        """The accesses among the first ``n`` lines (a smaller trace for smoke runs)."""
        return Trace(self.source, tuple(a for a in self.accesses if a.line <= n), min(n, self.lines),
                     sum(1 for x in self.skipped_lines if x <= n), tuple(x for x in self.skipped_lines if x <= n),
                     self.other_events)


# -- parsing ------------------------------------------------------------------------------------

def _time_ns(sec: str, frac: str) -> int:
    return int(sec) * 1_000_000_000 + int(frac) * 10 ** (9 - len(frac)) if len(frac) <= 9 else \
        int(sec) * 1_000_000_000 + int(frac[:9])


def _diagnose(text: str) -> str:
    """Say what is wrong with a line that looks like an access line but does not parse."""
    head = text.split("memory_region_ops_", 1)[0]
    m = _PREFIX_RE.fullmatch(head)
    if head and m is None:
        return f"bad 'pid@seconds.micros:' prefix {head!r}"
    rest = text[len(head):]
    if not rest.startswith(EVENTS):
        return f"expected {EVENTS[0]!r} or {EVENTS[1]!r} after the prefix"
    tokens = rest.split(" ")
    expect = (("cpu", r"-?\d+", "a vCPU index or -1"), ("mr", r"\S+", "the region pointer"),
              ("addr", r"0x[0-9a-fA-F]+", "a hex address"), ("value", r"0x[0-9a-fA-F]+", "a hex value"),
              ("size", r"\d+", "a size of 1, 2, 4 or 8"))
    i = 1
    for key, pattern, what in expect:
        if i + 1 >= len(tokens) or tokens[i] != key:
            got = tokens[i] if i < len(tokens) else "end of line"
            return f"expected field {key!r}, got {got!r}"
        if re.fullmatch(pattern, tokens[i + 1]) is None:
            return f"field {key!r}: expected {what}, got {tokens[i + 1]!r}"
        i += 2
    size = int(tokens[i - 1])
    if size not in _SIZES:
        return f"field 'size': {size} is not 1, 2, 4 or 8"
    if i >= len(tokens) or tokens[i] != "name":
        return "expected field 'name' after 'size'"
    tail = " ".join(tokens[i + 1:]).rstrip()
    if not (len(tail) >= 2 and tail[0] == "'" and tail[-1] == "'"):
        return f"field 'name': expected a quoted region name, got {tail!r}"
    return "unexpected text"


def parse_trace(lines: Iterable[str], *, source: str = "<lines>", lenient: bool = False) -> Trace:
    """Parse trace lines (see module docstring) into a :class:`Trace`.

    Raises :class:`TraceError` for a malformed line (unless ``lenient``), for no lines at all, and
    for lines without a single access. A line :func:`load_trace` found to be binary data is
    reported by its byte offset, never echoed.
    """
    accesses: list[Access] = []
    append = accesses.append
    match = _ACCESS_RE.match
    skipped = 0
    skipped_lines: list[int] = []
    other = 0
    n = 0
    nonblank = 0
    for n, raw in enumerate(lines, 1):
        text = raw.rstrip("\r\n")
        m = match(text)
        if m is not None:
            nonblank += 1
            _pid, sec, frac, op, cpu, _mr, addr, value, size, name = m.groups()
            sz = int(size)
            index = int(cpu)
            if sz in _SIZES and index >= -1:
                append(Access(n, index, op == "write", int(addr, 16), int(value, 16), sz, name,
                              None if sec is None else _time_ns(sec, frac)))
                continue
            problem = (f"field 'size': {sz} is not 1, 2, 4 or 8" if sz not in _SIZES else
                       f"field 'cpu': {index} is neither a vCPU index nor -1 (no vCPU)")
        elif not text.strip():
            continue
        elif isinstance(raw, _BinaryLine):
            nonblank += 1
            if not lenient:
                hint = " (use --lenient to skip malformed lines)" if accesses else ""
                raise TraceError(f"not a text trace: binary data at byte offset {raw.offset:,} (the line starts "
                                 f"{raw.head!r}){hint}", source=source, line=n)
            problem = "binary data"
        else:
            nonblank += 1
            event = _event_name(text)
            if event and any(e.startswith(event) and e != event for e in EVENTS) and text.endswith(event):
                problem = f"line cut short: {event!r} is the start of {EVENTS[0]!r} or {EVENTS[1]!r}"
            elif "memory_region_ops_" not in text and _OTHER_EVENT_RE.match(text) is not None:
                other += 1
                continue
            else:
                problem = (_diagnose(text) if "memory_region_ops_" in text else
                           "not a QEMU trace line (expected '[pid@seconds.micros:]memory_region_ops_read|write "
                           "cpu N mr P addr 0xA value 0xV size S name 'NAME'')")
        if not lenient:
            shown = text if len(text) <= 120 else text[:117] + "..."
            raise TraceError(f"{problem}: {shown!r} (use --lenient to skip malformed lines)",
                             source=source, line=n)
        skipped += 1
        if len(skipped_lines) < MAX_SKIPPED_LINES:
            skipped_lines.append(n)
    if n == 0:
        raise TraceError("empty file, not a trace (capture one with -trace enable=memory_region_ops_read "
                         "-trace enable=memory_region_ops_write)", source=source)
    if nonblank == 0:
        raise TraceError("empty trace: only blank lines (capture with -trace enable=memory_region_ops_read "
                         "-trace enable=memory_region_ops_write)", source=source)
    if not accesses:
        what = f"{n:,} lines, {other:,} other events" + (f", {skipped:,} malformed skipped" if skipped else "")
        raise TraceError(f"no memory_region_ops_read/write lines ({what}); capture with "
                         "-trace enable=memory_region_ops_read -trace enable=memory_region_ops_write",
                         source=source)
    return Trace(source, tuple(accesses), n, skipped, tuple(skipped_lines), other)


def _event_name(text: str) -> str:
    """The trace event's name: the first word after the optional ``pid@seconds.micros:`` prefix."""
    m = _PREFIX_RE.match(text)
    rest = text[m.end():] if m is not None else text
    return rest.split(" ", 1)[0]


#: longest line read as one (a QEMU trace line is about 150 bytes); longer ones come in pieces
MAX_LINE_BYTES = 1 << 16
_BLOCK = 1 << 20


class _BinaryLine(str):
    """Stands for a line that is not UTF-8 text or holds a NUL: where, and its first bytes."""

    offset: int
    head: bytes

    def __new__(cls, offset: int, head: bytes) -> _BinaryLine:
        self = super().__new__(cls, "\0")
        self.offset = offset
        self.head = head
        return self


def _open_lines(path: str | os.PathLike[str]) -> Iterator[str]:
    with open(path, "rb") as f:
        magic = f.read(2)
    with (gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")) as b:
        yield from _text_lines(b.read)


def _text_lines(read: Callable[[int], bytes]) -> Iterator[str]:
    """The lines ``read`` gives (without their newline) as UTF-8 text, decoded a block at a time; a line
    with a NUL or with bytes that are not UTF-8 comes as a :class:`_BinaryLine`."""
    buf = b""
    offset = 0  # of buf[0] in the file
    eof = False
    while True:
        if not eof and buf.find(b"\n") < 0 and len(buf) < MAX_LINE_BYTES:
            block = read(_BLOCK)
            eof = not block
            buf += block
            continue
        if not buf:
            return
        cut = buf.rfind(b"\n") + 1
        if cut == 0:  # the last line, or a piece of one longer than MAX_LINE_BYTES
            cut = len(buf) if eof else MAX_LINE_BYTES
        chunk = buf[:cut]
        bad = chunk.find(b"\0")
        try:
            text = chunk.decode()
        except UnicodeDecodeError as e:
            bad = e.start if bad < 0 else min(bad, e.start)
        if bad >= 0:
            start = chunk.rfind(b"\n", 0, bad) + 1
            end = chunk.find(b"\n", bad)
            cut = cut if end < 0 else end + 1
            text = chunk[:start].decode()
        lines = text.split("\n")
        if text.endswith("\n") or not text:
            lines.pop()
        yield from lines
        if bad >= 0:
            yield _BinaryLine(offset + bad, chunk[start:start + 12])
        buf = buf[cut:]
        offset += cut


def load_trace(path: str | os.PathLike[str], *, lenient: bool = False, limit: int | None = None) -> Trace:
    """Read a trace file, plain text or gzip (told apart by its first two bytes).

    ``limit`` reads only the first ``limit`` lines (smoke runs).
    """
    source = os.fspath(path)
    try:
        lines: Iterable[str] = _open_lines(path)
        if limit is not None:
            lines = islice(lines, limit)
        return parse_trace(lines, source=source, lenient=lenient)
    except FileNotFoundError:
        raise TraceError("no such file", source=source) from None
    except (OSError, EOFError, zlib.error) as e:
        raise TraceError(f"cannot read the trace: {e}", source=source) from e
