"""The one model every backend produces and every view consumes.

A `Dump` is architecture, physical memory (sorted `MemoryChunk`s that read
themselves), CPUs with decoded registers and raw notes, VMCOREINFO and
metadata.  Nothing here knows which file format the dump came from.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from dumpfs.errors import DumpError
from dumpfs.errors import Problem, Severity
from dumpfs.extents import ExtentFile, Unreadable, coalesce
from dumpfs.waiting import may_wait

if TYPE_CHECKING:
    from dumpfs.arch import Arch      # the arch modules build on Note: no import cycle at run time


class PageState(enum.Enum):
    PRESENT = "present"     # data is in the dump
    EXCLUDED = "excluded"   # existed in the machine, filtered out by the dump writer
    ZERO = "zero"           # known to be all zeros, no data stored
    MISSING = "missing"     # the dump should hold it but does not: truncated or interrupted


ChunkReader = Callable[[int, int], bytes]
"""read(offset_in_chunk, length) -> exactly `length` bytes, or raises MemoryUnavailable."""

_UNREADABLE = {
    PageState.EXCLUDED: Unreadable("excluded by the dump writer"),
    PageState.MISSING: Unreadable("missing: the dump is truncated or incomplete there"),
}
NOT_IN_DUMP = Unreadable("not in the dump")
HOLES = (PageState.EXCLUDED, PageState.MISSING)
"""States of the pages a dump cannot deliver: the holes of the files that show memory."""
GAP_STEP = 4096     # read_zero_filled's step through addresses in no chunk (the smallest page)
ADDRESS_SPACE = 1 << 64


@dataclass(frozen=True)
class MemoryChunk:
    """A contiguous physical range in one state; PRESENT chunks carry their reader."""

    start: int
    size: int
    state: PageState
    read: ChunkReader | None = None

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def fill(self):
        """Where the chunk's bytes come from, as an extent's fill."""
        if self.state is PageState.PRESENT:
            return self.read
        if self.state is PageState.ZERO:
            return None
        return _UNREADABLE[self.state]


class PageCache:
    """A bounded LRU of decoded pages, shared by every backend that decodes pages."""

    def __init__(self, capacity: int = 2048):
        self.capacity = capacity
        self._pages: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key) -> bytes | None:
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
            return page

    def put(self, key, page: bytes) -> None:
        with self._lock:
            self._pages[key] = page
            self._pages.move_to_end(key)
            while len(self._pages) > self.capacity:
                self._pages.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._pages.clear()


class Memory:
    """Physical memory: sorted, non-overlapping chunks; gaps between them are holes.

    The chunks are the extents of an `ExtentFile` over the whole address space,
    whose holes are "not in the dump".  The chunk list may be computed on first
    use (`Memory(factory)`), so that opening a dump never walks its whole page
    table or bitmap.
    """

    def __init__(self, chunks: Iterable[MemoryChunk] | Callable[[], Iterable[MemoryChunk]]):
        self._factory = chunks if callable(chunks) else None
        self._chunks: list[MemoryChunk] = []
        self._starts: list[int] = []
        self._file: ExtentFile | None = None      # set last: other threads read without the lock
        self._lock = threading.Lock()
        if self._factory is None:
            self._index(chunks)

    def _index(self, chunks: Iterable[MemoryChunk]) -> ExtentFile:
        chunks = sorted(chunks, key=lambda c: c.start)
        for before, after in zip(chunks, chunks[1:]):
            if after.start < before.end:
                raise DumpError(
                    f"memory ranges overlap: {before.start:#x}-{before.end:#x} and "
                    f"{after.start:#x}-{after.end:#x}")
        self._chunks = [c for c in chunks if c.size > 0]
        self._starts = [c.start for c in self._chunks]
        self._file = ExtentFile(coalesce([(c.start, c.size, c.fill) for c in self._chunks]),
                                size=ADDRESS_SPACE, gap=NOT_IN_DUMP)
        return self._file

    def _layout(self) -> ExtentFile:
        file = self._file
        if file is None:
            may_wait("building the memory map")
            with self._lock:
                file = self._file or self._index(self._factory())
        return file

    @property
    def chunks(self) -> list[MemoryChunk]:
        self._layout()
        return self._chunks

    def __iter__(self) -> Iterator[MemoryChunk]:
        return iter(self.chunks)

    @property
    def end(self) -> int:
        """One past the highest address any chunk covers."""
        return self.chunks[-1].end if self.chunks else 0

    def size_in(self, *states: PageState) -> int:
        return sum(c.size for c in self.chunks if c.state in states)

    def ranges(self, *states: PageState) -> list[tuple[int, int]]:
        """(start, end) of each run of adjacent chunks (in one of `states`, if given)."""
        ranges: list[list[int]] = []
        for chunk in self.chunks:
            if states and chunk.state not in states:
                continue
            if ranges and ranges[-1][1] == chunk.start:
                ranges[-1][1] = chunk.end
            else:
                ranges.append([chunk.start, chunk.end])
        return [(start, end) for start, end in ranges]

    def chunk_at(self, address: int) -> MemoryChunk | None:
        self._layout()
        i = bisect_right(self._starts, address) - 1
        if i >= 0 and address < self._chunks[i].end:
            return self._chunks[i]
        return None

    def read_physical(self, address: int, size: int) -> bytes:
        """Read [address, address+size); raises MemoryUnavailable at the first unreadable byte."""
        return (self._file or self._layout()).read(address, size)

    def hole_at(self, address: int) -> PageState | None:
        """The state of `address` when the dump cannot deliver it (EXCLUDED, MISSING; an address
        in no chunk is MISSING), else None."""
        chunk = self.chunk_at(address)
        if chunk is None:
            return PageState.MISSING
        return chunk.state if chunk.state in HOLES else None

    def read_zero_filled(self, address: int, size: int) -> bytes:
        """Like read_physical, but excluded and missing bytes (and those in no chunk) read as
        zeros, as crash's --zero_excluded does; data that is there but cannot be decoded
        still raises."""
        parts = []
        end = address + size
        while address < end:
            chunk = self.chunk_at(address)
            if chunk is None:               # in no chunk: zeros up to the next 4 KiB boundary
                stop = min(end, address - address % GAP_STEP + GAP_STEP)
            else:
                stop = min(end, chunk.end)
            if chunk is None or chunk.state in HOLES:
                parts.append(bytes(stop - address))
            else:
                parts.append(self.read_physical(address, stop - address))
            address = stop
        return b"".join(parts)


@dataclass
class Note:
    """One ELF note as stored: owner name, type and payload in the dump's byte order."""

    name: str
    type: int
    desc: bytes


@dataclass
class Cpu:
    number: int
    registers: dict[str, int]   # ordered as the architecture lists them
    notes: list[Note] = field(default_factory=list)


@dataclass
class VmcoreInfo:
    """The kernel's VMCOREINFO text and its KEY=VALUE lines."""

    raw: bytes

    @property
    def text(self) -> str:
        return self.raw.decode("ascii", "replace").rstrip("\0")

    @property
    def entries(self) -> dict[str, str]:
        result = {}
        for line in self.text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                result[key] = value
        return result

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def number(self, key: str, base: int = 10) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        try:
            return int(value, base)
        except ValueError:
            return None

    def symbol(self, name: str) -> int | None:
        return self.number(f"SYMBOL({name})", 16)


@dataclass
class DumpMeta:
    format: str                         # e.g. "elf", "kdump", "kdump-flattened"
    writer: str | None = None           # e.g. "qemu", "makedumpfile", "kernel"
    dump_time: datetime | None = None
    kernel_release: str | None = None
    dump_level: int | None = None
    compression: str | None = None
    details: dict[str, object] = field(default_factory=dict)   # format-specific facts for `info`
    problems: list[Problem] = field(default_factory=list)      # what is damaged, missing or odd

    @property
    def complete(self) -> bool:
        """Every byte and CPU the dump should hold is there: no problem is DAMAGE."""
        return not any(problem.severity >= Severity.DAMAGE for problem in self.problems)

    def add_problem(self, text: str, severity: Severity = Severity.DAMAGE) -> None:
        """Record a problem once (a lazy scan may find the same one again)."""
        problem = Problem(text, severity)
        if problem not in self.problems:
            self.problems.append(problem)


@dataclass
class Dump:
    arch: Arch
    page_size: int
    memory: Memory
    cpus: dict[int, Cpu]
    meta: DumpMeta
    vmcoreinfo: VmcoreInfo | None = None
    notes: list[Note] = field(default_factory=list)   # notes that belong to no CPU (PRPSINFO, ...)
    sources: list[str] = field(default_factory=list)
    resources: list = field(default_factory=list, repr=False)   # closed with the dump

    def read_physical(self, address: int, size: int) -> bytes:
        return self.memory.read_physical(address, size)

    def close(self) -> None:
        for resource in self.resources:
            resource.close()
        self.resources.clear()
