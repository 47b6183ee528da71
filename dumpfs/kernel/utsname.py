"""The kernel's utsname (node name, release, version) from init_uts_ns, as zgetdump -i shows it."""

from __future__ import annotations

from dataclasses import dataclass

from dumpfs.kernel.vmcoreinfo import read_os_info
from dumpfs.model import Dump, MemoryUnavailable

X86_64_START_KERNEL_MAP = 0xFFFFFFFF80000000
UTS_FIELD = 65                  # __NEW_UTS_LEN + 1
UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")

# os_info value entries that describe s390 KASLR (newer kernels only)
OS_INFO_IDENTITY_BASE, OS_INFO_KASLR_OFFSET, OS_INFO_KASLR_OFF_PHYS = 4, 5, 6
OS_INFO_AMODE31_START, OS_INFO_AMODE31_END = 8, 9


@dataclass
class Utsname:
    sysname: str
    nodename: str
    release: str
    version: str
    machine: str
    domainname: str


def kernel_image_to_physical(dump: Dump, address: int) -> int | None:
    """Physical address of a kernel-image symbol, without page tables."""
    info = dump.vmcoreinfo
    if dump.arch.name == "x86_64":
        if address < X86_64_START_KERNEL_MAP or info is None:
            return None
        phys_base = info.number("NUMBER(phys_base)") or 0
        return (address - X86_64_START_KERNEL_MAP + phys_base) % (1 << 64)
    if dump.arch.name == "s390x":
        os_info = read_os_info(dump)
        entry = (lambda i: os_info.entry[i].addr_or_val) if os_info is not None else (lambda i: 0)
        kaslr_offset = entry(OS_INFO_KASLR_OFFSET)
        if not kaslr_offset:
            return address          # before s390 KASLR bookkeeping: virtual == physical
        if address < 0x2000 or entry(OS_INFO_AMODE31_START) <= address < entry(OS_INFO_AMODE31_END):
            return address
        if address < kaslr_offset:
            return address - entry(OS_INFO_IDENTITY_BASE)
        return address - kaslr_offset + entry(OS_INFO_KASLR_OFF_PHYS)
    return None


def _read_init_uts_ns(dump: Dump, address: int, size: int) -> bytes | None:
    """Through the kernel's page tables when they work, else the image map without them."""
    from dumpfs.kernel.context import KernelUnavailable, kernel_context
    try:
        return kernel_context(dump).memory.read(address, size)
    except (KernelUnavailable, MemoryUnavailable):
        pass
    physical = kernel_image_to_physical(dump, address)
    if physical is None:
        return None
    try:
        return dump.read_physical(physical, size)
    except MemoryUnavailable:
        return None


def read_utsname(dump: Dump) -> Utsname | None:
    info = dump.vmcoreinfo
    if info is None or info.symbol("init_uts_ns") is None:
        return None
    data = _read_init_uts_ns(dump, info.symbol("init_uts_ns"), 1024)
    if data is None:
        return None
    # struct uts_namespace starts with a kref on some kernels: OFFSET(uts_namespace.name),
    # else the first "Linux\0" (as zgetdump does)
    start = info.number("OFFSET(uts_namespace.name)")
    if start is None or data[start:start + 6] != b"Linux\0":
        start = data.find(b"Linux\0")
    if start < 0 or start + UTS_FIELD * len(UTS_FIELDS) > len(data):
        return None
    fields = [data[start + i * UTS_FIELD:start + (i + 1) * UTS_FIELD].split(b"\0", 1)[0]
              .decode("utf-8", "replace") for i in range(len(UTS_FIELDS))]
    return Utsname(*fields)
