"""kernel/: what the dumped kernel knew about itself, read from its memory on first use.

    kernel/log        the printk buffer as `dmesg` prints it ("[    1.029887] text")
    kernel/release    the kernel release ("6.1.192-dumpfs")
    kernel/symbols    System.map-style "ffffffff81000000 T _stext" lines (type "?" when unknown)
    kernel/sources    how the address space, symbols, log and types were found, and what is missing

A file whose content cannot be computed fails with EIO on stat and read; the
reason is in `kernel/sources` and in `info`'s problems.
"""

from __future__ import annotations

import errno
from typing import Callable

from dumpfs.kernel.context import KernelUnavailable, kernel_context
from dumpfs.model import Dump, MemoryUnavailable
from dumpfs.tree import Dir, File


class KernelFile(File):
    """A file computed once on first use; failure is an OSError(EIO) naming the reason."""

    def __init__(self, name: str, compute: Callable[[], bytes]):
        self._compute = compute
        self._result: tuple[bool, object] | None = None
        super().__init__(name, lambda: len(self._content()),
                         lambda offset, length: self._content()[offset:offset + length])

    def _content(self) -> bytes:
        if self._result is None:
            try:
                self._result = (True, self._compute())
            except (KernelUnavailable, MemoryUnavailable) as exc:
                self._result = (False, str(exc))
        ok, value = self._result
        if not ok:
            raise OSError(errno.EIO, f"{self.name}: {value}")
        return value

    @property
    def size(self) -> int:
        return len(self._content())


def kernel_dir(dump: Dump, system_map=None, vmlinux=None) -> Dir:
    context = kernel_context(dump, system_map, vmlinux)

    def sources() -> bytes:
        # touch every part so that the notes and problems are complete
        for part in ("memory", "symbols", "log", "release", "types"):
            try:
                getattr(context, part)
            except KernelUnavailable:
                pass
        lines = [f"note: {n}" for n in context.notes] + [f"problem: {p}" for p in context.problems]
        return ("\n".join(lines) + "\n").encode()

    return Dir("kernel", [
        KernelFile("log", lambda: context.log.text()),
        KernelFile("release", lambda: (context.release + "\n").encode()),
        KernelFile("symbols", lambda: context.symbols.system_map().encode()),
        KernelFile("sources", sources),
    ])
