"""A file made of extents: (offset, length, fill) pieces, read by visiting only those a range overlaps.

Physical memory, the `vmcore`, `dump.s390` and `core` views, a file scattered
over a partition and a reassembled flattened stream are all this one shape,
as dissect.util's `MappingStream`/`RunlistStream` and ratarmountcore's
`StenciledFile` are; the loop that serves a byte range lives here once.

A fill says where an extent's bytes come from:

    None                    zeros
    bytes                   these bytes
    SourceRange(read, at)   read(at + offset in the extent, length): a range of a source
    Unreadable(reason)      nothing: raises MemoryUnavailable(offset in the file, reason)
    another callable        read(offset in the extent, length): decoded pages, a ring buffer

A fill's reader returns exactly the bytes asked for; a short answer ends the
read there (the source ended).  The bytes between extents are the file's gap
fill: zeros, or `Unreadable` ("not in the dump").  Millions of extents are
given as columns (`ExtentFile.columns`): a few bytes each, over a few
numbered readers.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Callable, NamedTuple, Sequence, Union

from dumpfs.buffers import gather
from dumpfs.errors import MemoryUnavailable
from dumpfs.waiting import waiting_forbidden

Reader = Callable[[int, int], bytes]
"""read(offset, length) -> bytes."""


class SourceRange:
    """The bytes of `read` from `start` on: a range of a source, as a fill or as a reader itself."""

    __slots__ = ("read", "start")

    def __init__(self, read: Reader, start: int):
        self.read = read
        self.start = start

    def __call__(self, offset: int, length: int) -> bytes:
        return self.read(self.start + offset, length)


class Unreadable:
    """A fill with no bytes (excluded, missing, not in the dump): reading it raises, with the reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __call__(self, offset: int, length: int) -> bytes:
        raise MemoryUnavailable(offset, self.reason)


Fill = Union[None, bytes, bytearray, memoryview, SourceRange, Unreadable, Reader]


class Extent(NamedTuple):
    """`length` bytes of the file at `offset`, coming from `fill`."""

    offset: int
    length: int
    fill: Fill

    @property
    def end(self) -> int:
        return self.offset + self.length


def zeros(offset: int, length: int) -> bytes:
    """The reader of a zero fill."""
    return bytes(length)


def _literal(data: bytes) -> Reader:
    def read(offset: int, length: int) -> bytes:
        return data[offset:offset + length]
    return read


def _reader(offset: int, fill: Fill) -> tuple[int, Reader]:
    """(where, read): the extent's byte at `offset + i` is read(where + i, 1)."""
    if fill is None:
        return 0, zeros
    if isinstance(fill, (bytes, bytearray, memoryview)):
        return 0, _literal(bytes(fill))
    if isinstance(fill, SourceRange):
        return fill.start, fill.read
    if isinstance(fill, Unreadable):
        return offset, fill          # raises with the offset in the file
    return 0, fill


class Readers(list):
    """Distinct readers, each numbered once: an extent keeps its reader's number (a few bytes
    in a column), not a reader object of its own."""

    def __init__(self, readers: Sequence[Reader] = ()):
        super().__init__()
        self._numbers: dict = {}
        for read in readers:
            self.number(read)

    def number(self, read: Reader) -> int:
        """`read`'s number, given on its first appearance (equal bound methods are one reader)."""
        try:
            number = self._numbers.get(read)
        except TypeError:               # unhashable: numbered anew each time
            number = None
        if number is None:
            number = len(self)
            self.append(read)
            try:
                self._numbers[read] = number
            except TypeError:
                pass
        return number


def join(parts: Sequence) -> bytes | memoryview:
    """The parts one after another: bytes, or on the FUSE event loop (`without_waiting`) a
    view of a reused buffer, which spares a fresh allocation per request."""
    if waiting_forbidden():
        return parts[0] if len(parts) == 1 else gather(parts, sum(map(len, parts)))
    if len(parts) == 1 and not isinstance(parts[0], memoryview):
        return parts[0]
    return b"".join(parts)


class ExtentFile:
    """`size` bytes made of sorted, non-overlapping extents; what lies between them is `gap`.

    Immutable once built, so any number of threads may read it.
    """

    def __init__(self, extents: Sequence[tuple[int, int, Fill]], size: int | None = None,
                 gap: None | Unreadable = None, read_across: int = 0):
        """`read_across`: source ranges of one reader that continue each other in the file and
        lie at most this many bytes apart in the source are fetched with one read."""
        extents = sorted((e for e in extents if e[1] > 0), key=lambda e: e[0])
        wheres, which, readers = [], [], Readers()
        for offset, _, fill in extents:
            where, read = _reader(offset, fill)
            wheres.append(where)
            which.append(readers.number(read))
        end = extents[-1][0] + extents[-1][1] if extents else 0
        self._set([e[0] for e in extents], [e[1] for e in extents], wheres, which, readers,
                  end if size is None else size, gap, read_across)

    @classmethod
    def runlist(cls, read: Reader, starts: Sequence[int], lengths: Sequence[int],
                wheres: Sequence[int], size: int, read_across: int = 0) -> ExtentFile:
        """Extent i is read(wheres[i] + offset, length): one source in pieces, given as arrays
        (sorted, non-overlapping, none empty) so that millions of them stay compact."""
        return cls.columns(starts, lengths, wheres, bytes(len(starts)), [read], size,
                           read_across=read_across)

    @classmethod
    def columns(cls, starts: Sequence[int], lengths: Sequence[int], wheres: Sequence[int],
                which: Sequence[int], readers: Sequence[Reader], size: int,
                gap: None | Unreadable = None, read_across: int = 0) -> ExtentFile:
        """Extent i is readers[which[i]](wheres[i] + offset, length): extents as columns (sorted,
        non-overlapping, none empty) over a few readers, a few bytes per extent."""
        self = cls.__new__(cls)
        self._set(starts, lengths, wheres, which, readers, size, gap, read_across)
        return self

    def _set(self, starts, lengths, wheres, which, readers, size, gap, read_across) -> None:
        self.starts: Sequence[int] = starts
        self.lengths: Sequence[int] = lengths
        self._wheres: Sequence[int] = wheres
        self._which: Sequence[int] = which
        self._readers: Sequence[Reader] = readers
        self.size = size
        self._gap = zeros if gap is None else gap
        self._read_across = read_across

    def extent_index(self, offset: int) -> int | None:
        """The index of the extent holding `offset`, or None in a gap."""
        i = bisect_right(self.starts, offset) - 1
        if i >= 0 and offset < self.starts[i] + self.lengths[i]:
            return i
        return None

    def read(self, offset: int, length: int) -> bytes:
        """The bytes in [offset, offset+length) up to the file's size."""
        end = offset + length
        if end > self.size:
            end = self.size
        if offset >= end:
            return b""
        starts = self.starts
        i = bisect_right(starts, offset) - 1
        if i >= 0:
            start = starts[i]
            if end - start <= self.lengths[i]:            # within one extent: the common case
                return self._readers[self._which[i]](self._wheres[i] + offset - start, end - offset)
            if offset >= start + self.lengths[i]:
                i += 1
        else:
            i = 0
        return self._read_pieces(i, offset, end)

    def _read_pieces(self, i: int, position: int, end: int) -> bytes:
        """From extent `i` on, which holds `position` or starts after it."""
        starts, lengths, wheres, which, readers = \
            self.starts, self.lengths, self._wheres, self._which, self._readers
        count = len(starts)
        parts: list[bytes] = []
        while position < end:
            if i >= count or starts[i] >= end:
                parts.append(self._gap(position, end - position))
                break
            start = starts[i]
            if start > position:
                parts.append(self._gap(position, start - position))
                position = start
            last = i
            if self._read_across:
                last = self._joinable(i, end)
            stop = min(end, starts[last] + lengths[last])
            at = wheres[i] + position - start
            if last == i:
                data = readers[which[i]](at, stop - position)
                parts.append(data)
                if len(data) < stop - position:
                    break
            else:
                blob = memoryview(readers[which[i]](at, wheres[last] + stop - starts[last] - at))
                for j in range(i, last + 1):
                    low = max(position, starts[j]) - starts[j] + wheres[j] - at
                    high = min(stop, starts[j] + lengths[j]) - starts[j] + wheres[j] - at
                    parts.append(blob[low:high])
                if len(blob) < high:
                    break
            position = stop
            i = last + 1
        return join(parts)

    def _joinable(self, i: int, end: int) -> int:
        """The last extent from `i` on that one read of the source can fetch together with `i`."""
        starts, lengths, wheres, which = self.starts, self.lengths, self._wheres, self._which
        last = i
        while last + 1 < len(starts) and starts[last + 1] < end \
                and starts[last + 1] == starts[last] + lengths[last] \
                and which[last + 1] == which[i] \
                and 0 <= wheres[last + 1] - (wheres[last] + lengths[last]) <= self._read_across:
            last += 1
        return last


def cut(extent: Extent, low: int, high: int) -> Extent:
    """The part [low, high) of `extent`, with its fill moved to match."""
    skip = low - extent.offset
    fill = extent.fill
    if skip and fill is not None and not isinstance(fill, Unreadable):
        if isinstance(fill, (bytes, bytearray, memoryview)):
            fill = bytes(fill[skip:skip + high - low])
        elif isinstance(fill, SourceRange):
            fill = SourceRange(fill.read, fill.start + skip)
        else:
            fill = SourceRange(fill, skip)
    return Extent(low, high - low, fill)


def overlay(extents: Sequence[Extent], patches: Sequence[Extent]) -> list[Extent]:
    """`extents` (not overlapping) with `patches` laid over them, the later patch over the earlier."""
    top: list[Extent] = []
    for patch in patches:
        top = _outside(top, [patch]) + [patch]
    return top + _outside(extents, sorted(top, key=lambda e: e.offset))


def _outside(extents: Sequence[Extent], holes: list[Extent]) -> list[Extent]:
    """The parts of `extents` that no extent of `holes` (sorted, not overlapping) covers."""
    hole_starts = [h.offset for h in holes]
    kept = []
    for extent in extents:
        position = extent.offset
        i = max(bisect_right(hole_starts, position) - 1, 0)
        while i < len(holes) and holes[i].offset < extent.end:
            hole = holes[i]
            if hole.end > position:
                if hole.offset > position:
                    kept.append(cut(extent, position, hole.offset))
                position = hole.end
            i += 1
        if position < extent.end:
            kept.append(cut(extent, position, extent.end))
    return kept
