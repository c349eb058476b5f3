# Shared helpers of the guest test scripts (busybox sh). build-initramfs.sh installs this file
# as /lib.sh in every test initramfs; a script loads it with `. /lib.sh`.
# Checks print `PASS name` or `FAIL name: why` (the host test reads those lines) and count the
# failures in $fails.
fails=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }
# check NAME CMD...: PASS if the command succeeds
check() { n=$1; shift; if "$@"; then pass "$n"; else fail "$n" "failed: $*"; fi; }
# eqv NAME GOT EXPECTED
eqv() { if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$2', expected '$3'"; fi; }
sha() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }
size() { stat -c %s "$1" 2>/dev/null || echo missing; }
dropc() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# times: the guest's /proc/uptime, seconds with 10 ms resolution
now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN{exit !(a <= b)}'; }
# same NAME FILE EXPECTED_FILE: contents equal (sha256 and size)
same() {
  if [ ! -e "$2" ]; then fail "$1" "$2 missing"; return; fi
  a=$(sha "$2") b=$(sha "$3") sa=$(size "$2") sb=$(size "$3")
  if [ "$a" = "$b" ] && [ "$sa" = "$sb" ]; then pass "$1"; else fail "$1" "$2 size $sa sha $a, expected size $sb sha $b"; fi
}
