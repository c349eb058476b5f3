#!/usr/bin/env bash
# Build the ovfs deb and rpm packages (`make package`).
#
# usage: packaging/build.sh [--profile release|debug] [--out DIR]
#   --profile  cargo profile of the packaged binary (default release)
#   --out      where the packages go (default target/package)
#
# Both packages install the same tree, staged once:
#   /usr/libexec/ovfs                          the daemon (what Kata's virtio_fs_daemon names)
#   /usr/bin/ovfs -> ../libexec/ovfs           for people
#   /etc/ovfs/ovfs.toml                        commented example, a config file (kept on upgrade)
#   /usr/share/qemu/vhost-user/50-ovfs.json    QEMU vhost-user back-end description ("type": "fs")
#   /usr/share/man/man1/ovfs.1.gz              generated from the CLI (src/bin/ovfs-man.rs)
#   /usr/share/ovfs/kata/...                   the Kata drop-ins of shim-config/
#   /usr/share/doc/ovfs/...                    README, docs/, copyright
# Needs dpkg-deb and rpmbuild (Debian package `rpm`; tests/tools/install-deps.sh installs it).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
profile=release out=
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --profile=*) profile=${1#*=}; shift ;;
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "package: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$profile" in release|debug) ;; *) echo "package: --profile must be release or debug" >&2; exit 2 ;; esac
for tool in dpkg-deb rpmbuild gzip; do
  command -v "$tool" >/dev/null || { echo "package: $tool not found (run tests/tools/install-deps.sh)" >&2; exit 1; }
done

cd "$repo"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
meta=$(cargo metadata --format-version 1 --no-deps)
target=$(printf '%s' "$meta" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || { echo "package: no version in Cargo.toml" >&2; exit 1; }
out=${out:-$target/package}
cargo_flags=(--quiet --bin ovfs --bin ovfs-man)
[ "$profile" = release ] && cargo_flags+=(--release)
cargo build "${cargo_flags[@]}"
bindir=$target/$profile

stage=$(mktemp -d "${TMPDIR:-/tmp}/ovfs-package.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -d -m 0755 "$root/usr/libexec" "$root/usr/bin" "$root/etc/ovfs" "$root/usr/share/qemu/vhost-user" \
  "$root/usr/share/man/man1" "$root/usr/share/ovfs/kata" "$root/usr/share/doc/ovfs/docs"
install -m 0755 "$bindir/ovfs" "$root/usr/libexec/ovfs"
strip --strip-debug "$root/usr/libexec/ovfs"
ln -s ../libexec/ovfs "$root/usr/bin/ovfs"
install -m 0644 packaging/ovfs.toml "$root/etc/ovfs/ovfs.toml"
install -m 0644 packaging/50-ovfs.json "$root/usr/share/qemu/vhost-user/50-ovfs.json"
"$bindir/ovfs-man" "$stage/ovfs.1"
gzip -9n -c "$stage/ovfs.1" >"$root/usr/share/man/man1/ovfs.1.gz"
chmod 0644 "$root/usr/share/man/man1/ovfs.1.gz"
cp -r shim-config/. "$root/usr/share/ovfs/kata/"
install -m 0644 README.md "$root/usr/share/doc/ovfs/README.md"
install -m 0644 docs/*.md "$root/usr/share/doc/ovfs/docs/"
cat >"$root/usr/share/doc/ovfs/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ovfs
License: Apache-2.0

Files: *
Copyright: the ovfs authors
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPY
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f ! -path "$root/usr/libexec/ovfs" -exec chmod 0644 {} +

mkdir -p "$out"
summary="virtio-fs over vhost-user, backed by Apache OpenDAL"

# ---------- deb ----------
arch=$(dpkg --print-architecture)
deb_root=$stage/deb
cp -a "$root" "$deb_root"
install -d -m 0755 "$deb_root/DEBIAN"
installed_kib=$(du -sk --exclude=DEBIAN "$deb_root" | cut -f1)
cat >"$deb_root/DEBIAN/control" <<CTRL
Package: ovfs
Version: $version
Architecture: $arch
Maintainer: ovfs developers <ovfs@localhost>
Installed-Size: $installed_kib
Depends: libc6 (>= 2.34), libgcc-s1
Section: admin
Priority: optional
Homepage: https://opendal.apache.org/
Description: $summary
 ovfs is a vhost-user virtio-fs daemon for QEMU, cloud-hypervisor and Kata
 Containers. A guest mounts it with "mount -t virtiofs" and sees an S3 bucket,
 a local directory or any Apache OpenDAL service as a file system, without ever
 seeing credentials. It also serves a host directory as a full POSIX
 passthrough tree, as virtiofsd does.
CTRL
echo /etc/ovfs/ovfs.toml >"$deb_root/DEBIAN/conffiles"
chmod 0644 "$deb_root/DEBIAN/control" "$deb_root/DEBIAN/conffiles"
deb=$out/ovfs_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$deb_root" "$deb" >/dev/null

# ---------- rpm ----------
rpm_top=$stage/rpm
mkdir -p "$rpm_top"/{BUILD,RPMS,SOURCES,SPECS,SRPMS,BUILDROOT}
spec=$rpm_top/SPECS/ovfs.spec
{
  cat <<SPEC
Name: ovfs
Version: $version
Release: 1
Summary: $summary
License: Apache-2.0
URL: https://opendal.apache.org/
%global debug_package %{nil}
%global __strip /bin/true

%description
ovfs is a vhost-user virtio-fs daemon for QEMU, cloud-hypervisor and Kata
Containers, backed by Apache OpenDAL (S3, local directories and more).

%install
mkdir -p %{buildroot}
cp -a $root/. %{buildroot}/

%files
%dir /etc/ovfs
%config(noreplace) /etc/ovfs/ovfs.toml
/usr/libexec/ovfs
/usr/bin/ovfs
/usr/share/qemu/vhost-user/50-ovfs.json
/usr/share/man/man1/ovfs.1.gz
/usr/share/ovfs
%doc /usr/share/doc/ovfs
SPEC
} >"$spec"
rpmbuild --quiet -bb --define "_topdir $rpm_top" --define "_build_id_links none" "$spec" >"$stage/rpmbuild.log" 2>&1 \
  || { cat "$stage/rpmbuild.log" >&2; echo "package: rpmbuild failed" >&2; exit 1; }
rpm_file=$(find "$rpm_top/RPMS" -name '*.rpm' | head -n1)
[ -n "$rpm_file" ] || { echo "package: rpmbuild produced no rpm" >&2; exit 1; }
cp "$rpm_file" "$out/"

echo "package: $deb"
echo "package: $out/$(basename "$rpm_file")"
