#!/usr/bin/env bash
# Benchmark (not a test): sequential and 4 KiB random read of a host-cached file in one
# QEMU 11.1 guest (TCG; the trixie chroot of tests/tools/trixie-qemu.sh), three daemons
# in the same run, alternating, RUNS rounds each:
#   ovfs-dax    ovfs over OpenDAL fs with --dax-window, guest mount -o dax=always
#   ovfs        the same ovfs without a window (block cache on)
#   virtiofsd   virtiofsd 1.14 (--sandbox=none, vhost-user-fs-pci) on the same directory
# The guest reads the file once to warm the host side, drops its own page cache, then runs
# `dax-mmap seqread FILE 1MiB` and `dax-mmap randread FILE N` (tests/guest/dax-mmap.c).
# Prints every measurement, the medians and the ratios against virtiofsd.
#
# usage: scripts/bench-dax.sh [-s SIZE_MIB (256)] [-r RUNS (3)] [-n RANDREADS (20000)]
# Needs root, what tests/tools/install-deps.sh installs (virtiofsd, gcc) and a built ovfs
# (cargo build --release; OVFS_BIN overrides target/release/ovfs).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
size=256 runs=3 nrand=20000
while getopts "s:r:n:h" o; do
  case "$o" in
    s) size=$OPTARG ;; r) runs=$OPTARG ;; n) nrand=$OPTARG ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done
OVFS_BIN=${OVFS_BIN:-$repo/target/release/ovfs}
[ -x "$OVFS_BIN" ] || { echo "bench-dax: no $OVFS_BIN (cargo build --release)" >&2; exit 1; }
VIRTIOFSD=${VIRTIOFSD:-$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")}
[ -x "$VIRTIOFSD" ] || { echo "bench-dax: no virtiofsd (tests/tools/install-deps.sh)" >&2; exit 1; }
root=$("$repo/tests/tools/trixie-qemu.sh")
kernel=$(cd "$root" && find boot -maxdepth 1 -name "vmlinuz-*-cloud-amd64" | sort -V | tail -1)
work=$(mktemp -d "$root/tmp/ovfs-bench-dax.XXXXXX")
inside=/tmp/$(basename "$work")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/data"
head -c $((size << 20)) /dev/urandom >"$work/data/big.bin"
window=64; while [ "$window" -lt $((size * 2)) ]; do window=$((window * 2)); done
window=${window}M   # the whole file fits in the window (a power of two: a PCI BAR)

gcc -static -O2 -o "$work/dax-mmap" "$repo/tests/guest/dax-mmap.c"
cat >"$work/bench.sh" <<EOF
#!/bin/sh
cat big.bin >/dev/null
echo 3 >/proc/sys/vm/drop_caches
/bin/dax-mmap seqread big.bin 1048576
echo 3 >/proc/sys/vm/drop_caches
/bin/dax-mmap randread big.bin $nrand
EOF
"$repo/tests/guest/build-initramfs.sh" -o "$work/initrd.gz" -s "$work/bench.sh" -b "$work/dax-mmap" >/dev/null
printf '[storage_settings]\ntype = "fs"\nroot = "%s"\n' "$work/data" >"$work/ovfs.toml"

boot() {  # name -> prints "name seq MiB/s rand IOPS"
  local name=$1 dev mnt='' pid
  rm -f "$work/sock"
  case "$name" in
    ovfs-dax)
      "$OVFS_BIN" --socket-path "$work/sock" --tag myfs --dax-window "$window" --config "$work/ovfs.toml" 2>"$work/d.log" &
      dev=vhost-user-test-device-pci,chardev=c0,virtio-id=26,num_vqs=2,config_size=40,vq_size=1024; mnt=dax=always ;;
    ovfs)
      "$OVFS_BIN" --socket-path "$work/sock" --tag myfs --config "$work/ovfs.toml" 2>"$work/d.log" &
      dev=vhost-user-test-device-pci,chardev=c0,virtio-id=26,num_vqs=2,config_size=40,vq_size=1024 ;;
    virtiofsd)
      "$VIRTIOFSD" --socket-path "$work/sock" --shared-dir "$work/data" --sandbox none 2>"$work/d.log" &
      dev=vhost-user-fs-pci,chardev=c0,tag=myfs,queue-size=1024 ;;
  esac
  pid=$!
  for _ in $(seq 100); do [ -S "$work/sock" ] && break; sleep 0.1; done
  timeout -k 10 900 unshare --mount --propagation private sh -c \
    "mount --bind /dev $root/dev && mount -t proc proc $root/proc && exec chroot $root \
     qemu-system-x86_64 -accel tcg -m 1024M -smp 2 -nodefaults -no-user-config -display none -monitor none \
     -serial stdio -no-reboot -kernel /$kernel -initrd $inside/initrd.gz \
     -append 'console=ttyS0 panic=-1 quiet ovfs.tag=myfs ovfs.mntopts=$mnt' \
     -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem \
     -chardev socket,id=c0,path=$inside/sock -device $dev" </dev/null >"$work/console.log" 2>&1 || true
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  grep -q 'OVFS-GUEST-END rc=0' "$work/console.log" || { echo "bench-dax: $name guest failed:" >&2; tail -30 "$work/console.log" >&2; exit 1; }
  local seq rand
  seq=$(sed -n 's/.*BENCH seqread \([0-9.]*\) MiB.*/\1/p' "$work/console.log")
  rand=$(sed -n 's/.*BENCH randread \([0-9.]*\) IOPS.*/\1/p' "$work/console.log")
  echo "$name $seq $rand"
}

results=$work/results
: >"$results"
for r in $(seq "$runs"); do
  for d in ovfs-dax ovfs virtiofsd; do
    line=$(boot "$d"); echo "round $r: $line (seq MiB/s, rand IOPS)"; echo "$line" >>"$results"
  done
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A seq rand
for d in ovfs-dax ovfs virtiofsd; do
  seq[$d]=$(awk -v d="$d" '$1==d {print $2}' "$results" | median)
  rand[$d]=$(awk -v d="$d" '$1==d {print $3}' "$results" | median)
done
echo "medians of $runs runs, ${size} MiB file, QEMU 11.1 TCG guest:"
for d in ovfs-dax ovfs virtiofsd; do
  awk -v d="$d" -v s="${seq[$d]}" -v r="${rand[$d]}" -v vs="${seq[virtiofsd]}" -v vr="${rand[virtiofsd]}" \
    'BEGIN {printf "  %-10s seq %8.1f MiB/s (%.2fx virtiofsd)   4K rand %8.0f IOPS (%.2fx virtiofsd)\n", d, s, s/vs, r, r/vr}'
done
