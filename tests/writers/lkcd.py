"""Test-side writer of LKCD v8 s390 dumps as zfcpdump v1/v2 wrote them (lkcd.md §6), and of
legacy plain s390 headers (version < 5) and non-extended multi-volume volumes (s390.md §11).

Registers go into each CPU's prefix page by STORE STATUS (writers.s390.store_status).
"""

from __future__ import annotations

import struct
import zlib

from writers import s390 as ws

MAGIC = 0xA8190173618F23ED
ASM_MAGIC = 0x733339302D64756D
HEADER_FORMAT = ">QIIIIQQQI256sQQ65s65s65s65s65s65sQIII"


def header(mem_size: int, *, compress: bool, seconds: int, release: str = "<unknown>",
           cpu_id: int = 0xFF0123452964) -> bytes:
    panic = f"zSeries-dump (CPUID = {cpu_id:016x})".encode()
    return struct.pack(HEADER_FORMAT, MAGIC, 8, 734, 4, 4096, mem_size, 0, mem_size, mem_size // 4096,
                       panic, seconds, 0, b"<unknown>", b"<unknown>", release.encode(), b"<unknown>",
                       b"s390x", b"<unknown>", 0, 2 if compress else 0, 0, 0)


def asm_header(cpus: list[ws.CpuState], real_cpu_cnt: int | None = None) -> bytes:
    raw = bytearray(2068)
    struct.pack_into(">QIIHH", raw, 0, ASM_MAGIC, 0, 2068, len(cpus),
                     len(cpus) if real_cpu_cnt is None else real_cpu_cnt)
    for i, cpu in enumerate(cpus):
        struct.pack_into(">I", raw, 0x14 + 4 * i, cpu.registers["prefix"])
    return bytes(raw)


def write_lkcd(f, read, mem_size: int, cpus: list[ws.CpuState], *, seconds: int = 1_700_000_000,
               compress: bool = False, skip_zero: bool = False, with_asm: bool = True,
               with_end: bool = True) -> int:
    """Header, asm header, zeros to 0x10000, page records, end record; returns pages written."""
    read = ws.memory_with_status(read, cpus)
    head = header(mem_size, compress=compress, seconds=seconds)
    if with_asm:
        head += asm_header(cpus)
    f.write(head.ljust(0x10000, b"\0"))
    written = 0
    zero = bytes(4096)
    for block in range(0, mem_size, 16 << 20):
        data = read(block, min(16 << 20, mem_size - block))
        for p in range(0, len(data), 4096):
            page = data[p:p + 4096]
            if skip_zero and page == zero:
                continue
            if compress:
                packed = zlib.compress(page)
                if len(packed) < 4096:
                    f.write(struct.pack(">QII", block + p, len(packed), 2) + packed)
                    written += 1
                    continue
            f.write(struct.pack(">QII", block + p, 4096, 1) + page)
            written += 1
    if with_end:
        f.write(struct.pack(">QII", 0, 0, 4))
    return written


def write_legacy_s390(f, read, mem_size: int, *, version: int, arch: int, tod_start: int,
                      tod_end: int, mv_volume: int | None = None, slice_size: int | None = None):
    """A plain s390 header of an old version (no cpu_cnt/lc_vec before 5), flat memory, end marker.

    `mv_volume` writes one volume of a non-extended multi-volume dump
    (ZMULT64): ...FD magic and mvdump_sign, volnr, memory up to `slice_size`.
    """
    raw = bytearray(4096)
    struct.pack_into(">QIIIIQQQIIQQI", raw, 0, ws.MAGIC_S390, version, 0x1000, 4, 4096, mem_size, 0,
                     mem_size, mem_size >> 12, 0, tod_start, 0xFF0123452964, arch)
    if mv_volume is not None:
        struct.pack_into(">I", raw, 0x4C, mv_volume)
        raw[0x5C] = 1
        struct.pack_into(">Q", raw, 0x200, ws.MAGIC_S390)
    f.write(raw)
    first = (mv_volume or 0) * (slice_size or 0)
    last = mem_size if slice_size is None else min(mem_size, first + slice_size)
    for address in range(first, last, 16 << 20):
        f.write(read(address, min(16 << 20, last - address)))
    if last == mem_size:
        f.write(ws.end_marker(tod_end))
