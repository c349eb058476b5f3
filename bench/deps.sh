#!/usr/bin/env bash
# Benchmark dependencies (not needed by `make test`/CI): fio (copied into the guest), rclone and
# s3fs (the S3 peers), matplotlib (bench/plot.py). virtiofsd, QEMU, SeaweedFS and the guest
# kernel come from tests/tools/install-deps.sh. Idempotent; quick when everything is there.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
need=()
for p in fio rclone s3fs; do command -v "$p" >/dev/null || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  # Debian's package where pip is externally managed, else the wheel
  if command -v apt-get >/dev/null && [ "$(command -v python3)" = /usr/bin/python3 ]; then
    apt-get install -y -qq python3-matplotlib >/dev/null
  else
    python3 -m pip install --quiet --disable-pip-version-check matplotlib
  fi
fi
"$here/../tests/tools/install-deps.sh"
