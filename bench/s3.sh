#!/usr/bin/env bash
# S3 benchmark suite on a fresh local SeaweedFS (tests/tools/with-s3.sh):
#  host mounts of the same bucket: ovfs (`ovfs mount --config`), rclone (--vfs-cache-mode writes),
#  s3fs; and "direct" = OpenDAL through ovfs::backend::Backend (src/bin/ovfs-s3bench.rs):
#   cold-read       cold sequential read of a BIG object (fresh mount each time)   MB/s
#   write-fsync     write BIG bytes + fsync; "durable" = the server has the whole object when
#                   fsync returns (S3 HEAD right after fsync, before close)       MB/s
#   ls-l            `ls -l` of a directory of NLIST objects on a cold mount        s
#   small-files     NSMALL files of 4 KiB, each open/write/close; "durable" = how many were on
#                   the server right after their close returned                    files/s
#  ovfs daemon memory during a RSSBIG sequential write then read (VmRSS, RssShmem, memfd sizes)
#  guest (TCG): bench/guest/workload.sh over ovfs on S3 (one hop) and over virtiofsd sharing the
#   rclone mount and the s3fs mount (two hops).
# Appends JSON lines to bench/results/s3.jsonl and bench/results/s3-guest.jsonl.
# env: BENCH_RUNS (3), BENCH_QUICK=1 (small sizes), BENCH_S3_BIG_MIB (1024), BENCH_S3_NLIST (10000),
#      BENCH_S3_NSMALL (1000), BENCH_S3_RSS_MIB (4096), BENCH_S3_MEMORY_LIMIT (256MiB),
#      BENCH_S3_GUEST=0 (skip the guest part), BENCH_S3_HOST=0 (skip the host part),
#      BENCH_S3_GUEST_SEQ_MIB (64), BENCH_S3_GUEST_RAND_SECS (10), BENCH_S3_GUEST_META_N (200),
#      BENCH_KEEP_S3=1 (keep the server's data directory; by default it is deleted at exit),
#      BENCH_S3_WORKLOADS (host workloads to run; default "cold-read write-fsync ls-l small-files mem"),
#      BENCH_S3_PEERS (default "direct ovfs rclone s3fs"); e.g. the small-files figures alone:
#        BENCH_S3_GUEST=0 BENCH_S3_WORKLOADS=small-files BENCH_S3_PEERS="direct ovfs s3fs" bench/s3.sh
# For ovfs small-files, the back-end calls per file (from --metrics-addr) go into the JSON line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -z "${OVFS_TEST_S3_ENDPOINT:-}" ]; then exec "$here/../tests/tools/with-s3.sh" "$0" "$@"; fi
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

if [ "$QUICK" = 1 ]; then big=128 nlist=1000 nsmall=100 rssmib=512 gseq=16 grand=4 gmeta=50
else big=1024 nlist=10000 nsmall=1000 rssmib=4096 gseq=64 grand=10 gmeta=200; fi
big=$(( ${BENCH_S3_BIG_MIB:-$big} * 1048576 ))
nlist=${BENCH_S3_NLIST:-$nlist} nsmall=${BENCH_S3_NSMALL:-$nsmall} rssmib=${BENCH_S3_RSS_MIB:-$rssmib}
memlimit=${BENCH_S3_MEMORY_LIMIT:-256MiB}
gseq=${BENCH_S3_GUEST_SEQ_MIB:-$gseq} grand=${BENCH_S3_GUEST_RAND_SECS:-$grand} gmeta=${BENCH_S3_GUEST_META_N:-$gmeta}
out=$RESULTS/s3.jsonl gout=$RESULTS/s3-guest.jsonl
mkdir -p "$RESULTS" "$OVFS_WORK"
for t in rclone s3fs virtiofsd qemu-system-x86_64 python3; do
  command -v "$t" >/dev/null || { log "$t not found (make bench-deps)"; exit 64; }
done

build_ovfs
W=$(mktemp -d "$OVFS_WORK/bench-s3.XXXXXX")
S=$(mktemp -d /tmp/ovfs-bench-s3.XXXXXX)
EP=$OVFS_TEST_S3_ENDPOINT BK=$OVFS_TEST_S3_BUCKET AK=$OVFS_TEST_S3_ACCESS_KEY_ID SK=$OVFS_TEST_S3_SECRET_ACCESS_KEY
mount_pid='' mnt_now='' daemon_pid='' sampler_pid=''
cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
  stop_pid "$daemon_pid"
  [ -n "$mnt_now" ] && umount_peer
  rm -rf "$S"
  # the objects written here take GiBs: drop the server's data (with-s3.sh stops the server
  # right after this script; BENCH_KEEP_S3=1 keeps them)
  [ "${BENCH_KEEP_S3:-0}" = 1 ] || [ -z "${S3_HOME:-}" ] || rm -rf "${S3_HOME:?}/data"
  log "s3 logs in $W"
}
trap cleanup EXIT

# ovfs config for the bucket under ROOT (a key prefix), extra [cache_settings] lines
ovfs_cfg() {  # file root [cache-lines]
  cat >"$1" <<EOC
[cache_settings]
${3:-}

[storage_settings]
type = "s3"
bucket = "$BK"
region = "us-east-1"
endpoint = "$EP"
access_key_id = "$AK"
secret_access_key = "$SK"
root = "$2"
EOC
}
ovfs_cfg "$W/ovfs.toml" /
# ovfs's cache lines for the mounts and the guest alike: a listing cache and negative entries
# (rclone keeps listings 5 min by default, s3fs caches stat results 15 min), listing attributes
# (ls -l from one listing walk), memory_limit (docs/CONFIGURATION.md)
ovfs_cache="memory_limit = \"$memlimit\"
dir_cache_ttl = \"30s\"
negative_timeout = \"1s\"
listing_attrs = true"
printf '%s:%s\n' "$AK" "$SK" >"$W/s3fs.passwd"; chmod 600 "$W/s3fs.passwd"
s3b() { "$S3BENCH_BIN" --config "$W/ovfs.toml" "$@"; }

n_mount=0
mount_peer() {  # peer mountpoint [bucket-prefix]: mount and wait; sets mount_pid, mnt_now
  local p=$1 m=$2 pre=${3:-}
  n_mount=$((n_mount + 1))
  mkdir -p "$m"
  case "$p" in
    ovfs)
      # ls -l from one listing walk: listing cache + listing attributes (docs/CONFIGURATION.md)
      ovfs_cfg "$W/ovfs-m$n_mount.toml" "/$pre" "$ovfs_cache" 
      rm -f "$W/metrics.sock"
      start_bg "$W/ovfs-m$n_mount.log" "$OVFS_BIN" --metrics-addr "unix:$W/metrics.sock" mount --config "$W/ovfs-m$n_mount.toml" "$m" ;;
    rclone)
      # (AWS_CA_BUNDLE, if set, breaks rclone's custom transport; the server is plain http)
      start_bg "$W/rclone-m$n_mount.log" env -u AWS_CA_BUNDLE rclone mount ":s3:$BK/$pre" "$m" --config /dev/null \
        --s3-provider Other --s3-endpoint "$EP" --s3-access-key-id "$AK" --s3-secret-access-key "$SK" \
        --s3-region us-east-1 --s3-force-path-style --vfs-cache-mode writes --cache-dir "$W/rclone-cache-$n_mount" ;;
    s3fs)
      start_bg "$W/s3fs-m$n_mount.log" s3fs "$BK:/$pre" "$m" -f -o "url=$EP" -o use_path_request_style -o sigv4 \
        -o endpoint=us-east-1 -o "passwd_file=$W/s3fs.passwd" -o dbglevel=warn ;;
    *) log "unknown peer $p"; return 1 ;;
  esac
  mount_pid=$bg_pid mnt_now=$m
  for _ in $(seq 1 300); do
    mountpoint -q "$m" && return 0
    kill -0 "$mount_pid" 2>/dev/null || break
    sleep 0.1
  done
  log "$p did not mount on $m"; cat "$W/$p-m$n_mount.log" >&2; return 1
}
umount_peer() {
  local m=$mnt_now
  mnt_now=''
  if mountpoint -q "$m"; then umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; fi
  for _ in $(seq 1 100); do kill -0 "$mount_pid" 2>/dev/null || break; sleep 0.1; done
  stop_pid "$mount_pid"; mount_pid=''
}
mbps() { awk -v b="$1" -v s="$2" 'BEGIN{printf "%.2f", b / s / 1e6}'; }
jget() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
jbool() { case "$1" in True) echo true ;; *) echo false ;; esac; }

read -r -a peers <<<"${BENCH_S3_PEERS:-direct ovfs rclone s3fs}"
workloads=" ${BENCH_S3_WORKLOADS:-cold-read write-fsync ls-l small-files mem} "
want() { [[ "$workloads" == *" $1 "* ]]; }
# ovfs_backend_calls_total summed over the mount's ops, as "op=N ..." (curl on the unix socket)
backend_calls() {  # socket
  curl -s --unix-socket "$1" http://ovfs/metrics |
    awk -F'[",} ]+' '/^ovfs_backend_calls_total/{n[$4]+=$NF} END{for (o in n) printf "%s=%d ", o, n[o]}'
}

if [ "${BENCH_S3_HOST:-1}" = 1 ]; then
  log "s3 host suite: $RUNS runs; big $((big / 1048576)) MiB, ls of $nlist, $nsmall small files"
  t=$(now)
  if want cold-read; then s3b write big.bin "$big" >/dev/null; fi
  if want ls-l; then
    s3b mkdir list >/dev/null
    s3b populate list "$nlist" 64 >/dev/null
  fi
  log "set-up (big.bin, $nlist objects) in $(elapsed "$t") s"
  for run in $(seq 1 "$RUNS"); do
    order=$(rotate "$run" "${peers[@]}")
    # cold sequential read
    want cold-read && for p in $order; do
      if [ "$p" = direct ]; then
        read -r secs _ < <(s3b read big.bin)
      else
        mount_peer "$p" "$W/mnt"
        t=$(now); dd if="$W/mnt/big.bin" of=/dev/null bs=1M status=none; secs=$(elapsed "$t")
        umount_peer
      fi
      emit "$out" s3 cold-read 1 "$p" "$run" "$(mbps "$big" "$secs")" MB/s
    done
    # write + fsync, durable?
    want write-fsync && for p in $order; do
      key=w-$p-$run.bin
      if [ "$p" = direct ]; then
        read -r secs _ < <(s3b write "$key" "$big")
        size=$("$here/s3io.py" head "$key")
        d=false; [ "$size" = "$big" ] && d=true
        emit "$out" s3 write-fsync 1 "$p" "$run" "$(mbps "$big" "$secs")" MB/s "\"durable\":$d"
      else
        mount_peer "$p" "$W/mnt"
        j=$("$here/s3io.py" write "$W/mnt/$key" "$big" "$key")
        emit "$out" s3 write-fsync 1 "$p" "$run" "$(mbps "$big" "$(jget "$j" fsync_s)")" MB/s \
          "\"durable\":$(jbool "$(jget "$j" durable_at_fsync)"),\"size_at_fsync\":$(jget "$j" size_at_fsync),\"close_s\":$(jget "$j" close_s),\"durable_at_close\":$(jbool "$(jget "$j" durable_at_close)")"
        umount_peer
      fi
    done
    # ls -l of NLIST objects on a cold mount
    want ls-l && for p in $order; do
      if [ "$p" = direct ]; then
        read -r secs n < <(s3b list list)
      else
        mount_peer "$p" "$W/mnt"
        t=$(now)
        # the point is `ls -l` itself
        # shellcheck disable=SC2010
        n=$(ls -l "$W/mnt/list" | grep -c '^-')
        secs=$(elapsed "$t")
        umount_peer
      fi
      [ "$n" = "$nlist" ] || log "ls-l $p listed $n of $nlist"
      emit "$out" s3 ls-l 1 "$p" "$run" "$secs" s "\"entries\":$n"
    done
    # small files, each durable at close
    want small-files && for p in $order; do
      dir=small-$p-$run
      if [ "$p" = direct ]; then
        read -r secs _ < <(s3b put-many "$dir" "$nsmall" 4096)
        emit "$out" s3 small-files 1 "$p" "$run" "$(awk -v n="$nsmall" -v s="$secs" 'BEGIN{printf "%.1f", n / s}')" files/s "\"durable\":$nsmall,\"count\":$nsmall"
      else
        mount_peer "$p" "$W/mnt"
        c0=''; [ "$p" = ovfs ] && c0=$(backend_calls "$W/metrics.sock")
        j=$("$here/s3io.py" small "$W/mnt/$dir" "$nsmall" 4096 "$dir")
        calls=''
        if [ "$p" = ovfs ]; then
          # back-end calls per file (the mkdir of the directory included), by operation, and their counts
          c1=$(backend_calls "$W/metrics.sock")
          calls=$(awk -v a="$c0" -v b="$c1" -v n="$nsmall" 'BEGIN{
            split(a, x, " "); for (i in x) { split(x[i], kv, "="); o[kv[1]] = kv[2] }
            split(b, y, " "); for (i in y) { split(y[i], kv, "="); d = kv[2] - o[kv[1]]; t += d
              if (d) printf ",\"%s_per_file\":%.2f,\"%s_calls\":%d", kv[1], d / n, kv[1], d }
            printf ",\"calls_per_file\":%.3f,\"calls\":%d", t / n, t }')
        fi
        umount_peer
        emit "$out" s3 small-files 1 "$p" "$run" "$(awk -v n="$nsmall" -v s="$(jget "$j" secs)" 'BEGIN{printf "%.1f", n / s}')" files/s \
          "\"durable\":$(jget "$j" durable),\"count\":$nsmall$calls"
      fi
    done
    # free the server's disk: big written objects
    if want write-fsync; then mount_peer ovfs "$W/mnt"; rm -f "$W/mnt"/w-*-"$run".bin; umount_peer; fi
  done

  # ovfs daemon memory during a RSSBIG write then read
  if want mem; then
  log "ovfs memory: $rssmib MiB write then read, memory_limit $memlimit"
  mount_peer ovfs "$W/mnt"
  pid=$mount_pid
  shmem0=$(awk '/^Shmem:/{print $2}' /proc/meminfo)
  (
    mx_rss=0 mx_shm=0 mx_anon=0 mx_memfd=0 mx_sys=0
    while kill -0 "$pid" 2>/dev/null; do
      eval "$(awk '/^VmRSS:/{print "r="$2} /^RssShmem:/{print "s="$2} /^RssAnon:/{print "an="$2}' "/proc/$pid/status" 2>/dev/null)"
      m=0
      for f in /proc/"$pid"/fd/*; do
        case "$(readlink "$f" 2>/dev/null)" in /memfd:*) m=$((m + $(stat -L -c %s "$f" 2>/dev/null || echo 0))) ;; esac
      done
      sys=$(( $(awk '/^Shmem:/{print $2}' /proc/meminfo) - shmem0 ))
      [ "${r:-0}" -gt "$mx_rss" ] && mx_rss=$r
      [ "${s:-0}" -gt "$mx_shm" ] && mx_shm=$s
      [ "${an:-0}" -gt "$mx_anon" ] && mx_anon=$an
      [ "$((m / 1024))" -gt "$mx_memfd" ] && mx_memfd=$((m / 1024))
      [ "$sys" -gt "$mx_sys" ] && mx_sys=$sys
      echo "$mx_rss $mx_shm $mx_anon $mx_memfd $mx_sys" >"$W/rss.max"
      sleep 0.2
    done
  ) &
  sampler_pid=$!
  j=$("$here/s3io.py" write "$W/mnt/rss.bin" $((rssmib * 1048576)) rss.bin)
  wsecs=$(jget "$j" close_s)
  sync; echo 3 >/proc/sys/vm/drop_caches
  t=$(now); dd if="$W/mnt/rss.bin" of=/dev/null bs=1M status=none; rsecs=$(elapsed "$t")
  sleep 0.5
  read -r mx_rss mx_shm mx_anon mx_memfd mx_sys <"$W/rss.max"
  rm -f "$W/mnt/rss.bin"
  umount_peer
  kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; sampler_pid=''
  lim=$(numfmt --from=iec "${memlimit%B}" 2>/dev/null || echo 268435456)
  x="\"memory_limit_mib\":$((lim / 1048576)),\"bytes_mib\":$rssmib"
  emit "$out" s3 mem-vmrss-max 1 ovfs 1 "$(awk -v k="$mx_rss" 'BEGIN{printf "%.1f", k/1024}')" MiB "$x"
  emit "$out" s3 mem-rssshmem-max 1 ovfs 1 "$(awk -v k="$mx_shm" 'BEGIN{printf "%.1f", k/1024}')" MiB "$x"
  emit "$out" s3 mem-rssanon-max 1 ovfs 1 "$(awk -v k="$mx_anon" 'BEGIN{printf "%.1f", k/1024}')" MiB "$x"
  emit "$out" s3 mem-memfd-size-max 1 ovfs 1 "$(awk -v k="$mx_memfd" 'BEGIN{printf "%.1f", k/1024}')" MiB "$x"
  emit "$out" s3 mem-system-shmem-delta-max 1 ovfs 1 "$(awk -v k="$mx_sys" 'BEGIN{printf "%.1f", k/1024}')" MiB "$x"
  emit "$out" s3 mem-write 1 ovfs 1 "$(mbps $((rssmib * 1048576)) "$wsecs")" MB/s "$x"
  emit "$out" s3 mem-read 1 ovfs 1 "$(mbps $((rssmib * 1048576)) "$rsecs")" MB/s "$x"
  fi
fi

if [ "${BENCH_S3_GUEST:-1}" = 1 ]; then
  gdaemons=(ovfs virtiofsd-rclone virtiofsd-s3fs)
  "$repo/tests/guest/build-initramfs.sh" -o "$W/bench.cpio.gz" -s "$here/guest/workload.sh" -b "$(command -v fio)"
  args="ovfs.seq_mib=$gseq ovfs.fio_cap=30 ovfs.rand_secs=$grand ovfs.meta_n=$gmeta"
  log "s3 guest suite: $RUNS runs of ${gdaemons[*]}; $args"
  fails=0
  for run in $(seq 1 "$RUNS"); do
    for d in $(rotate "$run" "${gdaemons[@]}"); do
      pre=guest/$d-$run
      s3b mkdir "$pre" >/dev/null
      rm -f "$S/fs.sock"
      case "$d" in
        ovfs)
          ovfs_cfg "$W/g-$d-$run.toml" "/$pre" "$ovfs_cache"
          start_bg "$W/g-$d-$run.daemon.log" "$OVFS_BIN" --config "$W/g-$d-$run.toml" --socket-path "$S/fs.sock" ;;
        virtiofsd-*)
          mount_peer "${d#virtiofsd-}" "$W/gmnt" "$pre"
          start_bg "$W/g-$d-$run.daemon.log" virtiofsd --socket-path "$S/fs.sock" --shared-dir "$W/gmnt" \
            --sandbox none --cache auto ;;
      esac
      daemon_pid=$bg_pid
      t=$(now); rc=0
      timeout -k 10 900 "$repo/tests/guest/run-guest.sh" -i "$W/bench.cpio.gz" -s "$S/fs.sock" -t myfs \
        -c 2 -m 1536 -T 850 -Q -l "$W/g-$d-$run.log" -a "$args" || rc=$?
      stop_pid "$daemon_pid"; daemon_pid=''
      [ -n "$mnt_now" ] && umount_peer
      log "guest $d run $run: rc=$rc in $(elapsed "$t") s"
      [ "$rc" = 0 ] || fails=$((fails + 1))
      parse_guest_log "$W/g-$d-$run.log" "$gout" s3-guest "$d" "$run"
    done
  done
  log "s3 guest suite: $fails failed boots"
fi
rm -rf "$W"/rclone-cache-* "$W/bench.cpio.gz"
log "s3 suite done"
