#!/usr/bin/env bash
# Build a gzip'd cpio initramfs for a virtio-fs test guest.
#
# usage: build-initramfs.sh -o OUT.cpio.gz -s TEST_SCRIPT [-b /path/to/binary]... [-f host_file:guest_path]...
#                           [-K KERNEL_VERSION]
#   -o  output file (gzip'd newc cpio)
#   -s  guest-side test script (busybox sh), installed as /test.sh
#   -b  host binary to include as /bin/<name>, with every library `ldd` lists (repeatable)
#   -f  host file to include at guest_path (repeatable; mode is kept)
#   -K  kernel version whose modules to include (default: newest /boot/vmlinuz-*-cloud-amd64)
#
# The archive is two concatenated gzip'd cpio archives (the kernel unpacks them in order):
#   base  busybox-static + applet links, virtio/fuse/virtiofs modules, /etc files, /init
#         (cached under $OVFS_WORK/initramfs-base/, rebuilt when busybox, the kernel or this
#         script change)
#   top   /test.sh, -b binaries and their libraries, -f files (built every time; small)
#
# The guest /init mounts proc/sys/devtmpfs and a tmpfs on /tmp, insmods the modules, mounts
#   mount -t virtiofs $TAG /mnt [-o $MNTOPTS]
# from kernel command line parameters ovfs.tag= (default "myfs") and ovfs.mntopts=, runs
# /test.sh with cwd /mnt, then prints `OVFS-GUEST-END rc=<rc>` and powers off.
# Every kernel parameter ovfs.NAME=VALUE is exported to /test.sh as OVFS_NAME=VALUE
# (upper-cased, dots/dashes -> underscores); e.g. ovfs.filter=chmod -> OVFS_FILTER=chmod.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
OVFS_WORK=${OVFS_WORK:-$repo/.work}

MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs)

out='' script='' kver=''
bins=() files=()
usage() { sed -n '2,12p' "$0" >&2; exit 2; }
while getopts "o:s:b:f:K:h" opt; do
  case "$opt" in
    o) out=$OPTARG ;;
    s) script=$OPTARG ;;
    b) bins+=("$OPTARG") ;;
    f) files+=("$OPTARG") ;;
    K) kver=$OPTARG ;;
    *) usage ;;
  esac
done
if [ -z "$out" ] || [ -z "$script" ]; then usage; fi
[ -f "$script" ] || { echo "build-initramfs: no such test script: $script" >&2; exit 1; }

if [ -z "$kver" ]; then
  k=$(find /boot -maxdepth 1 -name 'vmlinuz-*-cloud-amd64' | sort -V | tail -1)
  [ -n "$k" ] || { echo "build-initramfs: no /boot/vmlinuz-*-cloud-amd64 (run tests/tools/install-deps.sh)" >&2; exit 1; }
  kver=${k#/boot/vmlinuz-}
fi
moddir=/lib/modules/$kver
[ -d "$moddir" ] || { echo "build-initramfs: no $moddir" >&2; exit 1; }
BUSYBOX=${BUSYBOX:-/bin/busybox}
ldd_out=$(LC_ALL=C ldd "$BUSYBOX" 2>&1 || true)
if ! grep -q 'not a dynamic executable' <<<"$ldd_out"; then
  # /bin/busybox may be the dynamic one from the `busybox` package; busybox-static ships it too
  echo "build-initramfs: $BUSYBOX is not static (apt-get install busybox-static)" >&2; exit 1
fi

# cpio: newc format, everything owned by root, no mtime noise in the base
pack() {  # dir out.gz
  (cd "$1" && find . -print0 | LC_ALL=C sort -z |
     cpio --quiet -o -0 -H newc -R 0:0 --reproducible | gzip -1 -n) >"$2"
}

# ---------- base (cached) ----------
key=$( { echo "$kver"; sha256sum "$BUSYBOX" "${BASH_SOURCE[0]}";
         for m in "${MODULES[@]}"; do echo "$m"; done; } | sha256sum | cut -c1-16)
base_dir=$OVFS_WORK/initramfs-base
base=$base_dir/base-$kver-$key.cpio.gz
if [ ! -s "$base" ]; then
  mkdir -p "$base_dir"
  stage=$(mktemp -d "$base_dir/stage.XXXXXX")
  trap 'rm -rf "$stage" "$stage.cpio.gz"' EXIT
  chmod 0755 "$stage"   # the "." entry sets the guest's / mode: mktemp's 0700 breaks unprivileged tests
  mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,mnt,root,lib/modules}
  chmod 1777 "$stage/tmp"
  chmod 0700 "$stage/root"
  chmod 0755 "$stage/mnt"
  cp "$BUSYBOX" "$stage/bin/busybox"
  # applet links, placed where busybox wants them (fall back to /bin)
  while read -r app; do
    case "$app" in
      */*) d=$stage/$(dirname "${app#/}"); n=$(basename "$app") ;;
      *) d=$stage/bin; n=$app ;;
    esac
    [ "$n" = busybox ] && continue
    mkdir -p "$d"; [ -e "$d/$n" ] || ln -s /bin/busybox "$d/$n"
  done < <("$BUSYBOX" --list-full 2>/dev/null || "$BUSYBOX" --list)

  # modules: decompress at build time (busybox insmod cannot read .ko.xz/.ko.zst)
  : >"$stage/etc/ovfs-modules"
  for m in "${MODULES[@]}"; do
    f=$(find "$moddir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) -print -quit)
    if [ -z "$f" ]; then
      # built into this kernel: nothing to load (e.g. trixie's 6.12 cloud kernel)
      if grep -q "/$m.ko\$" "$moddir/modules.builtin" 2>/dev/null; then continue; fi
      echo "build-initramfs: module $m neither in $moddir nor built in" >&2; exit 1
    fi
    dst=$stage/lib/modules/$m.ko
    case "$f" in
      *.ko) cp "$f" "$dst" ;;
      *.ko.xz) xz -dc "$f" >"$dst" ;;
      *.ko.zst) zstd -qdc "$f" >"$dst" ;;
      *.ko.gz) gzip -dc "$f" >"$dst" ;;
    esac
    echo "$m" >>"$stage/etc/ovfs-modules"
  done

  cat >"$stage/etc/passwd" <<'EOP'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOP
  cat >"$stage/etc/group" <<'EOP'
root:x:0:
daemon:x:1:
nogroup:x:65534:
EOP
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' >"$stage/etc/nsswitch.conf"
  echo 'ovfs-guest' >"$stage/etc/hostname"
  ln -s /proc/mounts "$stage/etc/mtab"

  cat >"$stage/init" <<'EOI'
#!/bin/sh
# ovfs test guest init (generated by tests/guest/build-initramfs.sh)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
for m in $(cat /etc/ovfs-modules); do
  insmod "/lib/modules/$m.ko" || echo "ovfs-init: insmod $m failed"
done
OVFS_TAG=myfs
OVFS_MNTOPTS=
for w in $(cat /proc/cmdline); do
  case "$w" in
    ovfs.*=*)
      k=${w%%=*}; k=${k#ovfs.}; v=${w#*=}
      k=$(echo "$k" | tr 'a-z.-' 'A-Z__')
      export "OVFS_$k=$v" ;;
  esac
done
export OVFS_MNT=/mnt
finish() {
  echo "OVFS-GUEST-END rc=$1"
  poweroff -f
  sleep 10
}
echo "ovfs-init: mount -t virtiofs $OVFS_TAG /mnt ${OVFS_MNTOPTS:+-o $OVFS_MNTOPTS}"
if [ -n "$OVFS_MNTOPTS" ]; then
  mount -t virtiofs -o "$OVFS_MNTOPTS" "$OVFS_TAG" /mnt
else
  mount -t virtiofs "$OVFS_TAG" /mnt
fi || { echo "ovfs-init: mount failed"; dmesg | tail -20; finish 98; }
cd /mnt
sh /test.sh
rc=$?
cd /
sync
umount /mnt || echo "ovfs-init: umount /mnt failed"
finish "$rc"
EOI
  chmod 0755 "$stage/init"
  pack "$stage" "$stage.cpio.gz"
  mv "$stage.cpio.gz" "$base"   # atomic: concurrent builds never see a partial base
  rm -rf "$stage"; trap - EXIT
fi

# ---------- top (per build) ----------
mkdir -p "$OVFS_WORK"
top=$(mktemp -d "$OVFS_WORK/initramfs-top.XXXXXX")
trap 'rm -rf "$top" "$top.cpio.gz" "$out.tmp.$$"' EXIT
chmod 0755 "$top"
mkdir -p "$top/bin"
install -m 0755 "$script" "$top/test.sh"
install -m 0644 "$(dirname "$0")/scripts/lib.sh" "$top/lib.sh"   # shared helpers, `. /lib.sh`

copy_lib() {  # host path -> same path in the guest
  local l=$1
  [ -e "$top$l" ] && return 0
  mkdir -p "$top$(dirname "$l")"
  cp -L "$l" "$top$l"
}
for b in "${bins[@]}"; do
  p=$b
  [ -e "$p" ] || p=$(command -v "$b" || true)
  if [ -z "$p" ] || [ ! -x "$p" ]; then echo "build-initramfs: binary not found: $b" >&2; exit 1; fi
  install -m 0755 "$p" "$top/bin/$(basename "$p")"
  while read -r line; do
    case "$line" in
      *"not found"*) echo "build-initramfs: $p: $line" >&2; exit 1 ;;
      *"=> /"*) l=${line#*=> }; copy_lib "${l%% (*}" ;;
      /*) copy_lib "${line%% (*}" ;;
    esac
  done < <(LC_ALL=C ldd "$p" 2>/dev/null || true)
done
for spec in "${files[@]}"; do
  src=${spec%%:*} dst=${spec#*:}
  if [ "$src" = "$spec" ] || [ -z "$dst" ]; then
    echo "build-initramfs: -f wants host_file:guest_path, got $spec" >&2; exit 1
  fi
  mkdir -p "$top$(dirname "$dst")"
  cp -pL "$src" "$top$dst"
done

mkdir -p "$(dirname "$out")"
pack "$top" "$top.cpio.gz"
cat "$base" "$top.cpio.gz" >"$out.tmp.$$"
rm -f "$top.cpio.gz"
mv "$out.tmp.$$" "$out"
