"""`dump.s390`: the plain s390 stand-alone dump format, the bytes `zgetdump -f s390` writes.

Layout (zgetdump's dfo_s390.c):

    0x0000              dump header (magic ...23FD, version 5, or 4 without CPUs)
    0x1000 + A          memory byte A for A in [0, mem_size); zeros where the
                        model has zero or excluded pages or holes
    0x1000 + mem_size   end marker "DUMP_END" + TOD (16 bytes)

The format keeps registers only in memory, so, as zgetdump does, each CPU's
registers are written over the save area (lowcore 0x1200-0x13FF) of its
prefix page and over its vector save area.  For a dump read from an s390
file this changes nothing (the registers came from there); for ELF or kdump
input it is what makes the registers survive.  The TOD programmable register
is left as memory has it, like zgetdump does.
"""

from __future__ import annotations

import struct

from dumpfs.arch import s390x
from dumpfs.s390dump import (ARCH_S390X, END_MARKER_MAGIC, HEADER_SIZE, MAGIC_S390, DumpHeader,
                             EndMarker, datetime_to_tod)
from dumpfs.errors import MemoryUnavailable
from dumpfs.extents import overlay
from dumpfs.model import Dump
from dumpfs.tree import File
from dumpfs.extents import Extent, ExtentFile
from dumpfs.views.extents import lazy_extent_file


def zero_filled_memory(dump: Dump, mem_size: int, overlays: dict[int, bytes]) -> ExtentFile:
    """Memory [0, mem_size) with every byte the model cannot give read as zero, overlays on top."""
    def read(offset: int, length: int) -> bytes:
        return dump.memory.read_zero_filled(offset, length, undecodable_as_zeros=True)
    patches = [Extent(start, len(data), data) for start, data in sorted(overlays.items())]
    return ExtentFile(overlay([Extent(0, mem_size, read)], patches), size=mem_size)


def _or_zeros(read):
    def read_or_zeros(offset: int, length: int) -> bytes:
        try:
            return read(offset, length)
        except MemoryUnavailable:
            return bytes(length)    # unreadable (corrupt) data: zeros, as zgetdump writes for holes
    return read_or_zeros


def register_overlays(dump: Dump, mem_size: int) -> dict[int, bytes]:
    """Save areas (and vector save areas) rewritten from each CPU's registers."""
    overlays: dict[int, bytes] = {}
    read = _or_zeros(dump.read_physical)
    for number in sorted(dump.cpus):
        regs = dump.cpus[number].registers
        prefix = regs.get("prefix")
        if prefix is None or "psw_addr" not in regs or prefix + s390x.LOWCORE_SIZE > mem_size:
            continue
        save_area = prefix + s390x.SAVE_AREA_OFFSET
        overlays[save_area] = s390x.save_area_from_registers(
            regs, read(save_area, s390x.SAVE_AREA_SIZE))
        vector = s390x.vector_save_area_from_registers(regs)
        pointer = struct.unpack(">Q", read(prefix + s390x.LOWCORE_VECTOR_SAVE_AREA, 8))[0]
        if vector and s390x.has_vector_save_area(pointer) and pointer + len(vector) <= mem_size:
            overlays[pointer] = vector
    return overlays


def _tod(when) -> int:
    return datetime_to_tod(when) if when is not None else 0


def build_dump_s390(dump: Dump) -> ExtentFile:
    details = dump.meta.details
    mem_size = dump.memory.end
    cpus = [dump.cpus[n] for n in sorted(dump.cpus) if "prefix" in dump.cpus[n].registers]
    full = bool(cpus) and all("psw_addr" in c.registers for c in cpus)
    start_tod = _tod(dump.meta.dump_time)
    end_tod = details.get("dump_end_tod") if dump.meta.format in ("s390", "s390_ext") else None
    lc_vec = [c.registers["prefix"] for c in cpus][:512]
    header = DumpHeader.build(dict(
        magic=MAGIC_S390, version=5 if cpus else 4, hdr_size=HEADER_SIZE, dump_level=4,
        page_size=4096, mem_size=mem_size, mem_start=0, mem_end=mem_size,
        num_pages=(mem_size // 4096) & 0xFFFFFFFF, pad=0, tod=start_tod,
        cpu_id=details.get("cpu_id", 0), arch=ARCH_S390X, volnr=0,
        build_arch=details.get("build_arch", 0), mem_size_real=details.get("mem_size_real", 0),
        mvdump=0, cpu_cnt=len(lc_vec), real_cpu_cnt=details.get("real_cpu_cnt", 0),
        zlib_version_s390=0, zlib_entry_size=0, mvdump_sign=0, mvdump_zipl_time=0,
        lc_vec=lc_vec + [0] * (512 - len(lc_vec))))
    end_marker = EndMarker.build(dict(str=END_MARKER_MAGIC, tod=end_tod or start_tod))
    memory = zero_filled_memory(dump, mem_size, register_overlays(dump, mem_size) if full else {})
    return ExtentFile([
        Extent(0, HEADER_SIZE, header),
        Extent(HEADER_SIZE, mem_size, memory.read),
        Extent(HEADER_SIZE + mem_size, len(end_marker), end_marker),
    ])


def dump_s390_file(dump: Dump, name: str = "dump.s390") -> File:
    """The `dump.s390` file of a dump (`Arch.s390_dump`); its layout is computed on first stat
    or read."""
    return lazy_extent_file(name, lambda: build_dump_s390(dump))

