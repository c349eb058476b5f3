#!/bin/sh
# Guest side of tests/sigkill_rounds.rs (busybox sh, cwd /mnt on ovfs over S3).
# Writes files in a loop, each with `dd conv=fsync` (fsync before close): prints
#   WRITING <name> <sha256> <size>   before a write starts
#   SYNCED <name> <sha256> <size>    after dd (write + fsync + close) returned success
# New files are r<round>-<i>; the file `over` is rewritten in place (O_TRUNC) every other step.
# The host SIGKILLs the daemon at a random moment; the writer then blocks on the dead device, and
# a watchdog that sees no progress for $OVFS_STALL seconds powers the guest off without syncing.
# Parameters: ovfs.round=N, ovfs.stall=SECONDS (default 10), ovfs.max=ITERATIONS (default 200).
set -u
R=${OVFS_ROUND:-0}
STALL=${OVFS_STALL:-10}
MAX=${OVFS_MAX:-200}
P=/tmp/progress
echo 0 >"$P"

writer() {
  i=0
  while [ "$i" -lt "$MAX" ]; do
    i=$((i + 1))
    # sizes from 1 KiB to ~12 MiB: single PUTs and multipart uploads (8 MiB parts)
    case $((i % 4)) in
      0) kib=1 ;;
      1) kib=$((300 + i % 7 * 100)) ;;
      2) kib=$((9000 + i % 5 * 700)) ;;
      *) kib=64 ;;
    esac
    if [ $((i % 2)) = 0 ]; then name=over; else name=r$R-$i; fi
    dd if=/dev/urandom of=/tmp/data bs=1024 count="$kib" 2>/dev/null
    sha=$(sha256sum /tmp/data | cut -d' ' -f1)
    size=$((kib * 1024))
    echo "WRITING $name $sha $size"
    if dd if=/tmp/data of="$name" bs=1M conv=fsync 2>/dev/null; then
      echo "SYNCED $name $sha $size"
    else
      echo "WRITE-FAILED $name"
    fi
    echo "$i" >"$P"
  done
  echo "WRITER-DONE"
}

writer &
last=-1 same=0
while :; do
  sleep 1
  now=$(cat "$P")
  if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0 last=$now; fi
  if [ "$same" -ge "$STALL" ]; then
    echo "GUEST-STALLED after $now writes"
    echo "OVFS-GUEST-END rc=0"
    poweroff -n -f
  fi
  if ! kill -0 $! 2>/dev/null; then
    echo "OVFS-GUEST-END rc=0"
    poweroff -n -f
  fi
done
