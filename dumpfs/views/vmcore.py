"""`vmcore`: a /proc/vmcore-style ELF64 core built lazily from the model.

Layout (like the kernel's /proc/vmcore, page-aligned so that FUSE reads of
memory map onto whole pages):

    ELF header, program headers (PT_NOTE, one PT_LOAD per memory run)
    [section header 0, only when the PT_LOAD count needs PN_XNUM]
    padding to a page
    notes: dump-wide notes, each CPU's notes, VMCOREINFO; padding to 1 MiB
    memory of each PT_LOAD, file offset congruent to its address modulo the page

A PT_LOAD covers a maximal run of adjacent present and zero chunks; a zero
tail becomes p_filesz < p_memsz.  Excluded and missing pages are in no
PT_LOAD, so a reader is told they are absent instead of shown invented zeros.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dumpfs.elf import PF_R, PF_W, PF_X, PHDR_FORMAT, PT_LOAD, PT_NOTE, core_headers, core_headers_size
from dumpfs.elfnote import build_note
from dumpfs.model import Dump, MemoryChunk, Note, PageState
from dumpfs.tree import File
from dumpfs.extents import Extent, ExtentFile
from dumpfs.views.extents import lazy_extent_file


# Memory data starts on a 1 MiB boundary: the kernel's 1 MiB FUSE reads then
# cover whole 1 MiB compression entries (s390_ext) and batches of pages
# instead of straddling two, so parallel requests decode in parallel.
DATA_ALIGNMENT = 1 << 20


@dataclass(frozen=True)
class LoadSegment:
    """One PT_LOAD: physical start, bytes stored in the file, bytes in memory."""

    start: int
    filesz: int
    memsz: int
    chunks: tuple[MemoryChunk, ...]


def load_segments(dump: Dump) -> list[LoadSegment]:
    segments: list[LoadSegment] = []
    run: list[MemoryChunk] = []

    def flush():
        if not run:
            return
        start, end = run[0].start, run[-1].end
        filesz = end - start
        tail = [c for c in run]
        while tail and tail[-1].state is PageState.ZERO:
            filesz -= tail.pop().size
        segments.append(LoadSegment(start, filesz, end - start, tuple(run)))
        run.clear()

    for chunk in dump.memory:
        if chunk.state in (PageState.EXCLUDED, PageState.MISSING):
            flush()
            continue
        if run and chunk.start != run[-1].end:
            flush()
        run.append(chunk)
    flush()
    return segments


def note_bytes(dump: Dump) -> bytes:
    order = dump.arch.byteorder
    notes: list[Note] = list(dump.notes)
    for number in sorted(dump.cpus):
        notes.extend(dump.cpus[number].notes)
    if dump.vmcoreinfo is not None:
        notes.append(Note("VMCOREINFO", 0, dump.vmcoreinfo.raw))
    return b"".join(build_note(n, order) for n in notes)


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def build_vmcore(dump: Dump) -> ExtentFile:
    order = dump.arch.byteorder
    prefix = "<" if order == "little" else ">"
    page = dump.page_size
    segments = load_segments(dump)
    notes = note_bytes(dump)
    notes_offset = _round_up(core_headers_size(1 + len(segments)), page)
    data_offset = _round_up(notes_offset + len(notes), DATA_ALIGNMENT)

    extents: list[Extent] = []
    phdrs = [struct.pack(prefix + PHDR_FORMAT, PT_NOTE, 0, notes_offset, 0, 0,
                         len(notes), len(notes), 0)]
    position = data_offset
    for segment in segments:
        # keep file offsets congruent to addresses modulo the page size
        position += (segment.start - position) % page
        # p_align 0 as in the kernel's /proc/vmcore: crash tells a kdump ELF from an old
        # netdump one by it, and only applies KASLR detection to kdump files
        phdrs.append(struct.pack(prefix + PHDR_FORMAT, PT_LOAD, PF_R | PF_W | PF_X, position,
                                 segment.start, segment.start, segment.filesz, segment.memsz, 0))
        for chunk in segment.chunks:
            offset_in_segment = chunk.start - segment.start
            if offset_in_segment >= segment.filesz:
                break
            extents.append(Extent(position + offset_in_segment, chunk.size, chunk.fill))
        position += segment.filesz

    header = core_headers(order, dump.arch.elf_machine, phdrs)
    extents.append(Extent(0, len(header), header))
    extents.append(Extent(notes_offset, len(notes), notes))
    return ExtentFile(extents, size=max(position, data_offset))


def vmcore_file(dump: Dump, name: str = "vmcore") -> File:
    """The `vmcore` file; its layout is computed on first stat or read."""
    return lazy_extent_file(name, lambda: build_vmcore(dump))
