"""Loop devices for tests: read-only, 4 KiB logical blocks like an ECKD DASD; always detached.

zgetdump treats a block device whose minor is a multiple of 4 as a whole DASD
and minor + 1..3 as its partitions, so `disk_and_partition` attaches an
image to /dev/loopN (N % 4 == 0) and its dump partition to /dev/loop(N+1).
"""

from __future__ import annotations

import contextlib
import os
import subprocess


def _free(n: int) -> bool:
    return not os.path.exists(f"/sys/block/loop{n}/loop/backing_file")


def attach(path, *, device: str | None = None, offset: int = 0, size: int | None = None,
           block_size: int = 4096, partscan: bool = False) -> str:
    args = ["losetup", "-r", "-b", str(block_size)]
    args += ["-o", str(offset)] if offset else []
    args += ["--sizelimit", str(size)] if size else []
    args += ["-P"] if partscan else []
    if device is None:
        return subprocess.run([*args, "-f", "--show", str(path)], capture_output=True, text=True,
                              check=True).stdout.strip()
    done = subprocess.run([*args, device, str(path)], capture_output=True, text=True)
    if done.returncode:
        raise OSError(f"losetup {device}: {done.stderr.strip()}")
    return device


def detach(device: str) -> None:
    subprocess.run(["losetup", "-d", device], capture_output=True)


@contextlib.contextmanager
def loop_device(path, *, offset: int = 0, size: int | None = None, block_size: int = 4096,
                whole_disk: bool = False):
    """One read-only loop device over (a window of) an image; always detached afterwards.

    `whole_disk` picks /dev/loopN with N % 4 == 0, which zgetdump takes for a whole DASD.
    """
    device = None
    if whole_disk:
        errors = []
        for n in range(0, 256, 4):
            if not _free(n):
                continue
            try:
                device = attach(path, device=f"/dev/loop{n}", offset=offset, size=size,
                                block_size=block_size)
                break
            except OSError as e:
                errors.append(str(e))
        if device is None:
            raise OSError(f"no free loop device with a minor divisible by 4: {errors[-3:]}")
    else:
        device = attach(path, offset=offset, size=size, block_size=block_size)
    try:
        yield device
    finally:
        detach(device)


@contextlib.contextmanager
def loops():
    """attach(...) through the yielded function; everything attached is detached at the end."""
    attached: list[str] = []

    def do_attach(path, **kwargs) -> str:
        device = attach(path, **kwargs)
        attached.append(device)
        return device

    def disk_and_partition(path, part_off: int, part_size: int, *, partition: bool = True):
        """(/dev/loopN, /dev/loopN+1 or None) with N % 4 == 0: a whole 'DASD' and its partition."""
        errors = []
        for n in range(0, 256, 4):
            if not (_free(n) and (not partition or _free(n + 1))):
                continue
            try:
                disk = do_attach(path, device=f"/dev/loop{n}")
            except OSError as e:
                errors.append(str(e))
                continue
            if not partition:
                return disk, None
            try:
                return disk, do_attach(path, device=f"/dev/loop{n + 1}", offset=part_off, size=part_size)
            except OSError as e:
                errors.append(str(e))
                attached.remove(disk)
                detach(disk)
        raise OSError(f"no free pair of loop devices: {errors[-3:]}")

    do_attach.disk_and_partition = disk_and_partition
    try:
        yield do_attach
    finally:
        for device in reversed(attached):
            detach(device)
