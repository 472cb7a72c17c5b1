"""QEMU's lock profiler table, ``info sync-profile [-m] [-n] [max]``, for aemu's locks.

Reproduces ``pr_report()`` of QEMU's util/qsp.c character for character: the header line (the
"Call site" column is as wide as the longest call site shown), a rule of ``79 + padding`` dashes,
one row per entry printed with ``"%-9s  %14p  %s%*s  %13.5f  %12" PRIu64 "  %12.2f"``
(a coalesced entry shows ``[%12u]``, its number of objects, instead of the address), and the rule
again.

How aemu's books map onto QSP's:

* QSP's call site (``file:line``) is aemu's site label (``"acpi-tmr read"``, ``"kvm_arch_pre_run"``);
* Type is ``"BQL mutex"`` for the BQL (``LockStatistics.bql``) and ``"mutex"`` for a device mutex;
* Object is a pseudo-address that is stable per lock name (:func:`lock_object_address`), shaped
  like the glibc heap pointers QEMU prints (``0x55872837bb40``);
* Wait Time is :attr:`aemu.sync.SiteStats.wait_total_ns` and Count its ``acquisitions``: like
  QSP, every acquisition counts, uncontended ones with a wait of 0;
* Average is QSP's ``ns / n_acqs`` in integer arithmetic (as in C), printed in microseconds.

Order is qsp_tree_cmp's: total wait (or, with ``-m``, average wait) descending, ties broken by
object address, then call site, then type. With coalescing (QSP's default) the rows of one call
site and type are merged across objects; QEMU keeps the address of whichever object its hash
table met first, aemu the lowest one, so the output is reproducible.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias, TypedDict, runtime_checkable

from ..errors import ConfigError
from ..sync import LockStatistics

__all__ = [
    "DEFAULT_MAX_ROWS",
    "HasLocks",
    "LockSnapshots",
    "QSPRow",
    "SyncProfileArgs",
    "as_lock_list",
    "format_sync_profile",
    "lock_object_address",
    "parse_sync_profile_args",
    "sync_profile_rows",
]

#: Rows shown when ``max`` is not given (hmp_info_sync_profile's default).
DEFAULT_MAX_ROWS = 10

# qsp_typenames[] and the QSPType enum values (the last tie-break compares them).
_BQL_MUTEX = ("BQL mutex", 1)
_MUTEX = ("mutex", 0)

_USAGE = "usage: info sync-profile [-m] [-n] [max]"
_INT = re.compile(r"[+-]?(?:(0[xX])[0-9a-fA-F]+|[0-9]+)")


@runtime_checkable
class HasLocks(Protocol):
    """Anything carrying its locks' snapshots by name: a :class:`~aemu.result.Result`, an
    :class:`aemu.embed.Snapshot`."""

    @property
    def locks(self) -> Mapping[str, LockStatistics]: ...


#: What the reports accept: a Result or Snapshot, a mapping name -> snapshot, snapshots, or one.
LockSnapshots: TypeAlias = "HasLocks | Mapping[str, LockStatistics] | Iterable[LockStatistics] | LockStatistics"


def as_lock_list(locks: LockSnapshots) -> list[LockStatistics]:
    """The snapshots to report: a Result's (or Snapshot's) locks, a mapping's values, an iterable's
    items, or one snapshot. Anything else is a ``TypeError`` naming what was given."""
    if isinstance(locks, LockStatistics):
        return [locks]
    if isinstance(locks, HasLocks):
        locks = locks.locks
    if isinstance(locks, Mapping):
        items = list(locks.values())
    elif isinstance(locks, Iterable) and not isinstance(locks, (str, bytes)):
        items = list(locks)
    else:
        items = [locks]
    for st in items:
        if not isinstance(st, LockStatistics):
            raise TypeError(f"expected a Result, a Snapshot, a mapping of lock names to LockStatistics or "
                            f"LockStatistics, got {type(st).__name__}")
    return items


def lock_object_address(name: str) -> int:
    """A stable pseudo-address for the lock called ``name`` (QSP's Object column).

    48-bit, 64-byte aligned and starting with 0x55, like the heap addresses of a PIE QEMU
    binary (``0x55872837bb40``); derived from a BLAKE2b hash of the name, so it is the same in
    every run and every process.
    """
    digest = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    return (0x55 << 40) | (digest & 0xFF_FFFF_FFC0)


@dataclass(frozen=True, slots=True)
class QSPRow:
    """One row of the table: a call site of one lock, or of several when coalesced."""

    type_name: str
    #: The object's (pseudo-)address; for a coalesced row the lowest of its objects.
    obj: int
    #: How many objects were coalesced into this row (1: a plain row).
    n_objs: int
    site: str
    wait_ns: int
    acquisitions: int
    #: QEMU's QSPType value (0 mutex, 1 BQL mutex): the last tie-break of the order.
    type_id: int = 0

    @property
    def avg_ns(self) -> int:
        """QSP's ``ns_avg``: total wait over acquisitions, integer division as in C; 0 if none."""
        return self.wait_ns // self.acquisitions if self.acquisitions else 0

    @property
    def object_label(self) -> str:
        """The Object column: ``%14p`` of the address, or ``[%12u]`` objects when coalesced."""
        return f"[{self.n_objs:12d}]" if self.n_objs > 1 else f"{f'0x{self.obj:x}':>14}"


def sync_profile_rows(locks: LockSnapshots, *,
                      sort_by_mean: bool = False, coalesce: bool = True) -> list[QSPRow]:
    """Every row of ``info sync-profile`` in QSP's order (before the ``max`` cut)."""
    # Aggregate per (object, site, type) first (qsp_aggregate), as two snapshots of one lock
    # name are one object; sites that never completed an acquisition nor waited are absent in QSP.
    entries: dict[tuple[int, str, int], list[int]] = {}
    names: dict[int, str] = {}
    for st in as_lock_list(locks):
        type_name, type_id = _BQL_MUTEX if st.bql else _MUTEX
        obj = lock_object_address(st.name)
        names[type_id] = type_name
        for s in st.sites:
            if s.acquisitions == 0 and s.wait_total_ns == 0:
                continue
            acc = entries.setdefault((obj, s.site, type_id), [0, 0])
            acc[0] += s.wait_total_ns
            acc[1] += s.acquisitions
    rows: list[QSPRow]
    if coalesce:  # qsp_iter_callsite_coalesce: one row per (site, type), objects counted
        merged: dict[tuple[str, int], tuple[set[int], list[int]]] = {}
        for (obj, site, type_id), (wait, acqs) in entries.items():
            objs, acc = merged.setdefault((site, type_id), (set(), [0, 0]))
            objs.add(obj)
            acc[0] += wait
            acc[1] += acqs
        rows = [QSPRow(names[t], min(objs), len(objs), site, w, n, t)
                for (site, t), (objs, (w, n)) in merged.items()]
    else:
        rows = [QSPRow(names[t], obj, 1, site, w, n, t) for (obj, site, t), (w, n) in entries.items()]

    def key(r: QSPRow) -> tuple[int, int, bytes, int]:
        primary = r.avg_ns if sort_by_mean else r.wait_ns
        return (-primary, r.obj, r.site.encode(), -r.type_id)  # qsp_tree_cmp

    rows.sort(key=key)
    return rows


def format_sync_profile(locks: LockSnapshots, *, max_rows: int = DEFAULT_MAX_ROWS, sort_by_mean: bool = False,
                        coalesce: bool = True) -> str:
    """QEMU's ``info sync-profile`` table for these lock snapshots (a Result's, a Snapshot's, a
    mapping's or a list's), exactly as QEMU prints it.

    ``sort_by_mean`` is ``-m`` (sort by average wait), ``coalesce=False`` is ``-n`` (one row per
    object and call site), ``max_rows`` is ``max``. Lines end with ``\\n``, the last one too.
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0:
        raise ConfigError(f"info sync-profile: max must be an integer >= 0, got {max_rows!r}")
    rows = sync_profile_rows(locks, sort_by_mean=sort_by_mean, coalesce=coalesce)[:max_rows]
    callsite_len = max([len("Call site")] + [len(r.site) for r in rows])
    rspace = callsite_len - len("Call site")
    dashes = "-" * (79 + rspace)
    out = [f"Type               Object  Call site{'':{rspace}}  Wait Time (s)         Count  Average (us)",
           dashes]
    for r in rows:
        out.append(f"{r.type_name:<9}  {r.object_label}  {r.site}{'':{callsite_len - len(r.site)}}  "
                   f"{r.wait_ns * 1e-9:13.5f}  {r.acquisitions:12d}  {float(r.avg_ns) * 1e-3:12.2f}")
    out.append(dashes)
    return "\n".join(out) + "\n"


class SyncProfileArgs(TypedDict):
    """The keyword arguments of :func:`format_sync_profile` that the HMP command sets."""

    max_rows: int
    sort_by_mean: bool
    coalesce: bool


def parse_sync_profile_args(args: str) -> SyncProfileArgs:
    """Parse the arguments of HMP ``info sync-profile [-m] [-n] [max]`` (``"-m -n 15"``).

    Returns ``format_sync_profile``'s keyword arguments: ``-m`` sets ``sort_by_mean``, ``-n``
    clears ``coalesce``, ``max`` (decimal, or ``0x`` hex) sets ``max_rows`` (default 10). Flags may
    come in any order, each at most once, ``max`` last. Bad input raises
    :class:`~aemu.errors.ConfigError` with a one-line message.
    """
    if not isinstance(args, str):
        raise ConfigError(f"info sync-profile: arguments must be a string, got {type(args).__name__}")
    out = SyncProfileArgs(max_rows=DEFAULT_MAX_ROWS, sort_by_mean=False, coalesce=True)
    seen: set[str] = set()
    have_max = False
    for tok in args.split():
        if have_max:
            raise ConfigError(f"info sync-profile: unexpected {tok!r} after max; {_USAGE}")
        if tok in ("-m", "-n"):
            if tok in seen:
                raise ConfigError(f"info sync-profile: option {tok} given twice; {_USAGE}")
            seen.add(tok)
            if tok == "-m":
                out["sort_by_mean"] = True
            else:
                out["coalesce"] = False
            continue
        m = _INT.fullmatch(tok)
        if m is None:
            what = "unsupported option" if tok.startswith("-") else "max must be an integer, got"
            raise ConfigError(f"info sync-profile: {what} {tok!r}; {_USAGE}")
        n = int(tok, 16 if m.group(1) else 10)
        if n < 0:
            raise ConfigError(f"info sync-profile: max must be >= 0, got {n}; {_USAGE}")
        out["max_rows"] = n
        have_max = True
    return out
