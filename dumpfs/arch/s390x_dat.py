"""s390x dynamic address translation (arch/s390/include/asm/pgtable.h), read from the dump.

An ASCE designates the top table: origin (bits 0-51), DT (bits 60-61: 3 region-first,
2 region-second, 1 region-third, 0 segment), TL (62-63), real-space bit 0x20.
Region and segment tables hold 2048 8-byte entries (16 KiB), page tables 256 (2 KiB):

    RFX = va >> 53, RSX = va >> 42, RTX = va >> 31, SX = va >> 20 (11 bits each),
    PX = (va >> 12) & 0xff

Large pages: a region-third entry with FC (0x400, EDAT2) maps 2 GiB, a segment
entry with FC (0x400, EDAT1) maps 1 MiB.  Invalid: 0x20 in region and segment
entries, 0x400 in page-table entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dumpfs.arch.s390x_os_info import S390IdentityMap
from dumpfs.errors import MemoryUnavailable, TranslationError
from dumpfs.kernel.address_space import AddressSpace, FallbackSpace, IdentitySpace, TableCache

if TYPE_CHECKING:
    from dumpfs.model import Dump

_ASCE_REAL_SPACE = 0x20
_ASCE_TYPE_MASK = 0x0C
_ASCE_TABLE_LENGTH = 0x03
_REGION_ENTRY_ORIGIN = ~0xFFF
_REGION_ENTRY_OFFSET = 0xC0
_REGION_ENTRY_INVALID = 0x20
_REGION_ENTRY_TYPE_MASK = 0x0C
_REGION_ENTRY_LENGTH = 0x03
_REGION3_ENTRY_LARGE = 0x400
_REGION3_ENTRY_ORIGIN_LARGE = ~0x7FFFFFFF
_SEGMENT_ENTRY_ORIGIN = ~0x7FF
_SEGMENT_ENTRY_INVALID = 0x20
_SEGMENT_ENTRY_LARGE = 0x400
_SEGMENT_ENTRY_ORIGIN_LARGE = ~0xFFFFF
_SEGMENT_ENTRY_TYPE_MASK = 0x0C
_PAGE_INVALID = 0x400
PAGE_MASK = ~0xFFF
MASK64 = (1 << 64) - 1

# designation type -> (table name, index shift)
LEVELS = {3: ("region-first", 53), 2: ("region-second", 42), 1: ("region-third", 31), 0: ("segment", 20)}


class DatSpace(AddressSpace):
    """The address space of one ASCE-designated table."""

    def __init__(self, cache: TableCache, origin: int, dt: int, tl: int = 3):
        self.cache = cache
        self.origin = origin & _REGION_ENTRY_ORIGIN & MASK64
        self.dt = dt
        self.tl = tl
        self.name = f"s390x DAT, {LEVELS[dt][0]} table at {self.origin:#x}"

    @classmethod
    def from_asce(cls, cache: TableCache, asce: int) -> "AddressSpace":
        if asce & _ASCE_REAL_SPACE:
            return IdentitySpace()
        return cls(cache, asce, (asce & _ASCE_TYPE_MASK) >> 2, asce & _ASCE_TABLE_LENGTH)

    def _entry(self, address: int, table_name: str, slot: int) -> int:
        try:
            return self.cache.entry(slot, ">Q")
        except MemoryUnavailable as exc:
            raise TranslationError(address, f"{table_name} table entry at physical {slot:#x} "
                                            f"unreadable: {exc.reason}") from None

    def translate(self, address: int, want: int = 0) -> tuple[int, int]:
        dt, table, tl, tf = self.dt, self.origin, self.tl, 0
        top_shift = LEVELS[dt][1] + 11
        if top_shift < 64 and address >> top_shift:
            raise TranslationError(address, f"beyond the {LEVELS[dt][0]} table's reach (ASCE type)")
        while dt >= 0:
            name, shift = LEVELS[dt]
            index = (address >> shift) & 0x7FF
            if not tf <= index >> 9 <= tl:
                raise TranslationError(address, f"outside the {name} table's length")
            entry = self._entry(address, name, table + index * 8)
            if dt > 0:
                if entry & _REGION_ENTRY_INVALID:
                    raise TranslationError(address, f"not mapped ({name} entry {entry:#x} invalid)",
                                           unmapped_until=(address | ((1 << shift) - 1)) + 1)
                if (entry & _REGION_ENTRY_TYPE_MASK) >> 2 != dt:
                    raise TranslationError(address, f"{name} entry {entry:#x} has the wrong table type")
                if dt == 1 and entry & _REGION3_ENTRY_LARGE:
                    size = 1 << 31
                    offset = address & (size - 1)
                    return (entry & _REGION3_ENTRY_ORIGIN_LARGE & MASK64) | offset, size - offset
                table = entry & _REGION_ENTRY_ORIGIN & MASK64
                tf, tl = (entry & _REGION_ENTRY_OFFSET) >> 6, entry & _REGION_ENTRY_LENGTH
                dt -= 1
                continue
            # segment-table entry
            if entry & _SEGMENT_ENTRY_INVALID:
                raise TranslationError(address, f"not mapped (segment entry {entry:#x} invalid)",
                                       unmapped_until=(address | ((1 << shift) - 1)) + 1)
            if entry & _SEGMENT_ENTRY_TYPE_MASK:
                raise TranslationError(address, f"segment entry {entry:#x} has the wrong table type")
            if entry & _SEGMENT_ENTRY_LARGE:
                size = 1 << 20
                offset = address & (size - 1)
                return (entry & _SEGMENT_ENTRY_ORIGIN_LARGE & MASK64) | offset, size - offset
            page_table = entry & _SEGMENT_ENTRY_ORIGIN & MASK64
            slot = page_table + ((address >> 12) & 0xFF) * 8
            pte = self._entry(address, "page", slot)
            if pte & _PAGE_INVALID:
                raise TranslationError(address, f"not mapped (page-table entry {pte:#x} invalid)")
            offset = address & 0xFFF
            return (pte & PAGE_MASK & MASK64) | offset, 0x1000 - offset
        raise TranslationError(address, "bad designation type")


def _table_type(cache: TableCache, origin: int) -> int | None:
    """The designation type of the table at `origin`, from its valid entries' TT bits."""
    try:
        for page in range(4):
            data = cache.page(origin + page * 4096)
            for i in range(0, 4096, 8):
                entry = int.from_bytes(data[i:i + 8], "big")
                if entry and not entry & _REGION_ENTRY_INVALID:
                    return (entry & _REGION_ENTRY_TYPE_MASK) >> 2
    except MemoryUnavailable:
        return None
    return None


def kernel_space(dump: Dump, cache: TableCache) -> tuple[AddressSpace, list[str]]:
    """The kernel ASCE (swapper_pg_dir, CR1/CR7/CR13), with the identity map as fallback."""
    notes: list[str] = []
    identity = S390IdentityMap(dump)
    info = dump.vmcoreinfo
    swapper = info.symbol("swapper_pg_dir") if info is not None else None
    swapper_phys = identity.physical(swapper) if swapper is not None else None
    asces = []
    for cpu in sorted(dump.cpus.values(), key=lambda c: c.number):
        for cr in ("c1", "c13", "c7"):
            value = cpu.registers.get(cr)
            if value and not value & _ASCE_REAL_SPACE:
                asces.append((f"CPU {cpu.number} {cr.upper()}", value))
    chosen = None
    if swapper_phys is not None:
        chosen = next(((w, a) for w, a in asces if a & PAGE_MASK & MASK64 == swapper_phys), None)
        if chosen is None:
            dt = _table_type(cache, swapper_phys)
            if dt is not None:
                chosen = ("swapper_pg_dir", swapper_phys | dt << 2 | _ASCE_TABLE_LENGTH)
            else:
                notes.append(f"swapper_pg_dir at physical {swapper_phys:#x} has no valid entry")
    else:
        notes.append("no SYMBOL(swapper_pg_dir) in VMCOREINFO")
    if chosen is None and asces:
        # without swapper_pg_dir: CR13 (home space) is the kernel's in 6.x, CR1 in kernel mode
        chosen = next(((w, a) for w, a in asces if "C13" in w), asces[0])
    if chosen is None:
        notes.append(f"no kernel ASCE: using the identity map ({identity.name})")
        return identity, notes
    where, asce = chosen
    space = DatSpace.from_asce(cache, asce)
    notes.append(f"kernel address space: ASCE {asce:#x} from {where} ({space.name}), "
                 f"identity map as fallback")
    return FallbackSpace(space, identity), notes
