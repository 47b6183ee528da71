"""Finding VMCOREINFO when the dump has no note for it.

Some dumps (QEMU's of some machines, memory-image formats) carry no
VMCOREINFO note; the kernel keeps it in memory, and the dump's architecture
knows where (`KernelArch.vmcoreinfo_finders`).
"""

from __future__ import annotations

from dumpfs.errors import MemoryUnavailable
from dumpfs.model import Dump, VmcoreInfo


def locate_vmcoreinfo(dump: Dump) -> str:
    """Fill dump.vmcoreinfo from memory if it is missing; returns where it came from."""
    if dump.vmcoreinfo is not None:
        return "note"
    finders = dump.arch.kernel.vmcoreinfo_finders if dump.arch.kernel is not None else ()
    for where, finder in finders:
        try:
            raw = finder(dump)
        except MemoryUnavailable:
            raw = None
        if raw and b"OSRELEASE=" in raw:
            dump.vmcoreinfo = VmcoreInfo(raw.rstrip(b"\0"))
            return where
    return "absent"
