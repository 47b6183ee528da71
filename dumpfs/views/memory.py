"""`memory/`: one file per contiguous physical range, and `memory/map`.

A range file spans adjacent chunks whatever their state; reading an excluded
part fails with EIO, and only that part.
"""

from __future__ import annotations

import errno

from dumpfs.errors import MemoryUnavailable
from dumpfs.model import Dump, MemoryChunk
from dumpfs.tree import Dir, File


def contiguous_ranges(dump: Dump) -> list[tuple[int, int]]:
    """One file per run of adjacent chunks, whatever their state."""
    return dump.memory.ranges()


def range_name(start: int, end: int) -> str:
    """Hex bounds, end exclusive, like /proc/PID/maps."""
    return f"{start:016x}-{end:016x}"


def physical_reader(dump: Dump, base: int):
    def read(offset: int, length: int) -> bytes:
        try:
            return dump.read_physical(base + offset, length)
        except MemoryUnavailable as e:
            raise OSError(errno.EIO, str(e)) from None
    return read


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:g} {unit}" if unit == "B" else f"{size:.1f} {unit}".replace(".0 ", " ")
        size /= 1024
    return str(size)


def map_line(chunk: MemoryChunk) -> str:
    return f"{chunk.start:016x}-{chunk.end:016x} {chunk.state.value:<8} {_human(chunk.size)}\n"


def map_text(dump: Dump) -> str:
    return "".join(map_line(c) for c in dump.memory)


def memory_dir(dump: Dump) -> Dir:
    def children():
        files = [File(range_name(start, end), end - start, physical_reader(dump, start), inline=True)
                 for start, end in contiguous_ranges(dump)]
        files.append(File.from_bytes("map", lambda: map_text(dump).encode()))
        return files
    return Dir("memory", children)
