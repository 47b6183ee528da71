"""`memory/`: one file per contiguous physical range, and `memory/map`.

A range file spans adjacent chunks whatever their state.  Its holes (the
excluded and missing chunks) fail with EIO, each read whole (a read touching
a hole fails, so `dd conv=noerror,sync` keeps its offsets), or, with
`zero_holes` (-o zero_excluded), read as zeros so that cp, rsync and tar copy
the file whole.  Either way `memory/map` lists every chunk with its state, so
the zeros are never taken for data.
"""

from __future__ import annotations

import errno
from bisect import bisect_left

from dumpfs.errors import MemoryUnavailable
from dumpfs.model import HOLES, Dump, MemoryChunk
from dumpfs.tree import Dir, File


def contiguous_ranges(dump: Dump) -> list[tuple[int, int]]:
    """One file per run of adjacent chunks, whatever their state."""
    return dump.memory.ranges()


def range_name(start: int, end: int) -> str:
    """Hex bounds, end exclusive, like /proc/PID/maps."""
    return f"{start:016x}-{end:016x}"


def physical_reader(dump: Dump, base: int, zero_holes: bool = False):
    read_memory = dump.memory.read_zero_filled if zero_holes else dump.read_physical

    def read(offset: int, length: int) -> bytes:
        try:
            return read_memory(base + offset, length)
        except MemoryUnavailable as e:
            raise OSError(errno.EIO, str(e)) from None
    return read


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:g} {unit}" if unit == "B" else f"{size:.1f} {unit}".replace(".0 ", " ")
        size /= 1024
    return str(size)


def range_line(start: int, end: int, state: str) -> str:
    """One line of a map: `start-end state size` (hex addresses, end exclusive)."""
    return f"{start:016x}-{end:016x} {state:<8} {_human(end - start)}\n"


def map_line(chunk: MemoryChunk) -> str:
    return range_line(chunk.start, chunk.end, chunk.state.value)


def map_text(dump: Dump) -> str:
    return "".join(map_line(c) for c in dump.memory)


def hole_starts(dump: Dump) -> list[int]:
    """Where each excluded or missing run starts, in order."""
    return sorted(start for state in HOLES for start, _ in dump.memory.ranges(state))


def memory_dir(dump: Dump, zero_holes: bool = False) -> Dir:
    """The range files; with holes and without `zero_holes`, each read of one is whole or EIO."""
    def children():
        starts = hole_starts(dump)
        files = []
        for start, end in contiguous_ranges(dump):
            first_hole = bisect_left(starts, start)
            has_holes = first_hole < len(starts) and starts[first_hole] < end
            files.append(File(range_name(start, end), end - start,
                              physical_reader(dump, start, zero_holes), inline=True,
                              exact_reads=has_holes and not zero_holes))
        files.append(File.from_bytes("map", lambda: map_text(dump).encode()))
        return files
    return Dir("memory", children)
