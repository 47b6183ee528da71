"""Finding VMCOREINFO when the dump has no note for it.

QEMU's s390x dumps (and every s390 memory-image format) carry no VMCOREINFO
note; the kernel keeps it in memory and points to it from the lowcore.
"""

from __future__ import annotations

import struct

from construct import Array, Bytes, Const, ConstructError, Int16ub, Int32ub, Int64ub, Struct

from dumpfs.model import Dump, MemoryUnavailable, VmcoreInfo

LOWCORE_VMCORE_INFO = 0xE0C     # u64: physical address of the VMCOREINFO ELF note
LOWCORE_OS_INFO = 0xE18         # u64: physical address of struct os_info
MAX_VMCOREINFO = 1 << 16

OsInfoEntry = Struct(
    "addr_or_val" / Int64ub,    # address of the data, or the value itself
    "size" / Int64ub,           # size of the data at addr
    "csum" / Int32ub,           # CHECKSUM of the data
)

# struct os_info, the kernel's page of pointers for dump tools (arch/s390/include/asm/os_info.h)
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
OS_INFO_VMCOREINFO = 0


def read_os_info(dump: Dump):
    try:
        address = struct.unpack(">Q", dump.read_physical(LOWCORE_OS_INFO, 8))[0]
        if not address or address % 4096:
            return None
        return OsInfo.parse(dump.read_physical(address, OsInfo.sizeof()))
    except (MemoryUnavailable, ConstructError):
        return None


def _from_os_info(dump: Dump) -> bytes | None:
    os_info = read_os_info(dump)
    if os_info is None:
        return None
    entry = os_info.entry[OS_INFO_VMCOREINFO]
    if entry.addr_or_val and 0 < entry.size <= MAX_VMCOREINFO:
        return dump.read_physical(entry.addr_or_val, entry.size)
    return None


def _from_lowcore_note(dump: Dump) -> bytes | None:
    address = struct.unpack(">Q", dump.read_physical(LOWCORE_VMCORE_INFO, 8))[0]
    if not address:
        return None
    namesz, descsz, _type = struct.unpack(">III", dump.read_physical(address, 12))
    if namesz != len(b"VMCOREINFO\0") or not 0 < descsz <= MAX_VMCOREINFO:
        return None
    if dump.read_physical(address + 12, namesz) != b"VMCOREINFO\0":
        return None
    return dump.read_physical(address + 24, descsz)


def locate_vmcoreinfo(dump: Dump) -> str:
    """Fill dump.vmcoreinfo from memory if it is missing; returns where it came from."""
    if dump.vmcoreinfo is not None:
        return "note"
    if dump.arch.name != "s390x":
        return "absent"
    for where, finder in (("os_info (lowcore 0xe18)", _from_os_info),
                          ("lowcore pointer 0xe0c", _from_lowcore_note)):
        try:
            raw = finder(dump)
        except MemoryUnavailable:
            raw = None
        if raw and b"OSRELEASE=" in raw:
            dump.vmcoreinfo = VmcoreInfo(raw.rstrip(b"\0"))
            return where
    return "absent"
