"""Everything that differs between machines: register sets, note layouts, byte order.

Each architecture module defines one `Arch`; `by_elf_machine` and `by_name`
find them.  Views and backends ask the `Arch`, never test the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from dumpfs.model import Note

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3


@dataclass(frozen=True)
class Arch:
    name: str                 # "x86_64", "s390x"
    byteorder: str            # "little" or "big"
    elf_machine: int          # e_machine
    page_size: int
    decode_registers: Callable[[list["Note"]], dict[str, int]]
    """Turns one CPU's notes into ordered `name -> value`."""

    @property
    def struct_prefix(self) -> str:
        return "<" if self.byteorder == "little" else ">"


def all_arches() -> list[Arch]:
    from dumpfs.arch import s390x, x86_64
    return [x86_64.ARCH, s390x.ARCH]


def by_elf_machine(machine: int) -> Arch | None:
    return next((a for a in all_arches() if a.elf_machine == machine), None)


def by_name(name: str) -> Arch | None:
    return next((a for a in all_arches() if a.name == name), None)
