"""Reads made without waiting (how the FUSE loop serves page-cache copies itself):
they either return exactly what a normal read returns, or raise WouldBlock,
never block on the disk or a decompression."""

from __future__ import annotations

import os

import pytest

import fixturecache as fc
from dumpfs.backends import open_dump
from dumpfs.waiting import WouldBlock, without_waiting
from dumpfs.source import FileSource
from dumpfs.views.vmcore import vmcore_file


def evict(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def test_file_source_reads_only_what_is_cached(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(os.urandom(4 << 20))
    evict(path)
    source = FileSource(str(path))
    with pytest.raises(WouldBlock), without_waiting():
        source.read(1 << 20, 1 << 20)
    expected = source.read(1 << 20, 1 << 20)            # waits for the disk, fills the cache
    with without_waiting():
        assert source.read(1 << 20, 1 << 20) == expected
    assert source.read(1 << 20, 1 << 20) == expected    # the mode ends with the block
    source.close()


def test_decompression_is_never_done_without_waiting():
    dump = open_dump(str(fc.unpacked("x86_64-custom", "mkdf-zlib-d1.kdump.xz")))
    vmcore = vmcore_file(dump)
    with pytest.raises(WouldBlock), without_waiting():
        vmcore.size                                      # the layout needs the bitmap scan
    refused = 0
    # backwards: a sequential reader would have pages decoded ahead by worker threads
    for offset in reversed(range(0, vmcore.size, 1 << 20)):
        try:
            with without_waiting():
                inline = vmcore.read(offset, 1 << 20)
        except WouldBlock:
            refused += 1                                 # pages still to be decompressed
            inline = None
        expected = vmcore.read(offset, 1 << 20)          # decoded the normal way ...
        assert inline is None or inline == expected
        with without_waiting():
            assert vmcore.read(offset, 1 << 20) == expected   # ... then served from the cache
    assert refused > 10, "a zlib dump has megabytes that need decompressing"
    dump.close()


def test_elf_vmcore_reads_the_same_either_way():
    dump = open_dump(str(fc.unpacked("s390x-custom", "qemu-dgm.elf.xz")))
    vmcore = vmcore_file(dump)
    size = vmcore.size
    for offset in (0, 0x1234, size // 3, size - 5000):
        expected = vmcore.read(offset, 1 << 20)
        with without_waiting():
            assert vmcore.read(offset, 1 << 20) == expected
    dump.close()
