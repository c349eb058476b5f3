#!/usr/bin/env bash
# Fetch Debian trixie's cloud kernel (6.12: VIRTIO_PCI, VIRTIO_FS, FUSE built in; its
# virtio-fs driver uses several request queues) without touching the system's apt state:
# a private apt directory, the mirror taken from the machine's own Debian sources, and
# `apt-get download` + `dpkg-deb -x`. Prints the path of the vmlinuz. Cached.
#
# usage: tests/tools/trixie-kernel.sh      (env: OVFS_WORK, default <repo>/.work)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OVFS_WORK=${OVFS_WORK:-$repo/.work}
D=$OVFS_WORK/trixie-kernel
if [ -f "$D/vmlinuz" ]; then echo "$D/vmlinuz"; exit 0; fi
mkdir -p "$D/apt/lists/partial" "$D/apt/archives/partial" "$D/x"

# The mirror this machine already uses for Debian (deb822 or one-line format).
mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || { echo "trixie-kernel: no Debian mirror found in the apt sources" >&2; exit 1; }
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$D/apt/sources.list"
opts=(-o "Dir::Etc::sourcelist=$D/apt/sources.list" -o "Dir::Etc::sourceparts=-"
      -o "Dir::State::Lists=$D/apt/lists" -o "Dir::Cache::archives=$D/apt/archives"
      -o "Dir::State::status=/dev/null" -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1")
apt-get "${opts[@]}" -qq update >&2
# The metapackage names the versioned image package.
pkg=$(apt-cache "${opts[@]}" depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | grep -v unsigned | head -1)
[ -n "$pkg" ] || { echo "trixie-kernel: cannot resolve linux-image-cloud-amd64 in trixie" >&2; exit 1; }
(cd "$D" && apt-get "${opts[@]}" -qq download "$pkg" >&2)
dpkg-deb -x "$D"/"$pkg"_*.deb "$D/x"
cp "$D"/x/boot/vmlinuz-* "$D/vmlinuz"
rm -rf "$D/x" "$D"/*.deb
echo "$D/vmlinuz"
