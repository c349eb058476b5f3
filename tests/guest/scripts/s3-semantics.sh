#!/bin/sh
# Guest side of tests/guest_s3.rs `guest_s3_semantics` (busybox sh, cwd /mnt = the ovfs mount of
# an S3 prefix). Each check prints `PASS name` or `FAIL name: detail`; every file left behind is
# printed as `SHA <path relative to the mount> <sha256>` so the host can compare the objects it
# reads with its own S3 client. Exits non-zero on any FAIL.
#
# Phase 1 (ovfs.phase=1, the default). The host has PUT, before the boot (plain objects, no
# x-amz-meta-*):
#   many/o0000 .. many/o0999    1000 small objects (for ls -l)
#   pre/append.txt              "line 1\nline 2\n"
#   pre/mid10m.bin              10 MiB
#   pre/trunc-up.bin, pre/trunc-down.bin   1048579 bytes each
# and the guest does, checking each result through the mount (after dropping its caches) against
# a model kept in /tmp:
#   mkdir -p a/b/c; nested writes a/b/c/f1 a/b/f2 a/f3; mkdir src + 100 files, mv src dst;
#   append a line to pre/append.txt; write 4099 bytes (`yes ovfs-patch`) at offset 5000780
#   (= 1220 * 4099) of pre/mid10m.bin; truncate pre/trunc-up.bin to 2000000 and
#   pre/trunc-down.bin to 1000; chmod 0600 chmod.txt; ln -s a/b/c/f1 link; ls -l many.
# Phase 2 (ovfs.phase=2, a fresh daemon): chmod.txt still 600, link still a symlink to a/b/c/f1,
# the tree still there, and every file still has the sha256 phase 1 printed (the initramfs holds
# phase 1's SHA lines as /ovfs-expected.sha).
# Tunables: ovfs.phase=1|2.
# shellcheck disable=SC2012  # plain names: ls | wc -l counts entries
set -u
M=${OVFS_MNT:-/mnt}
PHASE=${OVFS_PHASE:-1}
T=/tmp/sem.$$

. /lib.sh
finish() {
  rm -rf "$T"
  if [ "$fails" -ne 0 ]; then echo "s3-semantics: $fails check(s) FAILED"; exit 1; fi
  echo "s3-semantics: phase $PHASE: all checks passed"
  exit 0
}

cd "$M" || { echo "FAIL cd: cannot cd $M"; exit 1; }
mkdir -p "$T"

if [ "$PHASE" = 2 ]; then
  dropc
  eqv remount-chmod-mode "$(stat -c %a chmod.txt 2>&1)" 600
  eqv remount-file-mode "$(stat -c %a a/b/c/f1 2>&1)" 644
  eqv remount-symlink-type "$(stat -c %F link 2>&1)" "symbolic link"
  eqv remount-readlink "$(readlink link 2>&1)" a/b/c/f1
  eqv remount-symlink-follow "$(cat link 2>&1)" "nested c"
  check remount-dirs sh -c '[ -d a/b/c ] && [ -d dst ] && ! [ -e src ]'
  eqv remount-dst-count "$(ls dst | wc -l)" 100
  E=/ovfs-expected.sha
  en=0 eok=0
  if [ -r "$E" ]; then
    while read -r tag p h; do
      [ "$tag" = SHA ] || continue
      en=$((en + 1))
      got=$(sha "$p")
      if [ "$got" = "$h" ]; then eok=$((eok + 1)); else fail "remount-sha-$p" "got '${got:-missing}', phase 1 printed $h"; fi
    done <"$E"
  fi
  if [ "$en" -gt 0 ] && [ "$eok" = "$en" ]; then pass "remount-sha ($eok files)"
  else fail remount-sha "$eok of $en files match phase 1's SHA lines"; fi
  finish
fi

t0=$(now)
# ---- mkdir -p and nested writes
check mkdir-p mkdir -p a/b/c
check mkdir-p-dirs sh -c '[ -d a ] && [ -d a/b ] && [ -d a/b/c ]'
check mkdir-p-again mkdir -p a/b/c
printf 'nested c\n' >a/b/c/f1 || fail nested-write-f1 "write a/b/c/f1"
head -c 70000 /dev/urandom >"$T/f2"
cp "$T/f2" a/b/f2 || fail nested-write-f2 "cp a/b/f2"
printf 'nested a\n' >a/f3 || fail nested-write-f3 "write a/f3"
dropc
eqv nested-f1 "$(cat a/b/c/f1)" "nested c"
same nested-f2 a/b/f2 "$T/f2"
eqv nested-f3 "$(cat a/f3)" "nested a"
# shellcheck disable=SC2012  # plain names
eqv nested-listing "$(ls a | tr '\n' ' ')$(ls a/b | tr '\n' ' ')$(ls a/b/c | tr '\n' ' ')" "b f3 c f2 f1 "

# ---- mv of a directory holding 100 files
s=$(now)
mkdir src || fail mv-setup "mkdir src"
i=0
while [ "$i" -lt 100 ]; do
  n=$(printf %03d "$i")
  printf 'file %s\n' "$n" >"src/f$n" || fail mv-setup "write src/f$n"
  i=$((i + 1))
done
echo "TIME create-100 $(elapsed "$s")s"
eqv mv-src-count "$(ls src | wc -l)" 100
s=$(now)
check mv-dir mv src dst
echo "TIME mv-dir-100 $(elapsed "$s")s"
dropc
check mv-src-gone sh -c '! [ -e src ]'
eqv mv-dst-count "$(ls dst | wc -l)" 100
bad=0 i=0
while [ "$i" -lt 100 ]; do
  n=$(printf %03d "$i")
  [ "$(cat "dst/f$n" 2>&1)" = "file $n" ] || { bad=$((bad + 1)); echo "mv: dst/f$n is '$(cat "dst/f$n" 2>&1)'"; }
  i=$((i + 1))
done
eqv mv-dst-contents "$bad bad" "0 bad"

# ---- append to an existing object (PUT by the host)
cp pre/append.txt "$T/append.txt"
eqv append-before "$(cat "$T/append.txt")" "$(printf 'line 1\nline 2')"
printf 'line 3 appended\n' >>pre/append.txt || fail append "write"
printf 'line 3 appended\n' >>"$T/append.txt"
dropc
same append pre/append.txt "$T/append.txt"

# ---- a write in the middle of a 10 MiB object
eqv mid-before-size "$(size pre/mid10m.bin)" 10485760
cp pre/mid10m.bin "$T/mid"
yes ovfs-patch | head -c 4099 >"$T/patch"
s=$(now)
check mid-write dd if="$T/patch" of=pre/mid10m.bin bs=4099 seek=1220 count=1 conv=notrunc
echo "TIME mid-write $(elapsed "$s")s"
dd if="$T/patch" of="$T/mid" bs=4099 seek=1220 count=1 conv=notrunc 2>/dev/null
dropc
same mid-content pre/mid10m.bin "$T/mid"
eqv mid-size "$(size pre/mid10m.bin)" 10485760
rm -f "$T/mid"

# ---- truncate up and down
cp pre/trunc-up.bin "$T/tu"
cp pre/trunc-down.bin "$T/td"
check truncate-up truncate -s 2000000 pre/trunc-up.bin
check truncate-down truncate -s 1000 pre/trunc-down.bin
truncate -s 2000000 "$T/tu"
truncate -s 1000 "$T/td"
dropc
eqv truncate-up-size "$(size pre/trunc-up.bin)" 2000000
eqv truncate-down-size "$(size pre/trunc-down.bin)" 1000
same truncate-up-content pre/trunc-up.bin "$T/tu"
same truncate-down-content pre/trunc-down.bin "$T/td"
eqv truncate-up-zeros "$(tail -c +1048580 pre/trunc-up.bin | tr -d '\000' | wc -c)" 0

# ---- chmod 0600
printf 'secret\n' >chmod.txt
eqv chmod-before "$(stat -c %a chmod.txt)" 644
check chmod chmod 0600 chmod.txt
eqv chmod-mode "$(stat -c %a chmod.txt)" 600
dropc
eqv chmod-mode-uncached "$(stat -c %a chmod.txt)" 600

# ---- ln -s + readlink
check symlink ln -s a/b/c/f1 link
eqv readlink "$(readlink link)" a/b/c/f1
dropc
eqv readlink-uncached "$(readlink link)" a/b/c/f1
eqv symlink-type "$(stat -c %F link)" "symbolic link"
eqv symlink-follow "$(cat link)" "nested c"

# ---- ls -l of 1000 objects (PUT by the host, without metadata)
dropc
s=$(now)
ls -l many >"$T/ls" 2>"$T/ls.err" || fail ls-l "ls -l many: $(head -3 "$T/ls.err")"
echo "TIME ls-l-1000 $(elapsed "$s")s"
eqv ls-l-lines "$(wc -l <"$T/ls")" 1001
eqv ls-l-total "$(head -1 "$T/ls" | cut -d' ' -f1)" total
eqv ls-l-modes "$(grep -c '^-rw-r--r-- ' "$T/ls")" 1000
eqv ls-l-names "$(grep -c ' o[0-9][0-9][0-9][0-9]$' "$T/ls")" 1000
eqv ls-l-first-last "$(sed -n '2p;$p' "$T/ls" | awk '{print $NF}' | tr '\n' ' ')" "o0000 o0999 "

# ---- every file, read back from the daemon after dropping the caches
dropc
for p in a/b/c/f1 a/b/f2 a/f3 pre/append.txt pre/mid10m.bin pre/trunc-up.bin pre/trunc-down.bin chmod.txt; do
  echo "SHA $p $(sha "$p")"
done
i=0
while [ "$i" -lt 100 ]; do
  p=dst/f$(printf %03d "$i")
  echo "SHA $p $(sha "$p")"
  i=$((i + 1))
done
echo "TIME phase1 $(elapsed "$t0")s"
finish
