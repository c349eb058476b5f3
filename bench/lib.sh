# variables here are used by the scripts that source this file
# shellcheck shell=bash disable=SC2034
# Shared helpers of the benchmark scripts (sourced). Results are JSON lines:
#   {"suite":"guest","workload":"seqread-1m","depth":1,"daemon":"ovfs","run":1,"value":123.4,"unit":"MB/s"}
# plus optional extra keys (e.g. "durable":true, "note":"..."). bench/plot.py reads them.
bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$bench_dir/.." && pwd)
export OVFS_WORK=${OVFS_WORK:-$repo/.work}
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
RESULTS=${BENCH_RESULTS:-$bench_dir/results}
RUNS=${BENCH_RUNS:-3}
QUICK=${BENCH_QUICK:-0}

log() { echo "bench: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN{printf "%.6f", e-s}'; }

# emit FILE suite workload depth daemon run value unit [extra-json-fields]
emit() {
  local f=$1 extra=${9:-}
  printf '{"suite":"%s","workload":"%s","depth":%s,"daemon":"%s","run":%s,"value":%s,"unit":"%s"%s}\n' \
    "$2" "$3" "$4" "$5" "$6" "$7" "$8" "${extra:+,$extra}" >>"$f"
  log "$2 $3 $5 run $6: $7 $8 ${extra}"
}

# release binaries of this tree (BENCH_OVFS_BIN and BENCH_S3BENCH_BIN: use these instead, e.g. to
# compare two builds of ovfs against the same peers)
build_ovfs() {
  if [ -n "${BENCH_OVFS_BIN:-}" ]; then
    OVFS_BIN=$BENCH_OVFS_BIN S3BENCH_BIN=${BENCH_S3BENCH_BIN:?BENCH_S3BENCH_BIN with BENCH_OVFS_BIN}
    export OVFS_BIN S3BENCH_BIN
    return 0
  fi
  (cd "$repo" && cargo build --release --quiet --bin ovfs --bin ovfs-s3bench)
  local target
  target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  OVFS_BIN=${target:-$repo/target}/release/ovfs
  S3BENCH_BIN=${target:-$repo/target}/release/ovfs-s3bench
  export OVFS_BIN S3BENCH_BIN
}

# rotate "a b c" by N: run 1 -> a b c, run 2 -> b c a, ... (alternating daemons between runs)
rotate() {  # n words...
  local n=$1; shift
  local a=("$@") k
  k=$(( (n - 1) % ${#a[@]} ))
  echo "${a[@]:k}" "${a[@]:0:k}"
}

# run CMD in the background (own log), remember its pid in $bg_pid
start_bg() {  # log cmd...
  local l=$1; shift
  "$@" >"$l" 2>&1 &
  bg_pid=$!
}
stop_pid() {  # pid: TERM, wait up to 5 s, KILL
  local p=$1
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

# parse `BENCH workload value unit` lines of a guest console log into JSON lines
parse_guest_log() {  # log out suite daemon run
  local l=$1 out=$2 suite=$3 d=$4 r=$5 w v u
  while read -r _ w v u; do
    emit "$out" "$suite" "$w" 1 "$d" "$r" "$v" "$u"
  done < <(tr -d '\r' <"$l" | grep -a -E '^BENCH [a-z0-9-]+ [0-9.]+ [A-Za-z/]+$')
  tr -d '\r' <"$l" | grep -a '^BENCH-FAIL' >&2 || true
}
