"""The DUMPFS note: what the source of a written ELF held and did not hold.

An ELF core says which memory it holds (its PT_LOADs) but not why the rest is
absent.  `dumpfs convert` (and the mounted `vmcore`) add one note, owner
"DUMPFS", that records the source's format, writer, dump level and
compression, its problems, and the physical ranges the writer excluded or the
source was missing; the ELF backend reads it back, so a converted `-d 31`
dump still says "makedumpfile, dump level 31, 231 MiB excluded" instead of
"qemu, 0 MiB excluded", and its gaps stay excluded rather than unknown.

    desc = JSON (utf-8) + NUL + excluded (start, end) pairs + missing pairs
           (pairs as little-endian u64; the JSON gives both counts)
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from itertools import chain, islice

from dumpfs.errors import Severity
from dumpfs.model import Dump, DumpMeta, MemoryChunk, Note, PageState

NOTE_NAME = "DUMPFS"
NT_DUMPFS_ORIGIN = 0x44460001       # "DF" 1: not a number the kernel or QEMU use
MAX_RANGES = 1 << 20                # 16 MiB of pairs at most; past it, the rest are holes
_PAIR = struct.Struct("<QQ")


def is_origin(note: Note) -> bool:
    return note.name == NOTE_NAME and note.type == NT_DUMPFS_ORIGIN


def origin_note(dump: Dump) -> Note:
    """The note for a core written from `dump` (a converted dump's origin carries over)."""
    meta = dump.meta
    runs = dump.memory.runs
    excluded = array("Q", chain.from_iterable(islice(runs.ranges(PageState.EXCLUDED), MAX_RANGES)))
    missing = array("Q", chain.from_iterable(islice(runs.ranges(PageState.MISSING),
                                                    MAX_RANGES - len(excluded) // 2)))
    header = {
        "format": meta.details.get("converted from", meta.format),
        "writer": meta.details.get("original writer", meta.writer),
        "dump_level": meta.dump_level,
        "compression": meta.compression,
        "problems": [[p.text, int(p.severity)] for p in meta.problems],
        "excluded": len(excluded) // 2,
        "missing": len(missing) // 2,
    }
    pairs = excluded + missing          # (start, end) pairs, little-endian u64 in the note
    if sys.byteorder == "big":
        pairs.byteswap()
    return Note(NOTE_NAME, NT_DUMPFS_ORIGIN, json.dumps(header).encode() + b"\0" + pairs.tobytes())


def read_origin(note: Note, meta: DumpMeta) -> list[MemoryChunk]:
    """Apply an origin note to an ELF dump's `meta`; the EXCLUDED and MISSING chunks it
    names (callers keep only the parts no PT_LOAD covers).  A damaged note is a problem."""
    text, _, pairs = note.desc.partition(b"\0")
    try:
        header = json.loads(text)
        counts = (int(header.get("excluded", 0)), int(header.get("missing", 0)))
        if min(counts) < 0 or sum(counts) > MAX_RANGES or sum(counts) * _PAIR.size > len(pairs):
            raise ValueError(f"{counts} ranges in {len(pairs)} bytes")
        ranges = [_PAIR.unpack_from(pairs, i * _PAIR.size) for i in range(sum(counts))]
    except (ValueError, TypeError, AttributeError, struct.error) as exc:
        meta.add_problem(f"DUMPFS note unreadable ({exc}): its origin is not known",
                         Severity.WARNING)
        return []
    if header.get("writer"):
        meta.details["original writer"] = str(header["writer"])
        meta.writer = f"{header['writer']} (converted by dumpfs)"
    if header.get("format"):
        meta.details["converted from"] = str(header["format"])
    if isinstance(header.get("dump_level"), int):
        meta.dump_level = header["dump_level"]
    if header.get("compression"):
        meta.details["source compression"] = str(header["compression"])
    for entry in header.get("problems") or []:
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
            meta.add_problem(f"source: {entry[0]}", Severity(min(max(int(entry[1]), 0), 2)))
    chunks = []
    for i, (start, end) in enumerate(ranges):
        if start < end:
            state = PageState.EXCLUDED if i < counts[0] else PageState.MISSING
            chunks.append(MemoryChunk(start, end - start, state))
    return chunks


def outside(chunks: list[MemoryChunk], covered: list[tuple[int, int]]) -> list[MemoryChunk]:
    """The parts of `chunks` (sorted, stateless) that no (start, end) of `covered` overlaps."""
    result = []
    covered = sorted(covered)
    i = 0
    for chunk in sorted(chunks, key=lambda c: c.start):
        start, end = chunk.start, chunk.end
        while i < len(covered) and covered[i][1] <= start:
            i += 1
        j = i
        while start < end:
            if j < len(covered) and covered[j][0] < end:
                if covered[j][0] > start:
                    result.append(MemoryChunk(start, covered[j][0] - start, chunk.state))
                start = max(start, covered[j][1])
                j += 1
            else:
                result.append(MemoryChunk(start, end - start, chunk.state))
                break
    return result
