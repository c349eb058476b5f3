#!/usr/bin/env bash
# Build (once, cached) a Debian trixie chroot holding QEMU 11.1 from trixie-backports, the
# trixie cloud kernel and busybox-static: the VMM the DAX guest test needs (bookworm's QEMU
# 7.2 cannot give a virtio-fs device a DAX window; QEMU 11.1's generic
# vhost-user-test-device-pci can, and needs trixie's glibc, hence the chroot).
#
# About 640 MB on disk and a few minutes of download. The build goes to ROOT.partial and is
# renamed to ROOT only when complete, so an interrupted run restarts cleanly and a finished
# chroot is never half-updated. Prints the chroot's path on success; exits non-zero with a
# clear message when the machine cannot build it (no root, no network, no debootstrap).
#
# usage: tests/tools/trixie-qemu.sh        (env: OVFS_WORK, default <repo>/.work;
#                                            TRIXIE_MIRROR to override the Debian mirror)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OVFS_WORK=${OVFS_WORK:-$repo/.work}
ROOT=$OVFS_WORK/trixie-qemu
STAMP=$ROOT/.ovfs-trixie-qemu-ready
die() { echo "trixie-qemu: $*" >&2; exit 1; }

if [ -f "$STAMP" ]; then echo "$ROOT"; exit 0; fi
[ "$(id -u)" -eq 0 ] || die "building the chroot needs root (debootstrap, chroot)"
mkdir -p "$OVFS_WORK"
# One builder at a time (tests may run in parallel).
exec 9>"$OVFS_WORK/.trixie-qemu.lock"
flock 9
if [ -f "$STAMP" ]; then echo "$ROOT"; exit 0; fi

if ! command -v debootstrap >/dev/null; then
  # Other jobs on the machine may hold the dpkg lock for a while: wait for it.
  apt-get -o DPkg::Lock::Timeout=900 update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends \
    debootstrap >&2 \
    || die "cannot install debootstrap (apt-get install debootstrap failed)"
fi

mirror=${TRIXIE_MIRROR:-}
[ -n "$mirror" ] || mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

P=$ROOT.partial
cleanup() {
  for m in "$P/proc" "$P/dev/pts" "$P/dev" "$P/sys"; do
    if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
  done
}
trap cleanup EXIT

# A partial tree from an interrupted debootstrap cannot be resumed reliably: start over.
if [ ! -f "$P/.ovfs-debootstrap-done" ]; then
  cleanup
  rm -rf "$P"
  mkdir -p "$P"
  echo "trixie-qemu: debootstrap trixie from $mirror (minbase, ~100 MB)..." >&2
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  kopt=()
  [ -f "$keyring" ] && kopt=(--keyring="$keyring")
  debootstrap --variant=minbase "${kopt[@]}" trixie "$P" "$mirror" >"$OVFS_WORK/trixie-debootstrap.log" 2>&1 \
    || { tail -20 "$OVFS_WORK/trixie-debootstrap.log" >&2; die "debootstrap failed (log: $OVFS_WORK/trixie-debootstrap.log)"; }
  touch "$P/.ovfs-debootstrap-done"
fi

cat >"$P/etc/apt/sources.list" <<EOF
deb $mirror trixie main
deb $mirror trixie-backports main
EOF
# No daemons may start inside the chroot while packages install.
printf '#!/bin/sh\nexit 101\n' >"$P/usr/sbin/policy-rc.d"
chmod 755 "$P/usr/sbin/policy-rc.d"
mountpoint -q "$P/proc" || mount -t proc proc "$P/proc"
mountpoint -q "$P/dev" || mount --bind /dev "$P/dev"
mountpoint -q "$P/sys" || mount --bind /sys "$P/sys"

inchroot() { DEBIAN_FRONTEND=noninteractive chroot "$P" "$@"; }
log=$OVFS_WORK/trixie-apt.log
echo "trixie-qemu: installing qemu-system-x86 (trixie-backports), linux-image-cloud-amd64, busybox-static (~500 MB)..." >&2
{
  inchroot apt-get update -q &&
  inchroot apt-get install -y -q --no-install-recommends -t trixie-backports qemu-system-x86 &&
  inchroot apt-get install -y -q --no-install-recommends linux-image-cloud-amd64 busybox-static &&
  inchroot apt-get clean
} >"$log" 2>&1 || { tail -30 "$log" >&2; die "package installation in the chroot failed (log: $log)"; }

ver=$(inchroot qemu-system-x86_64 --version | head -1)
case "$ver" in
  *"version 11."*|*"version 1"[2-9]"."*) ;;
  *) die "the chroot's QEMU is too old for DAX: $ver" ;;
esac
compgen -G "$P/boot/vmlinuz-*-cloud-amd64" >/dev/null || die "no cloud kernel in the chroot"
[ -x "$P/bin/busybox" ] || [ -x "$P/usr/bin/busybox" ] || die "no busybox in the chroot"

cleanup
trap - EXIT
rm -rf "$ROOT"
mv "$P" "$ROOT"
echo "$ver" >"$STAMP"
echo "trixie-qemu: ready: $ver" >&2
echo "$ROOT"
