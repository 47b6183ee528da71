"""x86_64 4- and 5-level paging (arch/x86/include/asm/pgtable_types.h), read from the dump.

    PGD (PML5) -> P4D (PML4) -> PUD (PDPT) -> PMD (PD) -> PTE
    _PAGE_PRESENT bit 0; _PAGE_PSE bit 7 in a PUD (1 GiB) or PMD (2 MiB) entry;
    physical address bits 12..51 (PTE_PFN_MASK), minus the SME encryption bit.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from dumpfs.errors import MemoryUnavailable, TranslationError
from dumpfs.kernel.address_space import AddressSpace, FallbackSpace, TableCache

if TYPE_CHECKING:
    from dumpfs.model import Dump

START_KERNEL_MAP = 0xFFFFFFFF80000000      # __START_KERNEL_map
DEFAULT_KERNEL_IMAGE_SIZE = 1 << 30        # KERNEL_IMAGE_SIZE with KASLR
PAGE_OFFSET_L4 = 0xFFFF888000000000        # __PAGE_OFFSET_BASE_L4 (without RANDOMIZE_MEMORY)
PAGE_OFFSET_L5 = 0xFF11000000000000        # __PAGE_OFFSET_BASE_L5

_PAGE_PRESENT = 1 << 0
_PAGE_PSE = 1 << 7
PTE_PFN_MASK = 0x000FFFFFFFFFF000
LEVEL_NAMES = {5: ("PML5", "P4D", "PUD", "PMD", "PTE"), 4: ("PGD", "PUD", "PMD", "PTE")}
SHIFTS = {5: (48, 39, 30, 21, 12), 4: (39, 30, 21, 12)}


_PTES = [struct.Struct(f"<{n}Q") for n in range(512)]     # the entries after one, at most 511


class X86_64Paging(AddressSpace):
    """Page tables rooted at physical `pgd` (a CR3 value: low flag/PCID bits are ignored)."""

    def __init__(self, cache: TableCache, pgd: int, levels: int = 4, sme: int = 0):
        if levels not in SHIFTS:
            raise ValueError(f"x86_64 paging has 4 or 5 levels, not {levels}")
        self.cache = cache
        self.levels = levels
        self.address_mask = PTE_PFN_MASK & ~sme
        self.pgd = pgd & self.address_mask
        self.name = f"x86_64 {levels}-level page tables at {self.pgd:#x}"
        self._top_bit = 56 if levels == 5 else 47

    def translate(self, address: int, want: int = 0) -> tuple[int, int]:
        """With `want` beyond this page, the run goes on over the following entries of the
        same page table (one table covers 2 MiB) while they map the next physical pages."""
        top = address >> self._top_bit
        if top not in (0, (1 << (64 - self._top_bit)) - 1):
            raise TranslationError(address, "not canonical")
        names = LEVEL_NAMES[self.levels]
        table = self.pgd
        for name, shift in zip(names, SHIFTS[self.levels]):
            slot = table + ((address >> shift) & 511) * 8
            try:
                entry = self.cache.entry(slot, "<Q")
            except MemoryUnavailable as exc:
                raise TranslationError(address, f"{name} table entry at physical {slot:#x} "
                                                f"unreadable: {exc.reason}") from None
            if not entry & _PAGE_PRESENT:
                raise TranslationError(address, f"not mapped ({name} entry {entry:#x} not present)",
                                       unmapped_until=(address | ((1 << shift) - 1)) + 1)
            if shift in (30, 21) and entry & _PAGE_PSE:
                size = 1 << shift
                offset = address & (size - 1)
                return (entry & self.address_mask & ~(size - 1)) | offset, size - offset
            table = entry & self.address_mask
        offset = address & 0xFFF
        physical = table | offset
        if want <= 0x1000 - offset:
            return physical, 0x1000 - offset
        index = (address >> 12) & 511
        count = min(512 - index, (offset + want + 0xFFF) >> 12)
        ptes = self.cache.page(slot)      # the PTE table holding the entry just read
        mask, expected = self.address_mask, table
        pages = 1
        for entry in _PTES[count - 1].unpack_from(ptes, slot % 4096 + 8):
            expected += 0x1000
            if not entry & _PAGE_PRESENT or entry & mask != expected:
                break
            pages += 1
        return physical, (pages << 12) - offset


class KernelImageSpace(AddressSpace):
    """The kernel-image mapping without page tables: v - __START_KERNEL_map + phys_base."""

    def __init__(self, phys_base: int, image_size: int = DEFAULT_KERNEL_IMAGE_SIZE):
        self.phys_base = phys_base
        self.image_size = image_size
        self.name = f"kernel image map (phys_base {phys_base:#x})"

    def translate(self, address: int, want: int = 0) -> tuple[int, int]:
        end = START_KERNEL_MAP + self.image_size
        if not START_KERNEL_MAP <= address < end:
            raise TranslationError(address, "outside the kernel image mapping")
        return (image_to_physical(address, self.phys_base),
                max(0x1000 - address % 0x1000, min(want, end - address)))


def image_to_physical(address: int, phys_base: int) -> int:
    """__pa_symbol(): a kernel-image address minus __START_KERNEL_map, plus phys_base."""
    return (address - START_KERNEL_MAP + phys_base) % (1 << 64)


def sme_mask(dump: Dump) -> int:
    """The AMD SME encryption bit that page-table entries carry beside the address."""
    info = dump.vmcoreinfo
    return (info.number("NUMBER(sme_mask)") or 0) if info is not None else 0


def paging_levels(dump: Dump) -> int:
    info = dump.vmcoreinfo
    if info is not None and info.number("NUMBER(pgtable_l5_enabled)") is not None:
        return 5 if info.number("NUMBER(pgtable_l5_enabled)") else 4
    for cpu in sorted(dump.cpus.values(), key=lambda c: c.number):
        if "cr4" in cpu.registers:
            return 5 if cpu.registers["cr4"] & (1 << 12) else 4     # CR4.LA57
    return 4


def kernel_space(dump: Dump, cache: TableCache) -> tuple[AddressSpace, list[str]]:
    """init_top_pgt's page tables (with the image map as fallback), else CPU 0's CR3."""
    info = dump.vmcoreinfo
    levels, sme = paging_levels(dump), sme_mask(dump)
    notes: list[str] = []
    image = None
    if info is not None and info.number("NUMBER(phys_base)") is not None:
        image = KernelImageSpace(info.number("NUMBER(phys_base)"),
                                 info.number("NUMBER(KERNEL_IMAGE_SIZE)") or DEFAULT_KERNEL_IMAGE_SIZE)
    pgd_symbol = None
    if info is not None:
        pgd_symbol = next(((n, info.symbol(n)) for n in ("init_top_pgt", "swapper_pg_dir")
                           if info.symbol(n) is not None), None)
    if pgd_symbol is not None and image is not None:
        name, virtual = pgd_symbol
        pgd = image.translate(virtual)[0]
        try:
            dump.read_physical(pgd, 4096)
            notes.append(f"kernel page tables: {name} at physical {pgd:#x} ({levels}-level)")
            return FallbackSpace(X86_64Paging(cache, pgd, levels, sme), image), notes
        except MemoryUnavailable as exc:
            notes.append(f"{name} at physical {pgd:#x} is not readable ({exc.reason})")
    elif info is None:
        notes.append("no VMCOREINFO: no SYMBOL(init_top_pgt) nor phys_base")
    else:
        notes.append("VMCOREINFO lacks SYMBOL(init_top_pgt)/SYMBOL(swapper_pg_dir) or NUMBER(phys_base)")
    for cpu in sorted(dump.cpus.values(), key=lambda c: c.number):
        cr3 = cpu.registers.get("cr3")
        if cr3:
            notes.append(f"kernel page tables: CPU {cpu.number}'s CR3 {cr3:#x} ({levels}-level)")
            space = X86_64Paging(cache, cr3, levels, sme)
            return (FallbackSpace(space, image) if image else space), notes
    if image is not None:
        notes.append("no page tables: only the kernel image mapping translates")
        return image, notes
    raise TranslationError(0, "; ".join(notes + ["no CPU has a CR3 register"]))


def user_space(dump: Dump, cr3: int, cache: TableCache) -> X86_64Paging:
    """A process's page tables from its CR3 (mm->pgd as a physical address)."""
    return X86_64Paging(cache, cr3, paging_levels(dump), sme_mask(dump))


def page_offset_base(kmem, symbols=None) -> tuple[int, str]:
    """PAGE_OFFSET, the direct map's start: the kernel's page_offset_base variable when a
    symbol table knows it (KASLR randomizes it), else the fixed default."""
    address = symbols.address("page_offset_base") if symbols is not None else None
    if address is not None:
        try:
            return kmem.read_u64(address), "page_offset_base (read from memory)"
        except MemoryUnavailable as exc:
            reason = f"page_offset_base unreadable: {exc}"
    else:
        reason = "no symbol page_offset_base"
    levels = getattr(kmem.space, "levels", None) or getattr(getattr(kmem.space, "first", None), "levels", 4)
    return (PAGE_OFFSET_L5 if levels == 5 else PAGE_OFFSET_L4), f"default ({reason})"
