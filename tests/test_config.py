"""MachineConfig: QEMU-style options, patches and presets, and one-line errors."""

from __future__ import annotations

import pytest

from aemu.config import SMP, MachineConfig, parse_duration
from aemu.errors import ConfigError


class TestParse:
    def test_seed_command_line(self) -> None:
        c = MachineConfig.parse("-M q35,hpet=off -smp 240,sockets=4 -accel kvm,kernel-irqchip=split "
                                "--workload boot --series before")
        assert (c.machine, c.hpet, c.kernel_irqchip, c.workload) == ("q35", False, "split", "boot")
        assert c.smp == SMP(240, 4, 60, 1, 240)
        assert c.patches == frozenset() and c.series == "before"

    def test_argv_list_and_defaults(self) -> None:
        c = MachineConfig.parse(["-smp", "8", "-enable-kvm", "-cpu", "host"])
        assert c.smp.cpus == 8 and c.machine == "q35" and c.hpet and c.kernel_irqchip == "on"
        assert c.series == "after"

    def test_patch_edits_on_top_of_a_series(self) -> None:
        c = MachineConfig.parse("--series after --patch -irqchip-pre-run")
        assert "irqchip-pre-run" not in c.patches and c.series == "custom"
        c = MachineConfig.parse("--series before --patch lockless-io,pmtimer-lockless")
        assert c.patches == {"lockless-io", "pmtimer-lockless"}

    def test_aemu_options(self) -> None:
        c = MachineConfig.parse("--seed 7 --quantum 5us --duration 250ms --lockless serial "
                                "--param reads=10 --lock-policy barging")
        assert (c.seed, c.quantum_ns, c.duration_ns, c.lockless) == (7, 5_000, 250_000_000, ("serial",))
        assert dict(c.workload_params) == {"reads": 10} and c.lock_policy == "barging"

    @pytest.mark.parametrize("text, ns", [("500", 500), ("10us", 10_000), ("2ms", 2_000_000), ("1.5s", 1_500_000_000)])
    def test_durations(self, text: str, ns: int) -> None:
        assert parse_duration(text) == ns


class TestSMP:
    @pytest.mark.parametrize("text, want", [
        ("4", SMP(4, 1, 4, 1, 4)),  # QEMU >= 6.2 prefers cores over sockets
        ("8,sockets=2", SMP(8, 2, 4, 1, 8)),
        ("8,cores=2", SMP(8, 4, 2, 1, 8)),
        ("8,sockets=2,cores=2", SMP(8, 2, 2, 2, 8)),  # threads are computed last
        ("sockets=2,cores=3", SMP(6, 2, 3, 1, 6)),
        ("240,sockets=4", SMP(240, 4, 60, 1, 240)),
        ("8,sockets=2,cores=2,threads=2", SMP(8, 2, 2, 2, 8)),
        ("4,maxcpus=8,sockets=2", SMP(4, 2, 4, 1, 8)),
    ])
    def test_completion(self, text: str, want: SMP) -> None:
        assert SMP.parse(text) == want


class TestErrors:
    @pytest.mark.parametrize("args, needle", [
        ("-M foo", "-M: unknown machine 'foo'; accepted: q35, pc"),
        ("-M q35,hpet=maybe", "expected on or off"),
        ("-M q35,smm=on", "unknown property 'smm'"),
        ("-accel tcg", "aemu models kvm only"),
        ("-accel kvm,kernel-irqchip=half", "kernel-irqchip='half'; accepted: on, off, split"),
        ("-smp 240,sockets=7", "Invalid CPU topology: product of the hierarchy must match maxcpus"),
        ("-smp 8,maxcpus=4", "maxcpus must be equal to or greater than smp"),
        ("-smp two", "expects a number"),
        ("-smp 4,dragons=2", "invalid parameter 'dragons'"),
        ("-smp 2,sockets=4", "sockets (4) * cores (0) * threads (1) != maxcpus (2)"),
        ("--lockless ''", "--lockless: '' has an empty region name"),
        ("--lockless serial,,rtc", "--lockless: 'serial,,rtc' has an empty region name"),
        ("--patch bogus", "unknown patch 'bogus'"),
        ("--series middle", "--series: 'middle'; accepted: before, after"),
        ("--series before --patch hpet-lock", "'hpet-lock' needs 'lockless-io', which is off"),
        ("--duration soon", "expected a time such as"),
        ("--seed x", "--seed: expected an integer"),
        ("--frobnicate", "unknown option '--frobnicate'"),
        ("-smp", "option -smp needs a value"),
        ("--costs /nonexistent.toml", "no such file"),
    ])
    def test_one_line_errors(self, args: str, needle: str) -> None:
        with pytest.raises(ConfigError) as info:
            MachineConfig.parse(args)
        assert needle in str(info.value) and "\n" not in str(info.value)


def test_smp_limit_is_qemu_q35s_4096() -> None:
    from aemu.config import MachineConfig
    from aemu.errors import ConfigError

    assert MachineConfig.parse("-smp 4096").smp.cpus == 4096
    with pytest.raises(ConfigError, match="4097 CPUs requested; aemu's machines support at most 4096"):
        MachineConfig.parse("-smp 4097")


def test_host_text_names_the_host_and_only_what_is_not_the_default() -> None:
    assert MachineConfig.parse("-smp 4").host_text() == ""
    assert MachineConfig.parse("-smp 4 --host-cpus 2").host_text() == "2 host CPUs"
    assert MachineConfig.parse("-smp 4 --host-cpus 1").host_text() == "1 host CPU"
    assert MachineConfig.parse("-smp 4 --host-cpus 2 --host-sched cfs --host-rq per-cpu").host_text() == \
        "2 host CPUs scheduled by CFS with per-CPU run queues"
