#!/bin/sh
# Guest-side check for a second boot after basic.sh (busybox sh, cwd /mnt): the tree basic.sh
# left behind is still there, with the same directories, the same files and the same contents.
# Every file hashed is printed as `SHA <path relative to the mount> <sha256>`, like basic.sh does.
# If the initramfs holds /ovfs-expected.sha (the `SHA path sha256` lines boot 1 printed on its
# console: build-initramfs.sh -f LIST:/ovfs-expected.sha), every file is also checked against
# those values, which do not come from the back-end under test (MANIFEST does): a back-end that
# lost or rewrote MANIFEST along with the files cannot pass.
# Prints PASS/FAIL lines; exits non-zero on any FAIL.
# Tunables: ovfs.basic_dir=DIR (default basic), ovfs.remount_skip_big=1 to only check that
# the big file exists instead of hashing it (64 MiB: ~3 s under TCG).
set -u
M=${OVFS_MNT:-/mnt}
D=${OVFS_BASIC_DIR:-basic}
. /lib.sh

cd "$M" || { echo "FAIL cd: cannot cd $M"; exit 1; }
echo "--- tree under $M/$D"
# shellcheck disable=SC2012  # human-readable listing for the log
ls -lR "$D" 2>&1 | head -40
[ -f "$D/MANIFEST" ] || { echo "FAIL remount-manifest: $D/MANIFEST missing"; exit 1; }
pass remount-manifest
cd "$D" || exit 1

if [ "$(find . -type d | sort)" = "$(cat DIRS)" ]; then pass remount-dirs
else fail remount-dirs "directory list differs: $(find . -type d | sort | tr '\n' ' ')"; fi
want=$(cut -d' ' -f3- MANIFEST | tr '\n' ' ')
have=$(find . -type f ! -name MANIFEST ! -name DIRS | sort | tr '\n' ' ')
if [ "$have" = "$want" ]; then pass remount-files; else fail remount-files "have '$have', want '$want'"; fi

: >/tmp/remount.sha
n=0 want_n=0
while read -r h p; do
  if [ "$p" = ./fbig ] && [ "${OVFS_REMOUNT_SKIP_BIG:-0}" = 1 ]; then
    if [ -f "$p" ]; then pass "remount-exists-$p"; else fail "remount-exists-$p" missing; fi
    continue
  fi
  want_n=$((want_n + 1))
  got=$(sha256sum "$p" 2>/dev/null | cut -d' ' -f1)
  echo "SHA $D/${p#./} ${got:-missing}"
  echo "${p#./} $got" >>/tmp/remount.sha
  if [ "$got" = "$h" ]; then n=$((n + 1)); else fail "remount-sha-$p" "got '$got', expected $h"; fi
done <MANIFEST
for f in DIRS MANIFEST; do
  got=$(sha256sum "$f" | cut -d' ' -f1)
  echo "SHA $D/$f $got"
  echo "$f $got" >>/tmp/remount.sha
done
if [ "$n" -gt 0 ] && [ "$n" = "$want_n" ]; then pass "remount-sha ($n files)"
else fail remount-sha "$n of $want_n files match MANIFEST"; fi

# against the values boot 1 printed (independent of the back-end)
E=/ovfs-expected.sha
if [ -r "$E" ]; then
  en=0 eok=0
  while read -r tag p h; do
    [ "$tag" = SHA ] || continue
    case "$p" in "$D"/*) ;; *) continue ;; esac
    rel=${p#"$D"/}
    if [ "./$rel" = ./fbig ] && [ "${OVFS_REMOUNT_SKIP_BIG:-0}" = 1 ]; then continue; fi
    en=$((en + 1))
    # hashed above (MANIFEST entries, DIRS, MANIFEST); hash anything else now
    got=$(awk -v p="$rel" '$1 == p { print $2; exit }' /tmp/remount.sha)
    [ -n "$got" ] || got=$(sha256sum "$rel" 2>/dev/null | cut -d' ' -f1)
    if [ "$got" = "$h" ]; then eok=$((eok + 1)); else fail "remount-boot1-sha-$rel" "got '${got:-missing}', boot 1 printed $h"; fi
  done <"$E"
  if [ "$en" -gt 0 ] && [ "$eok" = "$en" ]; then pass "remount-boot1-sha ($eok files)"
  else fail remount-boot1-sha "$eok of $en files match boot 1's SHA lines"; fi
fi

if [ "$fails" -ne 0 ]; then echo "remount: $fails check(s) FAILED"; exit 1; fi
echo "remount: all checks passed"
