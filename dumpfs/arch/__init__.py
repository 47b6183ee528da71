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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from dumpfs.arch.kernel_arch import KernelArch
    from dumpfs.model import Note

# ELF core note types (include/uapi/linux/elf.h)
NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3
NT_AUXV = 6
NT_FILE = 0x46494C45

# struct elf_prstatus on 64-bit Linux: pr_reg (the arch's user_regs_struct) starts here
PR_REG_OFFSET = 0x70


@dataclass(frozen=True)
class Arch:
    name: str                 # "x86_64", "s390x"
    byteorder: str            # "little" or "big"
    elf_machine: int          # e_machine
    page_size: int
    decode_registers: Callable[[list["Note"]], dict[str, int]]
    """Turns one CPU's notes into ordered `name -> value`."""
    kernel: "KernelArch | None" = None
    """The kernel's rules on this machine; None: no kernel introspection (kernel/, proc/)."""
    s390_dump: bool = False
    """Its memory images can be written in the s390 stand-alone dump format (dump.s390)."""

    @property
    def struct_prefix(self) -> str:
        return "<" if self.byteorder == "little" else ">"


def all_arches() -> list[Arch]:
    # the machine modules import this package (Arch, NT_*): they are found on first use
    from dumpfs.arch import s390x, x86_64
    return [x86_64.ARCH, s390x.ARCH]


def by_elf_machine(machine: int) -> Arch | None:
    return next((a for a in all_arches() if a.elf_machine == machine), None)


def by_name(name: str) -> Arch | None:
    return next((a for a in all_arches() if a.name == name), None)
