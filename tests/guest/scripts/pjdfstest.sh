#!/bin/sh
# Guest-side pjdfstest run (busybox sh; cwd /mnt). The initramfs must include the binary:
#   build-initramfs.sh -s tests/guest/scripts/pjdfstest.sh -b "$(command -v pjdfstest)" \
#                      -b "$(command -v sleep)" ...
# (the host's coreutils sleep replaces busybox's: pjdfstest's {open,truncate}::etxtbsy exec a
# renamed copy of `which sleep`, and a renamed busybox exits at once, so they would race)
# Runs pjdfstest in a fresh 0755 directory under the mount with the users nobody/nogroup and
# daemon/daemon (the initramfs has them), prints pjdfstest's own output on the console for
# tests/pjdfstest/summarize.sh, then `PJDFSTEST-RC <rc>`.
# Exits 0 if pjdfstest ran to its summary (failures are judged on the host by summarize.sh),
# non-zero if it could not run or died before its summary.
# Tunables: ovfs.pjdfs_filter=PATTERN[,PATTERN...] (test name filters), ovfs.pjdfs_naptime=SECS
# (default 0.001; raise it if timestamp tests flake), ovfs.pjdfs_verbose=1.
set -u
M=${OVFS_MNT:-/mnt}
command -v pjdfstest >/dev/null || { echo "FAIL pjdfstest: binary not in the initramfs (use -b)"; exit 1; }
if [ "$(readlink "$(which sleep)")" = /bin/busybox ]; then
  echo "pjdfstest.sh: warning: sleep is busybox: the etxtbsy cases will be flaky (add -b sleep)"
fi
conf=/tmp/pjdfstest.toml
cat >"$conf" <<EOC
[settings]
naptime = ${OVFS_PJDFS_NAPTIME:-0.001}
allow_remount = false

[dummy_auth]
entries = [ ["nobody", "nogroup"], ["daemon", "daemon"] ]
EOC
# unprivileged test users must be able to reach the work dir
chmod 0755 "$M" 2>/dev/null || echo "pjdfstest.sh: note: chmod 0755 $M failed (mode $(stat -c %a "$M"))"
d=$M/pjdfstest.$$
if ! mkdir "$d" || ! chmod 0755 "$d"; then echo "FAIL pjdfstest: cannot create $d"; exit 1; fi
set --
[ "${OVFS_PJDFS_VERBOSE:-0}" = 1 ] && set -- -v
if [ -n "${OVFS_PJDFS_FILTER:-}" ]; then
  for p in $(echo "$OVFS_PJDFS_FILTER" | tr ',' ' '); do set -- "$@" "$p"; done
fi
echo "pjdfstest.sh: pjdfstest -c $conf -p $d $*"
cd "$d" || exit 1
s=$(cut -d' ' -f1 /proc/uptime)
RUST_BACKTRACE=0 pjdfstest -c "$conf" -p "$d" "$@" >/tmp/pjdfstest.out 2>&1
rc=$?
# print after the run: the console is slow under TCG, and ordering stays clean
cat /tmp/pjdfstest.out
echo "PJDFSTEST-RC $rc"
echo "TIME pjdfstest $(awk -v a="$s" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN{printf "%.1f", b-a}')s"
cd "$M" || exit 1
rm -rf "$d"
grep -q '^Summary: ' /tmp/pjdfstest.out || { echo "FAIL pjdfstest: no Summary line (crashed?)"; exit 1; }
exit 0
