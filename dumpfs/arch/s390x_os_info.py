"""s390 os_info: the kernel's page of pointers for dump tools, and the KASLR rule it gives.

The lowcore points to it (0xE18) and, on older kernels, straight to the
VMCOREINFO note (0xE0C): QEMU's s390x dumps and every s390 memory-image
format carry no VMCOREINFO note, so it is found there.  Newer kernels also
record where KASLR put the kernel; `S390IdentityMap` turns a kernel address
into a physical one with them, as zgetdump's dfi_vm_vtop (elf-vmcore.md §6).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from construct import Array, Bytes, Const, ConstructError, Int16ub, Int32ub, Int64ub, Struct

from dumpfs.errors import MemoryUnavailable
from dumpfs.kernel.address_space import AddressSpace

if TYPE_CHECKING:
    from dumpfs.model import Dump

LOWCORE_VMCORE_INFO = 0xE0C     # u64: physical address of the VMCOREINFO ELF note
LOWCORE_OS_INFO = 0xE18         # u64: physical address of struct os_info
LOWCORE_SIZE = 0x2000           # the prefix area: never relocated by KASLR
MAX_VMCOREINFO = 1 << 16

OsInfoEntry = Struct(
    "addr_or_val" / Int64ub,    # address of the data, or the value itself
    "size" / Int64ub,           # size of the data at addr
    "csum" / Int32ub,           # CHECKSUM of the data
)

# struct os_info (arch/s390/include/asm/os_info.h)
OsInfo = Struct(
    "magic" / Const(b"OSINFOSZ"),   # 0x4F53494E464F535A
    "csum" / Int32ub,               # checksum over bytes 0x0C..0xFFF
    "version_major" / Int16ub,
    "version_minor" / Int16ub,
    "crashkernel_addr" / Int64ub,
    "crashkernel_size" / Int64ub,
    "entry" / Array(13, OsInfoEntry),
    "reserved" / Bytes(3804),
)
# entry indexes: VMCOREINFO, and the value entries of s390 KASLR (newer kernels only)
OS_INFO_VMCOREINFO = 0
OS_INFO_IDENTITY_BASE, OS_INFO_KASLR_OFFSET, OS_INFO_KASLR_OFF_PHYS = 4, 5, 6
OS_INFO_AMODE31_START, OS_INFO_AMODE31_END = 8, 9


def read_os_info(dump: Dump):
    """The parsed os_info page, or None (no pointer, misaligned, unreadable, bad magic)."""
    try:
        address = struct.unpack(">Q", dump.read_physical(LOWCORE_OS_INFO, 8))[0]
        if not address or address % 4096:
            return None
        return OsInfo.parse(dump.read_physical(address, OsInfo.sizeof()))
    except (MemoryUnavailable, ConstructError):
        return None


# -- VMCOREINFO in memory ---------------------------------------------------------------

def vmcoreinfo_from_os_info(dump: Dump) -> bytes | None:
    os_info = read_os_info(dump)
    if os_info is None:
        return None
    entry = os_info.entry[OS_INFO_VMCOREINFO]
    if entry.addr_or_val and 0 < entry.size <= MAX_VMCOREINFO:
        return dump.read_physical(entry.addr_or_val, entry.size)
    return None


def vmcoreinfo_from_lowcore_note(dump: Dump) -> bytes | None:
    address = struct.unpack(">Q", dump.read_physical(LOWCORE_VMCORE_INFO, 8))[0]
    if not address:
        return None
    namesz, descsz, _type = struct.unpack(">III", dump.read_physical(address, 12))
    if namesz != len(b"VMCOREINFO\0") or not 0 < descsz <= MAX_VMCOREINFO:
        return None
    if dump.read_physical(address + 12, namesz) != b"VMCOREINFO\0":
        return None
    return dump.read_physical(address + 24, descsz)


VMCOREINFO_FINDERS = (("os_info (lowcore 0xe18)", vmcoreinfo_from_os_info),
                      ("lowcore pointer 0xe0c", vmcoreinfo_from_lowcore_note))


# -- KASLR ----------------------------------------------------------------------------

class S390IdentityMap(AddressSpace):
    """dfi_vm_vtop (elf-vmcore.md §6): the identity map, shifted by os_info's KASLR entries."""

    name = "s390 identity map (os_info)"

    def __init__(self, dump: Dump):
        os_info = read_os_info(dump)

        def entry(i):
            return os_info.entry[i].addr_or_val if os_info is not None else 0
        self.kaslr_offset = entry(OS_INFO_KASLR_OFFSET)
        self.identity_base = entry(OS_INFO_IDENTITY_BASE)
        self.kaslr_off_phys = entry(OS_INFO_KASLR_OFF_PHYS)
        self.amode31 = (entry(OS_INFO_AMODE31_START), entry(OS_INFO_AMODE31_END))

    def physical(self, address: int) -> int:
        if not self.kaslr_offset:
            return address      # before s390 KASLR bookkeeping: virtual == physical
        if address < LOWCORE_SIZE or self.amode31[0] <= address < self.amode31[1]:
            return address
        if address < self.kaslr_offset:
            return address - self.identity_base
        return address - self.kaslr_offset + self.kaslr_off_phys

    def translate(self, address: int, want: int = 0) -> tuple[int, int]:
        return self.physical(address), 0x1000 - address % 0x1000
