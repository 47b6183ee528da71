"""Block devices: their block size, and through sysfs a partition's disk, a DASD's CCW bus ID,
every disk.

Linux only; everything answers None (or nothing) where sysfs does not know.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import struct

from dumpfs.source import Source

BLKSSZGET = 0x1268                     # ioctl: logical block size of a block device
DEFAULT_BLOCK_SIZE = 4096              # image files; ECKD dump partitions have 4 KiB blocks


def block_size(source: Source) -> int:
    """The device block size (zgetdump: BLKSSZGET); 4 KiB for image files."""
    if source.is_block_device and hasattr(source, "fd"):
        try:
            size = struct.unpack("i", fcntl.ioctl(source.fd, BLKSSZGET, bytes(4)))[0]
            if size in (512, 1024, 2048, 4096):
                return size
        except OSError:
            pass
    return DEFAULT_BLOCK_SIZE


def _sysfs_dir(source: Source) -> str | None:
    """/sys/dev/block/MAJ:MIN of a block device source, resolved."""
    if not source.is_block_device:
        return None
    try:
        rdev = os.stat(source.name).st_rdev
    except OSError:
        return None
    path = os.path.realpath(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
    return path if os.path.isdir(path) else None


def parent_disk(source: Source) -> tuple[str, int] | None:
    """(whole-disk device, partition start in bytes) of a partition device, from sysfs."""
    path = _sysfs_dir(source)
    if path is None or not os.path.exists(os.path.join(path, "partition")):
        return None
    try:
        with open(os.path.join(path, "start")) as f:
            start = int(f.read()) * 512       # sysfs counts 512-byte sectors
    except (OSError, ValueError):
        return None
    disk = "/dev/" + os.path.basename(os.path.dirname(path))
    return (disk, start) if _is_block(disk) else None


def ccw_busid(source: Source) -> str | None:
    """The CCW bus ID of a DASD (IBM Z only): /sys/dev/block/MAJ:MIN/device -> .../0.0.5a1e."""
    path = _sysfs_dir(source)
    if path is None:
        return None
    device = os.path.basename(os.path.realpath(os.path.join(path, "device")))
    return device if re.fullmatch(r"[0-3]\.[0-3]\.[0-9a-f]{4}", device) else None


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def block_disks() -> list[str]:
    """Every whole disk the kernel lists in /sys/block that has a /dev node and a size."""
    disks = []
    try:
        names = sorted(os.listdir("/sys/block"))
    except OSError:
        return disks
    for name in names:
        try:
            with open(f"/sys/block/{name}/size") as f:
                if int(f.read()) == 0:
                    continue
        except (OSError, ValueError):
            continue
        if _is_block(f"/dev/{name}"):
            disks.append(f"/dev/{name}")
    return disks
