#!/usr/bin/env bash
# Quick start: install dumpfs into .venv and mount the sample dump, then show it.
#   ./contrib/quickstart.sh [DUMP] [MOUNTPOINT]
# Debian/Ubuntu, as root or a user with sudo.  Unmount with: .venv/bin/dumpfs umount MOUNTPOINT
set -euo pipefail
cd "$(dirname "$0")/.."
. contrib/setup-env.sh

dump=${1:-samples/x86_64-lzo-d31.kdump}
mnt=${2:-/mnt/dumpfs-sample}
$SUDO mkdir -p "$mnt"
if mountpoint -q "$mnt"; then
    $SUDO .venv/bin/dumpfs umount "$mnt"
fi
# FUSE mounts need root or fusermount3; mount as root so that no fuse.conf change is needed,
# with allow_other so that the invoking user can read it too: its files are the dump's own
# owner, group and read bits; uid= and umask=077 give them to the invoking user alone.
$SUDO .venv/bin/dumpfs mount -o "allow_other,uid=$(id -u),gid=$(id -g),umask=077" "$dump" "$mnt"

echo "== $dump mounted on $mnt"
find "$mnt" -maxdepth 2 -not -path "$mnt/proc/*" | sort
echo "== $mnt/proc: $(ls "$mnt/proc" | wc -l) processes (user pages of this -d 31 dump are excluded)"
ls "$mnt/proc" | sort -n | tr '\n' ' ' | fold -s -w 100; echo
echo "== $mnt/info"
cat "$mnt/info"
echo "== the end of $mnt/kernel/log"
tail -n 3 "$mnt/kernel/log"
echo "== unmount with: ${SUDO:+sudo }$PWD/.venv/bin/dumpfs umount $mnt"
