"""The kernel's utsname (node name, release, version) from init_uts_ns, as zgetdump -i shows it."""

from __future__ import annotations

from dataclasses import dataclass

from dumpfs.errors import MemoryUnavailable
from dumpfs.kernel.address_space import KernelMemory
from dumpfs.model import Dump

UTS_FIELD = 65                  # __NEW_UTS_LEN + 1
UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")


@dataclass
class Utsname:
    sysname: str
    nodename: str
    release: str
    version: str
    machine: str
    domainname: str


def _read_init_uts_ns(dump: Dump, kmem: KernelMemory | None, address: int, size: int) -> bytes | None:
    """Through the kernel's page tables when they work, else the image map without them."""
    if kmem is not None:
        try:
            return kmem.read(address, size)
        except MemoryUnavailable:
            pass
    physical = dump.arch.kernel.image_to_physical(dump, address) if dump.arch.kernel else None
    if physical is None:
        return None
    try:
        return dump.read_physical(physical, size)
    except MemoryUnavailable:
        return None


def read_utsname(dump: Dump, kmem: KernelMemory | None = None) -> Utsname | None:
    """init_uts_ns's name, read through `kmem` (the kernel's memory, when it translates)."""
    info = dump.vmcoreinfo
    if info is None or info.symbol("init_uts_ns") is None:
        return None
    data = _read_init_uts_ns(dump, kmem, info.symbol("init_uts_ns"), 1024)
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
