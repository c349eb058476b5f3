#!/bin/sh
# Guest side of the benchmark suite (busybox sh, run as /test.sh with cwd = the virtio-fs mount).
# Parameters come from the kernel command line (build-initramfs.sh exports ovfs.NAME=V as OVFS_NAME):
#   ovfs.seq_mib   size of the sequential file (default 256)
#   ovfs.fio_cap   runtime cap of each sequential fio job, seconds (default 30)
#   ovfs.rand_secs length of the 4 KiB random read job, seconds (default 15)
#   ovfs.meta_n    files of the metadata workload (default 1000)
# Prints one line per measurement: `BENCH <workload> <value> <unit>`; a failed step prints
# `BENCH-FAIL <workload> <why>` and the script exits 1 at the end.
SEQ=${OVFS_SEQ_MIB:-256}
CAP=${OVFS_FIO_CAP:-30}
RAND=${OVFS_RAND_SECS:-15}
N=${OVFS_META_N:-1000}
M=${OVFS_MNT:-/mnt}
fail=0

now_cs() { read -r up _ </proc/uptime; echo "${up%.*}${up#*.}" | sed 's/^0*//;s/^$/0/'; }  # centiseconds
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# fio terse v3: field 6/7/8 = read KiB, KiB/s, IOPS; 47/48/49 = write KiB, KiB/s, IOPS
fio_job() {  # workload field unit-conversion fio-args...
  wl=$1 field=$2 conv=$3; shift 3
  out=$(fio --output-format=terse --terse-version=3 --ioengine=psync --group_reporting \
            --filename="$M/bench-seq.bin" --name="$wl" "$@" 2>/tmp/fio.err)
  rc=$?
  line=$(echo "$out" | grep '^3;' | tail -1)
  if [ $rc != 0 ] || [ -z "$line" ]; then
    echo "BENCH-FAIL $wl fio rc=$rc: $(head -c 300 /tmp/fio.err | tr '\n' ' ')"; fail=1; return
  fi
  err=$(echo "$line" | cut -d';' -f5)
  [ "$err" = 0 ] || { echo "BENCH-FAIL $wl fio error=$err"; fail=1; return; }
  v=$(echo "$line" | cut -d';' -f"$field")
  case "$conv" in
    kib2mb) echo "$v" | awk -v w="$wl" '{printf "BENCH %s %.2f MB/s\n", w, $1 * 1024 / 1e6}' ;;
    iops) echo "$v" | awk -v w="$wl" '{printf "BENCH %s %.1f IOPS\n", w, $1}' ;;
  esac
}

echo "BENCH-START seq_mib=$SEQ fio_cap=$CAP rand_secs=$RAND meta_n=$N"
fio_job seqwrite-1m 48 kib2mb --rw=write --bs=1M --size="${SEQ}M" --end_fsync=1 --runtime="$CAP"
drop
fio_job seqread-1m 7 kib2mb --rw=read --bs=1M --size="${SEQ}M" --runtime="$CAP"
drop
fio_job randread-4k 8 iops --rw=randread --bs=4k --size="${SEQ}M" --direct=1 --time_based --runtime="$RAND"
rm -f "$M/bench-seq.bin"

# metadata: create / stat / ls -l / unlink N files (dentry and inode caches dropped between
# phases so every phase reaches the daemon)
D=$M/bench-meta
mkdir -p "$D" || { echo "BENCH-FAIL meta mkdir"; exit 1; }
cd "$D" || exit 1
total=0
phase() {  # workload centiseconds ops unit
  cs=$2; [ "$cs" -gt 0 ] || cs=1
  total=$((total + cs))
  if [ "$4" = s ]; then
    awk -v w="$1" -v c="$cs" 'BEGIN{printf "BENCH %s %.2f s\n", w, c / 100}'
  else
    awk -v w="$1" -v c="$cs" -v n="$3" 'BEGIN{printf "BENCH %s %.1f ops/s\n", w, n * 100 / c}'
  fi
}
drop; t0=$(now_cs)
i=0; while [ $i -lt "$N" ]; do : >"f$i" || { echo "BENCH-FAIL meta-create f$i"; fail=1; break; }; i=$((i + 1)); done
phase meta-create $(($(now_cs) - t0)) "$N" ops/s
drop; t0=$(now_cs)
i=0; while [ $i -lt "$N" ]; do [ -e "f$i" ] || { echo "BENCH-FAIL meta-stat f$i"; fail=1; break; }; i=$((i + 1)); done
phase meta-stat $(($(now_cs) - t0)) "$N" ops/s
drop; t0=$(now_cs)
# shellcheck disable=SC2010
cnt=$(ls -l | grep -c ' f[0-9]*$')
phase meta-ls-l $(($(now_cs) - t0)) 1 s
[ "$cnt" = "$N" ] || { echo "BENCH-FAIL meta-ls-l listed $cnt of $N"; fail=1; }
drop; t0=$(now_cs)
rm -f f* || { echo "BENCH-FAIL meta-unlink"; fail=1; }
phase meta-unlink $(($(now_cs) - t0)) "$N" ops/s
left=$(find . -mindepth 1 | wc -l)
[ "$left" = 0 ] || { echo "BENCH-FAIL meta-unlink $left left"; fail=1; }
awk -v c="$total" 'BEGIN{printf "BENCH meta-total %.2f s\n", c / 100}'
cd "$M" && rmdir "$D"
echo "BENCH-END fail=$fail"
exit $fail
