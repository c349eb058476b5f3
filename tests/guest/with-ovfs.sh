#!/usr/bin/env bash
# with-virtiofsd.sh driving ovfs instead of virtiofsd: builds ovfs (cargo build), then runs the
# same steps with -D '<target>/debug/ovfs --socket-path {sock} --shared-dir {dir}'.
# Every argument is passed on to with-virtiofsd.sh (e.g. --pjdfstest,
# -e tests/pjdfstest/expected/guest-fs.txt, -a ovfs.big_mib=16). OVFS_RELEASE=1 uses a release build.
# The Rust test tests/guest.rs covers the same ground (plus the memory and S3 back-ends and the
# stress script); this wrapper is for running the steps by hand.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
profile=debug build=(cargo build --quiet --bin ovfs)
if [ "${OVFS_RELEASE:-0}" = 1 ]; then profile=release build+=(--release); fi
(cd "$repo" && "${build[@]}")
target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin=${target:-$repo/target}/$profile/ovfs
[ -x "$bin" ] || { echo "with-ovfs: no $bin after cargo build" >&2; exit 1; }
exec "$here/with-virtiofsd.sh" -D "$bin --socket-path {sock} --shared-dir {dir}" "$@"
