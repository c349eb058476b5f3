#!/bin/sh
# DAX guest test (tests/guest_dax.rs): runs in /mnt, mounted with -o dax=always.
# Env: OVFS_BIGSHA (sha256 of big.bin as the back-end holds it); OVFS_PHASE=verify
# (second boot: check w.bin against OVFS_WSHA).
# Prints DAX-* lines the host test checks; exits non-zero on the first failure.
fail() { echo "DAX-FAIL: $*"; exit 1; }

if [ "$OVFS_PHASE" = verify ]; then
  # Second boot, fresh daemon: the bytes come back from the back-end.
  sum3=$(sha256sum w.bin | cut -d' ' -f1)
  echo "DAX-SHA-REMOUNT w.bin $sum3"
  [ "$sum3" = "$OVFS_WSHA" ] || fail "w.bin after remount differs"
  echo "DAX-OK"
  exit 0
fi

win=$(dmesg | grep -i 'cache len' | head -1)
[ -n "$win" ] || fail "no DAX window in dmesg"
echo "DAX-DMESG: $win"
opts=$(grep ' /mnt ' /proc/mounts)
echo "DAX-MOUNT: $opts"
case "$opts" in *dax=always*) ;; *) fail "not mounted with dax=always" ;; esac

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

echo "DAX-OK"
