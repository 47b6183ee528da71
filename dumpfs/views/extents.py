"""A virtual file as a sorted list of extents: header bytes, zeros, or a reader.

The vmcore ELF, `dump.s390` and per-process cores are all extent lists with
different contents, so the mechanism that serves a byte range lives here once.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Union

from dumpfs.model import may_wait
from dumpfs.tree import File

Fill = Union[bytes, None, Callable[[int, int], bytes]]
"""bytes: literal content; None: zeros; callable: read(offset_in_extent, length)."""


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    fill: Fill

    @property
    def end(self) -> int:
        return self.offset + self.length


class ExtentFile:
    """Reads a byte range by visiting only the extents it overlaps; gaps read as zeros."""

    def __init__(self, extents: list[Extent], size: int | None = None):
        self.extents = sorted((e for e in extents if e.length > 0), key=lambda e: e.offset)
        self._offsets = [e.offset for e in self.extents]
        self.size = size if size is not None else (self.extents[-1].end if self.extents else 0)

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        parts = []
        position = offset
        i = max(bisect.bisect_right(self._offsets, offset) - 1, 0)
        while position < end:
            extent = self.extents[i] if i < len(self.extents) else None
            if extent is None or extent.offset >= end:
                parts.append(bytes(end - position))
                break
            if extent.end <= position:
                i += 1
                continue
            if extent.offset > position:
                parts.append(bytes(extent.offset - position))
                position = extent.offset
            stop = min(extent.end, end)
            inner = position - extent.offset
            fill = extent.fill
            if fill is None:
                parts.append(bytes(stop - position))
            elif isinstance(fill, (bytes, bytearray, memoryview)):
                parts.append(bytes(fill[inner:inner + stop - position]))
            else:
                parts.append(fill(inner, stop - position))
            position = stop
            i += 1
        return b"".join(parts)


def lazy_extent_file(name: str, build: Callable[[], ExtentFile]) -> File:
    """A tree file whose extent layout is built on first stat or read, once."""
    layout: list[ExtentFile] = []

    def get() -> ExtentFile:
        if not layout:
            may_wait("building the file's layout")
            layout.append(build())
        return layout[0]

    return File(name, lambda: get().size, lambda offset, length: get().read(offset, length),
                inline=True)
