"""The one model every backend produces and every view consumes.

A `Dump` is architecture, physical memory (a table of sorted runs, each read
by one of a few readers), CPUs with decoded registers and raw notes, VMCOREINFO and
metadata.  Nothing here knows which file format the dump came from.
"""

from __future__ import annotations

import enum
import threading
from array import array
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from itertools import compress, islice
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from dumpfs.errors import DumpError, MemoryUnavailable, Problem, Severity
from dumpfs.extents import ExtentFile, Readers, SourceRange, Unreadable, join, zeros
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
ADDRESS_SPACE = 1 << 64


@dataclass(frozen=True, slots=True)
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


ZERO_RUN, EXCLUDED_RUN, MISSING_RUN = 0, 1, 2
PRESENT_READERS = 3
"""A run's reader number: ZERO_RUN, EXCLUDED_RUN, MISSING_RUN, or from PRESENT_READERS on, the
reader of a PRESENT run."""
_STATE_OF = (PageState.ZERO, PageState.EXCLUDED, PageState.MISSING)
_HOLE_NUMBERS = (EXCLUDED_RUN, MISSING_RUN)


class Runs:
    """Physical memory as runs in address order, kept as columns: a few bytes per run.

    A damaged kdump's bitmaps describe millions of runs of pages; a Python
    object per run, each with a reader of its own, cost 0.7 KiB and 30 µs a
    run.  Run i is `starts[i]`, `sizes[i]` bytes, read by reader number
    `which[i]` from offset `wheres[i]` on (a hole's reader raises with the
    address, so its `where` is its start).  A present run's reader is derived
    from its number on demand.  As a sequence, the runs are `MemoryChunk`s
    made when asked for.
    """

    def __init__(self):
        self.starts = array("Q")
        self.sizes = array("Q")
        self.which = array("I")
        self.wheres = array("Q")
        self.readers = Readers([zeros, _UNREADABLE[PageState.EXCLUDED],
                                _UNREADABLE[PageState.MISSING]])
        self._totals: dict[PageState, int] | None = None
        self.end = 0                    # one past the last run

    @classmethod
    def from_columns(cls, starts: array, sizes: array, which: array, wheres: array,
                     readers: Iterable[ChunkReader], totals: dict[PageState, int] | None = None) -> Runs:
        """Runs given as columns, for a backend that finds millions of them: sorted, not
        overlapping, none empty (the caller's promise, not checked run by run); `which`
        numbers `readers` from PRESENT_READERS on; a hole's `where` is its start.
        `totals`: the bytes in each state, if the backend knows them (else counted when asked)."""
        runs = cls()
        runs._totals = totals
        for read in readers:
            runs.readers.append(read)
        runs.starts, runs.sizes, runs.which, runs.wheres = starts, sizes, which, wheres
        runs.end = starts[-1] + sizes[-1] if starts else 0
        if not len(starts) == len(sizes) == len(which) == len(wheres) \
                or (which and max(which) >= len(runs.readers)):
            raise DumpError("memory runs: columns of different lengths or unknown readers")
        return runs

    @property
    def totals(self) -> dict[PageState, int]:
        """Bytes in each state."""
        if self._totals is None:
            sizes, which = self.sizes, self.which
            totals = {state: sum(compress(sizes, map(number.__eq__, which)))
                      for number, state in enumerate(_STATE_OF)}
            totals[PageState.PRESENT] = sum(sizes) - sum(totals.values())
            self._totals = totals
        return self._totals

    def add(self, start: int, size: int, state: PageState, read: ChunkReader | None = None,
            where: int = 0) -> None:
        """Append a run; runs come in address order and never overlap.  A PRESENT run is
        read(where + offset in the run, length) (a SourceRange is taken apart)."""
        if size <= 0:
            return
        if start < self.end:
            last = len(self.starts) - 1
            raise DumpError(f"memory ranges overlap: {self.starts[last]:#x}-{self.end:#x} and "
                            f"{start:#x}-{start + size:#x}")
        if state is PageState.PRESENT:
            if read is None:
                raise DumpError(f"present memory at {start:#x} has no reader")
            if isinstance(read, SourceRange):
                read, where = read.read, read.start + where
            number = self.readers.number(read)
        else:
            number = _STATE_OF.index(state)
            where = start if number in _HOLE_NUMBERS else 0
        self.starts.append(start)
        self.sizes.append(size)
        self.which.append(number)
        self.wheres.append(where)
        self._totals = None
        self.end = start + size

    @classmethod
    def of(cls, chunks: Iterable[MemoryChunk]) -> Runs:
        runs = cls()
        for chunk in sorted(chunks, key=lambda c: c.start):
            runs.add(chunk.start, chunk.size, chunk.state, chunk.read)
        return runs

    def state(self, i: int) -> PageState:
        number = self.which[i]
        return _STATE_OF[number] if number < PRESENT_READERS else PageState.PRESENT

    def index_at(self, address: int) -> int | None:
        """The run holding `address`, or None."""
        i = bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.starts[i] + self.sizes[i]:
            return i
        return None

    def _chunk(self, i: int) -> MemoryChunk:
        number = self.which[i]
        if number < PRESENT_READERS:
            return MemoryChunk(self.starts[i], self.sizes[i], _STATE_OF[number])
        read, where = self.readers[number], self.wheres[i]
        return MemoryChunk(self.starts[i], self.sizes[i], PageState.PRESENT,
                           SourceRange(read, where) if where else read)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._chunk(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("run index out of range")
        return self._chunk(index)

    def __iter__(self) -> Iterator[MemoryChunk]:
        return (self._chunk(i) for i in range(len(self)))

    def ranges(self, *states: PageState) -> Iterator[tuple[int, int]]:
        """(start, end) of each stretch of adjacent runs (in one of `states`, if given)."""
        wanted = None
        if states:
            numbers = {n for n, state in enumerate(_STATE_OF) if state in states}
            wanted = numbers | ({n for n in range(PRESENT_READERS, len(self.readers))}
                                if PageState.PRESENT in states else set())
        low = high = None
        for start, size, number in zip(self.starts, self.sizes, self.which):
            if wanted is not None and number not in wanted:
                continue
            if start == high:
                high += size
                continue
            if low is not None:
                yield low, high
            low, high = start, start + size
        if low is not None:
            yield low, high

    def extent_file(self) -> ExtentFile:
        """The runs as one file over the address space; the gaps are "not in the dump".
        Present runs that continue each other in one reader are read as one: a QEMU
        paging=true dump has a PT_LOAD per page, which would otherwise cost a read per page
        of every request."""
        starts, sizes, which, wheres = self.starts, self.sizes, self.which, self.wheres
        if any(before == after >= PRESENT_READERS and starts[i] == starts[i - 1] + sizes[i - 1]
               and wheres[i] == wheres[i - 1] + sizes[i - 1]
               for i, (before, after) in enumerate(zip(which, islice(which, 1, None)), 1)):
            starts, sizes, which, wheres = self._joined()
        return ExtentFile.columns(starts, sizes, wheres, which, self.readers, ADDRESS_SPACE,
                                  gap=NOT_IN_DUMP)

    def _joined(self):
        """The columns with each present run that continues the one before in its reader
        merged into it."""
        starts, sizes, which, wheres = (array(column.typecode) for column in
                                        (self.starts, self.sizes, self.which, self.wheres))
        for start, size, number, where in zip(self.starts, self.sizes, self.which, self.wheres):
            if sizes and number == which[-1] >= PRESENT_READERS \
                    and start == starts[-1] + sizes[-1] and where == wheres[-1] + sizes[-1]:
                sizes[-1] += size
                continue
            starts.append(start)
            sizes.append(size)
            which.append(number)
            wheres.append(where)
        return starts, sizes, which, wheres


class Memory:
    """Physical memory: sorted, non-overlapping runs (`Runs`); gaps between them are holes.

    The runs are the extents of an `ExtentFile` over the whole address space,
    whose holes are "not in the dump".  They may be computed on first use
    (`Memory(factory)`), so that opening a dump never walks its whole page
    table or bitmap.  A backend gives a `Runs` table, or chunks.
    """

    def __init__(self, runs: Runs | Iterable[MemoryChunk] | Callable[[], Runs | Iterable[MemoryChunk]]):
        self._factory = runs if callable(runs) else None
        self._runs = Runs()
        self._file: ExtentFile | None = None      # set last: other threads read without the lock
        self._lock = threading.Lock()
        if self._factory is None:
            self._index(runs)

    def _index(self, runs: Runs | Iterable[MemoryChunk]) -> ExtentFile:
        self._runs = runs if isinstance(runs, Runs) else Runs.of(runs)
        self._file = self._runs.extent_file()
        return self._file

    def _layout(self) -> ExtentFile:
        file = self._file
        if file is None:
            may_wait("building the memory map")
            with self._lock:
                file = self._file or self._index(self._factory())
        return file

    @property
    def runs(self) -> Runs:
        self._layout()
        return self._runs

    @property
    def chunks(self) -> Runs:
        """The runs as a sequence of `MemoryChunk`s (made on demand)."""
        return self.runs

    def __iter__(self) -> Iterator[MemoryChunk]:
        return iter(self.runs)

    @property
    def end(self) -> int:
        """One past the highest address any chunk covers."""
        return self.runs.end

    def size_in(self, *states: PageState) -> int:
        totals = self.runs.totals
        return sum(totals[state] for state in states)

    def ranges(self, *states: PageState) -> list[tuple[int, int]]:
        """(start, end) of each run of adjacent chunks (in one of `states`, if given)."""
        return list(self.runs.ranges(*states))

    def chunk_at(self, address: int) -> MemoryChunk | None:
        runs = self.runs
        i = runs.index_at(address)
        return None if i is None else runs[i]

    def read_physical(self, address: int, size: int) -> bytes:
        """Read [address, address+size); raises MemoryUnavailable at the first unreadable byte."""
        return (self._file or self._layout()).read(address, size)

    def hole_at(self, address: int) -> PageState | None:
        """The state of `address` when the dump cannot deliver it (EXCLUDED, MISSING; an address
        in no chunk is MISSING), else None."""
        runs = self.runs
        i = runs.index_at(address)
        if i is None:
            return PageState.MISSING
        state = runs.state(i)
        return state if state in HOLES else None

    def read_zero_filled(self, address: int, size: int, undecodable_as_zeros: bool = False) -> bytes:
        """Like read_physical, but excluded and missing bytes (and those in no chunk) read as
        zeros, as crash's --zero_excluded does; data that is there but cannot be decoded
        still raises, or with `undecodable_as_zeros` reads as zeros too (each run's piece
        alone, as zgetdump writes such pages)."""
        runs = self.runs
        starts, sizes, which = runs.starts, runs.sizes, runs.which
        count = len(starts)
        parts = []
        end = address + size
        i = bisect_right(starts, address) - 1
        if i < 0 or address >= starts[i] + sizes[i]:
            i += 1                          # the first run at or after `address`
        while address < end:
            if i >= count or starts[i] >= end:
                parts.append(bytes(end - address))
                break
            if starts[i] > address:         # in no run
                parts.append(bytes(starts[i] - address))
                address = starts[i]
            if which[i] in _HOLE_NUMBERS:
                stop = min(end, starts[i] + sizes[i])
                parts.append(bytes(stop - address))
            elif undecodable_as_zeros:
                stop = min(end, starts[i] + sizes[i])
                try:
                    parts.append(self.read_physical(address, stop - address))
                except MemoryUnavailable:
                    parts.append(bytes(stop - address))
            else:                           # adjacent data and zero runs: one read
                last = i
                while last + 1 < count and starts[last + 1] < end and which[last + 1] not in _HOLE_NUMBERS \
                        and starts[last + 1] == starts[last] + sizes[last]:
                    last += 1
                i = last
                stop = min(end, starts[last] + sizes[last])
                parts.append(self.read_physical(address, stop - address))
            address = stop
            i += 1
        return join(parts)


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
