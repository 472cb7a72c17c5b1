"""Lock-order inversions from the order graph, as Linux's lockdep finds them.

Every time a task takes lock B while it holds lock A, the edge A -> B joins the graph (the first
such acquisition is kept as the edge's witness). An edge that closes a cycle -- B already reaches
A -- is an inversion: two tasks taking the locks in those orders can deadlock, whether or not this
run did. It is reported once per set of locks, with the witnesses of every edge of the cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["Edge", "Inversion", "LockOrder", "has_cycle_by_brute_force"]

#: ``where() -> (site, virtual ns)``: called only for a new edge.
Where = Callable[[], tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Edge:
    """``second`` was taken while ``first`` was held: by ``task``, at ``site``, at ``time_ns``."""

    first: str
    second: str
    task: str
    site: str
    time_ns: int


@dataclass(frozen=True, slots=True)
class Inversion:
    """A cycle in the order graph: its edges, the one that closed it last."""

    edges: tuple[Edge, ...]

    @property
    def locks(self) -> tuple[str, ...]:
        """The locks of the cycle, in order from the first edge."""
        return tuple(e.first for e in self.edges)


class LockOrder:
    """The order graph of one run (see the module docstring)."""

    __slots__ = ("edges", "inversions", "_succ", "_reported")

    def __init__(self) -> None:
        #: (held, taken) -> the first acquisition that made the edge.
        self.edges: dict[tuple[str, str], Edge] = {}
        #: Inversions found, in the order found.
        self.inversions: list[Inversion] = []
        self._succ: dict[str, list[str]] = {}
        self._reported: set[frozenset[str]] = set()

    def acquired(self, held: Iterable[str], lock: str, task: str, where: Where) -> list[Inversion]:
        """``task`` took ``lock`` holding ``held``: add the new edges; returns new inversions."""
        found: list[Inversion] = []
        for h in held:
            if h == lock or (h, lock) in self.edges:
                continue
            site, time_ns = where()
            edge = self.edges[h, lock] = Edge(h, lock, task, site, time_ns)
            self._succ.setdefault(h, []).append(lock)
            path = self._path(lock, h)
            if path is None:
                continue
            locks = frozenset(path)
            if locks in self._reported:
                continue
            self._reported.add(locks)
            cycle = [self.edges[a, b] for a, b in zip(path, path[1:])]
            inv = Inversion((*cycle, edge))
            self.inversions.append(inv)
            found.append(inv)
        return found

    def _path(self, src: str, dst: str) -> list[str] | None:
        """A path of edges from ``src`` to ``dst`` (breadth first), as its locks, or None."""
        prev: dict[str, str | None] = {src: None}
        frontier = [src]
        while frontier:
            nxt: list[str] = []
            for a in frontier:
                for b in self._succ.get(a, ()):
                    if b in prev:
                        continue
                    prev[b] = a
                    if b == dst:
                        path = [b]
                        node: str | None = a
                        while node is not None:
                            path.append(node)
                            node = prev[node]
                        return path[::-1]
                    nxt.append(b)
            frontier = nxt
        return None


def has_cycle_by_brute_force(edges: Iterable[tuple[str, str]]) -> bool:
    """The reference :class:`LockOrder` is tested against: whether the edges make a cycle
    (transitive closure by repeated squaring until nothing changes; for tests)."""
    reach = {(a, b) for a, b in edges if a != b}
    while True:
        more = {(a, d) for a, b in reach for c, d in reach if b == c} - reach
        if not more:
            return any((a, a) in reach for a, _ in reach) or any((b, a) in reach for a, b in reach)
        reach |= more
