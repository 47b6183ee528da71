"""Test-side writer of z/VM VMDUMP spool files (as `vmur rec` stores them), from vmdump.md alone.

64-bit big storage format (FIR format 0x02) and, for the legacy reader, the
classic 64-bit format (0x82).  Memory comes from `read(address, length)`;
pages for which `stored(page_bytes)` is false are left out (VMDUMP's sparse
pages, zero on reading).  Registers are dumpfs register names.
"""

from __future__ import annotations

import struct

RECORD = 4096
GROUP = 4096 * 4096                 # memory covered by one key page (16 MiB)
KEY_STORED, KEY_ABSENT = 0xE1, 0xE0     # storage key bits above the "stored" bit 0x01


def ebcdic(text: str, size: int) -> bytes:
    return text.ljust(size).encode("cp500")[:size]


def adsr(tod: int, node: str = "ZVMTEST1", symptom: str = "") -> bytes:
    raw = bytearray(RECORD)
    raw[0:2] = b"\xe2\xd9"
    struct.pack_into(">Q", raw, 0x10, tod)
    raw[0x22:0x2A] = ebcdic(node, 8)
    raw[0x38:0x40] = ebcdic("VMDUMP", 8)
    if symptom:
        text = ebcdic(symptom, len(symptom))
        struct.pack_into(">HH", raw, 0x50, len(text), 0x200)
        raw[0x200:0x200 + len(text)] = text
    return bytes(raw)


def fir_first(regs: dict, online_cpus: int, storage_size: int, fir_format: int = 0x02) -> bytes:
    g = lambda name: regs.get(name, 0)   # noqa: E731
    raw = bytearray(1104)
    struct.pack_into(">16Q", raw, 0x010, *(g(f"r{i}") for i in range(16)))
    struct.pack_into(">I", raw, 0x090, g("prefix"))
    raw[0x0A9:0x0B1] = g("cpu_timer").to_bytes(8, "big")
    raw[0x0BB] = fir_format
    struct.pack_into(">QQ", raw, 0x0C0, g("psw_mask"), g("psw_addr"))
    struct.pack_into(">16Q", raw, 0x0D0, *(g(f"c{i}") for i in range(16)))
    struct.pack_into(">16Q", raw, 0x150, *(g(f"f{i}") for i in range(16)))
    raw[0x1D1:0x1D9] = g("clock_comparator").to_bytes(8, "big")
    struct.pack_into(">I", raw, 0x1DC, g("todpreg"))
    struct.pack_into(">16I", raw, 0x230, *(g(f"a{i}") for i in range(16)))
    struct.pack_into(">Q", raw, 0x280, storage_size)
    struct.pack_into(">H", raw, 0x390, online_cpus)
    struct.pack_into(">I", raw, 0x3C8, g("fpc"))
    return bytes(raw)


def fir_other(regs: dict, cpu_addr: int) -> bytes:
    g = lambda name: regs.get(name, 0)   # noqa: E731
    raw = bytearray(552)
    struct.pack_into(">H", raw, 0x000, cpu_addr)
    struct.pack_into(">16Q", raw, 0x010, *(g(f"f{i}") for i in range(16)))
    struct.pack_into(">16Q", raw, 0x090, *(g(f"r{i}") for i in range(16)))
    struct.pack_into(">QQ", raw, 0x110, g("psw_mask"), g("psw_addr"))
    struct.pack_into(">IIxxxxIQQ", raw, 0x128, g("prefix"), g("fpc"), g("todpreg"),
                     g("cpu_timer"), g("clock_comparator"))
    struct.pack_into(">16I", raw, 0x150, *(g(f"a{i}") for i in range(16)))
    struct.pack_into(">16Q", raw, 0x190, *(g(f"c{i}") for i in range(16)))
    return bytes(raw)


def _stored_flags(read, mem_size: int, stored, only_groups=None) -> dict[int, list[bool]]:
    """{group: one flag per page} for the 16 MiB groups with at least one stored page."""
    flags = {}
    groups = range(-(-mem_size // GROUP)) if only_groups is None else sorted(only_groups)
    for g in groups:
        block = read(g * GROUP, min(GROUP, mem_size - g * GROUP))
        group = [stored(block[p:p + 4096]) for p in range(0, len(block), 4096)]
        if any(group):
            flags[g] = group
    return flags


def nonzero(page: bytes) -> bool:
    return page.count(0) != len(page)


def write_vmdump(f, read, mem_size: int, cpus: list[dict], *, tod: int, stored=nonzero,
                 fir_format: int = 0x02, requested_ranges: list[tuple[int, int]] | None = None,
                 symptom: str = "DUMPFS TEST", def_store: int | None = None,
                 only_groups: set[int] | None = None) -> dict:
    """Writes the spool file; returns facts for the tests (data_start, stored page count)."""
    pages = mem_size // 4096
    flags = _stored_flags(read, mem_size, stored, only_groups)
    firs = fir_first(cpus[0], len(cpus) - 1, mem_size, fir_format) + \
        b"".join(fir_other(r, n + 1) for n, r in enumerate(cpus[1:]))
    fir_records = -(-len(firs) // RECORD)
    rec_nr_fir, rec_nr_access = 3, 3 + fir_records
    f.write(adsr(tod, symptom=symptom))
    fmbk = bytearray(RECORD)
    fmbk[:8] = ebcdic("HCPDFMBK", 8)
    struct.pack_into(">6I", fmbk, 8, rec_nr_fir, 0, rec_nr_access, 1, 1, rec_nr_access + 1)
    f.write(fmbk)
    f.write(firs.ljust(fir_records * RECORD, b"\0"))
    f.write(ebcdic("HCPDALBK", 8).ljust(RECORD, b"\0"))
    asizbk = bytearray(RECORD)
    asizbk[:8] = ebcdic("ASIZBK", 8)
    if fir_format == 0x02:
        struct.pack_into(">QQ", asizbk, 0x40, mem_size, def_store or mem_size)
        ranges = requested_ranges or []
        struct.pack_into(">I", asizbk, 0xD8, len(ranges))
        struct.pack_into(">QQ", asizbk, 0xE0, 0, mem_size - 1)
        for i, (start, last) in enumerate(ranges):
            struct.pack_into(">QQ", asizbk, 0x160 + 16 * i, start, last)
        f.write(asizbk)
        groups = -(-pages // 4096)
        for first in range(0, groups, RECORD * 8):
            index = bytearray(RECORD)
            keys = []
            for g in sorted(g for g in flags if first <= g < first + RECORD * 8):
                index[(g - first) >> 3] |= 0x80 >> ((g - first) & 7)
                keys.append(bytes(KEY_STORED if s else KEY_ABSENT for s in flags[g]).ljust(RECORD, b"\0"))
            f.write(index)
            f.write(b"".join(keys))
    else:
        struct.pack_into(">I", asizbk, 0x34, mem_size)
        f.write(asizbk)
        bitmap = bytearray(-(-(pages // 8) // RECORD) * RECORD)
        keys = bytearray(-(-pages // 4096) * RECORD)
        for g, group in flags.items():
            for i, s in enumerate(group):
                p = g * 4096 + i
                if s:
                    bitmap[p >> 3] |= 0x80 >> (p & 7)
                keys[p] = KEY_STORED if s else KEY_ABSENT
        f.write(bitmap)
        f.write(keys)
    data_start = f.tell()
    for g in sorted(flags):
        block = read(g * GROUP, min(GROUP, mem_size - g * GROUP))
        f.write(b"".join(block[p * 4096:(p + 1) * 4096] for p, s in enumerate(flags[g]) if s))
    return {"data_start": data_start, "stored_pages": sum(map(sum, flags.values())),
            "groups": sorted(flags)}
