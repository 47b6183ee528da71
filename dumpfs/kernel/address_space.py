"""Virtual memory of the dumped kernel: address spaces and a reader that follows them.

An `AddressSpace` turns one virtual address into a physical one (and says how
far the mapping runs); `KernelMemory` reads through one, page by page, like
the kernel's C would (`read_u64`, `read_pointer`, `read_cstring`).  The
machine's own walks (page tables, DAT) live in `dumpfs/arch/`, which build on
these classes; `kernel_memory` asks the dump's architecture for the kernel's
address space.

A failed translation raises `TranslationError`, a `MemoryUnavailable`, for
that address only.  This module imports nothing else of `dumpfs.kernel`.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from dumpfs.errors import MemoryUnavailable, TranslationError
from dumpfs.model import PageCache

if TYPE_CHECKING:
    from dumpfs.model import Dump

__all__ = ["AddressSpace", "FallbackSpace", "IdentitySpace", "KernelMemory", "TableCache",
           "TranslationError", "kernel_memory"]


class TableCache:
    """A bounded LRU of physical pages by address: page-table pages (shared by the walks of
    one dump), or the pages small reads touch."""

    def __init__(self, dump: Dump, capacity: int = 512, page_size: int = 4096):
        self.dump = dump
        self.page_size = page_size
        self._pages = PageCache(capacity)

    def page(self, address: int) -> bytes:
        base = address - address % self.page_size
        data = self._pages.get(base)
        if data is None:
            data = self.dump.read_physical(base, self.page_size)
            self._pages.put(base, data)
        return data

    def entry(self, address: int, fmt: str) -> int:
        """The 8-byte table entry at physical `address` (fmt "<Q" or ">Q")."""
        return struct.unpack_from(fmt, self.page(address), address % self.page_size)[0]


class AddressSpace:
    """One virtual address space; `translate` returns (physical, bytes mapped from there on).

    `want` is how many bytes the caller is after: a space may then answer a longer run than
    one page where the following pages are physically contiguous (a page-table walk may read a
    whole page of entries at once), so a large read translates once per run."""

    name = "address space"

    def translate(self, address: int, want: int = 0) -> tuple[int, int]:
        raise NotImplementedError

    def runs(self, address: int, size: int):
        """(virtual, physical, length) of the physically contiguous runs of [address,
        address + size), in order; raises TranslationError where a page does not translate
        (after yielding the runs before it)."""
        end = address + size
        run = None
        while address < end:
            physical, mapped = self.translate(address, end - address)
            length = min(mapped, end - address)
            if run is not None and run[1] + run[2] == physical:
                run[2] += length
            else:
                if run is not None:
                    yield tuple(run)
                run = [address, physical, length]
            address += length
        if run is not None:
            yield tuple(run)


class IdentitySpace(AddressSpace):
    """virtual = physical (minus an optional offset): the s390 identity map, real mode."""

    name = "identity"

    def __init__(self, offset: int = 0, page_size: int = 4096):
        self.offset = offset
        self.page_size = page_size

    def translate(self, address: int, want: int = 0) -> tuple[int, int]:
        return address - self.offset, max(want, self.page_size - address % self.page_size)


class FallbackSpace(AddressSpace):
    """Ask `first`; where it cannot translate, ask `second` (e.g. page tables, then identity)."""

    def __init__(self, first: AddressSpace, second: AddressSpace):
        self.first, self.second = first, second
        self.name = f"{first.name}, else {second.name}"

    def translate(self, address: int, want: int = 0) -> tuple[int, int]:
        try:
            return self.first.translate(address, want)
        except MemoryUnavailable as first_error:
            try:
                return self.second.translate(address, want)
            except MemoryUnavailable:
                raise first_error from None


class KernelMemory:
    """Reads virtual memory of one address space, with a small bounded TLB and a bounded
    cache of the physical pages that small reads touched (a task walk reads a few members
    of each task_struct, list pointer and all, from the same pages), shared like `tables`."""

    TLB_ENTRIES = 4096
    HUGE_RUNS = 16                      # remembered huge-page runs per GiB of addresses
    PAGE_CACHE_ENTRIES = 1024           # 4 MiB of 4 KiB pages

    def __init__(self, dump: Dump, space: AddressSpace, page_size: int | None = None,
                 tables: TableCache | None = None, pages: TableCache | None = None):
        self.dump = dump
        self.space = space
        self.tables = tables or TableCache(dump)     # shared with the user spaces it opens
        self.page_size = page_size or dump.page_size or 4096
        self.pages = pages or TableCache(dump, self.PAGE_CACHE_ENTRIES, self.page_size)
        self.prefix = dump.arch.struct_prefix
        self.byteorder = dump.arch.byteorder
        self._tlb: OrderedDict[int, int] = OrderedDict()
        # runs a translation said are contiguous beyond their page (huge pages: the direct
        # map's task_structs, slabs): GiB -> [(virtual start, end, physical start)]
        self._huge: dict[int, list[tuple[int, int, int]]] = {}
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
        physical = self._in_huge(vpage)
        if physical is None:
            physical, mapped = self.space.translate(vpage)
            if mapped > self.page_size:
                self._remember_huge(vpage, mapped, physical)
        with self._lock:
            self._tlb[vpage] = physical
            while len(self._tlb) > self.TLB_ENTRIES:
                self._tlb.popitem(last=False)
        return physical | (address & page_mask)

    def _in_huge(self, vpage: int) -> int | None:
        """The physical page of `vpage` from a run translated before, or None."""
        for start, end, physical in self._huge.get(vpage >> 30, ()):
            if start <= vpage < end:
                return physical + vpage - start
        return None

    def _remember_huge(self, vpage: int, mapped: int, physical: int) -> None:
        """Keep a run of more than one page (bounded: HUGE_RUNS per GiB of addresses)."""
        with self._lock:
            runs = self._huge.setdefault(vpage >> 30, [])
            if len(runs) >= self.HUGE_RUNS:
                del runs[0]
            runs.append((vpage, vpage + mapped, physical))

    # -- reads ----------------------------------------------------------------
    def read(self, address: int, size: int) -> bytes:
        """`size` bytes at virtual `address`; raises MemoryUnavailable at the first bad page.
        Within one page: through the TLB and the page cache; longer: one read of the dump
        per physically contiguous run (the page tables walked once per run)."""
        if size <= 0:
            return b""
        offset = address & (self.page_size - 1)
        if offset + size <= self.page_size:
            physical = self.translate(address)
            page = self._page(physical - offset)
            return page[offset:offset + size] if page is not None else \
                self._read_physical(address, physical, size)
        if not 0 <= address < 1 << 64:
            raise TranslationError(address % (1 << 64), "address out of range")
        parts = [self._read_physical(virtual, physical, length)
                 for virtual, physical, length in self.space.runs(address, size)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_physical(self, address: int, physical: int, size: int) -> bytes:
        """The dump's bytes of a run that virtual `address` maps to `physical`; a failure
        names the first page of the run that cannot be read."""
        try:
            return self.dump.read_physical(physical, size)
        except TranslationError:
            raise
        except MemoryUnavailable as exc:
            if size <= self.page_size - physical % self.page_size:
                raise TranslationError(address, f"maps to physical {physical:#x}: "
                                                f"{exc.reason}") from None
        parts, done = [], 0                     # which page of the run is it?
        while done < size:
            length = min(size - done, self.page_size - (physical + done) % self.page_size)
            parts.append(self._read_physical(address + done, physical + done, length))
            done += length
        return b"".join(parts)

    def _page(self, physical: int) -> bytes | None:
        """The whole physical page (cached), or None when the dump cannot give it whole
        (then the caller reads just what it needs)."""
        try:
            page = self.pages.page(physical)
        except MemoryUnavailable:
            return None
        return page if len(page) == self.page_size else None

    def read_with_holes(self, address: int, size: int) -> tuple[bytes, list[tuple[int, int, str]]]:
        """`size` bytes at `address`, a page that cannot be read as zeros; and those pages as
        (offset, length, why) - so a caller can use what it needs of a partly readable range."""
        parts, holes = [], []
        offset = 0
        while offset < size:
            length = min(size - offset, self.page_size - (address + offset) % self.page_size)
            try:
                parts.append(self.read(address + offset, length))
            except MemoryUnavailable as exc:
                parts.append(bytes(length))
                holes.append((offset, length, str(exc)))
            offset += length
        return b"".join(parts), holes

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


def kernel_memory(dump: Dump) -> tuple[KernelMemory, list[str]]:
    """The kernel's own address space, as the dump's architecture finds it, and notes on how
    it was found (or what is missing); raises TranslationError when there is none."""
    rules = dump.arch.kernel
    if rules is None:
        raise TranslationError(0, f"no address translation for {dump.arch.name}")
    tables = TableCache(dump)
    space, notes = rules.kernel_space(dump, tables)
    return KernelMemory(dump, space, tables=tables), notes
