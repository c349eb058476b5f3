#!/usr/bin/env bash
# Host side of basic.sh: check every `SHA <path> <sha256>` line of a guest console log against
# the back-end's copy of the file, and that the guest printed no FAIL line.
#
# usage: verify.sh GUEST_LOG BACKEND_DIR
#        verify.sh GUEST_LOG --cat 'CMD'   # back-end that is not a directory: CMD PATH must print
#                                          # the file's bytes (e.g. --cat 'rclone cat s3:test')
#                                          # where PATH is the path relative to the share root
# Exit status 0 if at least one SHA line was found and all match.
set -euo pipefail

usage() { sed -n '2,9p' "$0" >&2; exit 64; }
[ $# -ge 2 ] || usage
log=$1 dir='' catcmd=''
if [ "$2" = --cat ]; then
  [ $# -ge 3 ] || usage
  catcmd=$3
else
  dir=$2
  [ -d "$dir" ] || { echo "verify: no such directory $dir" >&2; exit 64; }
fi
[ -r "$log" ] || { echo "verify: cannot read $log" >&2; exit 64; }

ok=0 bad=0
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
# console lines end in \r; kernel messages may interleave, so match whole lines only
while read -r path want; do
  if [ -n "$dir" ]; then
    got=$(sha256sum "$dir/$path" 2>/dev/null | cut -d' ' -f1 || true)
  else
    got=
    # shellcheck disable=SC2086  # CMD is a command line by design
    if $catcmd "$path" >"$tmp" 2>/dev/null; then got=$(sha256sum "$tmp" | cut -d' ' -f1); fi
  fi
  if [ "$got" = "$want" ]; then
    ok=$((ok + 1))
  else
    bad=$((bad + 1))
    echo "verify: MISMATCH $path: guest $want, back-end ${got:-<missing>}"
  fi
done < <(tr -d '\r' <"$log" | sed -n 's/^SHA \([^ ]*\) \([0-9a-f]\{64\}\)$/\1 \2/p')

fails=$(tr -d '\r' <"$log" | grep -c '^FAIL ' || true)
passes=$(tr -d '\r' <"$log" | grep -c '^PASS ' || true)
echo "verify: guest $passes PASS / $fails FAIL lines; back-end: $ok files match, $bad differ"
[ $((ok + bad)) -gt 0 ] || { echo "verify: no SHA lines in $log" >&2; exit 1; }
[ "$bad" -eq 0 ] && [ "$fails" -eq 0 ]
