#!/bin/sh
# DAX guest test (tests/guest_dax.rs): runs in /mnt, mounted with -o dax=always.
# Env: OVFS_BIGSHA (sha256 of big.bin as the back-end holds it); OVFS_PHASE=verify
# (second boot: check w.bin against OVFS_WSHA).
# OVFS_GEN=SEED:LEN (memory back-end, which starts empty): the guest writes big.bin
# itself first (`dax-mmap gen`, in place through writable DAX mappings), and at the
# end drops its caches (inodes evicted: FORGET, REMOVEMAPPING) and reads big.bin
# and w.bin back through DAX. Around that it prints `DAX-WAIT NAME` and waits for a line on the
# console: the host scrapes the daemon's metrics meanwhile.
# Prints DAX-* lines the host test checks; exits non-zero on the first failure.
fail() { echo "DAX-FAIL: $*"; exit 1; }

if [ "$OVFS_PHASE" = verify ]; then
  # Second boot, fresh daemon: the bytes come back from the back-end.
  sum3=$(sha256sum w.bin | cut -d' ' -f1)
  echo "DAX-SHA-REMOUNT w.bin $sum3"
  [ "$sum3" = "$OVFS_WSHA" ] || fail "w.bin reread differs"
  echo "DAX-OK"
  exit 0
fi

win=$(dmesg | grep -i 'cache len' | head -1)
[ -n "$win" ] || fail "no DAX window in dmesg"
echo "DAX-DMESG: $win"
opts=$(grep ' /mnt ' /proc/mounts)
echo "DAX-MOUNT: $opts"
case "$opts" in *dax=always*) ;; *) fail "not mounted with dax=always" ;; esac

host_wait() { echo "DAX-WAIT $1"; read -r _ || fail "no answer from the host at $1"; }

if [ -n "$OVFS_GEN" ]; then
  /bin/dax-mmap gen big.bin "${OVFS_GEN%%:*}" "${OVFS_GEN#*:}" || fail "gen big.bin"
fi

# 1. Read a big file through the window.
sum=$(sha256sum big.bin | cut -d' ' -f1)
echo "DAX-SHA big.bin $sum"
[ "$sum" = "$OVFS_BIGSHA" ] || fail "big.bin read through DAX differs from the back-end"

# 2. Write: extend with plain writes (FUSE_WRITE), overwrite in place (DAX
#    window, writable mapping), write through mmap + msync + fsync.
dd if=big.bin of=w.bin bs=1M count=4 2>/dev/null || fail "dd create"
head -c 65536 /dev/zero | tr '\000' X | dd of=w.bin bs=4096 seek=256 conv=notrunc 2>/dev/null || fail "dd overwrite"
/bin/dax-mmap write w.bin 3145728 hello-through-mmap || fail "mmap write"
/bin/dax-mmap fsync w.bin || fail "fsync"
back=$(/bin/dax-mmap read w.bin 3145728 18)
[ "$back" = hello-through-mmap ] || fail "mmap read back: $back"
[ "$(dd if=w.bin bs=1 skip=1048576 count=4 2>/dev/null)" = XXXX ] || fail "overwrite not visible"
sum2=$(sha256sum w.bin | cut -d' ' -f1)
echo "DAX-SHA w.bin $sum2"

if [ -n "$OVFS_GEN" ]; then
  # 3. Drop the guest's caches: the files' inodes are evicted (FORGET, and
  #    REMOVEMAPPING of their DAX ranges), so the daemon holds nothing of them;
  #    then read both back through the window. (A real unmount is not possible
  #    here: /init's cwd is /mnt, and a lazy one would keep the same superblock.)
  sync
  echo 3 > /proc/sys/vm/drop_caches
  host_wait dropped
  sum3=$(sha256sum big.bin | cut -d' ' -f1)
  echo "DAX-SHA-REREAD big.bin $sum3"
  [ "$sum3" = "$OVFS_BIGSHA" ] || fail "big.bin reread differs"
  sum4=$(sha256sum w.bin | cut -d' ' -f1)
  echo "DAX-SHA-REREAD w.bin $sum4"
  [ "$sum4" = "$sum2" ] || fail "w.bin reread differs"
  host_wait reread
fi

echo "DAX-OK"
