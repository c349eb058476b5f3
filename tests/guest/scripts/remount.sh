#!/bin/sh
# Guest-side check for a second boot after basic.sh (busybox sh, cwd /mnt): the tree basic.sh
# left behind is still there, with the same directories, the same files and the same contents.
# Prints PASS/FAIL lines; exits non-zero on any FAIL.
# Tunables: ovfs.basic_dir=DIR (default basic), ovfs.remount_skip_big=1 to only check that
# the big file exists instead of hashing it (64 MiB: ~3 s under TCG).
set -u
M=${OVFS_MNT:-/mnt}
D=${OVFS_BASIC_DIR:-basic}
fails=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }

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

n=0
while read -r h p; do
  if [ "$p" = ./fbig ] && [ "${OVFS_REMOUNT_SKIP_BIG:-0}" = 1 ]; then
    if [ -f "$p" ]; then pass "remount-exists-$p"; else fail "remount-exists-$p" missing; fi
    continue
  fi
  got=$(sha256sum "$p" 2>/dev/null | cut -d' ' -f1)
  if [ "$got" = "$h" ]; then n=$((n + 1)); else fail "remount-sha-$p" "got '$got', expected $h"; fi
done <MANIFEST
[ "$n" -gt 0 ] && pass "remount-sha ($n files)"

if [ "$fails" -ne 0 ]; then echo "remount: $fails check(s) FAILED"; exit 1; fi
echo "remount: all checks passed"
