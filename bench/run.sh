#!/usr/bin/env bash
# The whole benchmark: daemon alone (ovfs-bench, when this tree has it), guest suite, S3 suite,
# then bench/plot.py (tables, plots, docs/PERFORMANCE.md). `make bench` / `make bench-quick`.
# env: BENCH_QUICK=1 small sizes, results in bench/results/quick/ and docs untouched unless
#      BENCH_DOCS=1; BENCH_RUNS (3); BENCH_KEEP=1 appends to earlier results instead of
#      starting afresh; BENCH_SUITES ("daemon guest s3") picks suites.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
if [ "$QUICK" = 1 ]; then RESULTS=${BENCH_RESULTS:-$here/results/quick}; docs=${BENCH_DOCS:-0}; else docs=${BENCH_DOCS:-1}; fi
export BENCH_RESULTS=$RESULTS
mkdir -p "$RESULTS"
[ "${BENCH_KEEP:-0}" = 1 ] || rm -f "$RESULTS"/*.jsonl
read -r -a suites <<<"${BENCH_SUITES:-daemon guest s3}"

{
  echo "date:       $(date -u +%Y-%m-%dT%H:%MZ)   mode: $([ "$QUICK" = 1 ] && echo quick || echo full), runs: $RUNS"
  echo "commit:     $(cd "$repo" && git rev-parse --short HEAD 2>/dev/null)"
  echo "cpu:        $(nproc) x $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)"
  echo "memory:     $(free -g | awk '/^Mem:/{print $2" GiB"}')"
  echo "kernel:     $(uname -r)"
  echo "guest:      $(basename "$(find /boot -maxdepth 1 -name 'vmlinuz-*-cloud-amd64' | sort -V | tail -1)"), QEMU TCG, 2 vCPU, 1536 MiB"
  echo "qemu:       $(qemu-system-x86_64 --version | head -1)"
  echo "virtiofsd:  $(virtiofsd --version 2>&1 | head -1)"
  echo "fio:        $(fio --version 2>&1)"
  echo "rclone:     $(rclone version 2>/dev/null | head -1)"
  echo "s3fs:       $(s3fs --version 2>/dev/null | head -1)"
  echo "seaweedfs:  $("${S3_PKG:-/tmp/s3-local/pkg}/bin/weed" version 2>/dev/null | head -1)"
  echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) at start"
} >"$RESULTS/machine.txt"
cat "$RESULTS/machine.txt" >&2

rc=0
for s in "${suites[@]}"; do
  case "$s" in
    daemon)
      if [ -f "$repo/src/bin/ovfs-bench.rs" ] || [ -d "$repo/src/bin/ovfs-bench" ]; then
        (cd "$repo" && cargo run --release --quiet --bin ovfs-bench -- daemon --out "$RESULTS/daemon.jsonl" --runs "$RUNS") || rc=1
      else
        log "no ovfs-bench in this tree: daemon-alone suite skipped"
      fi ;;
    guest) "$here/guest.sh" || rc=1 ;;
    s3) "$here/s3.sh" || rc=1 ;;
    *) log "unknown suite $s"; rc=1 ;;
  esac
done
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) at end" >>"$RESULTS/machine.txt"
if [ "$docs" = 1 ]; then
  python3 "$here/plot.py" --results "$RESULTS" || rc=1
else
  python3 "$here/plot.py" --results "$RESULTS" --out "$RESULTS/perf" --doc /dev/null || rc=1
fi
exit $rc
