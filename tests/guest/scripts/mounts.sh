#!/bin/sh
# Guest side of tests/guest_mounts.rs: one daemon serves four [[mounts]] under a synthetic
# root: /s3 (SeaweedFS), /fs (a host directory), /mem (memory), /hang (an S3 endpoint that
# accepts connections and never answers: reads there stall until the mount's timeout while
# fs and mem are worked on, TIME fs-mem-hang, TIME hang-eio-max). The host stops the S3 server
# while the guest works; guest and host talk through files in the fs mount (the host sees
# them in its directory):
#   guest: checks all three mounts, then creates fs/ready-outage;
#   host:  stops SeaweedFS, creates fs/outage-started;
#   guest: reads under /s3 must fail with EIO (prints TIME s3-eio=<s>), fs and mem are read,
#          written and listed in the same window (TIME fs-mem-outage=<s>, and the same work
#          before the outage as TIME fs-mem-before=<s>), /s3 still failing after that work
#          (so it happened during the outage), then creates fs/outage-done;
#   host:  starts SeaweedFS again (same port, same data), creates fs/resumed;
#   guest: /s3 serves again (read, write, list) with nothing restarted (TIME s3-back=<s>).
# Times are the guest's /proc/uptime (10 ms resolution). Tunables: ovfs.s3timeout=SECS (the
# mount's configured back-end timeout; EIO must come within it plus 2 s of TCG slack),
# ovfs.hangtimeout=SECS (the same for /hang),
# ovfs.maxwait=SECS (give up waiting for the host, default 120).
set -u
M=${OVFS_MNT:-/mnt}
S3T=${OVFS_S3TIMEOUT:-4}
HANGT=${OVFS_HANGTIMEOUT:-8}
MAXWAIT=${OVFS_MAXWAIT:-120}

. /lib.sh
# wait_for FILE: poll until it exists (the host made it)
wait_for() {
  t=$(now)
  while ! [ -e "$1" ]; do
    if ! le "$(sub "$t" "$(now)")" "$MAXWAIT"; then fail "wait-$(basename "$1")" "host did not create $1"; return 1; fi
    sleep 0.2
  done
}
# work DIR TAG: write, read back, list and remove 10 files
work() {
  ok=1
  for i in 1 2 3 4 5 6 7 8 9 10; do
    echo "$2 $i" >"$1/w-$2-$i" || ok=0
  done
  for i in 1 2 3 4 5 6 7 8 9 10; do
    [ "$(cat "$1/w-$2-$i" 2>&1)" = "$2 $i" ] || ok=0
  done
  [ "$(ls "$1" | grep -c "^w-$2-")" = 10 ] || ok=0
  rm -f "$1"/w-"$2"-* || ok=0
  [ $ok = 1 ]
}

eqv root-listing "$(ls "$M" | tr '\n' ' ')" "fs hang mem s3 "
eqv s3-before "$(cat "$M/s3/before.txt" 2>&1)" "hello from s3"
eqv s3-listing "$(ls "$M/s3" | tr '\n' ' ')" "before.txt dir unread.txt "
echo "written in fs" >"$M/fs/from-guest" && pass fs-write || fail fs-write "echo failed"
echo "written in mem" >"$M/mem/from-guest" && pass mem-write || fail mem-write "echo failed"
if echo x >"$M/newfile" 2>/dev/null; then fail root-readonly "created a file in the synthetic root"; else pass root-readonly; fi
t=$(now); work "$M/fs" before && work "$M/mem" before && pass fs-mem-before || fail fs-mem-before "work failed"
echo "TIME fs-mem-before=$(sub "$t" "$(now)")"

# /hang: an S3 endpoint that accepts connections and never answers. 8 reads stall there
# (each ends with EIO after the configured timeout) while fs and mem are worked on.
t=$(now)
for i in 1 2 3 4 5 6 7 8; do
  (out=$(cat "$M/hang/f$i" 2>&1); echo "$(sub "$t" "$(now)") $out" >"/tmp/hang.$i") &
done
sleep 0.5
t2=$(now); work "$M/fs" hang && work "$M/mem" hang && pass fs-mem-hang || fail fs-mem-hang "work failed"
echo "TIME fs-mem-hang=$(sub "$t2" "$(now)")"
done_early=$(ls /tmp | grep -c '^hang\.')
eqv hang-overlap "$done_early" 0
wait
worst=0
for i in 1 2 3 4 5 6 7 8; do
  r=$(cat "/tmp/hang.$i")
  case "$r" in
    *"I/O error"*|*"Input/output error"*) ;;
    *) fail hang-eio "read $i under /hang: '$r'" ;;
  esac
  worst=$(awk -v a="$worst" -v b="${r%% *}" 'BEGIN{print (b > a) ? b : a}')
done
echo "TIME hang-eio-max=$worst"
if le "$worst" "$((HANGT + 2))"; then pass hang-eio-in-time; else fail hang-eio-in-time "$worst s > $HANGT s + 2"; fi

: >"$M/fs/ready-outage"
wait_for "$M/fs/outage-started" || exit 1
echo "INFO outage started"

# S3 down: a file never read and a directory never listed must fail with EIO.
t=$(now)
out=$(cat "$M/s3/unread.txt" 2>&1)
d=$(sub "$t" "$(now)")
echo "TIME s3-eio=$d"
case "$out" in
  *"I/O error"*|*"Input/output error"*) pass s3-eio ;;
  *) fail s3-eio "cat under /s3 during the outage: '$out'" ;;
esac
if le "$d" "$((S3T + 2))"; then pass s3-eio-in-time; else fail s3-eio-in-time "$d s > $S3T s + 2"; fi
out=$(ls "$M/s3/dir" 2>&1)
case "$out" in
  *"I/O error"*|*"Input/output error"*) pass s3-ls-eio ;;
  *) fail s3-ls-eio "ls under /s3 during the outage: '$out'" ;;
esac

# The other two mounts, in the same window.
t=$(now); work "$M/fs" outage && work "$M/mem" outage && pass fs-mem-outage || fail fs-mem-outage "work failed"
echo "TIME fs-mem-outage=$(sub "$t" "$(now)")"
eqv fs-read-outage "$(cat "$M/fs/from-guest" 2>&1)" "written in fs"
eqv mem-read-outage "$(cat "$M/mem/from-guest" 2>&1)" "written in mem"
eqv root-listing-outage "$(ls "$M" | tr '\n' ' ')" "fs hang mem s3 "
# still down after that work: it was done during the outage
case "$(cat "$M/s3/unread.txt" 2>&1)" in
  *"I/O error"*|*"Input/output error"*) pass s3-still-down ;;
  *) fail s3-still-down "/s3 answered before the host resumed it" ;;
esac

: >"$M/fs/outage-done"
wait_for "$M/fs/resumed" || exit 1
echo "INFO resumed"

# Back: no restart; allow the server a few seconds to answer.
t=$(now)
got=''
while :; do
  got=$(cat "$M/s3/unread.txt" 2>&1)
  [ "$got" = "not read before the outage" ] && break
  le "$(sub "$t" "$(now)")" 30 || break
  sleep 0.5
done
echo "TIME s3-back=$(sub "$t" "$(now)")"
eqv s3-back-read "$got" "not read before the outage"
eqv s3-back-ls "$(ls "$M/s3/dir" 2>&1 | tr '\n' ' ')" "x "
echo "written after the outage" >"$M/s3/after.txt" && pass s3-back-write || fail s3-back-write "echo failed"
eqv s3-back-readback "$(cat "$M/s3/after.txt" 2>&1)" "written after the outage"
sync
exit $fails
