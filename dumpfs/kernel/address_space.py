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

if TYPE_CHECKING:
    from dumpfs.model import Dump

__all__ = ["AddressSpace", "FallbackSpace", "IdentitySpace", "KernelMemory", "TableCache",
           "TranslationError", "kernel_memory"]


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

    def __init__(self, dump: Dump, space: AddressSpace, page_size: int | None = None,
                 tables: TableCache | None = None):
        self.dump = dump
        self.space = space
        self.tables = tables or TableCache(dump)     # shared with the user spaces it opens
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
