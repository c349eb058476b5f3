#!/usr/bin/env bash
# Benchmark (not a test): sequential and 4 KiB random read of a host-cached file in one
# QEMU 11.1 guest (TCG; the trixie chroot of tests/tools/trixie-qemu.sh), three daemons
# in the same run, alternating, RUNS rounds each:
#   ovfs-dax    ovfs over OpenDAL fs with --dax-window, guest mount -o dax=always
#   ovfs        the same ovfs without a window (block cache on, memory_limit 2 x SIZE + 256 MiB
#               so that the whole file stays cached)
#   virtiofsd   virtiofsd 1.14 (--sandbox=none, vhost-user-fs-pci) on the same directory
# Each guest boot (tests/guest/dax-mmap.c does the reads):
#   1. `cat` the file once: warms the host side (ovfs-dax stages the object, ovfs fills its
#      data cache, virtiofsd's file is in the host page cache); under DAX this also maps
#      every 2 MiB range of it into the window.
#   2. warm: `echo 1 > drop_caches` (the guest page cache only; inodes and with them DAX
#      mappings stay), then `seqread FILE 1MiB`; again, then `randread FILE N`.
#   3. cold: `echo 3 > drop_caches` (also evicts the inode: the kernel sends REMOVEMAPPING
#      for every range, so each DAX read first pays a SETUPMAPPING per 2 MiB), then the same
#      two reads (N/4 random reads).
#   4. ram: the same seqread of a copy on the guest's tmpfs: the guest's own copy speed.
# Prints every measurement, medians with [min-max], the ratios against virtiofsd, the load
# average before and after, and for ovfs the daemon's SETUPMAPPING / READ counts and mean
# latencies (its metrics endpoint). With -o DIR the raw lines go to DIR too.
#
# usage: scripts/bench-dax.sh [-s SIZE_MIB (256)] [-r RUNS (3)] [-n RANDREADS (8000)] [-o DIR]
# Needs root, what tests/tools/install-deps.sh installs (virtiofsd, gcc) and a built ovfs
# (cargo build --release; OVFS_BIN overrides target/release/ovfs).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
size=256 runs=3 nrand=8000 out=''
while getopts "s:r:n:o:h" o; do
  case "$o" in
    s) size=$OPTARG ;; r) runs=$OPTARG ;; n) nrand=$OPTARG ;; o) out=$OPTARG ;;
    *) sed -n '2,25p' "$0"; exit 2 ;;
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
echo 1 >/proc/sys/vm/drop_caches
/bin/dax-mmap seqread big.bin 1048576 | sed 's/^BENCH /BENCH warm-/'
echo 1 >/proc/sys/vm/drop_caches
/bin/dax-mmap randread big.bin $nrand | sed 's/^BENCH /BENCH warm-/'
echo 3 >/proc/sys/vm/drop_caches
/bin/dax-mmap seqread big.bin 1048576 | sed 's/^BENCH /BENCH cold-/'
echo 3 >/proc/sys/vm/drop_caches
/bin/dax-mmap randread big.bin $((nrand / 4)) | sed 's/^BENCH /BENCH cold-/'
cat big.bin >/tmp/ram.bin
/bin/dax-mmap seqread /tmp/ram.bin 1048576 | sed 's/^BENCH /BENCH ram-/'
rm /tmp/ram.bin
sleep 2  # the host scrapes ovfs's metrics every second while the guest runs
EOF
"$repo/tests/guest/build-initramfs.sh" -o "$work/initrd.gz" -s "$work/bench.sh" -b "$work/dax-mmap" >/dev/null
# ovfs's data cache holds the whole file (the default memory_limit, 256 MiB, is smaller than
# the file plus the dirty share, and a sequential scan larger than an LRU cache never hits);
# virtiofsd's cache is the host page cache, unbounded.
printf '[storage_settings]\ntype = "fs"\nroot = "%s"\n\n[cache_settings]\nmemory_limit = "%dMiB"\n' \
  "$work/data" $((size * 2 + 256)) >"$work/ovfs.toml"

boot() {  # name -> prints "name warm-seq warm-rand cold-seq cold-rand ram-seq setups setup-ms reads read-ms"
  local name=$1 dev mnt='' pid
  rm -f "$work/sock"
  case "$name" in
    ovfs-dax)
      "$OVFS_BIN" --socket-path "$work/sock" --metrics-addr "unix:$work/metrics.sock" --tag myfs --dax-window "$window" --config "$work/ovfs.toml" 2>"$work/d.log" &
      dev=vhost-user-test-device-pci,chardev=c0,virtio-id=26,num_vqs=2,config_size=40,vq_size=1024; mnt=dax=always ;;
    ovfs)
      "$OVFS_BIN" --socket-path "$work/sock" --metrics-addr "unix:$work/metrics.sock" --tag myfs --config "$work/ovfs.toml" 2>"$work/d.log" &
      dev=vhost-user-test-device-pci,chardev=c0,virtio-id=26,num_vqs=2,config_size=40,vq_size=1024 ;;
    virtiofsd)
      "$VIRTIOFSD" --socket-path "$work/sock" --shared-dir "$work/data" --sandbox none 2>"$work/d.log" &
      dev=vhost-user-fs-pci,chardev=c0,tag=myfs,queue-size=1024 ;;
  esac
  pid=$!
  rm -f "$work/metrics.txt"
  for _ in $(seq 100); do [ -S "$work/sock" ] && break; sleep 0.1; done
  local scraper=''
  if [ "$name" != virtiofsd ]; then  # ovfs exits with its front-end: scrape while the guest runs
    ( while kill -0 "$pid" 2>/dev/null; do
        curl -sf --unix-socket "$work/metrics.sock" http://x/metrics >"$work/metrics.tmp" &&
          mv "$work/metrics.tmp" "$work/metrics.txt"
        sleep 1
      done ) &
    scraper=$!
  fi
  timeout -k 10 900 unshare --mount --propagation private sh -c \
    "mount --bind /dev $root/dev && mount -t proc proc $root/proc && exec chroot $root \
     qemu-system-x86_64 -accel tcg -m 1024M -smp 2 -nodefaults -no-user-config -display none -monitor none \
     -serial stdio -no-reboot -kernel /$kernel -initrd $inside/initrd.gz \
     -append 'console=ttyS0 panic=-1 quiet ovfs.tag=myfs ovfs.mntopts=$mnt' \
     -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem \
     -chardev socket,id=c0,path=$inside/sock -device $dev" </dev/null >"$work/console.log" 2>&1 || true
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  [ -z "$scraper" ] || wait "$scraper" 2>/dev/null || true
  grep -q 'OVFS-GUEST-END rc=0' "$work/console.log" || { echo "bench-dax: $name guest failed:" >&2; tail -30 "$work/console.log" >&2; exit 1; }
  local v='' k
  for k in warm-seqread warm-randread cold-seqread cold-randread ram-seqread; do
    v="$v $(sed -n "s/.*BENCH $k \([0-9.]*\) .*/\1/p" "$work/console.log" | head -1)"
  done
  # daemon side (ovfs): SETUPMAPPING and READ counts and mean latency in ms
  for k in SETUPMAPPING READ; do
    v="$v $(awk -v op="$k" '$1 == "ovfs_request_duration_seconds_sum{opcode=\"" op "\"}" {s=$2}
      $1 == "ovfs_request_duration_seconds_count{opcode=\"" op "\"}" {c=$2}
      END {if (c > 0) printf "%d %.3f", c, s / c * 1000; else print "- -"}' "$work/metrics.txt" 2>/dev/null || echo "- -")"
  done
  if [ -n "$out" ] && [ -s "$work/metrics.txt" ]; then  # latency histograms, for the record
    mkdir -p "$out"
    grep -E 'opcode="(SETUPMAPPING|REMOVEMAPPING|READ)"' "$work/metrics.txt" >"$out/$stamp-r$r-$name.metrics" || true
  fi
  echo "$name$v"
}

results=$work/results
: >"$results"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average at start: $load0 ($(nproc) CPUs)"
echo "columns: daemon warm-seq(MiB/s) warm-rand(IOPS) cold-seq cold-rand ram-seq setups setup-ms reads read-ms"
for r in $(seq "$runs"); do
  for d in ovfs-dax ovfs virtiofsd; do
    line=$(boot "$d"); echo "round $r: $line (load $(cut -d' ' -f1 /proc/loadavg))"; echo "$line" >>"$results"
  done
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average at end: $load1"
stat() {  # -> "median [min-max]"
  sort -n | awk '{a[NR]=$1} END {m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%s [%s-%s]", m, a[1], a[NR]}'
}
col() { awk -v d="$1" -v c="$2" '$1==d {print $c}' "$results"; }
med() { col "$1" "$2" | stat | cut -d' ' -f1; }
echo "medians [min-max] of $runs rounds, ${size} MiB file, QEMU 11.1 TCG guest, 1 MiB pread / 4 KiB pread:"
for ph in warm:2:3 cold:4:5; do
  IFS=: read -r name cs cr <<<"$ph"
  echo " $name:"
  for d in ovfs-dax ovfs virtiofsd; do
    printf "  %-10s seq %-22s MiB/s (%.2fx virtiofsd)   4K rand %-22s IOPS (%.2fx virtiofsd)\n" \
      "$d" "$(col "$d" "$cs" | stat)" "$(awk -v a="$(med "$d" "$cs")" -v b="$(med virtiofsd "$cs")" 'BEGIN {print a/b}')" \
      "$(col "$d" "$cr" | stat)" "$(awk -v a="$(med "$d" "$cr")" -v b="$(med virtiofsd "$cr")" 'BEGIN {print a/b}')"
  done
done
echo " guest tmpfs seqread (copy ceiling): $(awk '{print $6}' "$results" | stat) MiB/s"
for d in ovfs-dax ovfs; do
  echo " $d daemon: SETUPMAPPING per boot $(col "$d" 7 | stat), mean $(col "$d" 8 | stat) ms; READ per boot $(col "$d" 9 | stat), mean $(col "$d" 10 | stat) ms"
done
if [ -n "$out" ]; then
  mkdir -p "$out"
  f=$out/$stamp.txt
  { echo "# scripts/bench-dax.sh -s $size -r $runs -n $nrand; $(nproc) CPUs; load $load0 -> $load1"
    echo "# daemon warm-seq warm-rand cold-seq cold-rand ram-seq setups setup-ms reads read-ms"
    cat "$results"; } >"$f"
  echo "raw results: $f"
fi
