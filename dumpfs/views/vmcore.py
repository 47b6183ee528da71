"""`vmcore`: a /proc/vmcore-style ELF64 core built lazily from the model.

Layout (like the kernel's /proc/vmcore, page-aligned so that FUSE reads of
memory map onto whole pages):

    ELF header, program headers (PT_NOTE, one PT_LOAD per memory run)
    [section header 0, only when the PT_LOAD count needs PN_XNUM]
    padding to a page
    notes: dump-wide notes, each CPU's notes, VMCOREINFO, DUMPFS (dumpfs.origin); padding to 1 MiB
    memory of each PT_LOAD, file offset congruent to its address modulo the page

A PT_LOAD covers a maximal run of adjacent present and zero chunks; a zero
tail becomes p_filesz < p_memsz.  Excluded and missing pages are in no
PT_LOAD, so a reader is told they are absent instead of shown invented zeros.

A damaged dump may have millions of runs, so the PT_LOADs are kept as
columns (a few bytes each), each program header is packed when read, and
each PT_LOAD's bytes are read from the dump's memory.
"""

from __future__ import annotations

import struct
from array import array
from itertools import chain
from typing import NamedTuple

from dumpfs.elf import (EHDR_SIZE, PF_R, PF_W, PF_X, PHDR_FORMAT, PHDR_SIZE, PT_LOAD, PT_NOTE, core_header,
                        core_headers_size, section_header_0)
from dumpfs.elfnote import build_note
from dumpfs.model import EXCLUDED_RUN, PRESENT_READERS, ZERO_RUN, Dump, Memory, Note
from dumpfs.origin import is_origin, origin_note
from dumpfs.tree import File
from dumpfs.extents import Extent, ExtentFile, SourceRange
from dumpfs.views.extents import lazy_extent_file


# Memory data starts on a 1 MiB boundary: the kernel's 1 MiB FUSE reads then
# cover whole 1 MiB compression entries (s390_ext) and batches of pages
# instead of straddling two, so parallel requests decode in parallel.
DATA_ALIGNMENT = 1 << 20


class LoadSegments(NamedTuple):
    """The PT_LOADs as columns: physical start, bytes stored in the file, bytes in memory."""
    starts: array
    filesz: array
    memsz: array


def load_segments(memory: Memory) -> LoadSegments:
    """Maximal stretches of adjacent present and zero runs; the zero tail of each is not stored."""
    runs = memory.runs
    segments = LoadSegments(array("Q"), array("Q"), array("Q"))
    add_start, add_filesz, add_memsz = (column.append for column in segments)
    start = end = data_end = None
    ending = ((0, 0, EXCLUDED_RUN),)            # a hole after the last run ends the last segment
    for run_start, size, number in chain(zip(runs.starts, runs.sizes, runs.which), ending):
        hole = ZERO_RUN < number < PRESENT_READERS
        if not hole and run_start == end:
            end += size
            if number != ZERO_RUN:
                data_end = end
            continue
        if start is not None:
            add_start(start)
            add_filesz(data_end - start)
            add_memsz(end - start)
        start = end = data_end = None
        if not hole:
            start, end = run_start, run_start + size
            data_end = end if number != ZERO_RUN else start
    return segments


def file_offsets(segments: LoadSegments, data_offset: int, page: int) -> tuple[array, int]:
    """Where each PT_LOAD's bytes lie in the file (congruent to its address modulo the page),
    and the end of the last."""
    offsets = array("Q")
    position = data_offset
    for start, filesz in zip(segments.starts, segments.filesz):
        position += (start - position) % page
        offsets.append(position)
        position += filesz
    return offsets, position


class ProgramHeaders:
    """The ELF header, the program headers and section header 0 of a core, each program
    header packed when its bytes are read (a reader of `dumpfs.extents`)."""

    def __init__(self, byteorder: str, machine: int, note: tuple[int, int], segments: LoadSegments,
                 offsets: array):
        self.phnum = 1 + len(segments.starts)
        self._prefix = "<" if byteorder == "little" else ">"
        self._head = core_header(byteorder, machine, self.phnum)
        self._tail = section_header_0(byteorder, self.phnum)
        note_offset, note_size = note
        self._note = struct.pack(self._prefix + PHDR_FORMAT, PT_NOTE, 0, note_offset, 0, 0,
                                 note_size, note_size, 0)
        self._segments, self._offsets = segments, offsets
        self.size = core_headers_size(self.phnum)

    def _phdr(self, i: int) -> bytes:
        if i == 0:
            return self._note
        i -= 1
        start = self._segments.starts[i]
        # p_align 0 as in the kernel's /proc/vmcore: crash tells a kdump ELF from an old
        # netdump one by it, and only applies KASLR detection to kdump files
        return struct.pack(self._prefix + PHDR_FORMAT, PT_LOAD, PF_R | PF_W | PF_X, self._offsets[i],
                           start, start, self._segments.filesz[i], self._segments.memsz[i], 0)

    def __call__(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        first = min(max(offset - EHDR_SIZE, 0) // PHDR_SIZE, self.phnum)
        last = min(max(end - EHDR_SIZE + PHDR_SIZE - 1, 0) // PHDR_SIZE, self.phnum)
        parts = [self._head] if offset < EHDR_SIZE else []
        parts += [self._phdr(i) for i in range(first, last)]
        if end > EHDR_SIZE + PHDR_SIZE * self.phnum:
            parts.append(self._tail)
        base = 0 if offset < EHDR_SIZE else EHDR_SIZE + PHDR_SIZE * first
        return b"".join(parts)[offset - base:end - base]


def note_bytes(dump: Dump) -> bytes:
    order = dump.arch.byteorder
    notes: list[Note] = [n for n in dump.notes if not is_origin(n)]
    for number in sorted(dump.cpus):
        notes.extend(dump.cpus[number].notes)
    if dump.vmcoreinfo is not None:
        notes.append(Note("VMCOREINFO", 0, dump.vmcoreinfo.raw))
    notes.append(origin_note(dump))     # what the source held and did not hold
    return b"".join(build_note(n, order) for n in notes)


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def build_vmcore(dump: Dump) -> ExtentFile:
    segments = load_segments(dump.memory)
    notes = note_bytes(dump)
    notes_offset = _round_up(core_headers_size(1 + len(segments.starts)), dump.page_size)
    data_offset = _round_up(notes_offset + len(notes), DATA_ALIGNMENT)
    offsets, end = file_offsets(segments, data_offset, dump.page_size)
    headers = ProgramHeaders(dump.arch.byteorder, dump.arch.elf_machine, (notes_offset, len(notes)),
                             segments, offsets)
    data = ExtentFile.runlist(dump.memory.read_physical, offsets, segments.filesz, segments.starts, end)
    return ExtentFile([Extent(0, headers.size, headers), Extent(notes_offset, len(notes), notes),
                       Extent(data_offset, end - data_offset, SourceRange(data.read, data_offset))],
                      size=max(end, data_offset))


def vmcore_file(dump: Dump, name: str = "vmcore") -> File:
    """The `vmcore` file; its layout is computed on first stat or read."""
    return lazy_extent_file(name, lambda: build_vmcore(dump))
