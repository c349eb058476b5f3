#!/bin/sh
# Guest side of tests/guest_s3.rs `guest_s3_external_writer` (busybox sh, cwd /mnt = the ovfs
# mount of an S3 prefix, ovfs running with attr_timeout = entry_timeout = TTL). Measures how long
# changes made by another S3 client take to become visible in the guest.
#
# Before the boot the host PUT  ext-del ("delete me\n"), ext-over and ext-same (1000 bytes of
# `yes ovfs-old`). The guest and a host thread then talk through the bucket:
#   guest: looks at the object (so the kernel caches its entry/attributes/pages), notes the time
#          t_req, writes req-N through the mount (uploaded at close);
#   host:  sees req-N (HEAD polling), makes change N with its own client, then PUTs ack-N;
#   guest: polls (stat, and for overwrites also the bytes) until it sees the change, noting when
#          it first saw ack-N (t_ack) and when it saw the change (t_seen).
# Changes: 1 PUT ext-new ("new object\n"); 2 DELETE ext-del; 3 PUT ext-over = 3000 bytes of
# `yes ovfs-new` (new size and bytes); 4 PUT ext-same = 1000 bytes of `yes ovfs-NEW` (same size,
# other bytes: only the mtime tells the kernel; measured, reported as INFO, not judged).
# The change happens after t_req and before ack-N exists, so
#   from_ack = t_seen - t_ack  <=  true delay  <=  from_req = t_seen - t_req.
# from_req is the bound the guest judges: PASS ext-N-visible if from_req <= LIMIT (TTL + 1 s).
# (tests/guest_s3.rs passes a loose LIMIT and judges from_req minus the host's reaction time,
# request seen -> change made, which is still an upper bound of the true delay.)
# Prints per change: `DELAY <what> from_req=<s> from_ack=<s> polls=<n>` and PASS/FAIL lines.
# Times are the guest's /proc/uptime (10 ms resolution).
# Tunables: ovfs.ttl=SECS (default 1), ovfs.limit=SECS (default TTL + 1), ovfs.maxwait=SECS
# (give up after this long, default 30).
# shellcheck disable=SC2317  # the c_* conditions are called through change()
set -u
M=${OVFS_MNT:-/mnt}
TTL=${OVFS_TTL:-1}
LIMIT=${OVFS_LIMIT:-$((TTL + 1))}
MAXWAIT=${OVFS_MAXWAIT:-30}
T=/tmp/ext.$$

. /lib.sh

cd "$M" || { echo "FAIL cd: cannot cd $M"; exit 1; }
mkdir -p "$T"
yes ovfs-old | head -c 1000 >"$T/old"
yes ovfs-new | head -c 3000 >"$T/new"
yes ovfs-NEW | head -c 1000 >"$T/same"
OLD=$(sha "$T/old") NEW=$(sha "$T/new") SAME=$(sha "$T/same")

# the starting state, as the host made it
eqv start-del-present "$(cat ext-del 2>&1)" "delete me"
eqv start-over "$(size ext-over) $(sha ext-over)" "1000 $OLD"
eqv start-same "$(size ext-same) $(sha ext-same)" "1000 $OLD"
if [ -e ext-new ]; then fail start-new-absent "ext-new exists before the host made it"; else pass start-new-absent; fi

# the conditions polled for each change (0 = the change is visible); called through change()
c_new() { [ -e ext-new ]; }
c_del() { ! [ -e ext-del ]; }
c_over() { [ "$(size ext-over)" = 3000 ] && [ "$(sha ext-over)" = "$NEW" ]; }
c_same() { [ "$(sha ext-same)" = "$SAME" ]; }

# change N WHAT COND JUDGE(1|0): request change N, poll COND; prints DELAY and PASS/FAIL (or INFO)
change() {
  n=$1 what=$2 cond=$3 judge=$4
  t_req=$(now)
  echo "$n" >"req-$n" || { fail "ext-$what-request" "cannot write req-$n"; return 1; }
  t_ack='' t_seen='' polls=0
  while :; do
    polls=$((polls + 1))
    if [ -z "$t_ack" ] && [ -e "ack-$n" ]; then t_ack=$(now); fi
    if "$cond"; then t_seen=$(now); break; fi
    if ! le "$(sub "$t_req" "$(now)")" "$MAXWAIT"; then break; fi
    usleep 20000
  done
  if [ -z "$t_seen" ]; then
    if [ "$judge" = 1 ]; then fail "ext-$what-visible" "not visible after ${MAXWAIT}s (ack seen: ${t_ack:-no})"
    else echo "INFO ext-$what not visible after ${MAXWAIT}s (ack seen: ${t_ack:-no})"; fi
    return 1
  fi
  [ -n "$t_ack" ] || t_ack=$t_seen   # seen in the same poll as the ack or before it
  from_req=$(sub "$t_req" "$t_seen") from_ack=$(sub "$t_ack" "$t_seen")
  echo "DELAY $what from_req=$from_req from_ack=$from_ack polls=$polls"
  if [ "$judge" = 1 ]; then
    if le "$from_req" "$LIMIT"; then pass "ext-$what-visible"
    else fail "ext-$what-visible" "visible ${from_req}s after the request (${from_ack}s after the ack), limit ${LIMIT}s"; fi
  else
    echo "INFO ext-$what visible ${from_req}s after the request (${from_ack}s after the ack)"
  fi
  return 0
}

# 1: a new object appears
change 1 new c_new 1 && eqv ext-new-content "$(cat ext-new 2>&1)" "new object"
# shellcheck disable=SC2010  # plain names
if ls | grep -qx ext-new; then pass ext-new-listed; else fail ext-new-listed "not in ls"; fi

# 2: a deleted object disappears (its entry is in the kernel's cache when the change is asked)
eqv del-cached "$(cat ext-del 2>&1)" "delete me"
change 2 del c_del 1
# shellcheck disable=SC2010  # plain names
if ls | grep -qx ext-del; then fail ext-del-unlisted "still in ls"; else pass ext-del-unlisted; fi

# 3: an overwritten object shows its new size and bytes (size, attributes and pages cached)
eqv over-cached "$(size ext-over) $(sha ext-over)" "1000 $OLD"
change 3 over c_over 1 && eqv ext-over-final "$(size ext-over) $(sha ext-over)" "3000 $NEW"

# 4: same size, other bytes (information only)
eqv same-cached "$(size ext-same) $(sha ext-same)" "1000 $OLD"
MAXWAIT=${OVFS_SAME_MAXWAIT:-6}
change 4 same c_same 0 || true

rm -f req-1 req-2 req-3 req-4
rm -rf "$T"
if [ "$fails" -ne 0 ]; then echo "s3-external: $fails check(s) FAILED"; exit 1; fi
echo "s3-external: all checks passed"
exit 0
