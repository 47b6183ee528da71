"""Everything that differs between machines: register sets, note layouts, byte order, and
how the Linux kernel runs there.

Each architecture is one module here that defines one `Arch`; `by_elf_machine`
and `by_name` find them.  `Arch.kernel` (a `kernel_arch.KernelArch`) holds the
kernel's rules on that machine: address spaces, KASLR, stack and task sizes,
register layouts.  Views, backends and `dumpfs.kernel` ask the `Arch`, never
test the name; adding a machine is one new module here (plus its walk module,
if its page tables are new).
"""

from __future__ import annotations

from dumpfs.arch.machine import (NT_AUXV, NT_FILE, NT_PRFPREG, NT_PRPSINFO,
                                 NT_PRSTATUS, PR_REG_OFFSET, Arch)
from dumpfs.arch import s390x, x86_64  # noqa: E402 - the machines build on the names above

ARCHES = (x86_64.ARCH, s390x.ARCH)

__all__ = ["ARCHES", "Arch", "by_elf_machine", "by_name", "NT_AUXV", "NT_FILE", "NT_PRFPREG",
           "NT_PRPSINFO", "NT_PRSTATUS", "PR_REG_OFFSET", "s390x", "x86_64"]


def by_elf_machine(machine: int) -> Arch | None:
    return next((a for a in ARCHES if a.elf_machine == machine), None)


def by_name(name: str) -> Arch | None:
    return next((a for a in ARCHES if a.name == name), None)
