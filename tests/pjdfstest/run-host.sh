#!/usr/bin/env bash
# Run pjdfstest directly on a host mount (e.g. ovfs's /dev/fuse transport) and summarize.
#
# usage: run-host.sh [-e EXPECTED_FAILURES] [-n NAPTIME] MOUNTPOINT [TEST_PATTERN...]
#   -e  expected-failures file for summarize.sh      -n  pjdfstest naptime (default 0.001)
# Works in a fresh 0755 directory under MOUNTPOINT (removed afterwards); users nobody/nogroup and
# daemon/daemon must exist on the host (they do on Debian). The raw output is kept in
# $OVFS_WORK/logs/. Exit status: that of summarize.sh (0 = no unexpected failure).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
OVFS_WORK=${OVFS_WORK:-$repo/.work}
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

expected=() naptime=0.001
while getopts "e:n:h" opt; do
  case "$opt" in
    e) expected=(-e "$OPTARG") ;;
    n) naptime=$OPTARG ;;
    *) sed -n '2,10p' "$0" >&2; exit 64 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,10p' "$0" >&2; exit 64; }
mnt=$1; shift
[ -d "$mnt" ] || { echo "run-host: no such directory $mnt" >&2; exit 64; }
command -v pjdfstest >/dev/null || { echo "run-host: pjdfstest not found (tests/tools/install-deps.sh)" >&2; exit 64; }
for u in nobody daemon; do getent passwd "$u" >/dev/null || { echo "run-host: no user $u" >&2; exit 64; }; done
for g in nogroup daemon; do getent group "$g" >/dev/null || { echo "run-host: no group $g" >&2; exit 64; }; done

mkdir -p "$OVFS_WORK/logs"
log=$OVFS_WORK/logs/pjdfstest-host-$(date +%Y%m%d-%H%M%S)-$$.log
conf=$(mktemp)
work=$(mktemp -d "$mnt/pjdfstest.XXXXXX")
trap 'rm -f "$conf"; rm -rf "$work"' EXIT
chmod 0755 "$work" 2>/dev/null || echo "run-host: warning: cannot chmod $work (back-end keeps no modes)" >&2
# every ancestor must be searchable by the unprivileged test users
p=$mnt
while [ "$p" != / ]; do
  if [ "$(( 0$(stat -c %a "$p") & 01 ))" -eq 0 ]; then
    echo "run-host: warning: $p is not searchable by others (mode $(stat -c %a "$p")): unprivileged cases will fail" >&2
  fi
  p=$(dirname "$p")
done
cat >"$conf" <<EOC
[settings]
naptime = $naptime
allow_remount = false

[dummy_auth]
entries = [ ["nobody", "nogroup"], ["daemon", "daemon"] ]
EOC
start=$(date +%s)
set +e
(cd "$work" && RUST_BACKTRACE=0 pjdfstest -c "$conf" -p "$work" "$@") >"$log" 2>&1
set -e
echo "run-host: pjdfstest on $mnt took $(( $(date +%s) - start ))s; raw output: $log"
"$here/summarize.sh" "${expected[@]+"${expected[@]}"}" "$log"
