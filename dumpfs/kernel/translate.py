"""Virtual memory of the dumped kernel: address spaces and a reader that follows them.

An `AddressSpace` turns one virtual address into a physical one (and says how
far the mapping runs); `KernelMemory` reads through one, page by page, like
the kernel's C would (`read_u64`, `read_pointer`, `read_cstring`).  The
architecture walks live in `x86_64_paging` and `s390x_dat`; this module picks
the kernel's address space for a dump:

    x86_64   4/5-level page tables from SYMBOL(init_top_pgt) (kernel image
             mapping + phys_base to find it), else CPU 0's CR3
    s390x    DAT tables from SYMBOL(swapper_pg_dir) or a CPU's CR1/CR13
             kernel ASCE; the identity map (elf-vmcore.md §6) as fallback

A failed translation raises `TranslationError`, a `MemoryUnavailable`, for
that address only.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict

from dumpfs.model import Dump, MemoryUnavailable


class TranslationError(MemoryUnavailable):
    """A virtual address that has no physical page (not mapped, or the tables are unreadable)."""

    def __init__(self, address: int, reason: str):
        Exception.__init__(self, f"virtual address {address:#x}: {reason}")
        self.address = address
        self.reason = reason


class TableCache:
    """A bounded LRU of page-table pages by physical address (shared by the walks of one dump)."""

    def __init__(self, dump: Dump, capacity: int = 512, page_size: int = 4096):
        self.dump = dump
        self.capacity = capacity
        self.page_size = page_size
        self._pages: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def page(self, address: int) -> bytes:
        base = address - address % self.page_size
        with self._lock:
            data = self._pages.get(base)
            if data is not None:
                self._pages.move_to_end(base)
                return data
        data = self.dump.read_physical(base, self.page_size)
        with self._lock:
            self._pages[base] = data
            while len(self._pages) > self.capacity:
                self._pages.popitem(last=False)
        return data

    def entry(self, address: int, fmt: str) -> int:
        """The 8-byte table entry at physical `address` (fmt "<Q" or ">Q")."""
        return struct.unpack_from(fmt, self.page(address), address % self.page_size)[0]


class AddressSpace:
    """One virtual address space; `translate` returns (physical, bytes mapped from there on)."""

    name = "address space"

    def translate(self, address: int) -> tuple[int, int]:
        raise NotImplementedError


class IdentitySpace(AddressSpace):
    """virtual = physical (minus an optional offset): the s390 identity map, real mode."""

    name = "identity"

    def __init__(self, offset: int = 0, page_size: int = 4096):
        self.offset = offset
        self.page_size = page_size

    def translate(self, address: int) -> tuple[int, int]:
        return address - self.offset, self.page_size - address % self.page_size


class FallbackSpace(AddressSpace):
    """Ask `first`; where it cannot translate, ask `second` (e.g. page tables, then identity)."""

    def __init__(self, first: AddressSpace, second: AddressSpace):
        self.first, self.second = first, second
        self.name = f"{first.name}, else {second.name}"

    def translate(self, address: int) -> tuple[int, int]:
        try:
            return self.first.translate(address)
        except MemoryUnavailable as first_error:
            try:
                return self.second.translate(address)
            except MemoryUnavailable:
                raise first_error from None


class KernelMemory:
    """Reads virtual memory of one address space, with a small bounded TLB."""

    TLB_ENTRIES = 4096

    def __init__(self, dump: Dump, space: AddressSpace, page_size: int | None = None):
        self.dump = dump
        self.space = space
        self.page_size = page_size or dump.page_size or 4096
        self.prefix = dump.arch.struct_prefix
        self.byteorder = dump.arch.byteorder
        self._tlb: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()

    # -- translation --------------------------------------------------------
    def translate(self, address: int) -> int:
        """The physical address of `address`; raises TranslationError."""
        page_mask = self.page_size - 1
        vpage = address & ~page_mask
        with self._lock:
            ppage = self._tlb.get(vpage)
            if ppage is not None:
                self._tlb.move_to_end(vpage)
                return ppage | (address & page_mask)
        if not 0 <= address < 1 << 64:
            raise TranslationError(address % (1 << 64), "address out of range")
        physical, _ = self.space.translate(vpage)
        with self._lock:
            self._tlb[vpage] = physical
            while len(self._tlb) > self.TLB_ENTRIES:
                self._tlb.popitem(last=False)
        return physical | (address & page_mask)

    # -- reads ----------------------------------------------------------------
    def read(self, address: int, size: int) -> bytes:
        """`size` bytes at virtual `address`; raises MemoryUnavailable at the first bad page."""
        if size <= 0:
            return b""
        parts = []
        end = address + size
        while address < end:
            length = min(end, (address | (self.page_size - 1)) + 1) - address
            physical = self.translate(address)
            try:
                parts.append(self.dump.read_physical(physical, length))
            except TranslationError:
                raise
            except MemoryUnavailable as exc:
                raise TranslationError(address, f"maps to physical {physical:#x}: {exc.reason}") from None
            address += length
        return b"".join(parts)

    def try_read(self, address: int, size: int) -> bytes | None:
        try:
            return self.read(address, size)
        except MemoryUnavailable:
            return None

    def _unpack(self, fmt: str, address: int) -> int:
        return struct.unpack(self.prefix + fmt, self.read(address, struct.calcsize(fmt)))[0]

    def read_u8(self, address: int) -> int:
        return self.read(address, 1)[0]

    def read_u16(self, address: int) -> int:
        return self._unpack("H", address)

    def read_u32(self, address: int) -> int:
        return self._unpack("I", address)

    def read_s32(self, address: int) -> int:
        return self._unpack("i", address)

    def read_u64(self, address: int) -> int:
        return self._unpack("Q", address)

    def read_s64(self, address: int) -> int:
        return self._unpack("q", address)

    read_pointer = read_u64
    read_ulong = read_u64

    def read_cstring(self, address: int, max_length: int = 4096) -> bytes:
        """A NUL-terminated string (without the NUL), at most `max_length` bytes."""
        out = bytearray()
        while len(out) < max_length:
            chunk = self.read(address, min(max_length - len(out),
                                           self.page_size - address % self.page_size))
            nul = chunk.find(b"\0")
            if nul >= 0:
                out += chunk[:nul]
                return bytes(out)
            out += chunk
            address += len(chunk)
        return bytes(out)

    def array(self, fmt: str, address: int, count: int) -> tuple:
        """`count` items of struct format `fmt` (no prefix) at `address`, read in one go."""
        size = struct.calcsize(fmt)
        return struct.unpack(f"{self.prefix}{count}{fmt}", self.read(address, size * count))


# ---------------------------------------------------------------------------
# Choosing the kernel's address space
# ---------------------------------------------------------------------------

def kernel_address_space(dump: Dump, cache: TableCache | None = None) -> tuple[AddressSpace, list[str]]:
    """The kernel's own address space and notes on how it was found (or what is missing)."""
    cache = cache or TableCache(dump)
    if dump.arch.name == "x86_64":
        from dumpfs.kernel.x86_64_paging import kernel_space
        return kernel_space(dump, cache)
    if dump.arch.name == "s390x":
        from dumpfs.kernel.s390x_dat import kernel_space
        return kernel_space(dump, cache)
    raise TranslationError(0, f"no address translation for {dump.arch.name}")


def user_address_space(dump: Dump, pgd: int, cache: TableCache | None = None) -> AddressSpace:
    """A process's address space from its top-level table (x86_64: CR3 / mm->pgd as
    physical address; s390x: an ASCE or a physical table origin)."""
    cache = cache or TableCache(dump)
    if dump.arch.name == "x86_64":
        from dumpfs.kernel.x86_64_paging import X86_64Paging, paging_levels
        return X86_64Paging(cache, pgd, paging_levels(dump), sme_mask(dump))
    if dump.arch.name == "s390x":
        from dumpfs.kernel.s390x_dat import DatSpace
        return DatSpace.from_asce(cache, pgd)
    raise TranslationError(0, f"no address translation for {dump.arch.name}")


def sme_mask(dump: Dump) -> int:
    info = dump.vmcoreinfo
    return (info.number("NUMBER(sme_mask)") or 0) if info is not None else 0


def kernel_memory(dump: Dump) -> tuple[KernelMemory, list[str]]:
    space, notes = kernel_address_space(dump)
    return KernelMemory(dump, space), notes
