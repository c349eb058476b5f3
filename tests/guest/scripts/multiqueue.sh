#!/bin/sh
# Guest side of the multi-queue test: several processes on several CPUs do small
# metadata and data operations at once, so a multi-queue virtio-fs driver (Linux 6.12:
# one request queue per CPU group) sends requests on more than one queue.
cd /mnt || exit 1
fails=0
for i in 1 2 3 4; do
  (
    for j in 1 2 3 4 5 6 7 8 9 10; do
      echo "$i $j" > "mq-$i-$j"
      [ "$(cat "mq-$i-$j")" = "$i $j" ] || echo "FAIL mq content $i $j"
      ls > /dev/null
    done
  ) &
done
wait
n=$(find . -maxdepth 1 -name 'mq-*' | wc -l)
[ "$n" -eq 40 ] || { echo "FAIL mq: $n files, want 40"; fails=1; }
[ $fails -eq 0 ] && echo "PASS multiqueue 40 files"
exit $fails
