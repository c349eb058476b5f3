#!/usr/bin/env bash
# Run a command with a fresh SeaweedFS S3 server on loopback, exporting the
# OVFS_TEST_S3_* variables the S3 unit and model tests read; the server is
# stopped afterwards. usage: tests/tools/with-s3.sh CMD [ARGS...]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
port=${S3_PORT:-}
if [ -z "$port" ]; then
  for p in $(seq 18700 18799); do
    if ! ss -Hltn "sport = :$p" | grep -q . && ! ss -Hltn "sport = :$((p + 10000))" | grep -q .; then port=$p; break; fi
  done
fi
[ -n "$port" ] || { echo "with-s3: no free port" >&2; exit 1; }
export S3_PORT=$port S3_HOME=${S3_HOME:-$(mktemp -d /tmp/ovfs-s3.XXXXXX)} S3_FRESH=1
"$here/s3-local.sh" start >&2
trap '"$here/s3-local.sh" stop >/dev/null 2>&1 || true' EXIT
export OVFS_TEST_S3_ENDPOINT=http://127.0.0.1:$port OVFS_TEST_S3_BUCKET=test
export OVFS_TEST_S3_ACCESS_KEY_ID=admin OVFS_TEST_S3_SECRET_ACCESS_KEY=adminsecret
"$@"
