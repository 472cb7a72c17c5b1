"""The comparison (aemu/compare.py): the published scenarios, and nothing tuned per scenario."""

from __future__ import annotations

import dataclasses

from aemu.compare import DEFAULT_ARGS, PUBLISHED, PUBLISHED_BOOT_S, SCENARIOS, published_multiple, seed_configs
from aemu.config import SERIES, MachineConfig


def test_the_default_is_the_published_command_line_on_its_host() -> None:
    c = MachineConfig.parse(DEFAULT_ARGS)
    assert (c.machine, c.hpet, c.hv_time, c.smp.cpus, c.smp.sockets) == ("q35", False, False, 240, 4)
    assert c.host_cpus == 32 and c.lock_policy == "barging"  # the 32-core host; QemuMutex is glibc's


def test_scenarios_differ_only_in_the_published_options() -> None:
    """hpet=on and hv-time change what the cover letter's command lines change, and nothing else:
    one cost model, one guest profile, the same workload parameters."""
    configs = seed_configs(DEFAULT_ARGS)
    base = configs["boot"]
    assert set(configs) == {"boot", "hpet-bench", *SCENARIOS}
    for name, change in SCENARIOS.items():
        for label in ("before", "after"):
            cfg = configs[name][label]
            assert cfg != base[label]
            undone = dataclasses.replace(cfg, **{k: getattr(base[label], k) for k in change})
            assert undone == base[label], name  # only the scenario's options differ
    assert set(SCENARIOS) == {"hpet=on", "hv-time"} and SCENARIOS["hpet=on"] == {"hpet": True}
    assert SCENARIOS["hv-time"] == {"hv_time": True}
    # the benchmark: the same machine with the HPET on (hpet_read_test needs it)
    bench = configs["hpet-bench"]["after"]
    assert dataclasses.replace(bench, hpet=False, workload="boot", workload_params=base["after"].workload_params) \
        == base["after"]
    assert configs["boot"]["before"].patches == SERIES["before"] and configs["boot"]["after"].patches == SERIES["after"]


def test_every_published_figure_has_a_source() -> None:
    assert set(PUBLISHED) == {"boot", *SCENARIOS, "hpet-bench"}
    for pub in PUBLISHED.values():
        assert pub.source and pub.before and pub.after


def test_published_boots_as_multiples_of_the_hv_time_boot() -> None:
    """The cover letter's boot times over the hv-time boot's 1-2 min: 30 min and more, about
    2 min, 4 min 13 s and 2 min 21 s."""
    assert [published_multiple(k, label) for k in ("boot", "hpet=on") for label in ("before", "after")] == \
        ["> 15", "1.0-2.0", "2.1-4.2", "1.2-2.4"]
    before, after = PUBLISHED_BOOT_S[("hpet=on", "before")][0], PUBLISHED_BOOT_S[("hpet=on", "after")][0]
    assert PUBLISHED["hpet=on"].ratio == before / after == 253 / 141
