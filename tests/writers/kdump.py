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


def utsname(machine: str = "x86_64", release: str = "", nodename: str = "dumpfs",
            version: str = "") -> bytes:
    """struct new_utsname: six NUL-padded 65-byte strings."""
    fields = ("Linux", nodename, release, version, machine, "")
    return b"".join(field.encode().ljust(UTSNAME_FIELD, b"\0") for field in fields)


ZERO = "zero"        # the key of pages sharing the one zero page at the start of the data area


def write_kdump(f, pfns: list[int], stored, *, max_mapnr: int, status: int = FLAG_ZLIB,
                block_size: int = 4096, notes: bytes = b"", vmcoreinfo: tuple[int, int] | None = None,
                uts: bytes | None = None, dump_level: int = 1, nr_cpus: int = 1,
                phys_base: int = 0, excluded=(), tv_sec: int = 0, shared_zero_page: bool = False) -> None:
    """Pages `pfns` (ascending) dumpable; `excluded` pfns exist but are filtered out.  `stored`
    yields each dumpable page's (stored bytes, flags, key) in pfn order: pages of one key
    share one copy of the data (key None: never shared); with `shared_zero_page`, one raw zero
    page opens the data area and pages of key ZERO point at it, as makedumpfile and QEMU
    store zero pages.  `vmcoreinfo`: (offset, size) of the VMCOREINFO text in `notes`."""
    sub_hdr_size = -(-(SUB_HEADER.size + len(notes)) // block_size)
    bitmap_bytes = -(-max_mapnr // 8)
    bitmap_blocks = 2 * -(-bitmap_bytes // block_size)
    dumpable = bytearray(bitmap_blocks // 2 * block_size)
    for pfn in pfns:
        dumpable[pfn >> 3] |= 1 << (pfn & 7)
    existing = bytearray(dumpable)
    for pfn in excluded:
        existing[pfn >> 3] |= 1 << (pfn & 7)
    f.write(HEADER.pack(SIGNATURE, 6, uts or utsname(), tv_sec, 0, status, block_size,
                        sub_hdr_size, bitmap_blocks, max_mapnr & 0xFFFFFFFF, 0, 0, 0, 0,
                        nr_cpus).ljust(block_size, b"\0"))
    note_offset = block_size + SUB_HEADER.size
    info_offset, info_size = (note_offset + vmcoreinfo[0], vmcoreinfo[1]) if vmcoreinfo else (0, 0)
    sub = SUB_HEADER.pack(phys_base, dump_level, 0, 0, 0, info_offset, info_size,
                          note_offset if notes else 0, len(notes), 0, 0, 0, 0, max_mapnr)
    f.write((sub + notes).ljust(sub_hdr_size * block_size, b"\0"))
    f.write(existing)
    f.write(dumpable)
    table_start = f.tell()
    offset = table_start + PAGE_DESC.size * len(pfns)
    table = bytearray()
    f.seek(offset)
    written: dict[object, int] = {}         # key -> offset of its data
    if shared_zero_page:
        written[ZERO] = offset
        f.write(bytes(block_size))
        offset += block_size
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
