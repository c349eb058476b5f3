#!/usr/bin/env bash
# Boot a Linux test guest under QEMU TCG against a vhost-user-fs back-end (any daemon:
# ovfs, virtiofsd, ...), given only the back-end's socket.
#
# usage: run-guest.sh -k KERNEL -i INITRD -s SOCKET -t TAG [-m 1024] [-c 2] [-q NUM_REQUEST_QUEUES]
#                     [-T timeout_s] [-l LOGFILE] [-a extra_cmdline] [-x qemu_arg]... [-Q] [--kata-mem]
#   -k  guest kernel (default: newest /boot/vmlinuz-*-cloud-amd64)
#   -i  initramfs from build-initramfs.sh
#   -s  vhost-user socket of the back-end (waited for up to 30 s)
#   -t  virtio-fs tag (passed to the guest as ovfs.tag=)
#   -m  guest RAM in MiB (default 1024)       -c  vCPUs (default 2)
#   -q  num-request-queues (default: QEMU's, 1)
#   -T  timeout in seconds for the whole boot (default 300)
#   -l  console log file (default: $OVFS_WORK/logs/guest-<time>.log)
#   -a  extra kernel command line (e.g. "ovfs.mntopts=dax=never ovfs.filter=chmod")
#   -x  extra QEMU argument (repeatable)
#   -Q  quiet: console to the log only, not to stdout
#   --kata-mem  guest RAM as Kata does it: memory-backend-file,mem-path=/dev/shm,share=on
#               (default: memory-backend-memfd,share=on)
# Exit status: 0 only if the console shows `OVFS-GUEST-END rc=0`; 1 if the guest test failed
# (rc != 0), 2 if the end marker is missing, 124 on timeout, 64 on usage errors.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
OVFS_WORK=${OVFS_WORK:-$repo/.work}

kernel='' initrd='' sock='' tag='' mem=1024 cpus=2 nrq='' tmo=300 log='' extra='' quiet=0 kata_mem=0
qextra=()
usage() { sed -n '2,23p' "$0" >&2; exit 64; }
args=()
for a in "$@"; do
  case "$a" in
    --kata-mem) kata_mem=1 ;;
    --help) usage ;;
    *) args+=("$a") ;;
  esac
done
set -- "${args[@]+"${args[@]}"}"
while getopts "k:i:s:t:m:c:q:T:l:a:x:Qh" opt; do
  case "$opt" in
    k) kernel=$OPTARG ;;
    i) initrd=$OPTARG ;;
    s) sock=$OPTARG ;;
    t) tag=$OPTARG ;;
    m) mem=$OPTARG ;;
    c) cpus=$OPTARG ;;
    q) nrq=$OPTARG ;;
    T) tmo=$OPTARG ;;
    l) log=$OPTARG ;;
    a) extra=$OPTARG ;;
    x) qextra+=("$OPTARG") ;;
    Q) quiet=1 ;;
    *) usage ;;
  esac
done
if [ -z "$initrd" ] || [ -z "$sock" ] || [ -z "$tag" ]; then usage; fi
if [ -z "$kernel" ]; then
  kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-*-cloud-amd64' | sort -V | tail -1)
  [ -n "$kernel" ] || { echo "run-guest: no /boot/vmlinuz-*-cloud-amd64 (run tests/tools/install-deps.sh)" >&2; exit 64; }
fi
[ -r "$kernel" ] || { echo "run-guest: cannot read kernel $kernel" >&2; exit 64; }
[ -r "$initrd" ] || { echo "run-guest: cannot read initrd $initrd" >&2; exit 64; }
if [ -z "$log" ]; then
  mkdir -p "$OVFS_WORK/logs"
  log=$OVFS_WORK/logs/guest-$(date +%Y%m%d-%H%M%S)-$$.log
fi
mkdir -p "$(dirname "$log")"

# the back-end may still be starting: wait for its socket
for _ in $(seq 1 300); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "run-guest: no vhost-user socket at $sock" >&2; exit 64; }

if [ "$kata_mem" = 1 ]; then
  memobj=memory-backend-file,id=mem,size=${mem}M,mem-path=/dev/shm,share=on
else
  memobj=memory-backend-memfd,id=mem,size=${mem}M,share=on
fi
fsdev=vhost-user-fs-pci,queue-size=1024,chardev=char0,tag=$tag
[ -n "$nrq" ] && fsdev+=",num-request-queues=$nrq"

# shellcheck disable=SC2054  # commas are inside QEMU option values
cmd=(qemu-system-x86_64 -accel tcg -m "${mem}M" -smp "$cpus" -nodefaults -no-user-config
     -display none -monitor none -serial stdio -no-reboot
     -kernel "$kernel" -initrd "$initrd"
     -append "console=ttyS0 panic=-1 quiet ovfs.tag=$tag $extra"
     -object "$memobj" -numa node,memdev=mem
     -chardev "socket,id=char0,path=$sock"
     -device "$fsdev"
     "${qextra[@]+"${qextra[@]}"}")

echo "run-guest: ${cmd[*]}" >"$log"
start=$(date +%s.%N)
set +e
if [ "$quiet" = 1 ]; then
  timeout -k 10 "$tmo" "${cmd[@]}" </dev/null >>"$log" 2>&1
  qrc=$?
else
  timeout -k 10 "$tmo" "${cmd[@]}" </dev/null 2>&1 | tee -a "$log"
  qrc=${PIPESTATUS[0]}
fi
set -e
secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')

marker=$(grep -a -o 'OVFS-GUEST-END rc=[0-9]*' "$log" | tail -1 || true)
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  echo "run-guest: TIMEOUT after ${tmo}s (${marker:-no end marker}); console log: $log" >&2
  exit 124
fi
if [ -z "$marker" ]; then
  echo "run-guest: FAILED: no OVFS-GUEST-END marker (qemu exit $qrc, ${secs}s); console log: $log" >&2
  exit 2
fi
grc=${marker#*rc=}
if [ "$grc" != 0 ]; then
  echo "run-guest: FAILED: guest test exited rc=$grc (${secs}s); console log: $log" >&2
  exit 1
fi
echo "run-guest: OK in ${secs}s; console log: $log" >&2
