#!/bin/sh
# Guest side of tests/guest_reload.rs (busybox sh, /mnt = the ovfs mount of an S3 prefix, ovfs with
# attr_timeout = entry_timeout = 1 s). Reads data.bin in a loop, checking its bytes every time, while
# the host rotates ovfs's S3 credentials (the old key revoked on the server) and changes a cache TTL
# by editing the daemon's config file, then makes an invalid edit. Not one read may fail.
#
# Every read drops the guest's page cache first and the loop sleeps past the 1 s attribute TTL, so
# each open asks the daemon, and the daemon the server, with the credentials in force.
# The guest and the host talk through the bucket (objects written through this mount):
#   guest: reads until it has done ovfs.before reads, writes `ready` (a PUT with the old key);
#   host:  adds the new key to the server, edits the config (new key, new TTL), waits for the daemon's
#          reload line, revokes the old key, PUTs `rotated`;
#   guest: keeps reading until `rotated` appears, then ovfs.after more reads, writes `rotated-ok`
#          (a PUT with the new key);
#   host:  makes an invalid edit, waits for the daemon's refusal line, PUTs `refused`;
#   guest: keeps reading until `refused` appears, then ovfs.after more reads, writes `done`.
# Tunables: ovfs.sha=HEX (sha256 of data.bin, required), ovfs.before=N (default 3), ovfs.after=N
# (default 3), ovfs.maxwait=SECS (per phase, default 120).
set -u
M=${OVFS_MNT:-/mnt}
SHA=${OVFS_SHA:?ovfs.sha= missing}
BEFORE=${OVFS_BEFORE:-3}
AFTER=${OVFS_AFTER:-3}
MAXWAIT=${OVFS_MAXWAIT:-120}
. /lib.sh
reads=0 errors=0

cd "$M" || { echo "FAIL cd: cannot cd $M"; exit 1; }

# one checked read of data.bin, from the daemon (not the guest's page cache)
read_once() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
  s=$(sha256sum data.bin 2>/tmp/read.err | cut -d' ' -f1)
  reads=$((reads + 1))
  if [ "$s" != "$SHA" ]; then
    errors=$((errors + 1))
    echo "READ-ERROR read=$reads got='$s' $(cat /tmp/read.err)"
  fi
  usleep 1100000
}

# read until object $1 exists (or MAXWAIT), then $2 more reads; $3 = phase name
phase() {
  t0=$(now)
  while ! [ -e "$1" ]; do
    read_once
    if ! le "$(sub "$t0" "$(now)")" "$MAXWAIT"; then fail "$3-wait" "no $1 after ${MAXWAIT}s"; return 1; fi
  done
  pass "$3-seen"
  i=0
  while [ $i -lt "$2" ]; do read_once; i=$((i + 1)); done
  echo "READS $3 total=$reads errors=$errors"
}

i=0
while [ $i -lt "$BEFORE" ]; do read_once; i=$((i + 1)); done
echo "READS before total=$reads errors=$errors"
echo ready >ready || fail write-ready "cannot write ready"
phase rotated "$AFTER" rotated
echo ok >rotated-ok || fail write-rotated-ok "cannot write rotated-ok with the new key"
phase refused "$AFTER" refused
echo ok >done || fail write-done "cannot write done after the refused edit"

if [ "$errors" = 0 ]; then pass "reads-all-ok ($reads reads)"; else fail reads "$errors of $reads reads failed"; fi
if [ "$fails" -ne 0 ] || [ "$errors" -ne 0 ]; then echo "s3-reload: $fails check(s) FAILED"; exit 1; fi
echo "s3-reload: all checks passed"
exit 0
