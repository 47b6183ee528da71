"""Where bytes come from: files and block devices, read with pread.

Backends receive a `Source` and never open paths themselves, so a tape, a
remote object or an in-memory buffer can stand in for a file.
"""

from __future__ import annotations

import os
import stat

from dumpfs.buffers import read_cached
from dumpfs.errors import DamagedDump, MissingPart, NoDump
from dumpfs.waiting import waiting_forbidden
from dumpfs.extents import Extent, ExtentFile, SourceRange


SMALL_READ = 64 << 10       # page-cache reads up to this size are returned as bytes


class Source:
    """Random-access bytes with a name and a size."""

    name: str
    size: int
    is_block_device: bool = False     # block size and device layout questions apply

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`; short only at the end of the source."""
        raise NotImplementedError

    def read_exact(self, offset: int, length: int, what: str = "data") -> bytes:
        data = self.read(offset, length)
        if len(data) != length:
            raise DamagedDump(f"{self.name}: truncated: {what} at offset {offset:#x} "
                              f"needs {length} bytes, the source ends at {self.size:#x}")
        return data

    def close(self) -> None:
        pass


class FileSource(Source):
    """A regular file or a block device."""

    def __init__(self, path: str):
        self.name = path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise MissingPart(f"{path}: no such file or device") from None
        except OSError as e:
            raise MissingPart(f"{path}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise NoDump(f"{path}: is a directory, not a dump")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise NoDump(f"{path}: not a regular file or block device")
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise MissingPart(f"{path}: cannot open: {e.strerror}") from None
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset >= self.size:
            return b""
        if waiting_forbidden():
            return self._read_cached(offset, min(length, self.size - offset))
        data = os.pread(self.fd, length, offset)
        if len(data) < length and offset + len(data) < self.size:
            parts = [data]
            got = len(data)
            while got < length:
                more = os.pread(self.fd, length - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return data

    def _read_cached(self, offset: int, length: int) -> bytes | memoryview:
        """The range if the page cache holds all of it, else WouldBlock.

        One preadv(RWF_NOWAIT) into a buffer this thread reuses
        (`dumpfs.buffers`): large reads return a memoryview of it, which is
        all a FUSE reply needs; small ones a copy, as bytes.
        """
        view = read_cached(self.fd, offset, length, self.name)
        return bytes(view) if length <= SMALL_READ else view

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class BytesSource(Source):
    """Bytes already in memory (headers reassembled from a stream, test data)."""

    def __init__(self, data: bytes, name: str = "<memory>"):
        self.data = memoryview(bytes(data))
        self.name = name
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + max(length, 0)])


class WindowSource(Source):
    """`size` bytes of another source from `offset`: a partition, a dump behind a boot record."""

    def __init__(self, inner: Source, offset: int, size: int, name: str | None = None):
        self.inner = inner
        self.offset = offset
        self.size = max(0, min(size, inner.size - offset))
        self.name = name or f"{inner.name}@{offset:#x}"

    def read(self, offset: int, length: int) -> bytes:
        length = min(length, self.size - offset)
        if length <= 0 or offset < 0:
            return b""
        return self.inner.read(self.offset + offset, length)


class ExtentSource(Source):
    """A source laid out as extents over others: a file in a file system image, a reassembled stream."""

    def __init__(self, layout: ExtentFile, name: str):
        self.layout = layout
        self.name = name
        self.size = layout.size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0:
            return b""
        return self.layout.read(offset, length)


class RunsSource(ExtentSource):
    """A file scattered over another source (a file in a file system image).

    `runs` are (inner offset or None for a hole of zeros, length) in file
    order; the file is `size` bytes long.
    """

    def __init__(self, inner: Source, runs: list[tuple[int | None, int]], size: int, name: str):
        extents = []
        position = 0
        for where, length in runs:
            if length > 0:
                extents.append(Extent(position, length,
                                      None if where is None else SourceRange(inner.read, where)))
                position += length
        super().__init__(ExtentFile(extents, size), name)
        self.inner = inner
