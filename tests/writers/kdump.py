"""kdump-compressed writer (64-bit little-endian, header version 6), as makedumpfile lays it out.

Used where a kdump of a chosen size is needed (bench/: a dump bigger than the
fixtures, made of their own compressed pages).  Layout: main header block, sub
header + notes, the two bitmaps, the page descriptor table, then the page data
in descriptor order (format: ../shared/formats/kdump-compressed.md).
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"KDUMP   "
UTSNAME_FIELD = 65
HEADER = struct.Struct("<8si390s6xqqIiiIIIIIIi")      # struct disk_dump_header, 64-bit
SUB_HEADER = struct.Struct("<QiiQQqQqQqQQQQ")          # struct kdump_sub_header, 64-bit
PAGE_DESC = struct.Struct("<qIIQ")
FLAG_ZLIB = 0x01


def zlib_page(page: bytes) -> tuple[bytes, int]:
    """(stored bytes, page_desc flags) as makedumpfile -c stores a page: zlib level 1 when
    that is smaller, else raw."""
    packed = zlib.compress(page, 1)
    return (packed, FLAG_ZLIB) if len(packed) < len(page) else (page, 0)


def utsname(machine: str = "x86_64", release: str = "", nodename: str = "dumpfs") -> bytes:
    fields = ("Linux", nodename, release, "", machine, "")
    return b"".join(field.encode().ljust(UTSNAME_FIELD, b"\0") for field in fields)


def write_kdump(f, pfns: list[int], stored, *, max_mapnr: int, status: int = FLAG_ZLIB,
                block_size: int = 4096, notes: bytes = b"", vmcoreinfo: tuple[int, int] | None = None,
                uts: bytes | None = None, dump_level: int = 1, nr_cpus: int = 1,
                phys_base: int = 0) -> None:
    """Pages `pfns` (ascending) dumpable and existing; `stored` yields each one's (stored bytes,
    flags, key) in that order: pages of one key share one copy of the data (makedumpfile's
    shared zero page; key None: never shared).  `vmcoreinfo`: (offset, size) of the
    VMCOREINFO text in `notes`."""
    sub_hdr_size = -(-(SUB_HEADER.size + len(notes)) // block_size)
    bitmap_bytes = -(-max_mapnr // 8)
    bitmap_blocks = 2 * -(-bitmap_bytes // block_size)
    bitmap = bytearray(bitmap_blocks // 2 * block_size)
    for pfn in pfns:
        bitmap[pfn >> 3] |= 1 << (pfn & 7)
    f.write(HEADER.pack(SIGNATURE, 6, uts or utsname(), 0, 0, status, block_size, sub_hdr_size,
                        bitmap_blocks, max_mapnr & 0xFFFFFFFF, 0, 0, 0, 0, nr_cpus).ljust(block_size, b"\0"))
    note_offset = block_size + SUB_HEADER.size
    info_offset, info_size = (note_offset + vmcoreinfo[0], vmcoreinfo[1]) if vmcoreinfo else (0, 0)
    sub = SUB_HEADER.pack(phys_base, dump_level, 0, 0, 0, info_offset, info_size, note_offset,
                          len(notes), 0, 0, 0, 0, max_mapnr)
    f.write((sub + notes).ljust(sub_hdr_size * block_size, b"\0"))
    f.write(bitmap)
    f.write(bitmap)
    table_start = f.tell()
    offset = table_start + PAGE_DESC.size * len(pfns)
    table = bytearray()
    f.seek(offset)
    written: dict[object, int] = {}         # key -> offset of its data
    for data, flags, key in stored:
        at = written.get(key) if key is not None else None
        if at is None:
            at = offset
            f.write(data)
            offset += len(data)
            if key is not None:
                written[key] = at
        table += PAGE_DESC.pack(at, len(data), flags, 0)
    if len(table) != PAGE_DESC.size * len(pfns):
        raise ValueError(f"{len(table) // PAGE_DESC.size} pages stored for {len(pfns)} pfns")
    f.seek(table_start)
    f.write(table)
    f.seek(offset)
