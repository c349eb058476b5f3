#!/usr/bin/env bash
# Guest benchmark suite (QEMU TCG): fio sequential 1 MiB write/read, 4 KiB random read (O_DIRECT)
# and a metadata workload (create / stat / ls -l / unlink) in a guest over
#   ovfs             ovfs --shared-dir DIR            (passthrough)
#   ovfs-opendal-fs  ovfs --shared-dir DIR --opendal-fs (OpenDAL fs service)
#   virtiofsd        virtiofsd 1.14 --sandbox none --cache auto
# each on a fresh directory on the same host file system, one boot per daemon and run, the
# daemons alternating between runs. Appends JSON lines to bench/results/guest.jsonl.
# env: BENCH_RUNS (3), BENCH_QUICK=1 (64 MiB, 8 s random, 300 files), BENCH_SEQ_MIB,
#      BENCH_RAND_SECS, BENCH_META_N, BENCH_FIO_CAP (30), BENCH_GUEST_MEM (1536),
#      BENCH_DAEMONS ("ovfs ovfs-opendal-fs virtiofsd")
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ "$QUICK" = 1 ]; then seq=64 rnd=8 metan=300; else seq=256 rnd=15 metan=1000; fi
seq=${BENCH_SEQ_MIB:-$seq} rnd=${BENCH_RAND_SECS:-$rnd} metan=${BENCH_META_N:-$metan}
cap=${BENCH_FIO_CAP:-30} mem=${BENCH_GUEST_MEM:-1536}
read -r -a daemons <<<"${BENCH_DAEMONS:-ovfs ovfs-opendal-fs virtiofsd}"
out=$RESULTS/guest.jsonl
mkdir -p "$RESULTS" "$OVFS_WORK"

build_ovfs
W=$(mktemp -d "$OVFS_WORK/bench-guest.XXXXXX")
S=$(mktemp -d /tmp/ovfs-bench-sock.XXXXXX)
daemon_pid=
trap 'stop_pid "$daemon_pid"; rm -rf "$S"; log "guest logs in $W"' EXIT

"$repo/tests/guest/build-initramfs.sh" -o "$W/bench.cpio.gz" -s "$bench_dir/guest/workload.sh" -b "$(command -v fio)"
args="ovfs.seq_mib=$seq ovfs.fio_cap=$cap ovfs.rand_secs=$rnd ovfs.meta_n=$metan"
log "guest suite: $RUNS runs of ${daemons[*]}; $args"

daemon_cmd() {  # name dir sock
  case "$1" in
    ovfs) echo "$OVFS_BIN --socket-path $3 --shared-dir $2" ;;
    ovfs-opendal-fs) echo "$OVFS_BIN --socket-path $3 --shared-dir $2 --opendal-fs" ;;
    virtiofsd) echo "virtiofsd --socket-path $3 --shared-dir $2 --sandbox none --cache auto" ;;
    *) echo "unknown daemon $1" >&2; return 1 ;;
  esac
}

fails=0
for run in $(seq 1 "$RUNS"); do
  for d in $(rotate "$run" "${daemons[@]}"); do
    dir=$W/share-$d-$run
    mkdir -p "$dir"; chmod 0755 "$dir"
    rm -f "$S/fs.sock"
    # shellcheck disable=SC2046
    start_bg "$W/$d-$run.daemon.log" $(daemon_cmd "$d" "$dir" "$S/fs.sock")
    daemon_pid=$bg_pid
    t=$(now); rc=0
    timeout -k 10 900 "$repo/tests/guest/run-guest.sh" -i "$W/bench.cpio.gz" -s "$S/fs.sock" -t myfs \
      -c 2 -m "$mem" -T 850 -Q -l "$W/$d-$run.log" -a "$args" || rc=$?
    stop_pid "$daemon_pid"; daemon_pid=
    log "$d run $run: guest rc=$rc in $(elapsed "$t") s"
    [ "$rc" = 0 ] || fails=$((fails + 1))
    parse_guest_log "$W/$d-$run.log" "$out" guest "$d" "$run"
    rm -rf "$dir"
  done
done
log "guest suite done: $fails failed boots"
[ "$fails" = 0 ]
