"""A Source as a read-only Python file object, for libraries that read files (ext4, decompressors)."""

from __future__ import annotations

import io

from dumpfs.source import Source


class SourceFile(io.RawIOBase):
    """A read-only, seekable file object over a Source; `tell` is how far a reader got."""

    def __init__(self, source: Source):
        self.source = source
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.source.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.source.size - self.position
        data = self.source.read(self.position, size)
        self.position += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
