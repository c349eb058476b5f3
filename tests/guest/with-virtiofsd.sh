#!/usr/bin/env bash
# End-to-end guest tests against a vhost-user-fs daemon on a fresh directory: by default the
# reference daemon virtiofsd 1.14, so the harness is proven before ovfs is; pass -D to drive
# another daemon (ovfs) through the very same steps.
#
#   1. build the initramfs images (basic, remount, pjdfstest)
#   2. boot 1: basic.sh (transport acceptance), then verify.sh against the back-end directory
#   3. boot 2: remount.sh (a fresh daemon and guest see the same tree, with boot 1's SHA values)
#   4. with --pjdfstest: boot 3 runs pjdfstest on a fresh directory; summarize.sh prints
#      `pjdfstest: N passed, N failed, N skipped`
# One daemon per boot (virtiofsd exits when the VMM disconnects).
#
# usage: with-virtiofsd.sh [--pjdfstest] [--only-pjdfstest] [--kata-mem] [--keep]
#                          [-D 'DAEMON CMD with {sock} and {dir}'] [-V 'CAT CMD'] [-e EXPECTED]
#                          [-c CPUS] [-q NUM_REQUEST_QUEUES] [-m MEM_MIB] [-T TIMEOUT_S] [-a CMDLINE]
#   -D  daemon command template; {sock} = vhost-user socket path, {dir} = back-end directory
#       default: virtiofsd --socket-path {sock} --shared-dir {dir} --sandbox none --cache auto
#   -V  verify file contents with `CAT CMD <path>` instead of reading {dir} (non-directory back-ends)
#   -e  pjdfstest expected-failures file (see tests/pjdfstest/summarize.sh)
#   -T  timeout per boot in seconds (default 300)
#   -a  extra guest kernel cmdline (ovfs.mntopts=..., ovfs.big_mib=8, ovfs.pjdfs_filter=chmod, ...)
#   --keep  keep the work directory (logs, back-end dirs) even on success
# Work files go to a mktemp dir under $OVFS_WORK (default <repo>/.work); kept on failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export OVFS_WORK=${OVFS_WORK:-$repo/.work}
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

daemon_tpl='virtiofsd --socket-path {sock} --shared-dir {dir} --sandbox none --cache auto'
catcmd='' expected='' cpus=2 nrq='' mem=1024 tmo=300 cmdline='' keep=0 kata=() do_basic=1 do_pjd=0
usage() { sed -n '2,24p' "$0" >&2; exit 64; }
while [ $# -gt 0 ]; do
  case "$1" in
    --pjdfstest) do_pjd=1 ;;
    --only-pjdfstest) do_pjd=1 do_basic=0 ;;
    --kata-mem) kata=(--kata-mem) ;;
    --keep) keep=1 ;;
    -D) daemon_tpl=$2; shift ;;
    -V) catcmd=$2; shift ;;
    -e) expected=$2; shift ;;
    -c) cpus=$2; shift ;;
    -q) nrq=$2; shift ;;
    -m) mem=$2; shift ;;
    -T) tmo=$2; shift ;;
    -a) cmdline=$2; shift ;;
    -h|--help) usage ;;
    *) echo "with-virtiofsd: unknown argument $1" >&2; usage ;;
  esac
  shift
done

read -r -a tpl_words <<<"$daemon_tpl"
command -v "${tpl_words[0]}" >/dev/null || { echo "with-virtiofsd: ${tpl_words[0]} not found (tests/tools/install-deps.sh)" >&2; exit 64; }
command -v qemu-system-x86_64 >/dev/null || { echo "with-virtiofsd: qemu-system-x86_64 not found (tests/tools/install-deps.sh)" >&2; exit 64; }

mkdir -p "$OVFS_WORK"
W=$(mktemp -d "$OVFS_WORK/with-daemon.XXXXXX")
# unix socket paths are limited to 108 bytes: keep sockets in a short /tmp dir
S=$(mktemp -d /tmp/ovfs-sock.XXXXXX)
daemon_pid=
ok=0
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then kill "$daemon_pid" 2>/dev/null || true; fi
  rm -rf "$S"
  if [ "$ok" = 1 ] && [ "$keep" = 0 ]; then rm -rf "$W"; else echo "with-virtiofsd: work files kept in $W"; fi
}
trap cleanup EXIT

timings=()
now() { date +%s.%N; }
took() { awk -v s="$1" -v e="$(now)" 'BEGIN{printf "%.1f", e-s}'; }
passed=0 failed=0
step_result() {  # name start rc
  local t; t=$(took "$2")
  if [ "$3" = 0 ]; then passed=$((passed + 1)); timings+=("$(printf '%-28s %7ss  ok' "$1" "$t")")
  else failed=$((failed + 1)); timings+=("$(printf '%-28s %7ss  FAILED (rc %s)' "$1" "$t" "$3")"); fi
}

start_daemon() {  # dir sock log
  local words=() w
  for w in "${tpl_words[@]}"; do w=${w//\{sock\}/$2}; words+=("${w//\{dir\}/$1}"); done
  rm -f "$2"
  "${words[@]}" >"$3" 2>&1 &
  daemon_pid=$!
}
stop_daemon() {  # virtiofsd exits by itself once QEMU disconnects; anything else is stopped
  [ -n "$daemon_pid" ] || return 0
  for _ in $(seq 1 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$daemon_pid" 2>/dev/null; then
    kill "$daemon_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$daemon_pid" 2>/dev/null || true
  fi
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=
}
boot() {  # name initrd dir [run-guest args...]: one daemon, one guest; returns run-guest's status
  local name=$1 initrd=$2 dir=$3; shift 3
  local rgargs=(-i "$initrd" -s "$S/fs.sock" -t myfs -c "$cpus" -m "$mem" -T "$tmo" -l "$W/$name.log")
  [ -n "$nrq" ] && rgargs+=(-q "$nrq")
  [ -n "$cmdline" ] && rgargs+=(-a "$cmdline")
  start_daemon "$dir" "$S/fs.sock" "$W/$name.daemon.log"
  local rc=0
  "$here/run-guest.sh" "${rgargs[@]}" "${kata[@]+"${kata[@]}"}" "$@" || rc=$?
  stop_daemon
  return "$rc"
}

echo "with-virtiofsd: daemon: $daemon_tpl; work dir $W"
t=$(now)
bins=()
# a real `sleep`: pjdfstest's ETXTBSY cases exec a renamed copy of `which sleep`, and a renamed
# busybox exits at once ("applet not found"), which makes them flaky
[ "$do_pjd" = 1 ] && bins=(-b "$(command -v pjdfstest)" -b "$(command -v sleep)")
if [ "$do_basic" = 1 ]; then
  "$here/build-initramfs.sh" -o "$W/basic.cpio.gz" -s "$here/scripts/basic.sh"
fi
[ "$do_pjd" = 1 ] && "$here/build-initramfs.sh" -o "$W/pjdfstest.cpio.gz" -s "$here/scripts/pjdfstest.sh" "${bins[@]}"
step_result "build initramfs" "$t" 0

if [ "$do_basic" = 1 ]; then
  mkdir -p "$W/share"; chmod 0755 "$W/share"
  t=$(now); rc=0
  boot basic "$W/basic.cpio.gz" "$W/share" || rc=$?
  step_result "boot 1: basic.sh" "$t" "$rc"

  t=$(now); rc=0
  if [ -n "$catcmd" ]; then "$here/scripts/verify.sh" "$W/basic.log" --cat "$catcmd" || rc=$?
  else "$here/scripts/verify.sh" "$W/basic.log" "$W/share" || rc=$?; fi
  step_result "verify SHA lines (host)" "$t" "$rc"

  if [ "$failed" = 0 ]; then
    t=$(now); rc=0
    # boot 2 checks the tree against the SHA lines boot 1 printed, not only against MANIFEST
    tr -d '\r' <"$W/basic.log" | grep -a -E '^SHA [^ ]+ [0-9a-f]{64}$' >"$W/basic.sha" || true
    "$here/build-initramfs.sh" -o "$W/remount.cpio.gz" -s "$here/scripts/remount.sh" -f "$W/basic.sha:/ovfs-expected.sha"
    boot remount "$W/remount.cpio.gz" "$W/share" || rc=$?
    step_result "boot 2: remount.sh" "$t" "$rc"
  else
    echo "with-virtiofsd: skipping remount.sh: basic failed" >&2
  fi
fi

if [ "$do_pjd" = 1 ]; then
  mkdir -p "$W/pjd-share"; chmod 0755 "$W/pjd-share"
  t=$(now); rc=0
  echo "with-virtiofsd: pjdfstest in the guest (console only in $W/pjdfstest.log)"
  boot pjdfstest "$W/pjdfstest.cpio.gz" "$W/pjd-share" -Q || rc=$?
  step_result "boot 3: pjdfstest (guest)" "$t" "$rc"
  t=$(now); rc=0
  grep -a -E '^(TIME|PJDFSTEST-RC)' "$W/pjdfstest.log" | tr -d '\r' || true
  "$here/../pjdfstest/summarize.sh" ${expected:+-e "$expected"} "$W/pjdfstest.log" >"$W/pjdfstest.summary" || rc=$?
  cat "$W/pjdfstest.summary"
  step_result "pjdfstest summary" "$t" "$rc"
fi

echo "with-virtiofsd: timings"
printf '  %s\n' "${timings[@]}"
[ "$failed" = 0 ] && ok=1
echo "with-virtiofsd: $passed passed, $failed failed"
[ "$failed" = 0 ]
