#!/usr/bin/env bash
# Summarize pjdfstest (0.2.x, the Rust rewrite) output: a raw pjdfstest log or a guest console
# log containing it (\r and interleaved kernel lines are fine).
#
# usage: summarize.sh [-e EXPECTED_FAILURES] [LOG]     (LOG defaults to stdin)
#   -e  file of test names (one per line, # comments) whose failure is known/accepted
# Prints each failing test as `pjdfstest: FAILED <name>: <reason>` (+ " (expected)"), then one
# closing line:
#   pjdfstest: N passed, N failed, N skipped
# Exit status: 0 if no unexpected failure, 1 if some test failed unexpectedly, 2 if the log
# holds no pjdfstest results (did not run / crashed before its summary).
set -euo pipefail

expected=
while getopts "e:h" opt; do
  case "$opt" in
    e) expected=$OPTARG ;;
    *) sed -n '2,12p' "$0" >&2; exit 64 ;;
  esac
done
shift $((OPTIND - 1))
log=${1:-/dev/stdin}

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
tr -d '\r' <"$log" >"$tmp"

declare -A exp=()
if [ -n "$expected" ]; then
  while read -r name _; do
    case "$name" in ''|'#'*) continue ;; esac
    exp[$name]=1
  done <"$expected"
fi

# result lines: "<name><spaces>ok|skipped|FAILED"; a FAILED line is followed by a tab-indented reason
awk '
  /^[A-Za-z0-9_:]+ +(ok|skipped|FAILED)$/ { res[$1] = $NF; last = ($NF == "FAILED") ? $1 : ""; next }
  /^\t/ && last != "" { if (!(last in why)) { r = $0; sub(/^\t/, "", r); why[last] = r } ; next }
  { last = "" }
  /^Summary: / { summary = $0 }
  END {
    for (n in res) {
      c[res[n]]++
      if (res[n] == "FAILED") print "F", n, why[n]
    }
    printf "C %d %d %d\n", c["ok"], c["FAILED"], c["skipped"]
    if (summary != "") print "S", summary
  }' "$tmp" >"$tmp.out"

read -r _ passed failed skipped < <(grep '^C ' "$tmp.out")
unexpected=0
while read -r _ name reason; do
  if [ -n "${exp[$name]:-}" ]; then
    echo "pjdfstest: FAILED $name: $reason (expected)"
  else
    echo "pjdfstest: FAILED $name: $reason"
    unexpected=$((unexpected + 1))
  fi
done < <(grep '^F ' "$tmp.out" | sort)
summary=$(sed -n 's/^S //p' "$tmp.out")
rm -f "$tmp.out"
total=$((passed + failed + skipped))
if [ "$total" -eq 0 ]; then
  echo "pjdfstest: no results found in ${1:-stdin}" >&2
  exit 2
fi
if [ -z "$summary" ]; then
  echo "pjdfstest: WARNING: no 'Summary:' line (pjdfstest did not finish?)" >&2
elif [[ "$summary" =~ ([0-9]+)\ failed,\ ([0-9]+)\ skipped,\ ([0-9]+)\ passed ]] &&
     [ "${BASH_REMATCH[1]} ${BASH_REMATCH[2]} ${BASH_REMATCH[3]}" != "$failed $skipped $passed" ]; then
  echo "pjdfstest: WARNING: counted $passed/$failed/$skipped passed/failed/skipped but pjdfstest says: $summary" >&2
fi
[ "$unexpected" -eq 0 ] || echo "pjdfstest: $unexpected unexpected failure(s)"
echo "pjdfstest: $passed passed, $failed failed, $skipped skipped"
[ -n "$summary" ] || exit 2
[ "$unexpected" -eq 0 ]
