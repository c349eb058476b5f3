#!/usr/bin/env bash
# The main job on an embedded default: build ovfs, serve a local demo directory over
# vhost-user, boot a real Linux guest under QEMU that mounts it with `mount -t virtiofs`,
# and show what the guest sees and writes. Installs what it needs on a fresh Debian machine.
#
# usage: scripts/demo.sh        (make demo)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export OVFS_WORK=${OVFS_WORK:-$repo/.work}
mkdir -p "$OVFS_WORK"

echo "demo: installing QEMU, a guest kernel and busybox if missing"
tests/tools/install-deps.sh --no-cargo --no-s3
echo "demo: building ovfs"
cargo build --quiet
ovfs=$repo/target/debug/ovfs

W=$(mktemp -d "$OVFS_WORK/demo.XXXXXX")
sock=$(mktemp -u /tmp/ovfs-demo.XXXXXX.sock)
share=$W/share
mkdir -p "$share/docs"
chmod 0755 "$share"
echo "Hello from the host: this file lives in $share and is served by ovfs." > "$share/hello.txt"
echo "a file the guest will rename" > "$share/docs/old-name.txt"
seq 1 1000 > "$share/docs/numbers.txt"

echo "demo: starting ovfs on $sock (OpenDAL fs back-end on $share)"
"$ovfs" --socket-path "$sock" --shared-dir "$share" --opendal-fs --log-level warn 2> "$W/ovfs.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null || true; rm -f "$sock"' EXIT

tests/guest/build-initramfs.sh -o "$W/initrd.gz" -s scripts/demo-guest.sh >/dev/null
echo "demo: booting the guest (QEMU under TCG; about 10 s)"
set +e
tests/guest/run-guest.sh -i "$W/initrd.gz" -s "$sock" -t demo -l "$W/console.log" -Q -T 240
rc=$?
set -e
# Show the guest's own output, without the kernel's boot messages.
sed -n '/=== the guest sees/,/DEMO-GUEST-OK/p' "$W/console.log" | tr -d '\r' | grep -v '^\[ *[0-9.]*\]'
if [ $rc -ne 0 ] || ! grep -q DEMO-GUEST-OK "$W/console.log"; then
  echo "demo: FAILED (guest console: $W/console.log, daemon log: $W/ovfs.log)"
  exit 1
fi
echo "=== on the host, the back-end directory now holds:"
(cd "$share" && find . -type f | sort)
want=$(tr -d '\r' < "$W/console.log" | sed -n 's/^GUEST-SHA \([0-9a-f]*\) .*/\1/p')
got=$(sha256sum "$share/from-guest/random.bin" | cut -d' ' -f1)
echo "=== $share/from-guest/note.txt:"
cat "$share/from-guest/note.txt"
if [ "$want" != "$got" ]; then
  echo "demo: FAILED: random.bin differs between guest ($want) and host ($got)"
  exit 1
fi
echo "demo: random.bin sha256 $got matches on guest and host"
echo "ovfs demo: SUCCESS - a Linux guest mounted ovfs over virtio-fs, read the host's files and wrote its own"
