"""One error model for all of dumpfs: what went wrong, by kind, never by message text.

    DumpfsError
    ├── DumpError               a dump cannot be opened (the message names the problem)
    │   ├── NoDump              nothing of ours here: unknown format, empty, a dump tool without a dump
    │   ├── DamagedDump         a dump is there but its headers or tables are broken or cut short
    │   ├── MissingPart         a part the dump needs is absent: a volume, a file, a device
    │   └── Unsupported         a valid dump of a kind or version dumpfs does not read
    ├── BadFile                 a file the user gave (vmlinux, System.map, BTF) cannot be used
    │   └── BtfError            BTF that is not BTF or is damaged (a file's, or the dump's own)
    └── Unavailable             one piece cannot be read; everything else keeps being served
        ├── MemoryUnavailable   a physical (or virtual) range: hole, excluded, missing, corrupt
        │   └── TranslationError    a virtual address without a physical page
        └── KernelUnavailable   a part of the kernel's state: symbols, types, log, tasks
            ├── LogUnavailable      no kernel log can be read at all
            ├── SymbolError         the kernel's kallsyms tables cannot be decoded
            ├── TypeMissing         a struct, member or enum the type source lacks
            └── WalkError           a kernel structure cannot be walked (unreadable, looping)

Callers decide by class (and `Problem.severity`), so a message can be reworded
without changing behaviour.  Damage found while opening that does not stop the
dump from being served is a `Problem` in `DumpMeta.problems`, not an exception.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class DumpfsError(Exception):
    """Anything dumpfs reports to a person as one line."""


class DumpError(DumpfsError):
    """A dump cannot be opened; the message names the problem."""


class NoDump(DumpError):
    """Nothing dumpfs reads is here (unknown format, empty source, a dump tool but no dump)."""


class DamagedDump(DumpError):
    """The dump is there, but a header or table is broken, inconsistent or cut short."""


class MissingPart(DumpError):
    """A part the dump needs is absent: a volume of a multi-volume dump, a device, a file."""


class Unsupported(DumpError):
    """A valid dump (or part) of a kind or version dumpfs does not read."""


class BadFile(DumpfsError):
    """A file given by the user (vmlinux, System.map, BTF) is unusable or not this kernel's."""


class BtfError(BadFile):
    """Not BTF, or damaged BTF (from a file the user gave, or the dump's own); says what."""


class Unavailable(DumpfsError):
    """One piece of the dump cannot be read; the rest of it is still served (EIO for the piece)."""


class MemoryUnavailable(Unavailable):
    """A memory range cannot be read: a hole, an excluded page, missing data, or corrupt data."""

    def __init__(self, address: int, reason: str, *, virtual: bool = False):
        super().__init__(f"{'virtual' if virtual else 'physical'} address {address:#x}: {reason}")
        self.address = address
        self.reason = reason


class TranslationError(MemoryUnavailable):
    """A virtual address that has no physical page (not mapped, or the tables are unreadable).

    `unmapped_until`: where a walk stopped at an invalid upper-level entry, every address
    from this one up to there is unmapped too, so a scan of a mapping can skip the span."""

    def __init__(self, address: int, reason: str, unmapped_until: int | None = None):
        super().__init__(address, reason, virtual=True)
        self.unmapped_until = unmapped_until


class KernelUnavailable(Unavailable):
    """A part of the kernel's state (symbols, types, log, task list) cannot be read; says why."""


class LogUnavailable(KernelUnavailable):
    """No kernel log can be read at all (a partial log carries its problems instead)."""


class SymbolError(KernelUnavailable):
    """The kernel's own symbol tables (kallsyms) cannot be decoded; the message says why."""


class TypeMissing(KernelUnavailable):
    """A struct, member or enum the type source does not know; the message says which."""


class WalkError(KernelUnavailable):
    """A kernel structure cannot be walked (unreadable, looping, absurd); says why."""


class Severity(enum.IntEnum):
    """How much a problem found in a dump matters to someone reading it."""

    NOTE = 0        # worth knowing; nothing is lost
    WARNING = 1     # something is off, but every byte the dump holds is served
    DAMAGE = 2      # part of the dump (memory, CPUs, a volume) cannot be served


@dataclass(frozen=True)
class Problem:
    """Something wrong with a dump that does not stop it from being opened."""

    text: str
    severity: Severity = Severity.DAMAGE

    def __str__(self) -> str:
        return self.text
