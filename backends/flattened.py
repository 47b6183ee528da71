"""makedumpfile's flattened format (`makedumpfile -F`, QEMU 7.2 kdump-*): a stream of
(offset, size, data) records that reassemble into a kdump or ELF file.

The first open walks the record headers (never the data) and builds an index
of extents: inner offset, length, stream offset, later records winning where
records overlap.  The index is persisted under the user's cache directory,
keyed by the dump's identity, so the next open skips the walk.  The inner
file is then served as a `Source` and opened by the kdump or ELF backend.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import os
import struct
import sys
import tempfile
from array import array
from dataclasses import dataclass, field

from construct import Bytes, Int64sb, Struct

from dumpfs.cache import cache_dir
from dumpfs.errors import DamagedDump, Problem
from dumpfs.extents import ExtentFile
from dumpfs.model import Dump
from dumpfs.source import ExtentSource, Source

SIGNATURE = b"makedumpfile\0\0\0\0"
TYPE_FLAT_HEADER = 1
HEADER_BLOCK = 4096             # the makedumpfile_header is padded to this
END_OF_STREAM = (-1, -1)
MAX_GAP_IN_ONE_READ = 4096      # record headers between contiguous extents: read across them
# A writer fills its inner file nearly densely; the largest never-written stretch is the page
# descriptors of an interrupted QEMU dump (24 bytes per page, against the bitmaps' 0.25 written
# first).  Inner bytes beyond HOLE_RATIO times the bytes written (plus HOLE_SLACK) come from a
# damaged record offset, and would make the inner file's tables look terabytes long.
HOLE_RATIO = 1024
HOLE_SLACK = 64 << 20

# makedumpfile_header (first 32 bytes of the 4096-byte header block); big-endian always
MakedumpfileHeader = Struct(
    "signature" / Bytes(16),        # "makedumpfile" + 4 NUL
    "type" / Int64sb,               # TYPE_FLAT_HEADER (1)
    "version" / Int64sb,            # VERSION_FLAT_HEADER (1)
)
# makedumpfile_data_header: 16 bytes before each record's data, read in bulk with struct
DATA_HEADER = struct.Struct(">qq")  # offset in the inner file, buf_size

INDEX_MAGIC = b"DUMPFSFLATIDX\0\0\0"
INDEX_VERSION = 2              # 2: records far past the written data are left out
# magic, version, byte order of the arrays, stream size, stream mtime_ns, records, extents,
# terminated flag, length of the problem text (UTF-8, follows the header)
INDEX_HEADER = struct.Struct("<16sI8sQqQQII")


def detect(source: Source) -> bool:
    head = source.read(0, 24)
    return len(head) == 24 and head[:16] == SIGNATURE and \
        struct.unpack(">q", head[16:24])[0] == TYPE_FLAT_HEADER


@dataclass
class FlatIndex:
    """Where each byte of the inner file lies in the stream; sorted, non-overlapping extents."""

    starts: array                   # inner offsets
    lengths: array
    stream_offsets: array
    records: int                    # data records in the stream
    terminated: bool                # the (-1, -1) end marker was found
    problem: str = ""               # why the walk stopped early, if it did
    origin: str = field(default="built", compare=False)

    @property
    def inner_size(self) -> int:
        return self.starts[-1] + self.lengths[-1] if self.starts else 0


def walk_records(source: Source) -> FlatIndex:
    """Read every record header, skipping the data; later records win where they overlap."""
    records: list[tuple[int, int, int]] = []    # (inner offset, size, stream offset), stream order
    position = HEADER_BLOCK
    terminated = False
    problem = ""
    while True:
        raw = source.read(position, DATA_HEADER.size)
        if len(raw) < DATA_HEADER.size:
            problem = (f"truncated stream: no end marker after {len(records)} records "
                       f"(the stream ends at {source.size:#x})")
            break
        offset, size = DATA_HEADER.unpack(raw)
        if (offset, size) == END_OF_STREAM:
            terminated = True
            break
        if offset < 0 or size <= 0:
            problem = (f"corrupt record header at stream offset {position:#x} "
                       f"(offset {offset}, size {size}); the records after it are ignored")
            break
        data_start = position + DATA_HEADER.size
        if data_start + size > source.size:
            if data_start < source.size:
                records.append((offset, source.size - data_start, data_start))
            problem = (f"truncated stream: record {len(records)} at {position:#x} needs {size} bytes, "
                       f"the stream ends at {source.size:#x}")
            break
        records.append((offset, size, data_start))
        position = data_start + size
    records, far = _drop_far_records(records)
    if far:
        problem = f"{problem}; {far}" if problem else far
    starts, lengths, stream_offsets = resolve_overlaps(records)
    return FlatIndex(starts, lengths, stream_offsets, len(records), terminated, problem)


def _drop_far_records(records: list[tuple[int, int, int]]) -> tuple[list[tuple[int, int, int]], str]:
    """Records whose data would end past HOLE_RATIO x the bytes written are left out (and said)."""
    limit = sum(size for _, size, _ in records) * HOLE_RATIO + HOLE_SLACK
    far = [i for i, (offset, size, _) in enumerate(records) if offset + size > limit]
    if not far:
        return records, ""
    first = records[far[0]]
    return ([r for r in records if r[0] + r[1] <= limit],
            f"{len(far)} record(s) claim inner offsets beyond {limit:#x}, far past the data the stream "
            f"holds (first: record {far[0]} at stream offset {first[2] - DATA_HEADER.size:#x}, offset "
            f"{first[0]:#x}); they are ignored")


def resolve_overlaps(records: list[tuple[int, int, int]]) -> tuple[array, array, array]:
    """Sorted, non-overlapping extents; where records overlap, the later one wins.

    A sweep over the record boundaries with a heap of the records covering
    the current point, newest on top: O(n log n) whatever the overlaps.
    """
    starts, lengths, stream_offsets = array("q"), array("q"), array("q")
    if not records:
        return starts, lengths, stream_offsets
    by_start = sorted(range(len(records)), key=lambda i: records[i][0])
    if all(records[a][0] + records[a][1] <= records[b][0] for a, b in zip(by_start, by_start[1:])):
        for i in by_start:      # the usual case: nothing overlaps
            starts.append(records[i][0])
            lengths.append(records[i][1])
            stream_offsets.append(records[i][2])
        return starts, lengths, stream_offsets

    points = sorted({p for offset, size, _ in records for p in (offset, offset + size)})
    active: list[tuple[int, int]] = []      # (-sequence, end)
    next_record = 0
    for here, there in zip(points, points[1:]):
        while next_record < len(by_start) and records[by_start[next_record]][0] <= here:
            i = by_start[next_record]
            heapq.heappush(active, (-i, records[i][0] + records[i][1]))
            next_record += 1
        while active and active[0][1] <= here:
            heapq.heappop(active)
        if not active:
            continue
        winner = -active[0][0]
        offset, _, stream_offset = records[winner]
        stream_here = stream_offset + (here - offset)
        if starts and starts[-1] + lengths[-1] == here and \
                stream_offsets[-1] + lengths[-1] == stream_here:
            lengths[-1] += there - here
        else:
            starts.append(here)
            lengths.append(there - here)
            stream_offsets.append(stream_here)
    return starts, lengths, stream_offsets


# --- the persistent index ------------------------------------------------------------

def index_path(source: Source) -> str | None:
    """The cache file for this exact dump, or None for sources that are not files."""
    identity = getattr(source, "identity", None)
    if identity is None:
        return None
    dev, ino, size, mtime_ns = identity
    key = f"{os.path.realpath(source.name)}\0{dev}\0{ino}\0{size}\0{mtime_ns}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return str(cache_dir("index") / f"{digest}.flatidx")


def save_index(path: str, source: Source, index: FlatIndex) -> str | None:
    """Write the index atomically; returns why it was not persisted, or None."""
    _, _, size, mtime_ns = source.identity
    problem = index.problem.encode()
    header = INDEX_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, sys.byteorder.encode(), size, mtime_ns,
                               index.records, len(index.starts), index.terminated, len(problem))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(header + problem)
                for values in (index.starts, index.lengths, index.stream_offsets):
                    out.write(values.tobytes())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        return f"not persisted: {e.strerror or e}"
    return None


def load_index(path: str, source: Source) -> FlatIndex | None:
    """The persisted index if it exists and was made from this very file; else None."""
    try:
        with io.open(path, "rb") as f:    # this module defines open()
            blob = f.read()
    except OSError:
        return None
    if len(blob) < INDEX_HEADER.size:
        return None
    magic, version, byteorder, size, mtime_ns, records, extents, terminated, problem_len = \
        INDEX_HEADER.unpack_from(blob)
    _, _, real_size, real_mtime_ns = source.identity
    body = INDEX_HEADER.size + problem_len
    if (magic, version, byteorder) != (INDEX_MAGIC, INDEX_VERSION, sys.byteorder.encode().ljust(8, b"\0")) \
            or (size, mtime_ns) != (real_size, real_mtime_ns) or len(blob) != body + 3 * 8 * extents:
        return None
    arrays = []
    for i in range(3):
        values = array("q")
        values.frombytes(blob[body + i * 8 * extents:body + (i + 1) * 8 * extents])
        arrays.append(values)
    starts, lengths, stream_offsets = arrays
    if extents and (min(lengths) <= 0 or max(s + n for s, n in zip(stream_offsets, lengths)) > real_size):
        return None
    return FlatIndex(starts, lengths, stream_offsets, records, bool(terminated),
                     blob[INDEX_HEADER.size:body].decode(errors="replace"), origin="cached")


def read_index(source: Source) -> FlatIndex:
    path = index_path(source)
    if path is not None:
        index = load_index(path, source)
        if index is not None:
            return index
    index = walk_records(source)
    if path is None:
        index.origin = "built (not persisted: the source is not a file)"
    else:
        why_not = save_index(path, source, index)
        if why_not:
            index.origin = f"built ({why_not})"
    return index


# --- the inner file --------------------------------------------------------------------

class FlattenedSource(ExtentSource):
    """The reassembled inner file: reads map through the index; never-written bytes are zeros.

    Extents that continue each other in the inner file and lie close together in
    the stream (only record headers between them) are fetched with one pread.
    """

    def __init__(self, stream: Source, index: FlatIndex):
        super().__init__(ExtentFile.runlist(stream.read, index.starts, index.lengths, index.stream_offsets,
                                            index.inner_size, read_across=MAX_GAP_IN_ONE_READ),
                         stream.name)
        self.stream = stream
        self.index = index


def open(source: Source) -> Dump:
    head = MakedumpfileHeader.parse(source.read_exact(0, MakedumpfileHeader.sizeof(),
                                                      "flattened stream header"))
    index = read_index(source)
    inner = FlattenedSource(source, index)
    if inner.size == 0:
        raise DamagedDump(f"{source.name}: flattened stream holds no data records"
                          + (f" ({index.problem})" if index.problem else ""))
    from dumpfs.backends import elf, kdump
    if kdump.detect(inner):
        dump, inner_format = kdump.open(inner), "kdump"
    elif elf.detect(inner):
        dump, inner_format = elf.open(inner), "elf"
    else:
        raise DamagedDump(f"{source.name}: the flattened stream holds neither a kdump nor an ELF file "
                          f"(it starts with {inner.read(0, 8).hex(' ')})")
    meta = dump.meta
    meta.format = f"{inner_format}-flattened"
    meta.details.update({"flattened_version": head.version, "records": index.records,
                         "extents": len(index.starts), "inner_size": inner.size,
                         "index": index.origin})
    if not index.terminated or index.problem:
        meta.problems.insert(0, Problem(index.problem or "truncated stream: no end marker"))
    return dump
