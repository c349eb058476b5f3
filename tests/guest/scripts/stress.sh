#!/bin/sh
# Guest-side concurrency stress (busybox sh, run by the initramfs /init with cwd /mnt): N background
# processes (default 8), each writing and reading its own three files under <dir>/w<i> for
# ovfs.stress_secs seconds: whole-file rewrites of assorted sizes (0 B .. ~2 MB; cat, cp, dd),
# appends, overwrites in the middle (dd bs=1 and bs=4096, conv=notrunc), truncates up and down,
# renames over an existing file followed by a copy back, and full re-reads after dropping the
# page cache. After every change the file is compared (cmp + size) with a copy kept in the
# guest's /tmp (tmpfs), to which the same change was applied.
# Then it waits for every process (a process still busy `grace` seconds after the deadline is
# reported as hung, with the operation it is stuck in), checks each one's result, drops the
# caches, checks every file once more with sha256 and the directory listings, and prints
#   PASS stress-worker-<i> <n> iterations           one per process
#   SHA <path relative to the mount> <sha256>        every file left behind (tests/guest/scripts/verify.sh)
#   STRESS-FILES <count>
#   PASS stress <total> iterations                   or FAIL lines
# Exits non-zero on any FAIL.
# Tunables (kernel cmdline ovfs.NAME=VALUE -> $OVFS_NAME): ovfs.stress_secs=N (default 60),
# ovfs.stress_procs=N (default 8), ovfs.stress_dir=DIR (default stress),
# ovfs.stress_grace=N (default 120).
# shellcheck disable=SC3028  # busybox ash has $RANDOM (assigning it seeds it)
set -u
M=${OVFS_MNT:-/mnt}
D=${OVFS_STRESS_DIR:-stress}
SECS=${OVFS_STRESS_SECS:-60}
P=${OVFS_STRESS_PROCS:-8}
GRACE=${OVFS_STRESS_GRACE:-120}
T=/tmp/stress.$$

. /lib.sh
uptime_s() { read -r up _ </proc/uptime; echo "${up%.*}"; }

cd "$M" || { echo "FAIL cd: cannot cd $M"; exit 1; }
rm -rf "$D" "$T"
mkdir -p "$D" "$T" || { echo "FAIL stress-setup: mkdir $D $T"; exit 1; }

# n = a size for a whole-file write: edge cases around pages, or a random one
# (sets n instead of printing it: $(...) would not advance this shell's RANDOM)
pick_size() {
  case $((RANDOM % 11)) in
    0) n=0 ;; 1) n=1 ;; 2) n=4095 ;; 3) n=4096 ;; 4) n=4097 ;;
    5) n=65536 ;; 6) n=131073 ;; 7) n=300001 ;; 8) n=1048579 ;;
    9) n=$((RANDOM % 9000)) ;; *) n=$(((RANDOM * 61) % 2000000)) ;;
  esac
}

# worker I: runs in a background subshell; returns 0 if every check passed.
# Files: $W/f0..f2 on the mount, $C/f0..f2 the expected contents in tmpfs.
worker() {
  i=$1
  W=$D/w$i C=$T/w$i F=$T/w$i.fail O=$T/w$i.op X=$T/w$i.chunk
  RANDOM=$((i * 7919 + 17))
  k=0 nf=0
  bad() { echo "FAIL stress-w$i: iteration $k, $op $f: $1" >>"$F"; nf=$((nf + 1)); }
  # check the file against its copy: size (getattr) and bytes (cmp)
  chk() {
    a=$(size "$W/$1") b=$(size "$C/$1")
    [ "$a" = "$b" ] || { bad "$1: size $a, expected $b"; return 1; }
    cmp -s "$W/$1" "$C/$1" || { bad "$1: contents differ from the tmpfs copy (size $a)"; return 1; }
  }
  mkdir -p "$W" "$C" || { echo "FAIL stress-w$i: mkdir $W" >>"$F"; return 1; }
  for f in f0 f1 f2; do
    op=init; echo "0 init $f" >"$O"
    head -c $((i * 1000 + 1)) /dev/urandom >"$C/$f"
    cp "$C/$f" "$W/$f" || bad "cp failed"
    chk "$f"
  done
  while [ "$nf" -lt 3 ]; do
    now=$(uptime_s)
    [ "$now" -lt "$end" ] || break
    k=$((k + 1))
    f=f$(((k + i) % 3))
    op=$(((k * 5 + i) % 8))
    cur=$(size "$C/$f")
    [ "$cur" -gt 3000000 ] && op=4   # keep files small: truncate instead
    echo "$k $op $f" >"$O"
    case $op in
      0|1)  # whole-file rewrite, three ways of writing
        op="write"; pick_size
        head -c "$n" /dev/urandom >"$C/$f"
        case $((k % 3)) in
          0) cat "$C/$f" >"$W/$f" || bad "cat > failed" ;;
          1) cp "$C/$f" "$W/$f" || bad "cp failed" ;;
          *) dd if="$C/$f" of="$W/$f" bs=65536 2>/dev/null || bad "dd failed" ;;
        esac
        chk "$f" ;;
      2)  # append a chunk
        op=append n=$((RANDOM % 70000 + 1))
        head -c "$n" /dev/urandom >"$X"
        cat "$X" >>"$W/$f" || bad "append failed"
        cat "$X" >>"$C/$f"
        chk "$f" ;;
      3)  # overwrite in the middle (or past the end: a hole), small unaligned or page-aligned
        op=overwrite
        if [ $((k % 2)) = 0 ]; then
          n=$((RANDOM % 300 + 1)) off=$((RANDOM * 3 % (cur + 5000)))
          head -c "$n" /dev/urandom >"$X"
          dd if="$X" of="$W/$f" bs=1 seek="$off" conv=notrunc 2>/dev/null || bad "dd bs=1 seek=$off failed"
          dd if="$X" of="$C/$f" bs=1 seek="$off" conv=notrunc 2>/dev/null
        else
          n=$((RANDOM % 8 + 1)) off=$((RANDOM % (cur / 4096 + 2)))
          head -c $((n * 4096)) /dev/urandom >"$X"
          dd if="$X" of="$W/$f" bs=4096 seek="$off" conv=notrunc 2>/dev/null || bad "dd bs=4096 seek=$off failed"
          dd if="$X" of="$C/$f" bs=4096 seek="$off" conv=notrunc 2>/dev/null
        fi
        chk "$f" ;;
      4)  # truncate down or up
        op=truncate n=$(((RANDOM * 37) % (cur + cur / 2 + 4096)))
        [ "$cur" -gt 3000000 ] && n=$((n % 1000000))
        truncate -s "$n" "$W/$f" || bad "truncate -s $n failed"
        truncate -s "$n" "$C/$f"
        chk "$f" ;;
      5)  # rename over a sibling, then copy it back through the mount
        op=rename g=f$(((k + i + 1) % 3))
        mv "$W/$f" "$W/$g" || bad "mv $f $g failed"
        mv "$C/$f" "$C/$g"
        if [ -e "$W/$f" ]; then bad "$f still exists after mv"; fi
        cp "$W/$g" "$W/$f" || bad "cp $g $f failed"
        cp "$C/$g" "$C/$f"
        chk "$g" && chk "$f" ;;
      *)  # re-read everything from the daemon: drop the page cache (and dentries/inodes)
        op=reread
        echo 3 >/proc/sys/vm/drop_caches
        for g in f0 f1 f2; do chk "$g" || break; done
        # shellcheck disable=SC2012  # plain names
        l=$(ls "$W" | tr '\n' ' ')
        [ "$l" = "f0 f1 f2 " ] || bad "listing of $W is '$l'" ;;
    esac
  done
  echo "$k" >"$T/w$i.iters"
  echo "done" >"$O"
  [ "$nf" -eq 0 ]
}

end=$(($(uptime_s) + SECS))
echo "stress: $P processes for ${SECS}s under $M/$D"
pids=
i=0
while [ "$i" -lt "$P" ]; do
  # the wrapper records the worker's status; a missing .rc file means it is still running
  ( worker "$i"; echo $? >"$T/w$i.rc" ) &
  pids="$pids $!"
  i=$((i + 1))
done

# wait for all, with a deadline: a process stuck in a file system call is a hang
limit=$((end + GRACE))
while :; do
  running=0 i=0
  while [ "$i" -lt "$P" ]; do [ -e "$T/w$i.rc" ] || running=$((running + 1)); i=$((i + 1)); done
  [ "$running" = 0 ] && break
  if [ "$(uptime_s)" -ge "$limit" ]; then
    i=0
    while [ "$i" -lt "$P" ]; do
      [ -e "$T/w$i.rc" ] || fail "stress-hang-w$i" "still running ${GRACE}s after the deadline, in iteration/op/file: $(cat "$T/w$i.op" 2>/dev/null)"
      i=$((i + 1))
    done
    echo "FAIL stress: $running process(es) hung"
    exit 1
  fi
  sleep 1
done
for p in $pids; do wait "$p"; done
echo "TIME stress-run $(($(uptime_s) - end + SECS))s"

total=0 i=0
while [ "$i" -lt "$P" ]; do
  rc=$(cat "$T/w$i.rc") n=$(cat "$T/w$i.iters" 2>/dev/null || echo 0)
  [ -s "$T/w$i.fail" ] && cat "$T/w$i.fail"
  if [ "$rc" = 0 ] && [ ! -s "$T/w$i.fail" ] && [ "$n" -gt 0 ]; then
    pass "stress-worker-$i $n iterations"
  else
    fail "stress-worker-$i" "status $rc after $n iterations"
  fi
  total=$((total + n))
  i=$((i + 1))
done

# final check, everything from the daemon again; SHA lines for the host
sync
echo 3 >/proc/sys/vm/drop_caches
nfiles=0 i=0
while [ "$i" -lt "$P" ]; do
  # shellcheck disable=SC2012  # plain names
  have=$(ls "$D/w$i" | tr '\n' ' ') want=$(ls "$T/w$i" | tr '\n' ' ')
  [ "$have" = "$want" ] || fail "stress-final-list-w$i" "have '$have', want '$want'"
  for f in $want; do
    a=$(sha "$D/w$i/$f") b=$(sha "$T/w$i/$f")
    if [ "$a" = "$b" ]; then
      echo "SHA $D/w$i/$f $a"
      nfiles=$((nfiles + 1))
    else
      fail "stress-final-w$i-$f" "sha $a, expected $b (size $(size "$D/w$i/$f"), expected $(size "$T/w$i/$f"))"
    fi
  done
  i=$((i + 1))
done
echo "STRESS-FILES $nfiles"
rm -rf "$T"
if [ "$fails" -ne 0 ]; then
  echo "FAIL stress: $fails check(s) failed after $total iterations"
  exit 1
fi
pass "stress $total iterations"
