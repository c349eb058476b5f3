#!/bin/sh
# Guest side of the demo (busybox sh, cwd /mnt = the ovfs mount).
echo "=== the guest sees (ls -la /mnt):"
ls -la /mnt
echo "=== /mnt/hello.txt says:"
cat /mnt/hello.txt
echo "=== the guest writes /mnt/from-guest/note.txt and renames a file"
mkdir -p /mnt/from-guest
{ echo "written inside the guest by $(uname -sr)"; date; } > /mnt/from-guest/note.txt
dd if=/dev/urandom of=/mnt/from-guest/random.bin bs=64k count=16 2>/dev/null
sha256sum /mnt/from-guest/random.bin | sed 's/^/GUEST-SHA /'
mv /mnt/docs/old-name.txt /mnt/docs/new-name.txt
sync
ls -laR /mnt/from-guest /mnt/docs
grep -q "Hello from the host" /mnt/hello.txt || { echo "demo: hello.txt not readable"; exit 1; }
[ -f /mnt/docs/new-name.txt ] || { echo "demo: rename failed"; exit 1; }
echo "DEMO-GUEST-OK"
