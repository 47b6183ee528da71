#!/usr/bin/env python3
"""The transport ceiling: a pyfuse3 server that does no work, mounted the way dumpfs mounts.

    python bench/noop_fs.py SIZE MOUNTPOINT
    python bench/noop_fs.py --proc COUNT MOUNTPOINT

Serves one file, `vmcore`, of SIZE bytes, whose every read answers with a
slice of one preallocated constant buffer (no copy, no lookup, no thread).
With --proc, the shape of dumpfs' proc/ instead: `proc/1/comm` .. `proc/COUNT/comm`,
each a constant line; proc_bench.py's floor for `ls proc` + every `comm` (a lookup,
open, read and release each: what FUSE and pyfuse3 cost per file).
Everything else is dumpfs': its mount options (`dumpfs.fuse.mount_options`),
`keep_cache`, the readahead raise on the first request
(`dumpfs.fuse._raise_readahead`, READAHEAD_KB) and the same trio main loop
(`pyfuse3.main(min_tasks=4, max_tasks=64)`).  So a dd of this `vmcore`
measures what FUSE and pyfuse3 cost, and bench.py divides dumpfs' rate by it.
Stays in the foreground; SIGTERM or SIGINT unmounts.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys

import pyfuse3
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dumpfs.fuse import BLOCK_SIZE, FOREVER, _raise_readahead, mount_options  # noqa: E402

FILE_INODE = pyfuse3.ROOT_INODE + 1
NAME = b"vmcore"
CHUNK = 1 << 20                     # the largest request libfuse 3.14 sends


class NoopOperations(pyfuse3.Operations):
    """A root directory holding one constant file."""

    def __init__(self, size: int, mountpoint: str):
        super().__init__()
        self.size = size
        self.mountpoint = mountpoint
        self.buffer = memoryview(bytes(range(256)) * (CHUNK // 256))
        self.readahead_raised = False

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        if not self.readahead_raised:
            self.readahead_raised = True
            _raise_readahead(self.mountpoint)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.entry_timeout = attr.attr_timeout = FOREVER
        attr.st_uid, attr.st_gid = os.getuid(), os.getgid()
        attr.st_blksize = BLOCK_SIZE
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFDIR | 0o555, 2, 0
        else:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFREG | 0o444, 1, self.size
        attr.st_blocks = (attr.st_size + 511) // 512
        return attr

    async def getattr(self, inode, ctx=None):
        if inode not in (pyfuse3.ROOT_INODE, FILE_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INODE)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attr(FILE_INODE), 1)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, keep_cache=True, direct_io=False)

    async def read(self, fh, off, size):
        size = max(0, min(size, self.size - off, CHUNK))
        return self.buffer[:size]


class NoopProcOperations(pyfuse3.Operations):
    """proc/<1..count>/comm: inode 2 is proc/, 2n+10 the folder of n, 2n+11 its comm."""

    COMM = b"noop\n"

    def __init__(self, count: int):
        super().__init__()
        self.count = count

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.entry_timeout = attr.attr_timeout = FOREVER
        attr.st_uid, attr.st_gid = os.getuid(), os.getgid()
        if inode < 10 or inode % 2 == 0:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFDIR | 0o555, 2, 0
        else:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFREG | 0o444, 1, len(self.COMM)
        return attr

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode == pyfuse3.ROOT_INODE and name == b"proc":
            return self._attr(2)
        if parent_inode == 2 and name.isdigit() and 0 < int(name) <= self.count:
            return self._attr(2 * int(name) + 10)
        if parent_inode >= 10 and parent_inode % 2 == 0 and name == b"comm":
            return self._attr(parent_inode + 1)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        if fh == pyfuse3.ROOT_INODE and start_id == 0:
            pyfuse3.readdir_reply(token, b"proc", self._attr(2), 1)
        elif fh == 2:
            for n in range(start_id + 1, self.count + 1):
                if not pyfuse3.readdir_reply(token, str(n).encode(), self._attr(2 * n + 10), n):
                    break
        elif fh >= 10 and start_id == 0:
            pyfuse3.readdir_reply(token, b"comm", self._attr(fh + 1), 1)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, keep_cache=True, direct_io=False)

    async def read(self, fh, off, size):
        return self.COMM[off:off + size]


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return
        nursery.start_soon(on_signal)
        await pyfuse3.main(min_tasks=4, max_tasks=64)
        nursery.cancel_scope.cancel()


def main() -> int:
    if sys.argv[1] == "--proc":
        mountpoint = os.path.abspath(sys.argv[3])
        operations = NoopProcOperations(int(sys.argv[2]))
    else:
        mountpoint = os.path.abspath(sys.argv[2])
        operations = NoopOperations(int(sys.argv[1]), mountpoint)
    options = mount_options()
    options -= {"fsname=dumpfs", "subtype=dumpfs"}      # not a dumpfs mount for `dumpfs umount`
    options |= {"fsname=noopfs", "subtype=noopfs"}
    pyfuse3.init(operations, mountpoint, options)
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
