"""`memory/`: one file per contiguous physical range, and `memory/map`.

A range file spans adjacent chunks whatever their state.  Its holes (the
excluded and missing chunks) fail with EIO, each read whole (a read touching
a hole fails, so `dd conv=noerror,sync` keeps its offsets), or, with
`zero_holes` (-o zero_excluded), read as zeros so that cp, rsync and tar copy
the file whole.  Either way `memory/map` lists every chunk with its state, so
the zeros are never taken for data.

A damaged dump may have millions of runs: past MAX_RANGE_FILES ranges, each
file spans several consecutive ranges (what lies between them is not in the
dump: EIO, or zeros with `zero_holes`), and `memory/map` is formatted a
block of runs at a time when read, never held whole.
"""

from __future__ import annotations

import errno
import threading
from array import array
from bisect import bisect_right
from functools import lru_cache
from itertools import accumulate, islice, repeat
from operator import add

from dumpfs.errors import MemoryUnavailable
from dumpfs.model import ADDRESS_SPACE, EXCLUDED_RUN, MISSING_RUN, PRESENT_READERS, Dump, Memory
from dumpfs.tree import Dir, File

MAX_RANGE_FILES = 1 << 14       # files in memory/ at most
MAP_BLOCK_RUNS = 1 << 14        # runs of memory/map formatted at once
RUN_STATE_NAMES = ("zero", "excluded", "missing", "present")    # by reader number, present from 3 on


def contiguous_ranges(dump: Dump, limit: int | None = None) -> tuple[list[tuple[int, int]], int]:
    """The first `limit` (all: None) runs of adjacent chunks whatever their state, and how many
    there are."""
    ranges = dump.memory.runs.ranges()
    first = list(islice(ranges, limit))
    return first, len(first) + sum(1 for _ in ranges)


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


@lru_cache(maxsize=1 << 12)        # sizes repeat: a damaged map of millions of runs has a few
def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:g} {unit}" if unit == "B" else f"{size:.1f} {unit}".replace(".0 ", " ")
        size /= 1024
    return str(size)


RANGE_LINE = "{:016x}-{:016x} {:<8} {}\n"
"""A line of a map: `start-end state size` (hex addresses, end exclusive)."""


def range_line(start: int, end: int, state: str) -> str:
    return RANGE_LINE.format(start, end, state, _human(end - start))


RANGE_LINE_BYTES = len(range_line(0, 0, "")) - len(_human(0))
"""A map line's length but its size text, for states of up to 8 letters and ends below 2^64."""


@lru_cache(maxsize=1 << 12)
def _human_length(size: int) -> int:
    return len(_human(size))


def range_files(memory: Memory) -> list[tuple[int, int, bool]]:
    """(start, end, holes) of each file of memory/: a run of adjacent chunks, and whether
    an excluded or missing chunk lies in it; past MAX_RANGE_FILES runs, consecutive ones
    are grouped (with the gaps between them: holes) so that there are MAX_RANGE_FILES."""
    runs = memory.runs
    starts, ends, holes = array("Q"), array("Q"), bytearray()
    for start, size, number in zip(runs.starts, runs.sizes, runs.which):
        hole = number == EXCLUDED_RUN or number == MISSING_RUN
        if ends and ends[-1] == start:
            ends[-1] = start + size
            holes[-1] |= hole
        else:
            starts.append(start)
            ends.append(start + size)
            holes.append(hole)
    group = -(-len(starts) // MAX_RANGE_FILES)
    if group <= 1:
        return [(start, end, bool(hole)) for start, end, hole in zip(starts, ends, holes)]
    return [(starts[i], ends[min(i + group, len(starts)) - 1], True)
            for i in range(0, len(starts), group)]


class MapText:
    """The text of memory/map, one line per run, formatted a block of MAP_BLOCK_RUNS runs at a
    time when read."""

    def __init__(self, memory: Memory):
        self._memory = memory
        self._offsets: list[int] | None = None      # where each block's text starts, and the end
        self._last: tuple[int, bytes] = (-1, b"")   # the block formatted last
        self._lock = threading.Lock()

    def _block(self, block: int) -> bytes:
        last = self._last
        if last[0] == block:
            return last[1]
        runs = self._memory.runs
        low, high = block * MAP_BLOCK_RUNS, (block + 1) * MAP_BLOCK_RUNS
        starts, sizes = runs.starts[low:high], runs.sizes[low:high]
        states = map(RUN_STATE_NAMES.__getitem__, map(min, runs.which[low:high], repeat(PRESENT_READERS)))
        text = "".join(map(RANGE_LINE.format, starts, map(add, starts, sizes), states,
                           map(_human, sizes))).encode()
        self._last = (block, text)
        return text

    def size(self) -> int:
        """Counted, not formatted: every line but its size text is RANGE_LINE_BYTES long."""
        with self._lock:
            if self._offsets is None:
                runs = self._memory.runs
                sizes, count = runs.sizes, len(runs)
                lengths = (RANGE_LINE_BYTES * len(sizes[low:low + MAP_BLOCK_RUNS])
                           + sum(map(_human_length, sizes[low:low + MAP_BLOCK_RUNS]))
                           for low in range(0, count, MAP_BLOCK_RUNS))
                self._offsets = list(accumulate(lengths, initial=0))
                self._offsets[-1] += runs.end >= ADDRESS_SPACE     # an end of 2^64 has 17 digits
        return self._offsets[-1]

    def read(self, offset: int, length: int) -> bytes:
        self.size()
        offsets = self._offsets
        end = min(offset + length, offsets[-1])
        block = bisect_right(offsets, offset) - 1
        parts = []
        while offset < end:
            text = self._block(block)
            parts.append(text[offset - offsets[block]:end - offsets[block]])
            offset = offsets[block + 1]
            block += 1
        return b"".join(parts)


def memory_dir(dump: Dump, zero_holes: bool = False) -> Dir:
    """The range files; with holes and without `zero_holes`, each read of one is whole or EIO."""
    def children():
        files = [File(range_name(start, end), end - start, physical_reader(dump, start, zero_holes),
                      inline=True, exact_reads=holes and not zero_holes)
                 for start, end, holes in range_files(dump.memory)]
        text = MapText(dump.memory)
        files.append(File("map", text.size, text.read))
        return files
    return Dir("memory", children)
