"""Where bytes come from: files and block devices, read with pread.

Backends receive a `Source` and never open paths themselves, so a tape, a
remote object or an in-memory buffer can stand in for a file.
"""

from __future__ import annotations

import os
import stat

from dumpfs.model import DumpError


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
            raise DumpError(f"{self.name}: truncated: {what} at offset {offset:#x} "
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
            raise DumpError(f"{path}: no such file or device") from None
        except OSError as e:
            raise DumpError(f"{path}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise DumpError(f"{path}: is a directory, not a dump")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise DumpError(f"{path}: not a regular file or block device")
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise DumpError(f"{path}: cannot open: {e.strerror}") from None
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset >= self.size:
            return b""
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
