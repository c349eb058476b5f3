#!/bin/sh
# Guest-side transport acceptance check (busybox sh), run by the initramfs /init with cwd /mnt
# (the virtio-fs mount). Each check prints `PASS name` or `FAIL name: detail`; every file left
# behind is printed as `SHA <path relative to the mount> <sha256>` for tests/guest/scripts/verify.sh,
# and recorded in <dir>/MANIFEST (+ DIRS) for tests/guest/scripts/remount.sh.
# Exits non-zero on any FAIL.
# Tunables (kernel cmdline ovfs.NAME=VALUE -> $OVFS_NAME): ovfs.basic_dir=DIR (default basic),
# ovfs.big_mib=N size of the big file in MiB (default 64).
set -u
M=${OVFS_MNT:-/mnt}
D=${OVFS_BASIC_DIR:-basic}
BIG_MIB=${OVFS_BIG_MIB:-64}
T=/tmp/basic.$$

. /lib.sh
# check NAME CMD...: PASS if CMD succeeds

cd "$M" || { echo "FAIL cd: cannot cd $M"; exit 1; }
mkdir -p "$T"
t0=$(now)

# --- listing
if ls -la "$M" >/dev/null; then pass ls; else fail ls "ls $M failed"; fi
rm -rf "$D"
check mkdir-top mkdir "$D"
cd "$D" || exit 1
check mkdir-p sh -c 'mkdir -p a/b/c && [ -d a/b/c ]'
check mkdir-exists-fails sh -c '! mkdir a 2>/dev/null'

# --- files of several sizes: generated in tmpfs, copied in, read back after dropping caches
mk() {  # name bytes
  head -c "$2" /dev/urandom >"$T/$1"
  [ "$(size "$T/$1")" = "$2" ] || { echo "FAIL gen-$1: tmpfs copy has $(size "$T/$1") bytes"; fails=$((fails + 1)); }
}
mk f0 0; mk f1 1; mk f4k 4096; mk f1m 1048579
s=$(now)
mk fbig $((BIG_MIB * 1048576))
echo "TIME gen-big ${BIG_MIB}MiB $(elapsed "$s")s"
for f in f0 f1 f4k f1m; do
  check "write-$f" cp "$T/$f" "$f"
done
s=$(now)
check write-big dd if="$T/fbig" of=fbig bs=1M 2>/dev/null
echo "TIME write-big $(elapsed "$s")s"
dropc
for f in f0 f1 f4k f1m; do same "read-$f" "$f" "$T/$f"; done
s=$(now)
same read-big fbig "$T/fbig"
echo "TIME read-big $(elapsed "$s")s"
eqv size-f0 "$(size f0)" 0
eqv size-f1m "$(size f1m)" 1048579
eqv size-big "$(size fbig)" $((BIG_MIB * 1048576))

# --- readdir
# shellcheck disable=SC2012  # plain names; ls sorts like the expected string
eqv readdir "$(ls | tr '\n' ' ')" "a f0 f1 f1m f4k fbig "

# --- rename (into a subdirectory, and over an existing file)
check rename mv f4k a/b/c/f4k.renamed
check rename-old-gone sh -c '! [ -e f4k ]'
same rename-content a/b/c/f4k.renamed "$T/f4k"
cp "$T/f1" victim
cp "$T/f4k" newer
check rename-replace mv newer victim
dropc
same rename-replace-content victim "$T/f4k"
check rename-replace-src-gone sh -c '! [ -e newer ]'
rm -f victim

# --- unlink
cp "$T/f1" gone
check unlink rm gone
check unlink-gone sh -c '! [ -e gone ]'
check unlink-missing-fails sh -c '! rm f-no-such 2>/dev/null'

# --- rmdir
mkdir emptydir
check rmdir rmdir emptydir
check rmdir-gone sh -c '! [ -e emptydir ]'
mkdir full
: >full/x
if out=$(rmdir full 2>&1); then
  fail rmdir-enotempty "rmdir of a non-empty dir succeeded"
else
  case "$out" in
    *"not empty"*) pass rmdir-enotempty ;;
    *) fail rmdir-enotempty "wrong error: $out" ;;
  esac
fi
check rmdir-enotempty-kept sh -c '[ -e full/x ]'
rm -rf full
check rm-r-gone sh -c '! [ -e full ]'

# --- truncate up and down
cp "$T/f1m" trunc
check truncate-up truncate -s 2000000 trunc
dropc
eqv truncate-up-size "$(size trunc)" 2000000
eqv truncate-up-head "$(head -c 1048579 trunc | sha256sum | cut -d' ' -f1)" "$(sha "$T/f1m")"
eqv truncate-up-zeros "$(tail -c +1048580 trunc | tr -d '\000' | wc -c)" 0
check truncate-down truncate -s 1000 trunc
dropc
eqv truncate-down-size "$(size trunc)" 1000
head -c 1000 "$T/f1m" >"$T/trunc"
same truncate-down-content trunc "$T/trunc"
check truncate-zero truncate -s 0 f1
eqv truncate-zero-size "$(size f1)" 0
cp "$T/f1" f1

# --- append
printf 'abc' >append
printf 'def\n' >>append
dropc
eqv append-small "$(cat append)" "abcdef"
cp "$T/f4k" appendbig
head -c 5000 /dev/urandom >"$T/tail"
cat "$T/tail" >>appendbig
cat "$T/f4k" "$T/tail" >"$T/appendbig"
dropc
same append-big appendbig "$T/appendbig"

# --- overwrite in the middle
cp "$T/f1m" mid
head -c 4099 /dev/urandom >"$T/patch"
check overwrite-mid dd if="$T/patch" of=mid bs=1 seek=500001 conv=notrunc 2>/dev/null
cp "$T/f1m" "$T/mid"
dd if="$T/patch" of="$T/mid" bs=1 seek=500001 conv=notrunc 2>/dev/null
dropc
same overwrite-mid-content mid "$T/mid"
eqv overwrite-mid-size "$(size mid)" 1048579

# --- metadata basics
check chmod chmod 0640 f1m
eqv chmod-mode "$(stat -c %a f1m)" 640
chmod 0644 f1m

# --- sync
check sync sync

# --- manifest for verify.sh (host) and remount.sh (second boot)
dropc
find . -type d | sort >DIRS
find . -type f ! -name MANIFEST ! -name DIRS | sort | xargs sha256sum >"$T/MANIFEST"
cp "$T/MANIFEST" MANIFEST
sync
while read -r h p; do
  echo "SHA $D/${p#./} $h"
done <MANIFEST
echo "SHA $D/DIRS $(sha DIRS)"
echo "SHA $D/MANIFEST $(sha MANIFEST)"

rm -rf "$T"
echo "TIME basic-total $(elapsed "$t0")s"
if [ "$fails" -ne 0 ]; then
  echo "basic: $fails check(s) FAILED"
  exit 1
fi
echo "basic: all checks passed"
