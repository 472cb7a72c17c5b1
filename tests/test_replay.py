"""Trace replay (the aemu.replay package): the parser (.trace), the workload (.workload), the report.

``data/linux-boot-excerpt.trace`` is lines 1-1700, 206301-206500 and 215301-215700 of
``traces/linux-6.1-q35-smp4-hpet.trace.gz`` (Linux 6.1 booting on QEMU 7.2, q35,
-smp 4, TCG); ``data/linux-boot-excerpt-gz.trace.gz`` is lines 206301-206500, gzipped.
``data/pc-smp2-synthetic.trace`` is written by hand in the shape of a ``-M pc -smp 2`` boot on QEMU
7.2 (no real pc capture is at hand): its region names and addresses are QEMU's for pc (PIIX4 PM at
SeaBIOS's 0x600, ``piix3-reset-control`` over ``pci-conf-idx``, ``fdc`` around ``ide``'s 0x3f6).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

import aemu.replay.workload
from aemu.config import MachineConfig
from aemu.errors import ConfigError
from aemu.replay import (Access, ReplayReport, ReplayWorkload, Trace, TraceError, load_trace, parse_trace, replay,
                         stream_assignment)
from aemu.result import Result
from aemu.workloads import get_workload

DATA = Path(__file__).parent / "data"
EXCERPT = DATA / "linux-boot-excerpt.trace"
EXCERPT_GZ = DATA / "linux-boot-excerpt-gz.trace.gz"
PC_TRACE = DATA / "pc-smp2-synthetic.trace"
SPLIT = "-M q35 -smp {n} -accel kvm,kernel-irqchip=split --series {series}"
#: the excerpt's regions aemu does not model on q35 with a split irqchip
GENERIC = {"acpi-smi", "apm-io", "dma-cont", "edid", "fwcfg", "fwcfg.dma", "pcie-mmcfg-mmio", "vbe", "vga"}

LINE = ("7179@1795572268.523462:memory_region_ops_read cpu 0 mr 0x562c290828b0 addr 0x71 value 0x0 "
        "size 1 name 'rtc'")
WRITE = ("7180@1795572268.600001:memory_region_ops_write cpu 1 mr 0x562c285f3ae0 addr 0xfed00010 "
         "value 0x3 size 4 name 'hpet'")


@pytest.fixture(scope="module")
def excerpt() -> Trace:
    return load_trace(EXCERPT)


@pytest.fixture(scope="module")
def at_smp4(excerpt: Trace) -> dict[str, tuple[Result, ReplayReport]]:
    return {s: replay(excerpt, MachineConfig.parse(SPLIT.format(n=4, series=s))) for s in ("before", "after")}


def _strip_prefix(line: str) -> str:
    return re.sub(r"^\d+@\d+\.\d+:", "", line)


class TestParser:
    def test_line_with_prefix(self) -> None:
        t = parse_trace([LINE + "\n", WRITE + "\n"])
        assert t.accesses == (
            Access(1, 0, False, 0x71, 0, 1, "rtc", 1795572268_523462_000),
            Access(2, 1, True, 0xFED00010, 3, 4, "hpet", 1795572268_600001_000),
        )
        assert t.has_timestamps and t.cpus == (0, 1)

    def test_line_without_prefix(self) -> None:
        t = parse_trace([_strip_prefix(LINE), _strip_prefix(WRITE)])
        assert [(a.cpu, a.addr, a.region, a.time_ns) for a in t.accesses] == [(0, 0x71, "rtc", None),
                                                                              (1, 0xFED00010, "hpet", None)]
        assert not t.has_timestamps

    def test_gzip_detected_by_magic(self, tmp_path: Path) -> None:
        plain = gzip.decompress(EXCERPT_GZ.read_bytes()).decode()
        (tmp_path / "plain.gz").write_text(plain)        # a .gz name on plain text
        (tmp_path / "packed.log").write_bytes(EXCERPT_GZ.read_bytes())  # gzip without the suffix
        a, b = load_trace(tmp_path / "plain.gz"), load_trace(tmp_path / "packed.log")
        assert a.accesses == b.accesses and len(a.accesses) == 200

    def test_summary(self, excerpt: Trace) -> None:
        s = excerpt.summary()
        assert (s.lines, s.accesses, s.device_accesses, s.cpus) == (2300, 2300, 2, (0, 1, 2, 3))
        assert s.per_cpu == {-1: 2, 0: 1908, 1: 309, 2: 44, 3: 37}
        assert s.regions["hpet"] == (69, 2) and s.regions["acpi-tmr"] == (8, 0)
        assert s.regions["apic-msi"] == (10, 52)
        assert s.span_ns is not None and s.span_ns > 0
        assert "hpet" in s.format()

    @pytest.mark.parametrize("bad, problem", [
        (LINE.replace("size 1", "size 3"), "field 'size': 3 is not 1, 2, 4 or 8"),
        (LINE.replace("addr 0x71", "addr 71"), "field 'addr': expected a hex address, got '71'"),
        (LINE.replace("cpu 0", "cpu x"), "field 'cpu': expected a vCPU index or -1, got 'x'"),
        (LINE.replace(" name 'rtc'", ""), "expected field 'name'"),
        (LINE.replace("7179@", "7179#"), "bad 'pid@seconds.micros:' prefix"),
        ("garbage", "not a QEMU trace line"),
        (LINE.replace("cpu 0", "cpu -2"), "field 'cpu': -2 is neither a vCPU index nor -1 (no vCPU)"),
        ("7179@1795572268.523462:memory_region_", "line cut short: 'memory_region_' is the start of"),
        ("memory_region_op", "line cut short: 'memory_region_op' is the start of"),
    ])
    def test_malformed_line_names_its_number(self, bad: str, problem: str) -> None:
        with pytest.raises(TraceError) as e:
            parse_trace([LINE, "", bad, WRITE], source="t.log")
        assert e.value.line == 3
        assert str(e.value).startswith("t.log:3: ")
        assert problem in str(e.value)

    def test_lenient_skips_and_counts(self) -> None:
        t = parse_trace([LINE, "garbage", LINE.replace("size 1", "size 3"), WRITE], lenient=True)
        assert len(t.accesses) == 2 and t.skipped == 2 and t.skipped_lines == (2, 3)

    def test_other_events_are_ignored(self) -> None:
        t = parse_trace(["7179@1795572268.5:pci_cfg_read virtio 0:3 @0x0 -> 0x1af4", LINE])
        assert len(t.accesses) == 1 and t.other_events == 1

    def test_empty_file(self, tmp_path: Path) -> None:
        (tmp_path / "empty.trace").write_text("\n\n")
        with pytest.raises(TraceError, match="empty trace"):
            load_trace(tmp_path / "empty.trace")

    def test_no_access_lines(self) -> None:
        with pytest.raises(TraceError, match="no memory_region_ops_read/write lines"):
            parse_trace(["1@1.5:pci_cfg_read virtio 0:3 @0x0 -> 0x1af4"])
        with pytest.raises(TraceError, match="no memory_region_ops_read/write lines"):
            parse_trace(["garbage"], lenient=True)

    def test_a_cpu_below_minus_one_is_counted_not_dropped(self) -> None:
        """Issue 11 item 12: such a line was dropped silently while the report claimed exact counts."""
        t = parse_trace([LINE, LINE.replace("cpu 0", "cpu -2"), WRITE], lenient=True)
        assert len(t.accesses) == 2 and t.skipped == 1 and t.skipped_lines == (2,)
        _, report = replay(t, MachineConfig.parse(SPLIT.format(n=2, series="after")))
        assert "(1 malformed lines skipped, 0 other events ignored)" in report.format()

    def test_other_events_are_not_lines_cut_short(self) -> None:
        t = parse_trace(["7179@1795572268.5:memory_region_subpage_read cpu 0 offset 0x0", "memory_region_ops_x",
                         LINE], lenient=True)
        assert (t.other_events, t.skipped) == (1, 1)

    def test_dev_null_is_an_empty_file_not_a_missing_one(self) -> None:
        with pytest.raises(TraceError, match=r"^/dev/null: empty file, not a trace"):
            load_trace("/dev/null")

    @pytest.mark.parametrize("packed", [False, True])
    def test_a_binary_file_is_named_never_echoed(self, tmp_path: Path, packed: bool) -> None:
        data = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) + b"\x1b[2J\x1b[31mRED\n" * 3
        path = tmp_path / "a.out"
        path.write_bytes(gzip.compress(data) if packed else data)
        with pytest.raises(TraceError) as e:
            load_trace(path)
        msg = str(e.value)
        assert msg == (f"{path}:1: not a text trace: binary data at byte offset 7 "
                       "(the line starts b'\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x01\\x02\\x03')")
        assert msg.isprintable() and "RED" not in msg

    def test_binary_bytes_inside_a_text_trace(self, tmp_path: Path) -> None:
        path = tmp_path / "torn.trace"
        path.write_bytes(LINE.encode() + b"\n" + b"7179@1795572268.5:memory_reg\xff\xfe\x00ion\n" + WRITE.encode() + b"\n")
        with pytest.raises(TraceError, match=rf":2: not a text trace: binary data at byte offset {len(LINE) + 1 + 28:,} "
                                             r"\(the line starts b'7179@1795572'\) \(use --lenient"):
            load_trace(path)
        t = load_trace(path, lenient=True)
        assert len(t.accesses) == 2 and t.skipped_lines == (2,) and t.lines == 3

    def test_lines_across_read_blocks(self, monkeypatch: pytest.MonkeyPatch, excerpt: Trace, tmp_path: Path) -> None:
        import aemu.replay.trace as trace_module

        monkeypatch.setattr(trace_module, "_BLOCK", 7)
        assert load_trace(EXCERPT) == excerpt
        monkeypatch.setattr(trace_module, "MAX_LINE_BYTES", 150)
        assert len(LINE) < 150 and len(WRITE) < 150
        (tmp_path / "long.trace").write_text(LINE + "\n" + "x" * 200 + "\n" + WRITE)  # no newline at the end
        t = load_trace(tmp_path / "long.trace", lenient=True)
        assert len(t.accesses) == 2 and t.skipped == 2 and t.lines == 4  # the long line comes in two pieces

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(TraceError, match="no such file"):
            load_trace(tmp_path / "nope.trace")


class TestStreams:
    def test_recorded_size_is_identity(self) -> None:
        assert stream_assignment((0, 1, 2, 3), 4) == ((0,), (1,), (2,), (3,))

    def test_extra_aps_reuse_ap_streams_round_robin(self) -> None:
        assert stream_assignment((0, 1, 2, 3), 8) == ((0,), (1,), (2,), (3,), (1,), (2,), (3,), (1,))

    def test_bsp_only(self) -> None:
        assert stream_assignment((0,), 3) == ((0,), (0,), (0,))

    def test_fewer_vcpus_fold_ap_streams(self) -> None:
        assert stream_assignment((0, 1, 2, 3), 2) == ((0,), (1, 2, 3))
        assert stream_assignment((0, 1, 2, 3), 1) == ((0, 1, 2, 3),)

    def test_workload_needs_a_trace(self) -> None:
        with pytest.raises(ConfigError, match="needs a trace"):
            get_workload("replay")

    def test_registered_in_the_builtin_table_not_by_import(self) -> None:
        from aemu.workloads import BUILTIN_WORKLOADS, WORKLOADS

        assert ReplayWorkload in BUILTIN_WORKLOADS and WORKLOADS["replay"] is ReplayWorkload
        source = (Path(aemu.replay.workload.__file__)).read_text()
        assert "@register" not in source and "register(" not in source

    def test_one_package_with_the_old_import_path(self) -> None:
        """``aemu.replay`` is the package: parser, workload and report, re-exported at its top."""
        import aemu.replay.report
        import aemu.replay.trace

        assert aemu.replay.Trace is aemu.replay.trace.Trace
        assert aemu.replay.ReplayWorkload is aemu.replay.workload.ReplayWorkload
        assert aemu.replay.ReplayReport is aemu.replay.report.ReplayReport
        assert not (Path(aemu.__file__).parent / "workloads" / "replay.py").exists()


class TestReplay:
    def test_exact_counts_at_recorded_size(self, excerpt: Trace,
                                           at_smp4: dict[str, tuple[Result, ReplayReport]]) -> None:
        trace_counts = excerpt.region_counts()
        for result, report in at_smp4.values():
            assert result.finished
            assert report.exact_counts and report.mismatches == () and report.conflicts == ()
            assert report.replayed == report.accesses == 2300
            doc = {r["name"]: (r["reads"], r["writes"]) for r in result.to_dict()["regions"]}
            got = {("apic-msi" if n == "kvm-apic-msi" else n): c for n, c in doc.items()}
            assert got == trace_counts
            assert result.region_counts == {("kvm-apic-msi" if n == "apic-msi" else n): c
                                             for n, c in trace_counts.items()}

    def test_report_lists_generic_regions_and_renames(self, at_smp4: dict[str, tuple[Result, ReplayReport]]) -> None:
        _, report = at_smp4["after"]
        assert set(report.generic_names) == GENERIC
        assert report.renamed == {"apic-msi": "kvm-apic-msi"}
        assert report.recorded_cpus == (0, 1, 2, 3) and report.vcpus == 4
        assert report.device_accesses == 2 and "2 of 2 replayed from a device context" in report.device_handling
        assert "generic regions (not modelled by aemu): acpi-smi" in report.format()

    def test_series_changes_bql_acquisitions(self, at_smp4: dict[str, tuple[Result, ReplayReport]]) -> None:
        before, after = at_smp4["before"][0], at_smp4["after"][0]
        assert before.bql.acquisitions > after.bql.acquisitions
        assert "kvm_arch_pre_run" in {s.site for s in before.bql.sites}
        assert "kvm_arch_pre_run" not in {s.site for s in after.bql.sites}
        assert before.region_counts == after.region_counts

    def test_smp8_replicates_ap_streams(self, excerpt: Trace) -> None:
        result, report = replay(excerpt, MachineConfig.parse(SPLIT.format(n=8, series="after")))
        assert report.streams == ((0,), (1,), (2,), (3,), (1,), (2,), (3,), (1,))
        assert "AP copies" in report.replication
        per_cpu = excerpt.summary().per_cpu
        assert report.replayed == 2300 + 2 * per_cpu[1] + per_cpu[2] + per_cpu[3]
        assert report.exact_counts  # the counts equal the replicated streams' counts
        vcpu = {v.index: v for v in result.vcpus}
        assert vcpu[4].exits == vcpu[1].exits and vcpu[7].exits == vcpu[1].exits

    def test_the_header_says_what_the_counts_are_compared_against(self, excerpt: Trace,
                                                                  at_smp4: dict[str, tuple[Result, ReplayReport]]) -> None:
        """Issue 11 item 10/11: at -smp 64 the counts are the replicated streams', not the trace's."""
        assert "  per-region read/write counts equal the trace's\n" in at_smp4["after"][1].format() + "\n"
        _, report = replay(excerpt, MachineConfig.parse(SPLIT.format(n=64, series="after")))
        text = report.format()
        assert "equal the trace's\n" not in text + "\n"
        assert ("per-region read/write counts equal the recorded streams as replayed, not the trace's: each "
                "recorded vCPU's counts times the vCPUs replaying its stream, cpu -1 once "
                "(10,100 accesses; the trace has 2,300)") in text
        assert sum(r + w for r, w in report.expected_counts.values()) == report.replayed == 10_100
        _, folded = replay(excerpt, MachineConfig.parse(SPLIT.format(n=2, series="after")), device_context=False)
        assert folded.counts_basis == "the trace's, less its 2 cpu -1 accesses (skipped)"

    def test_without_timestamps_uses_the_cost_model(self, tmp_path: Path) -> None:
        lines = gzip.decompress(EXCERPT_GZ.read_bytes()).decode().splitlines()
        (tmp_path / "bare.trace").write_text("\n".join(_strip_prefix(x) for x in lines) + "\n")
        config = MachineConfig.parse(SPLIT.format(n=3, series="after"))
        result, report = replay(tmp_path / "bare.trace", config)
        assert not report.timestamps and report.exact_counts
        assert result.vcpus[0].guest_ns == (187 - 1) * config.costs.guest_compute_ns

    def test_device_context_can_be_skipped(self, excerpt: Trace) -> None:
        result, report = replay(excerpt, MachineConfig.parse(SPLIT.format(n=4, series="after")),
                                device_context=False)
        assert "2 skipped" in report.device_handling and report.exact_counts
        assert report.replayed == 2298

    def test_time_scale_compresses_gaps(self, excerpt: Trace) -> None:
        config = MachineConfig.parse(SPLIT.format(n=4, series="after"))
        slow, _ = replay(excerpt, config)
        fast, _ = replay(excerpt, config, time_scale=0.01)
        assert fast.virtual_ns < slow.virtual_ns / 10

    def test_kernel_irqchip_on_makes_pic_generic(self, excerpt: Trace) -> None:
        result, report = replay(excerpt, MachineConfig.parse("-M q35 -smp 4 -accel kvm,kernel-irqchip=on"))
        assert set(report.generic_names) == GENERIC | {"pic", "elcr"}  # the PIC lives in KVM here
        assert report.exact_counts and result.bql.acquisitions > 0



# -- pc traces, stand-in regions, the recorded vCPU count (issue 11 item 10) ---------------------------

def _generic_layout(report: ReplayReport) -> dict[str, set[tuple[int, int]]]:
    out: dict[str, set[tuple[int, int]]] = {}
    for g in report.generic_regions:
        out.setdefault(g.name, set()).add((g.addr, g.size))
    return out


class TestPCAndStandIns:
    @pytest.mark.parametrize("board", ["pc", "q35"])
    def test_a_pc_trace_replays_exactly(self, board: str) -> None:
        trace = load_trace(PC_TRACE)
        result, report = replay(trace, MachineConfig.parse(f"-M {board} -smp 2 -accel kvm,kernel-irqchip=split"))
        assert result.finished and report.exact_counts and report.conflicts == ()
        assert set(report.generic_names) == {"fdc", "ide", "piix3-reset-control"}  # acpi-tmr is aemu's own
        assert result.region_counts["acpi-tmr"] == trace.region_counts()["acpi-tmr"] == (6, 0)
        assert result.region_counts["pci-conf-idx"] == (0, 2)

    def test_stand_ins_cover_only_the_addresses_the_trace_shows(self) -> None:
        _, report = replay(PC_TRACE, MachineConfig.parse("-M pc -smp 2 -accel kvm,kernel-irqchip=split"))
        assert _generic_layout(report) == {
            "fdc": {(0x3F2, 1), (0x3F4, 2), (0x3F7, 1)},  # not 0x3f6: the trace shows 'ide' there
            "ide": {(0x1F6, 2), (0x3F6, 1)},
            "piix3-reset-control": {(0xCF9, 1)},  # over pci-conf-idx, as QEMU maps it (priority 1)
        }

    def test_a_stand_in_never_takes_another_names_address(self) -> None:
        lines = [f"memory_region_ops_read cpu 0 mr 0x1 addr {a:#x} value 0x0 size 1 name '{n}'"
                 for n, a in (("a-dev", 0x100), ("a-dev", 0x102), ("b-dev", 0x103), ("a-dev", 0x100))]
        result, report = replay(parse_trace(lines), MachineConfig.parse("-smp 1 -accel kvm,kernel-irqchip=split"))
        assert report.exact_counts and report.conflicts == ()
        assert _generic_layout(report) == {"a-dev": {(0x100, 1), (0x102, 1)}, "b-dev": {(0x103, 1)}}
        assert result.region_counts["a-dev"] == (3, 0) and result.region_counts["b-dev"] == (1, 0)

    def test_the_pm_timer_is_at_0x608_on_pc_as_on_q35(self) -> None:
        from aemu.machine import Machine

        for board in ("pc", "q35"):
            m = Machine(MachineConfig.parse(f"-M {board} --workload pmtimer-bench"))
            assert m.pm_timer_port == 0x608, board
            hit = m.io.translate(0x608)
            assert hit is not None and hit[0].name == "acpi-tmr"


class TestReplayCommand:
    def _run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        from aemu.cli import main

        code = main(["replay", "-q", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    def test_defaults_to_the_recorded_vcpu_count(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        code, out, _ = self._run(capsys, str(PC_TRACE), "-M", "pc")
        assert code == 0
        assert "replayed on 2: one recorded stream per vCPU (the recorded size)" in out
        assert "-smp 2," in out and "per-region read/write counts equal the trace's" in out
        one = tmp_path / "one.trace"
        one.write_text(LINE + "\n" + LINE + "\n")
        code, out, _ = self._run(capsys, str(one))
        assert code == 0 and "recorded 0; replayed on 1: one recorded stream per vCPU" in out

    def test_dev_null_and_binary_files(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = self._run(capsys, "/dev/null")
        assert code == 2 and err.startswith("aemu: /dev/null: empty file, not a trace") and "no such file" not in err
        import sys

        code, _, err = self._run(capsys, sys.executable)  # an executable, not a trace
        assert code == 2 and "not a text trace: binary data at byte offset" in err
        assert err.endswith("\n") and err[:-1].isprintable()  # one line, no raw bytes

    def test_the_metric_is_in_ms(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = self._run(capsys, str(PC_TRACE))
        assert code == 0 and re.search(r"metric +time to replay: [\d,.]+ ms\n", out)

    def test_an_explicit_smp_wins(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = self._run(capsys, str(PC_TRACE), "-M", "pc", "-smp", "3")
        assert code == 0 and "replayed on 3: vCPU 0 replays the BSP stream" in out

#: One vCPU access, a device-context (cpu -1) access 50 µs in, and another an hour later.
LATE_DEVICE = """\
100@1000.000000:memory_region_ops_read cpu 0 mr 0x1 addr 0x608 value 0x0 size 4 name 'acpi-tmr'
100@1000.000050:memory_region_ops_write cpu -1 mr 0x2 addr 0xfee00000 value 0x0 size 4 name 'apic-msi'
100@1000.000100:memory_region_ops_read cpu 0 mr 0x1 addr 0x608 value 0x0 size 4 name 'acpi-tmr'
100@{late}:memory_region_ops_write cpu -1 mr 0x2 addr 0xfee00000 value 0x0 size 4 name 'apic-msi'
"""


class TestDeviceContextAndTheCap:
    def test_duration_ends_the_device_context_however_late_its_accesses(self) -> None:
        import time

        from aemu.trace import MAX_BINS

        trace = parse_trace(LATE_DEVICE.format(late="4600.000000").splitlines())
        t0 = time.perf_counter()
        result, report = replay(trace, MachineConfig.parse(SPLIT.format(n=2, series="after") + " --duration 10ms"))
        assert time.perf_counter() - t0 < 5
        assert result.virtual_ns == 10_000_000 and not result.finished and not result.interrupted
        assert all(v.finished for v in result.vcpus)  # the vCPUs were done; the device context was not
        assert "1 of 2 replayed from a device context" in report.device_handling
        assert [(m.name, m.reason) for m in report.mismatches] == [
            ("kvm-apic-msi", "the run did not finish (capped or interrupted)")]
        assert len(result.bql_utilisation) <= MAX_BINS

    def test_a_replay_finishes_when_its_device_context_does(self) -> None:
        trace = parse_trace(LATE_DEVICE.format(late="1000.300000").splitlines())
        result, report = replay(trace, MachineConfig.parse(SPLIT.format(n=2, series="after")))
        assert result.finished and report.exact_counts and report.replayed == 2 * 2 + 2
        assert max(v.finish_ns for v in result.vcpus) < 1_000_000  # the vCPUs are done long before
        assert result.virtual_ns == 300_000_000 + 300  # the last access, 300 ms in, and its handler
        assert (result.metric.value, result.metric.unit) == (result.virtual_ns / 1e6, "ms")  # ms, as boot time


def test_example_smoke_run() -> None:
    import subprocess
    import sys

    example = Path(__file__).resolve().parent.parent / "examples" / "replay_linux_boot.py"
    proc = subprocess.run([sys.executable, str(example), str(EXCERPT), "--limit", "400"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "BQL acquisitions" in proc.stdout and "exact counts: yes" in proc.stdout
