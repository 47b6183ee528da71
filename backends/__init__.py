"""Dump formats, detected by content in this order.

Each backend module has `NAME`, `detect(source) -> bool` (cheap: magic bytes)
and `open(source) -> Dump`.  Backends know about bytes and the model, never
about FUSE or views.
"""

from __future__ import annotations

import importlib

from dumpfs.model import Dump, DumpError
from dumpfs.source import FileSource, Source

# Detection order: most specific magic first.
BACKENDS = [
    "flattened",   # makedumpfile flattened stream around a kdump or ELF file
    "kdump",       # kdump-compressed (makedumpfile, QEMU)
    "vmdump",      # z/VM VMDUMP spool file (vmur rec)
    "lkcd",        # LKCD v8 s390 (old zfcpdump files dump.N, vmconvert)
    "s390",        # IBM Z stand-alone dump (s390, s390_ext), image or DASD
    "elf",         # ELF64 core (/proc/vmcore style)
]


def backend_modules():
    for name in BACKENDS:
        yield importlib.import_module(f"dumpfs.backends.{name}")


def open_source(source: Source) -> Dump:
    """Detect the format of `source` and open it; DumpError names what is wrong."""
    if source.size == 0:
        raise DumpError(f"{source.name}: empty file, not a dump")
    for module in backend_modules():
        if module.detect(source):
            dump = module.open(source)
            dump.sources.append(source.name)
            dump.resources.append(source)
            _complete_from_memory(dump)
            return dump
    head = source.read(0, 16)
    raise DumpError(f"{source.name}: unknown dump format (first bytes {head[:8].hex(' ')}); "
                    f"known formats: {', '.join(BACKENDS)}")


def _complete_from_memory(dump: Dump) -> None:
    """VMCOREINFO that the format lacks but the kernel keeps in memory (s390 lowcore)."""
    from dumpfs.kernel.vmcoreinfo import locate_vmcoreinfo

    dump.meta.details["vmcoreinfo"] = locate_vmcoreinfo(dump)
    if not dump.meta.kernel_release and dump.vmcoreinfo is not None:
        dump.meta.kernel_release = dump.vmcoreinfo.get("OSRELEASE")


def open_dump(path: str) -> Dump:
    source = FileSource(path)
    try:
        return open_source(source)
    except BaseException:
        source.close()
        raise
