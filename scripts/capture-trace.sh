#!/usr/bin/env bash
# capture-trace.sh -- capture a QEMU trace of every PIO/MMIO access of a Linux boot, for `aemu replay`.
#
# Usage: scripts/capture-trace.sh VMLINUZ [OUT.trace.gz] [SMP]
#
#   VMLINUZ  a kernel image, e.g. from Debian's linux-image-*-cloud-amd64 package:
#              apt-get download linux-image-cloud-amd64 'linux-image-6.1.0-*-cloud-amd64'
#              dpkg-deb -x linux-image-6.1.0-*-cloud-amd64_*.deb kernel/
#              scripts/capture-trace.sh kernel/boot/vmlinuz-6.1.0-*-cloud-amd64
#   OUT      the gzipped trace to write (default: linux-q35-smp$SMP-hpet.trace.gz)
#   SMP      vCPUs (default 4)
#
# Needs qemu-system-x86_64 (Debian package qemu-system-x86) built with the "log" trace backend
# (Debian's is) and gzip. Runs the command line of traces/README.md: q35, 512 MB, TCG (no
# KVM, so every access goes through QEMU's memory API and is traced, APIC accesses included), no
# root disk -- the boot ends in a kernel panic after the devices are probed and -no-reboot stops
# QEMU; a timeout (default 300 s, env CAPTURE_TIMEOUT) stops it otherwise. -msg timestamp=on adds
# the pid@seconds.micros: prefix, which aemu uses for the gaps between accesses. The guest's console
# goes to OUT's name with .console.txt.
set -euo pipefail

usage() { sed -n '2,22s/^# \{0,1\}//p' "$0"; }
if [[ $# -ge 1 && ( "$1" == -h || "$1" == --help ) ]]; then usage; exit 0; fi
if [[ $# -lt 1 || $# -gt 3 ]]; then usage >&2; exit 2; fi
kernel=$1
smp=${3:-4}
out=${2:-linux-q35-smp${smp}-hpet.trace.gz}
for tool in qemu-system-x86_64 gzip timeout; do
  command -v "$tool" >/dev/null || { echo "capture-trace.sh: $tool not found (apt-get install qemu-system-x86 gzip coreutils)" >&2; exit 2; }
done
[[ -r "$kernel" ]] || { echo "capture-trace.sh: cannot read kernel image $kernel" >&2; exit 2; }
[[ "$smp" =~ ^[1-9][0-9]*$ ]] || { echo "capture-trace.sh: SMP must be a positive number, got $smp" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log=$tmp/trace.log
# qemu exits non-zero after the panic with -no-reboot on some versions; the trace is what matters
timeout "${CAPTURE_TIMEOUT:-300}" qemu-system-x86_64 -M q35 -smp "$smp" -m 512 -nographic -no-reboot \
  -msg timestamp=on -kernel "$kernel" -append "console=ttyS0 panic=1 clocksource=hpet" \
  -trace enable=memory_region_ops_read,file="$log" \
  -trace enable=memory_region_ops_write,file="$log" \
  </dev/null >"${out%.gz}.console.txt" 2>&1 || true
[[ -s "$log" ]] || { echo "capture-trace.sh: QEMU wrote no trace (see ${out%.gz}.console.txt)" >&2; exit 1; }
gzip -9c "$log" >"$out"
echo "wrote $out: $(grep -c 'memory_region_ops_' "$log") accesses; replay with: aemu replay $out -M q35 -smp $smp"
