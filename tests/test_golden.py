"""Golden results: the result documents of a dozen configurations, compared exactly.

Every figure of ``Result.to_dict()`` except wall time is checked against ``tests/data/golden/``.
When the model changes on purpose, regenerate them and say in the commit which figures moved
and why::

    python tests/test_golden.py --regen [NAME ...]     # all, or the named ones
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from aemu import MachineConfig, simulate
from aemu.replay import replay

GOLDEN = Path(__file__).parent / "data" / "golden"
EXCERPT = Path(__file__).parent / "data" / "linux-boot-excerpt.trace"

#: name -> aemu options (QEMU-style); "replay:" runs the test trace excerpt.
CONFIGS: dict[str, str] = {
    "hpet-bench-before": "-M q35,hpet=on -smp 16 -accel kvm,kernel-irqchip=split --workload hpet-bench --param reads=100 --series before",
    "hpet-bench-after": "-M q35,hpet=on -smp 16 -accel kvm,kernel-irqchip=split --workload hpet-bench --param reads=100 --series after",
    "hpet-bench-no-counter-lockless": "-M q35,hpet=on -smp 16 -accel kvm,kernel-irqchip=split --workload hpet-bench --param reads=100 --series after --patch=-hpet-counter-lockless",
    "hpet-bench-no-hpet-lock": "-M q35,hpet=on -smp 8 -accel kvm,kernel-irqchip=split --workload hpet-bench --param reads=100 --series after --patch=-hpet-counter-lockless --patch=-hpet-lock",
    "pmtimer-bench-before-q35": "-M q35,hpet=off -smp 16 -accel kvm,kernel-irqchip=split --workload pmtimer-bench --param reads=100 --series before",
    "pmtimer-bench-after-pc": "-M pc,hpet=off -smp 16 -accel kvm,kernel-irqchip=on --workload pmtimer-bench --param reads=100 --series after",
    "pmtimer-bench-before-irqchip-off": "-M q35,hpet=off -smp 1 -accel kvm,kernel-irqchip=off --workload pmtimer-bench --series before",
    "boot-before-split": "-M q35,hpet=off -smp 16 -accel kvm,kernel-irqchip=split --workload boot --series before",
    "boot-after-split": "-M q35,hpet=off -smp 16 -accel kvm,kernel-irqchip=split --workload boot --series after",
    "boot-no-pre-run": "-M q35,hpet=off -smp 16 -accel kvm,kernel-irqchip=split --workload boot --series after --patch=-irqchip-pre-run",
    "boot-before-hpet-on-pc": "-M pc,hpet=on -smp 8 -accel kvm,kernel-irqchip=on --workload boot --series before",
    "boot-after-irqchip-off": "-M q35,hpet=on -smp 4 -accel kvm,kernel-irqchip=off --workload boot --series after",
    "boot-before-lockless-serial": "-M q35,hpet=off -smp 8 -accel kvm,kernel-irqchip=split --workload boot --series before --lockless serial",
    "replay-before": "replay: -M q35,hpet=on -smp 4 -accel kvm,kernel-irqchip=split --series before",
    "replay-after": "replay: -M q35,hpet=on -smp 4 -accel kvm,kernel-irqchip=split --series after",
}


def document(options: str) -> dict[str, Any]:
    """The result document of one configuration, wall time dropped."""
    if options.startswith("replay:"):
        result, _report = replay(EXCERPT, MachineConfig.parse(options.removeprefix("replay:")))
    else:
        result = simulate(MachineConfig.parse(options))
    doc = result.to_dict()
    doc.pop("wall_s", None)
    # JSON round trip: tuples become lists, keys strings, as in the file
    return json.loads(json.dumps(doc))  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_golden(name: str) -> None:
    path = GOLDEN / f"{name}.json"
    expected = json.loads(path.read_text())
    got = document(CONFIGS[name])
    assert got == expected, (f"{name}: the result document differs from {path}; if the model changed "
                             f"on purpose, run `python tests/test_golden.py --regen` and say why")


def regenerate(names: list[str]) -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in names or sorted(CONFIGS):
        path = GOLDEN / f"{name}.json"
        path.write_text(json.dumps(document(CONFIGS[name]), indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] != ["--regen"] or any(a not in CONFIGS for a in args[1:]):
        sys.exit(f"usage: python tests/test_golden.py --regen [NAME ...]; names: {', '.join(sorted(CONFIGS))}")
    regenerate(args[1:])
