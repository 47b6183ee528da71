"""ELF64 cores: /proc/vmcore, QEMU dump-guest-memory, makedumpfile -E, zgetdump -f elf.

Honours e_phoff (QEMU 7.2 writes the section headers first) and PN_XNUM
(QEMU paging=true dumps have more than 65535 program headers).
"""

from __future__ import annotations

import struct
from array import array
from itertools import islice
from operator import add, le
from typing import NamedTuple

from dumpfs import arch as arches
from dumpfs.elf import (ET_CORE, PHDR_FORMAT, PHDR_SIZE, PN_XNUM, PT_LOAD, PT_NOTE,
                        SHDR_INFO_OFFSET, Elf64Header, Ident)
from dumpfs.elfnote import parse_notes, sort_notes
from dumpfs.errors import DamagedDump, NoDump, Problem, Unsupported
from dumpfs.limits import MAX_NOTE_BYTES, MAX_PROGRAM_HEADERS
from dumpfs.model import Dump, DumpMeta, Memory, MemoryChunk, PageState, Runs
from dumpfs.origin import is_origin, outside, read_origin
from dumpfs.extents import SourceRange
from dumpfs.source import Source

MAX_NOTE_SEGMENT = MAX_NOTE_BYTES   # one PT_NOTE may hold every note; more is a broken header


def detect(source: Source) -> bool:
    head = source.read(0, 6)
    return head[:4] == b"\x7fELF" and len(head) == 6


def open(source: Source) -> Dump:
    head = source.read_exact(0, 64, "ELF header")
    ident = Ident.parse(head)
    if ident.ei_class != 2:
        raise Unsupported(f"{source.name}: 32-bit ELF; only ELF64 kernel dumps are supported")
    if ident.ei_data not in (1, 2):
        raise DamagedDump(f"{source.name}: ELF header has invalid byte order {ident.ei_data}")
    little = ident.ei_data == 1
    order = "<" if little else ">"
    ehdr = Elf64Header["little" if little else "big"].parse(head)
    if ehdr.e_type != ET_CORE:
        raise NoDump(f"{source.name}: ELF file of type {ehdr.e_type}, not a core dump (ET_CORE)")
    arch = arches.by_elf_machine(ehdr.e_machine)
    if arch is None:
        raise Unsupported(f"{source.name}: ELF machine {ehdr.e_machine} is not supported "
                          f"(x86_64 and s390x are)")
    if arch.byteorder != ("little" if little else "big"):
        raise DamagedDump(f"{source.name}: {arch.name} core in the wrong byte order")
    if ehdr.e_phentsize != PHDR_SIZE:
        raise DamagedDump(f"{source.name}: e_phentsize {ehdr.e_phentsize}, expected 56")

    phnum = ehdr.e_phnum
    if phnum == PN_XNUM:
        if ehdr.e_shoff == 0:
            raise DamagedDump(f"{source.name}: e_phnum is PN_XNUM but there is no section header 0")
        section0 = source.read_exact(ehdr.e_shoff, 64, "section header 0")
        phnum = struct.unpack_from(order + "I", section0, SHDR_INFO_OFFSET)[0]
    if phnum > MAX_PROGRAM_HEADERS:
        raise DamagedDump(f"{source.name}: {phnum} program headers (e_phnum); more than "
                          f"{MAX_PROGRAM_HEADERS} is a broken header")
    table_size = PHDR_SIZE * phnum
    if ehdr.e_phoff + table_size > source.size:
        raise DamagedDump(f"{source.name}: truncated: {phnum} program headers at {ehdr.e_phoff:#x} "
                          f"end past the file size {source.size:#x}")
    table = source.read_exact(ehdr.e_phoff, table_size, "program headers")

    loads = Loads(array("Q"), array("Q"), array("Q"), array("Q"), array("Q"))
    note_parts: list[bytes] = []
    note_bytes = 0
    problems: list[Problem] = []
    for p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align in \
            struct.iter_unpack(order + PHDR_FORMAT, table):
        if p_type == PT_NOTE:
            if p_filesz > MAX_NOTE_SEGMENT:
                raise DamagedDump(f"{source.name}: PT_NOTE of {p_filesz} bytes is absurd")
            if p_offset + p_filesz > source.size:
                problems.append(Problem("PT_NOTE extends past the end of the file"))
            held = max(0, min(p_filesz, source.size - p_offset))
            if note_bytes + held > MAX_NOTE_BYTES:
                if note_bytes <= MAX_NOTE_BYTES:
                    problems.append(Problem(f"PT_NOTE segments hold more than {MAX_NOTE_BYTES} bytes "
                                            f"of notes in total; the excess is ignored"))
                    note_bytes = MAX_NOTE_BYTES + 1
                continue
            note_bytes += held
            note_parts.append(source.read(p_offset, held))
        elif p_type == PT_LOAD and p_memsz:
            if p_filesz > p_memsz:
                raise DamagedDump(f"{source.name}: PT_LOAD at {p_paddr:#x} has p_filesz > p_memsz")
            if p_paddr + p_memsz > 1 << 64:
                raise DamagedDump(f"{source.name}: PT_LOAD at {p_paddr:#x} wraps past 2^64")
            present = p_filesz
            if p_offset + p_filesz > source.size:
                present = max(0, min(p_filesz, source.size - p_offset))
                problems.append(Problem(f"PT_LOAD {p_paddr:#x}-{p_paddr + p_memsz:#x}: file ends after "
                                        f"{present:#x} of {p_filesz:#x} bytes"))
            for column, value in zip(loads, (p_paddr, present, p_filesz, p_memsz, p_offset)):
                column.append(value)

    notes = parse_notes(b"".join(note_parts), arch.byteorder, problems)
    origins = [n for n in notes if is_origin(n)]
    cpus, dump_notes, vmcoreinfo = sort_notes(arch, [n for n in notes if not is_origin(n)], problems)
    meta = DumpMeta(format="elf", writer=_guess_writer(ehdr, dump_notes, cpus),
                    problems=problems,
                    details={"e_phoff": ehdr.e_phoff, "program headers": phnum})
    if _in_order(loads) and not origins:      # the common case: no PT_LOAD object of its own
        memory = Memory(_runs_in_order(source, loads))
    else:
        chunks = _merge_aliases(_chunks(source, loads), source.name)
        if origins:             # written by dumpfs: what its source did not hold
            absent = read_origin(origins[0], meta)
            chunks += outside(absent, [(c.start, c.end) for c in chunks])
        memory = Memory(chunks)
    if vmcoreinfo is not None:
        meta.kernel_release = vmcoreinfo.get("OSRELEASE")
    page_size = vmcoreinfo.number("PAGESIZE") if vmcoreinfo else None
    return Dump(arch=arch, page_size=page_size or arch.page_size, memory=memory, cpus=cpus,
                meta=meta, vmcoreinfo=vmcoreinfo, notes=dump_notes)


class Loads(NamedTuple):
    """The PT_LOADs as columns: address, bytes the file holds, p_filesz, p_memsz, p_offset."""
    paddr: array
    present: array
    filesz: array
    memsz: array
    offset: array


def _in_order(loads: Loads) -> bool:
    """The PT_LOADs are sorted and do not overlap (as the kernel and QEMU without paging
    write them)."""
    return all(map(le, map(add, loads.paddr, loads.memsz), islice(loads.paddr, 1, None)))


def _pieces(loads: Loads):
    """Per PT_LOAD: its bytes in the file, those the file should hold but lost (unknown, not
    zero), and its zero tail: (start, size, state, file offset)."""
    for paddr, present, filesz, memsz, offset in zip(*loads):
        yield paddr, present, PageState.PRESENT, offset
        yield paddr + present, filesz - present, PageState.MISSING, 0
        yield paddr + filesz, memsz - filesz, PageState.ZERO, 0


def _runs_in_order(source: Source, loads: Loads) -> Runs:
    runs, read = Runs(), source.read
    for start, size, state, offset in _pieces(loads):
        runs.add(start, size, state, read, offset)
    return runs


def _chunks(source: Source, loads: Loads) -> list[MemoryChunk]:
    return [MemoryChunk(start, size, state, SourceRange(source.read, offset) if state is PageState.PRESENT
                        else None) for start, size, state, offset in _pieces(loads) if size]


def _merge_aliases(chunks: list[MemoryChunk], name: str) -> list[MemoryChunk]:
    """Keep the first PT_LOAD that covers each address.

    QEMU paging=true dumps describe virtual ranges, so one physical page can
    appear in several PT_LOADs; the model wants each physical byte once.
    """
    chunks.sort(key=lambda c: (c.start, -c.size))
    result: list[MemoryChunk] = []
    for chunk in chunks:
        if result and chunk.start < result[-1].end:
            covered = result[-1].end - chunk.start
            if covered >= chunk.size:
                continue
            chunk = _tail(chunk, covered)
        result.append(chunk)
    return result


def _tail(chunk: MemoryChunk, skip: int) -> MemoryChunk:
    return MemoryChunk(chunk.start + skip, chunk.size - skip, chunk.state,
                       SourceRange(chunk.read, skip) if chunk.read is not None else None)


def _guess_writer(ehdr, dump_notes, cpus) -> str:
    if any(n.name == "QEMU" for cpu in cpus.values() for n in cpu.notes):
        return "qemu"
    if ehdr.e_ehsize == 8 or ehdr.e_phoff != 64:
        return "qemu"
    return "kernel or makedumpfile"

