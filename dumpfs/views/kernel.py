"""kernel/: what the dumped kernel knew about itself, read from its memory on first use.

    kernel/log        the printk buffer as `dmesg` prints it ("[    1.029887] text")
    kernel/release    the kernel release ("6.1.192-dumpfs")
    kernel/symbols    System.map-style "ffffffff81000000 T _stext" lines (type "?" when unknown)
    kernel/sources    how the address space, symbols, log, types and tasks were found, and what
                      is missing (each task that cannot be read, with why)

A file whose content cannot be computed fails with EIO on stat and read; the
reason is in `kernel/sources` and in `info`'s problems.
"""

from __future__ import annotations

from dumpfs.errors import KernelUnavailable, MemoryUnavailable
from dumpfs.kernel.context import KernelContext
from dumpfs.tree import Dir, File


def kernel_dir(context: KernelContext) -> Dir:
    """The kernel/ folder of the context's dump."""
    def sources() -> bytes:
        # touch every part so that the notes and problems are complete
        for part in ("memory", "symbols", "log", "release", "types", "task_list"):
            try:
                getattr(context, part)
            except KernelUnavailable:
                pass
        lines = [f"note: {n}" for n in context.notes] + [f"problem: {p}" for p in context.problems]
        return ("\n".join(lines) + "\n").encode()

    def computed(name, compute):
        return File.from_bytes(name, compute, failures=(KernelUnavailable, MemoryUnavailable))

    return Dir("kernel", [
        computed("log", lambda: context.log.text()),
        computed("release", lambda: (context.release + "\n").encode()),
        computed("symbols", lambda: context.symbols.system_map().encode()),
        computed("sources", sources),
    ])
