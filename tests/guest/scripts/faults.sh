#!/bin/sh
# Guest side of tests/faults_guest.rs (busybox sh, cwd /mnt on ovfs over S3 with injected
# back-end faults). The host put seeded pseudo-random files in /data (their bytes are known
# on the host). Every operation prints one line the host parses:
#   OP <op> OK|EIO|ERR|WRONG <name> [detail]
# op: write (dd conv=fsync: write + fsync + close), read (cmp against /data), stat (size),
# ls (listing holds the files), rename, delete. After a successful write the guest prints
#   SYNCED <name> <src>          (the host then expects <name> in the bucket with <src>'s bytes)
# and RENAMED <old> <new>, DELETED <name>, RENAME-EIO <old> <new>, DELETE-EIO <name>, WRITE-EIO <name> <src>.
# Phase 1 (faults): ovfs.rounds=N rounds over every /data file.
# Phase 1b (HTTP faults): when ovfs.pxrounds=N > 0, prints PROXY-START, runs N rounds in the
# directory px (a mount whose S3 traffic goes through the host's fault-injecting proxy) over the
# /data files of at most ovfs.pxmax bytes (default 1 MiB), prints PROXY-DONE.
# Phase 2 (outage): prints OUTAGE-READY, then loops writing/reading o<k> files until the host's
# marker object `outage-over` is visible (the host paused S3 and resumed it), then RECOVERY
# writes (RECOVERED <ok> of <tries>). Ends with COUNT lines and FAULTS-DONE.
set -u
ROUNDS=${OVFS_ROUNDS:-1}
PXROUNDS=${OVFS_PXROUNDS:-0}
PXMAX=${OVFS_PXMAX:-1048576}
RECOVERY=${OVFS_RECOVERY:-3}
OUTAGE_MAX=${OVFS_OUTAGE_MAX:-300}
err=/tmp/err

# classify <op> <name> <rc>: prints the OP line from rc and /tmp/err; returns 0 on OK
classify() {
  if [ "$3" = 0 ]; then echo "OP $1 OK $2"; return 0; fi
  if grep -qE 'I/O error|Input/output error' "$err"; then echo "OP $1 EIO $2"; else echo "OP $1 ERR $2 $(head -c 200 "$err" | tr '\n' ' ')"; fi
  return 1
}

# write <name> <src>
write() {
  dd if="/data/$2" of="$1" bs=64k conv=fsync 2>"$err"
  if classify write "$1" $?; then echo "SYNCED $1 $2"; else echo "WRITE-EIO $1 $2"; return 1; fi
}

# check <name> <src>: stat size and compare bytes (after dropping the guest's caches)
check() {
  want=$(stat -c %s "/data/$2")
  got=$(stat -c %s "$1" 2>"$err")
  if classify stat "$1" $?; then
    [ "$got" = "$want" ] || echo "OP stat WRONG $1 size $got want $want"
  fi
  cmp "/data/$2" "$1" >/tmp/cmp 2>"$err"
  rc=$?
  case $rc in
    0) echo "OP read OK $1" ;;
    1) echo "OP read WRONG $1 $(cmp -l "/data/$2" "$1" 2>/dev/null | wc -l) bytes differ" ;;
    *) if grep -q 'EOF' "$err"; then echo "OP read WRONG $1 $(cat "$err")"; else classify read "$1" 2; fi ;;
  esac
}

# round <r> [<src>...]: the /data files given (default all)
round() {
  r=$1
  shift
  srcs=${*:-$(ls /data)}
  names=''
  for src in $srcs; do
    if write "w$r-$src" "$src"; then names="$names w$r-$src:$src"; fi
  done
  sync; echo 3 >/proc/sys/vm/drop_caches
  for ns in $names; do check "${ns%%:*}" "${ns#*:}"; done
  ls -l >/tmp/ls 2>"$err"
  if classify ls "round$r" $?; then
    for ns in $names; do grep -q " ${ns%%:*}\$" /tmp/ls || echo "OP ls WRONG ${ns%%:*} missing from the listing"; done
  fi
  i=0
  for ns in $names; do
    i=$((i + 1)); n=${ns%%:*}; src=${ns#*:}
    if [ $((i % 2)) = 0 ]; then
      mv "$n" "m$n" 2>"$err"
      if classify rename "$n" $?; then
        echo "RENAMED $n m$n"
        check "m$n" "$src"
      else
        echo "RENAME-EIO $n m$n"
      fi
    else
      rm "$n" 2>"$err"
      if classify delete "$n" $?; then echo "DELETED $n"; else echo "DELETE-EIO $n"; fi
    fi
  done
}

r=0
while [ "$r" -lt "$ROUNDS" ]; do r=$((r + 1)); round "$r"; done
echo "PHASE1-DONE"

if [ "$PXROUNDS" -gt 0 ]; then
  small=''
  for src in $(ls /data); do [ "$(stat -c %s "/data/$src")" -le "$PXMAX" ] && small="$small $src"; done
  echo "PROXY-START"
  cd px || { echo "OP cd ERR px"; exit 1; }
  r=0
  while [ "$r" -lt "$PXROUNDS" ]; do r=$((r + 1)); round "x$r" $small; done
  cd ..
  echo "PROXY-DONE"
fi

# Phase 2: outage.
echo "OUTAGE-READY"
k=0 t0=$(date +%s)
src=$(ls /data | head -2 | tail -1)
while [ ! -e outage-over ]; do
  k=$((k + 1))
  if write "o$k" "$src"; then check "o$k" "$src"; fi
  if [ $(( $(date +%s) - t0 )) -gt "$OUTAGE_MAX" ]; then echo "OUTAGE-NEVER-OVER"; break; fi
  sleep 1
done
echo "OUTAGE-SEEN after $k iterations"
# Recovered: RECOVERY successful writes within 3 * RECOVERY attempts (faults are still injected).
j=0 a=0
while [ "$j" -lt "$RECOVERY" ] && [ "$a" -lt $((3 * RECOVERY)) ]; do
  a=$((a + 1)); k=$((k + 1))
  if write "p$k" "$src"; then j=$((j + 1)); check "p$k" "$src"; fi
done
echo "RECOVERED $j of $a"
echo "FAULTS-DONE"
