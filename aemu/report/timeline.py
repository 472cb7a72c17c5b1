"""A :class:`~aemu.trace.Tracer`'s spans as a Chrome Trace Event Format timeline.

The JSON opens in the Perfetto UI (ui.perfetto.dev) and in chrome://tracing. Layout:

* one process (pid 1) named after the machine;
* one thread per track: the lock-holder tracks first ("BQL holder", "hpet holder": who held the
  lock when), then ``vcpu0``, ``vcpu1``, ... in index order (tid = vCPU index + 1), then any other
  task that took a lock (the main loop);
* each span is a complete event (``"ph": "X"``) with ``ts``/``dur`` in microseconds of virtual
  time (floats: virtual ns / 1000) and a category: ``guest``, ``exit`` (``pre_run``, ``pio
  REGION``, ``mmio REGION``), ``wait``/``hold`` (a lock, with the site in ``args``), ``halted``,
  ``holder`` (on a lock's track);
* ``aemu run --check`` adds an instant event (``"ph": "i"``, category ``check``, e.g. ``race
  SerialState.lsr``) on the task's track at each access of a finding.

On a vCPU track spans nest: a ``wait BQL (acpi-tmr read)`` and the ``hold`` that follows lie inside
the ``pio acpi-tmr`` exit span. Events are emitted sorted by start, longer first (and exit before
wait before hold on ties), which is the order both viewers need to stack them. Zero-length spans
(an exit that follows the previous one at once leaves an empty ``guest`` span) are left out and
counted in ``otherData``.

A trace that lost spans (``max_spans`` reached) or covers only a window says so twice: in the
top-level ``otherData`` (``truncated``, ``dropped_spans``, ``window_ns``) for a person or a script,
and as a process label plus global instant events for the viewer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..trace import Tracer

__all__ = ["build_trace", "timeline_summary", "write_timeline"]

PID = 1
_VCPU = re.compile(r"vcpu(\d+)\Z")
_LOCK_SPAN = re.compile(r"(wait|hold) (.+?) \((.*)\)\Z")
#: Nesting rank on ties (same start, same length): the exit encloses the wait, the wait the hold.
_RANK = {"guest": 0, "exit": 0, "halted": 0, "holder": 0, "other": 0, "wait": 1, "hold": 2}


def _lock_names(spans: Iterable[tuple[str, str, int, int]]) -> set[str]:
    """Locks named by ``wait LOCK (site)`` / ``hold LOCK (site)`` spans, plus the BQL."""
    names = {"BQL"}
    for _track, name, _s, _e in spans:
        if name.startswith(("wait ", "hold ")):
            m = _LOCK_SPAN.match(name)
            if m:
                names.add(m.group(2))
    return names


def _classify(track: str, name: str, is_lock_track: bool) -> tuple[str, dict[str, Any]]:
    """A span's category and its args."""
    if is_lock_track:
        return "holder", {"holder": name}
    if name == "guest":
        return "guest", {}
    if name == "halted":
        return "halted", {}
    if name == "pre_run":
        return "exit", {"exit": "kvm_arch_pre_run"}
    m = _LOCK_SPAN.match(name)
    if m:
        return m.group(1), {"lock": m.group(2), "site": m.group(3)}
    kind, sep, region = name.partition(" ")
    if sep and kind in ("pio", "mmio"):
        return "exit", {"exit": kind, "region": region}
    return ("exit" if _VCPU.match(track) else "other"), {}


def _order_tracks(tracks: Iterable[str], locks: set[str]) -> list[tuple[str, int, str, int]]:
    """(track, tid, thread name, sort index): lock holders first, vCPUs in order, then the rest."""
    tracks = set(tracks)
    vcpus = sorted((int(m.group(1)), t) for t in tracks if (m := _VCPU.match(t)))
    lock_tracks = sorted((t for t in tracks if t in locks), key=lambda t: (t != "BQL", t))
    others = sorted(tracks - {t for _, t in vcpus} - set(lock_tracks))
    next_tid = (vcpus[-1][0] + 2) if vcpus else 1
    out: list[tuple[str, int, str, int]] = []
    for i, t in enumerate(lock_tracks):
        out.append((t, next_tid + i, f"{t} holder", i))
    next_tid += len(lock_tracks)
    base = len(lock_tracks)
    for i, (index, t) in enumerate(vcpus):
        out.append((t, index + 1, t, base + i))
    base += len(vcpus)
    for i, t in enumerate(others):
        out.append((t, next_tid + i, t, base + i))
    return out


def _us(ns: int) -> float:
    """Virtual ns as the format's microseconds (a float; Perfetto rounds it back to the ns)."""
    return ns / 1000


def _window(tracer: Tracer) -> tuple[int, int]:
    """The virtual-time window the trace covers: the tracer's, or up to the last span's end."""
    end = tracer.window_end_ns
    if end is None:
        end = max((s[3] for s in tracer.spans), default=tracer.window_start_ns)
    return tracer.window_start_ns, end


def build_trace(tracer: Tracer, *, machine_name: str = "aemu") -> dict[str, Any]:
    """The trace as a Chrome Trace Event Format document (a dict ready for ``json.dump``)."""
    spans = tracer.spans
    locks = _lock_names(spans)
    tracks = _order_tracks({s[0] for s in spans} | {i[0] for i in tracer.instants}, locks)
    tids = {t: tid for t, tid, _, _ in tracks}
    # the site a lock's holder span was taken at: from the matching "hold LOCK (site)" span
    hold_sites: dict[tuple[str, str, int, int], str] = {}
    for track, name, s, e in spans:
        if name.startswith("hold "):
            m = _LOCK_SPAN.match(name)
            if m:
                hold_sites[m.group(2), track, s, e] = m.group(3)

    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": PID, "tid": 0, "args": {"name": machine_name}},
        {"name": "process_sort_index", "ph": "M", "pid": PID, "tid": 0, "args": {"sort_index": 0}},
    ]
    for track, tid, label, order in tracks:
        events.append({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": label}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid,
                       "args": {"sort_index": order}})

    keyed: list[tuple[int, int, int, int, dict[str, Any]]] = []
    empty = 0
    for track, name, s, e in spans:
        if e <= s:
            empty += 1
            continue
        is_lock = track in locks
        cat, args = _classify(track, name, is_lock)
        if is_lock:
            site = hold_sites.get((track, name, s, e))
            if site is not None:
                args["site"] = site
        ev: dict[str, Any] = {"name": name, "cat": cat, "ph": "X", "ts": _us(s), "dur": _us(e - s),
                              "pid": PID, "tid": tids[track]}
        if args:
            ev["args"] = args
        keyed.append((tids[track], s, s - e, _RANK[cat], ev))
    keyed.sort(key=lambda k: k[:4])
    events.extend(k[4] for k in keyed)
    for track, name, at in sorted(tracer.instants, key=lambda i: (i[2], i[0], i[1])):
        events.append({"name": name, "cat": "check", "ph": "i", "s": "t", "ts": _us(at), "pid": PID,
                       "tid": tids[track]})

    a, b = _window(tracer)
    windowed = tracer.window_start_ns > 0 or tracer.window_end_ns is not None
    labels = []
    if windowed:
        labels.append(f"window {a:,}..{b:,} ns of virtual time")
        events.append({"name": f"trace window starts ({a:,} ns)", "ph": "i", "s": "g", "ts": _us(a),
                       "pid": PID, "tid": 0})
        events.append({"name": f"trace window ends ({b:,} ns)", "ph": "i", "s": "g", "ts": _us(b),
                       "pid": PID, "tid": 0})
    if tracer.truncated:
        last = max((s[3] for s in spans), default=a)
        labels.append(f"truncated: {tracer.dropped:,} spans dropped after the first {len(spans):,}")
        events.append({"name": f"trace truncated: {tracer.dropped:,} spans dropped", "ph": "i", "s": "g",
                       "ts": _us(last), "pid": PID, "tid": 0,
                       "args": {"dropped_spans": tracer.dropped, "max_spans": tracer.max_spans}})
    if labels:
        events.append({"name": "process_labels", "ph": "M", "pid": PID, "tid": 0,
                       "args": {"labels": "; ".join(labels)}})
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {
            "generator": "aemu",
            "clock": "virtual time (ts/dur in microseconds)",
            "spans": len(spans),
            "zero_length_spans_omitted": empty,
            "truncated": tracer.truncated,
            "dropped_spans": tracer.dropped,
            "max_spans": tracer.max_spans,
            "windowed": windowed,
            "window_ns": [a, b],
            "check_instants": len(tracer.instants),
        },
    }


def write_timeline(tracer: Tracer, path: str | Path, *, machine_name: str = "aemu") -> Path:
    """Write the trace JSON to ``path`` (parent directories are created); returns the path."""
    p = Path(path)
    doc = build_trace(tracer, machine_name=machine_name)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
    except OSError as e:
        raise ConfigError(f"timeline: cannot write {str(p)!r}: {e.strerror or e}") from None
    return p


def timeline_summary(tracer: Tracer) -> str:
    """One line: how many spans, which window, whether spans were dropped."""
    a, b = _window(tracer)
    end = str(b) if tracer.window_end_ns is not None or tracer.spans else "end"
    trunc = f"truncated: dropped {tracer.dropped:,} spans" if tracer.truncated else "not truncated"
    return f"timeline: {len(tracer.spans):,} spans, window [{a}, {end}] ns, {trunc}"
