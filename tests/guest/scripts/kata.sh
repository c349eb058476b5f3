#!/bin/sh
# Guest side of tests/kata_sim.rs (busybox sh): what a Kata guest does with the kataShared device.
# Mounts the device where the Kata agent does (/run/kata-containers/shared/containers/) and checks
# a container rootfs (a static binary that runs from the mount, symlinks, modes, owners), a host
# directory bind-mounted into the shared dir after the daemon started, and the annotated volume
# (served from S3). Escapes through symlinks pointing outside the shared dir fail.
# Parameters (kernel command line): ovfs.cid=CONTAINER ovfs.vol=NAME ovfs.hostvol=NAME
#   ovfs.phase=1: write the volume file, fsync it, print KATA-SYNCED, then wait for the host to
#                 SIGKILL the daemon and end the boot without touching the mount again;
#   ovfs.phase=2: the file written in phase 1 is there (printed as SHA), and a new write works.
# Prints PASS/FAIL lines; exits non-zero on any FAIL.
set -u
. /lib.sh

K=/run/kata-containers/shared/containers
mkdir -p "$K"
if mount -t virtiofs kataShared "$K"; then pass kata-mount; else echo "FAIL kata-mount"; exit 1; fi
cd "$K" || exit 1
R=$K/$OVFS_CID/rootfs
V=$K/$OVFS_VOL
H=$K/$OVFS_HOSTVOL

# container rootfs
check rootfs-exec [ "$("$R/bin/busybox" echo hello-from-rootfs)" = hello-from-rootfs ]
check rootfs-exec-via-symlink [ "$("$R/bin/sh" -c 'echo via-sh')" = via-sh ]
check rootfs-symlink-rel [ "$(readlink "$R/bin/sh")" = busybox ]
check rootfs-symlink-abs [ "$(readlink "$R/bin/ls")" = /bin/busybox ]
check rootfs-shadow-mode [ "$(stat -c '%a %u %g' "$R/etc/shadow")" = "600 0 42" ]
check rootfs-home-mode [ "$(stat -c '%a %u %g' "$R/home/user")" = "750 1000 1000" ]
check rootfs-tmp-sticky [ "$(stat -c '%a' "$R/tmp")" = 1777 ]
check rootfs-passwd [ "$(head -1 "$R/etc/passwd")" = "root:x:0:0:root:/root:/bin/sh" ]

# bind-mounted into the shared dir after the daemon started
check hostvol-visible [ "$(cat "$H/greeting" 2>&1)" = "bound after start" ]

# escapes: symlinks resolve in the guest, never to the host's files
check escape-rel-fails sh -c "! cat '$K/escape-rel' >/dev/null 2>&1"
check escape-abs-fails sh -c "! cat '$K/escape-abs' >/dev/null 2>&1"
check escape-dotdot-fails sh -c "! ls '$K/../../../../canary' >/dev/null 2>&1"

# the annotated volume (S3)
check volume-is-a-dir [ -d "$V" ]
if [ "${OVFS_PHASE:-1}" = 1 ]; then
  yes kata-sim | head -c 300000 >/tmp/data
  if dd if=/tmp/data of="$V/fsynced.txt" bs=65536 conv=fsync 2>/dev/null; then pass volume-write-fsync
  else fail volume-write-fsync "dd conv=fsync"; fi
  echo "SHA fsynced.txt $(sha256sum <"$V/fsynced.txt" | cut -d' ' -f1)"
  check volume-ls [ "$(ls "$V")" = fsynced.txt ]
  echo "kata: phase 1 checks done ($fails failed)"
  echo KATA-SYNCED
  # The host SIGKILLs the daemon now; the mount is dead from here on: do not touch it.
  sleep 8
  echo "OVFS-GUEST-END rc=$fails"
  poweroff -n -f   # -n: no sync (it would wait on the dead daemon forever)
  sleep 10
fi
echo "SHA fsynced.txt $(sha256sum <"$V/fsynced.txt" | cut -d' ' -f1)"
echo second >"$V/phase2.txt" && sync && check volume-phase2-write [ "$(cat "$V/phase2.txt")" = second ]
echo "kata: phase 2 checks done ($fails failed)"
[ "$fails" = 0 ]
