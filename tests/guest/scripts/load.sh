#!/bin/sh
# Guest side of tests/load_guest.rs (busybox sh, cwd /mnt on ovfs): ovfs.procs=N (default 64)
# worker processes for ovfs.secs=S seconds (default 60), each looping over
#   create + write (4..64 KiB from a fixed blob), stat (size), read back (cmp), rename,
#   readdir of its own dir, unlink, and every 4th iteration the same in the shared dir `shared`
# in its own directory w<i>. A watchdog checks every 5 s that each worker finished an iteration
# within the last ovfs.stuck=T seconds (default 30), else prints STUCK <i>. Prints
#   LOAD-START, LOAD-ERR <i> <what> (any failure or wrong byte), STUCK <i> <seconds>,
#   LOAD-WORKER <i> <iterations>, LOAD-DONE <total iterations>
set -u
PROCS=${OVFS_PROCS:-64}
SECS=${OVFS_SECS:-60}
STUCK=${OVFS_STUCK:-30}
mkdir -p /tmp/prog shared || { echo "LOAD-ERR setup"; exit 1; }
dd if=/dev/urandom of=/tmp/blob bs=1024 count=64 2>/dev/null

worker() {
  i=$1 n=0 end=$(( $(date +%s) + SECS ))
  mkdir "w$i" || echo "LOAD-ERR $i mkdir"
  while [ "$(date +%s)" -lt "$end" ]; do
    n=$((n + 1))
    kib=$(( 4 + (i * 7 + n * 13) % 61 ))
    head -c $((kib * 1024)) /tmp/blob >/tmp/w$i
    f=w$i/f$n
    cp /tmp/w$i "$f" || echo "LOAD-ERR $i write $f"
    [ "$(stat -c %s "$f")" = $((kib * 1024)) ] || echo "LOAD-ERR $i stat $f"
    cmp /tmp/w$i "$f" >/tmp/cmp$i 2>&1 || echo "LOAD-ERR $i read $f: $(cat /tmp/cmp$i)"
    mv "$f" "w$i/g$n" || echo "LOAD-ERR $i rename $f"
    ls "w$i" | grep -qx "g$n" || echo "LOAD-ERR $i readdir g$n"
    [ "$n" -gt 1 ] && { rm "w$i/g$((n - 1))" || echo "LOAD-ERR $i unlink g$((n - 1))"; }
    if [ $((n % 4)) = 0 ]; then
      s=shared/s$i-$n
      if cp /tmp/w$i "$s"; then
        cmp /tmp/w$i "$s" >/tmp/cmp$i 2>&1 || echo "LOAD-ERR $i shared read $s: $(cat /tmp/cmp$i) size $(stat -c %s "$s") want $((kib * 1024))"
      else
        echo "LOAD-ERR $i shared write $s"
      fi
      # readdir only (a glob): busybox ls also stats names other workers unlink meanwhile.
      # The worker's own file is listed.
      case " $(echo shared/*) " in *" $s "*) ;; *) echo "LOAD-ERR $i shared readdir: $s not listed" ;; esac
      rm "$s" || echo "LOAD-ERR $i shared unlink $s"
    fi
    date +%s >/tmp/prog/$i.t && mv /tmp/prog/$i.t /tmp/prog/$i
  done
  echo "LOAD-WORKER $i $n"
  echo "$n" >/tmp/prog/done$i
}

echo "LOAD-START procs=$PROCS secs=$SECS"
now=$(date +%s)
i=0
while [ "$i" -lt "$PROCS" ]; do i=$((i + 1)); echo "$now" >/tmp/prog/$i; worker "$i" & done
# watchdog
while :; do
  sleep 5
  now=$(date +%s) left=0 i=0
  while [ "$i" -lt "$PROCS" ]; do
    i=$((i + 1))
    [ -f /tmp/prog/done$i ] && continue
    left=$((left + 1))
    last=$(cat /tmp/prog/$i)
    [ -n "$last" ] || continue
    [ $((now - last)) -gt "$STUCK" ] && echo "STUCK $i $((now - last))"
  done
  [ "$left" = 0 ] && break
done
wait
total=0 i=0
while [ "$i" -lt "$PROCS" ]; do i=$((i + 1)); total=$((total + $(cat /tmp/prog/done$i))); done
echo "LOAD-DONE $total"
# time for the host to scrape the daemon's metrics
sleep 4
