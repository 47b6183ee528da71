"""Views: the files a dump is shown as, rendered from the model alone.

    vmcore          /proc/vmcore-style ELF core, built on read
    info, info.json what the dump is (format, kernel, CPUs, memory), for people and programs
    vmcoreinfo      the kernel's VMCOREINFO text, when the dump has it
    cpus/<n>/       registers (`name value` lines) and notes/<TYPE> raw payloads
    memory/         one file per contiguous physical range, and `map` (also of the holes)
    kernel/         log, release, symbols, sources: read from the kernel's memory
    dump.s390       the s390 stand-alone dump format, as zgetdump -f s390 writes it (for the
                    machines whose `Arch.s390_dump` says it can hold them)

The views that read the kernel (kernel/, proc/, info) share one `KernelContext`,
built by the caller with the files the user gave.
"""

from __future__ import annotations

from dumpfs.kernel.context import KernelContext
from dumpfs.model import Dump
from dumpfs.tree import Dir, File
from dumpfs.views.cpus import cpus_dir
from dumpfs.views.dump_s390 import dump_s390_file
from dumpfs.views.info import info_json_text, info_text
from dumpfs.views.kernel import kernel_dir
from dumpfs.views.memory import memory_dir
from dumpfs.views.proc import proc_dir
from dumpfs.views.vmcore import vmcore_file


def build_tree(dump: Dump, context: KernelContext | None = None, name: str = "",
               zero_holes: bool = False) -> Dir:
    """The tree of one dump, its kernel read through `context` (None: a context without
    user-given files); nothing is computed until it is looked at.  `zero_holes`: the pages
    a memory file (memory/, proc/<pid>/mem and regions/) cannot deliver read as zeros
    instead of failing (listed in memory/map and regions/map either way)."""
    context = context if context is not None else KernelContext(dump)

    def children():
        nodes = [
            vmcore_file(dump),
            File.from_bytes("info", lambda: info_text(dump, context).encode()),
            File.from_bytes("info.json", lambda: info_json_text(dump, context).encode()),
            cpus_dir(dump),
            memory_dir(dump, zero_holes),
            kernel_dir(context),
            proc_dir(context, zero_holes),
        ] + ([dump_s390_file(dump)] if dump.arch.s390_dump else [])
        if dump.vmcoreinfo is not None:
            nodes.append(File.from_bytes("vmcoreinfo", dump.vmcoreinfo.text.encode()))
        return nodes
    return Dir(name, children)
