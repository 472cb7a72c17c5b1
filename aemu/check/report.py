"""What ``aemu check`` found: :class:`Finding`, :class:`CheckReport` and their text and JSON forms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import MachineConfig
    from ..result import Result

__all__ = ["KINDS", "CheckReport", "Finding", "format_findings"]

#: The kinds of finding, in the order a report lists them.
KINDS = ("irq-without-bql", "lock-order", "race")


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding: its ``kind``, what it is about and where it happened.

    ``subject`` names a field as ``ClassName.attribute`` (a race), an interrupt line as ``gsi N``
    (irq-without-bql) or the locks of a cycle as ``A -> B -> A`` (lock-order). ``sites`` are the
    accesses or acquisitions, one line each: task, virtual time, what it did where, the locks it
    held. ``fix`` says what would remove it (for a race: the lock the other access holds).
    """

    kind: str
    subject: str
    sites: tuple[str, ...]
    fix: str
    #: Virtual time of the access that made the finding, ns since the run started.
    time_ns: int
    #: (task, virtual ns since the start) of each site: the timeline's instant events.
    marks: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The result document's entry."""
        return {"kind": self.kind, "subject": self.subject, "sites": list(self.sites), "fix": self.fix,
                "time_ns": self.time_ns}

    def format(self) -> str:
        """The finding as ``aemu check`` prints it."""
        lines = [f"{self.kind}: {self.subject}"]
        lines += [f"  {s}" for s in self.sites]
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The outcome of a run in checker mode (:func:`aemu.check.check`)."""

    #: The findings, irq-without-bql first, then lock-order, then races, each in the order found.
    findings: list[Finding]
    #: Device-field accesses the checker saw, and how many distinct fields they touched.
    accesses: int
    fields: int
    #: The locks the checker watched (the BQL and every device mutex) and the seqlocks.
    locks: tuple[str, ...]
    seqlocks: tuple[str, ...]
    #: The devices whose fields were watched (class names).
    devices: tuple[str, ...]
    config: MachineConfig | None = None
    #: The run's result, its document carrying the findings (``check`` key).
    result: Result | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def clean(self) -> bool:
        """True when there is nothing to report."""
        return not self.findings

    def by_kind(self, kind: str) -> list[Finding]:
        """The findings of one kind."""
        return [f for f in self.findings if f.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        """The ``check`` entry of the result document."""
        return check_dict(self.findings, accesses=self.accesses, fields=self.fields, locks=self.locks,
                          seqlocks=self.seqlocks, devices=self.devices)

    def format(self) -> str:
        """The report ``aemu check`` prints."""
        return format_findings(self.findings, accesses=self.accesses, fields=self.fields,
                               devices=self.devices, locks=self.locks, seqlocks=self.seqlocks)


def check_dict(findings: list[Finding], *, accesses: int, fields: int, locks: tuple[str, ...],
               seqlocks: tuple[str, ...], devices: tuple[str, ...]) -> dict[str, Any]:
    """``{"clean", "findings", "watched": {...}}``: the result document's ``check`` entry."""
    return {"clean": not findings, "findings": [f.to_dict() for f in findings],
            "watched": {"accesses": accesses, "fields": fields, "devices": list(devices),
                        "locks": list(locks), "seqlocks": list(seqlocks)}}


def format_findings(findings: list[Finding], *, accesses: int, fields: int, devices: tuple[str, ...],
                    locks: tuple[str, ...], seqlocks: tuple[str, ...]) -> str:
    """A header saying what was watched, then each finding (or "no findings")."""
    watched = (f"aemu check: {accesses:,} accesses to {fields:,} fields of {len(devices)} devices; locks "
               f"{', '.join(locks) or 'none'}" + (f"; seqlocks {', '.join(seqlocks)}" if seqlocks else ""))
    if not findings:
        return watched + "\nno findings"
    counts = ", ".join(f"{n} {k}" for k in KINDS if (n := sum(f.kind == k for f in findings)))
    return "\n\n".join([watched + f"\n{len(findings)} finding{'s' if len(findings) != 1 else ''} ({counts})",
                        *(f.format() for f in findings)])
