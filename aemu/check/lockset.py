"""Races on device fields: Eraser's lockset states, compared pairwise.

Eraser (Savage et al., SOSP 1997) keeps, per shared variable, a state -- *virgin* (never touched),
*exclusive* (touched by one thread only: initialisation), *shared* (read by a second thread, no
write since), *shared-modified* (written since a second thread came) -- and the set of locks every
access held. :class:`Lockset` keeps those states, so a field that one task sets up and others
only read later is never reported, and compares the accesses made from the first access by a
second task on *pairwise*: two of them race when they come from different tasks, at least one
writes, and their locksets have no lock in common. A race can only exist in shared-modified (it
needs a write). Comparing pairs rather than intersecting every lockset gives each report its two
accesses and spares Eraser's false alarm of three accesses that share a lock two by two.

Accesses are deduplicated by their signature (task, read or write, locks held): only the first
access of a signature is kept, with its site, so a field costs one dict lookup per repeated access.
A lockset may contain pseudo-locks: a seqlock's name while a reader is inside a read section (for
reads only) or a writer inside a write section, so a seqlock-protected read that retries is not a
race with a write made in a write section (:mod:`aemu.check.checker`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["EXCLUSIVE", "SHARED", "SHARED_MODIFIED", "VIRGIN", "Access", "Lockset", "Race", "races_by_brute_force"]

VIRGIN = "virgin"
EXCLUSIVE = "exclusive"
SHARED = "shared"
SHARED_MODIFIED = "shared-modified"

#: ``where() -> (site, virtual ns)``: called only for an access whose signature is new.
Where = Callable[[], tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Access:
    """The first access of one signature to a field: who, read or write, holding what, where, when."""

    task: str
    write: bool
    locks: frozenset[str]
    site: str
    time_ns: int


@dataclass(frozen=True, slots=True)
class Race:
    """Two accesses to ``field`` from different tasks, one a write, with no lock in common."""

    field: Hashable
    first: Access
    second: Access
    #: The field's Eraser state when the race was found (always shared-modified).
    state: str


class _Field:
    __slots__ = ("state", "owner", "seen", "raced")

    def __init__(self, owner: str) -> None:
        self.state = EXCLUSIVE
        self.owner = owner
        self.seen: dict[tuple[str, bool, frozenset[str]], Access] = {}
        self.raced = False


class Lockset:
    """Per-field Eraser states and pairwise lockset comparison (see the module docstring)."""

    __slots__ = ("_fields", "races")

    def __init__(self) -> None:
        self._fields: dict[Hashable, _Field] = {}
        #: Races found, one per field, in the order found.
        self.races: list[Race] = []

    def state(self, field: Hashable) -> str:
        """The field's Eraser state (virgin until first accessed)."""
        f = self._fields.get(field)
        return VIRGIN if f is None else f.state

    def access(self, field: Hashable, task: str, write: bool, locks: frozenset[str], where: Where) -> Race | None:
        """Record one access; returns the race it completes, if it is the field's first."""
        f = self._fields.get(field)
        if f is None:  # virgin -> exclusive: the first task initialises the field
            self._fields[field] = _Field(task)
            return None
        if f.state == EXCLUSIVE:
            if task == f.owner:
                return None
            f.state = SHARED_MODIFIED if write else SHARED
        elif write and f.state == SHARED:
            f.state = SHARED_MODIFIED
        if f.raced:
            return None
        key = (task, write, locks)
        seen = f.seen
        if key in seen:
            return None
        site, time_ns = where()
        a = Access(task, write, locks, site, time_ns)
        seen[key] = a
        for b in seen.values():
            if b.task != task and (write or b.write) and not (locks & b.locks):
                f.raced = True
                race = Race(field, b, a, f.state)
                self.races.append(race)
                return race
        return None

    def accesses(self, field: Hashable) -> list[Access]:
        """The distinct accesses recorded for ``field`` since it left the exclusive state."""
        f = self._fields.get(field)
        return [] if f is None else list(f.seen.values())

    def __len__(self) -> int:
        return len(self._fields)


def races_by_brute_force(log: list[tuple[Hashable, str, bool, frozenset[str]]]) -> set[Hashable]:
    """The reference :class:`Lockset` is tested against: the fields that race in ``log``.

    ``log`` is every access in order, ``(field, task, write, locks)``. Happens-before comes only
    from the hand-off Eraser assumes at initialisation: what the first task did to a field before
    any other task touched it happens before everything after. Any other two accesses to the field,
    from different tasks, one a write, with disjoint locksets, race. Quadratic; for tests.
    """
    by_field: dict[Hashable, list[tuple[str, bool, frozenset[str]]]] = {}
    for field, task, write, locks in log:
        by_field.setdefault(field, []).append((task, write, locks))
    out: set[Hashable] = set()
    for field, acc in by_field.items():
        first = next((i for i, a in enumerate(acc) if a[0] != acc[0][0]), len(acc))
        shared = acc[first:]
        if any(a[0] != b[0] and (a[1] or b[1]) and not (a[2] & b[2])
               for i, a in enumerate(shared) for b in shared[i + 1:]):
            out.add(field)
    return out
