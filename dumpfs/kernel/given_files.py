"""Files the user names (--vmlinux, --system-map) are checked against the dump before use.

A vmlinux or System.map of another build, of another machine, a truncated
vmlinux or Debian's one-line placeholder System.map would otherwise be merged
into the symbols and the types, and every process shown would be wrong.
Each check raises `BadFile` with one line that names the mismatch:

    machine     the vmlinux's e_machine against the dump's architecture
    build id    the vmlinux's GNU build id against VMCOREINFO's BUILD-ID
    addresses   the file's symbols, moved by KERNELOFFSET (KASLR), against the
                addresses VMCOREINFO gives for the same names
    placeholder a System.map without symbol lines (Debian ships the real one in
                the -dbg package)
    truncation  a vmlinux whose sections or section table end past the file
"""

from __future__ import annotations

import os

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from dumpfs.arch import by_elf_machine
from dumpfs.errors import BadFile
from dumpfs.kernel.dwarf import elf_build_id
from dumpfs.kernel.image import vmcoreinfo_symbols
from dumpfs.kernel.symbols import Symbol, from_system_map, from_vmlinux, kaslr_offset
from dumpfs.model import Dump

MIN_SYSTEM_MAP_SYMBOLS = 100        # a real one has tens of thousands


def check_vmlinux(dump: Dump, path: str) -> None:
    """BadFile unless `path` is an intact vmlinux of the dumped kernel."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            ident = f.read(20)
            if len(ident) < 20 or ident[:4] != b"\x7fELF":
                raise BadFile(f"--vmlinux {name}: not an ELF file: not used")
            machine = int.from_bytes(ident[18:20], "little" if ident[5] == 1 else "big")
            arch = by_elf_machine(machine)
            if arch is None or arch.name != dump.arch.name:
                raise BadFile(f"--vmlinux {name}: a kernel for "
                              f"{arch.name if arch else f'ELF machine {machine}'}, the dump is "
                              f"of an {dump.arch.name} machine: not used")
            f.seek(0)
            elf = ELFFile(f)
            _check_complete(elf, name, size)
            build_id = elf_build_id(elf)
    except (OSError, ELFError, ValueError) as exc:
        raise BadFile(f"--vmlinux {name}: not a readable ELF file ({exc}): not used") from None
    wanted = _dump_build_id(dump)
    if wanted and build_id:
        if wanted.startswith(build_id) or build_id.startswith(wanted):
            return                  # the same build: nothing more to compare
        raise BadFile(f"--vmlinux {name}: build id {build_id}, the dumped kernel's is {wanted}: "
                      f"another build, not used")
    _check_addresses(dump, f"--vmlinux {name}", from_vmlinux(path, kaslr_offset(dump.vmcoreinfo)))


def check_system_map(dump: Dump, path: str) -> None:
    """BadFile unless `path` is a System.map of the dumped kernel (not a placeholder)."""
    name = os.path.basename(path)
    try:
        symbols = from_system_map(path, kaslr_offset(dump.vmcoreinfo))
    except BadFile:
        symbols = []
    except OSError as exc:
        raise BadFile(f"--system-map {name}: {exc.strerror}") from None
    if len(symbols) < MIN_SYSTEM_MAP_SYMBOLS:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            first = f.readline(200).strip()
        raise BadFile(f"--system-map {name}: a placeholder, not a symbol map ({len(symbols)} "
                      f"symbols; it says: {first!r}): not used")
    _check_addresses(dump, f"--system-map {name}", symbols)


def _check_complete(elf: ELFFile, name: str, size: int) -> None:
    """The section table and every section with file contents lie inside the file."""
    table_end = elf["e_shoff"] + elf["e_shnum"] * elf["e_shentsize"]
    if table_end > size:
        raise BadFile(f"--vmlinux {name}: truncated: its section table ends at {table_end:,} bytes, "
                      f"the file at {size:,}: not used")
    for section in elf.iter_sections():
        if section["sh_type"] == "SHT_NOBITS":
            continue
        end = section["sh_offset"] + section["sh_size"]
        if end > size:
            raise BadFile(f"--vmlinux {name}: truncated: {section.name or 'a section'} ends at "
                          f"{end:,} bytes, the file at {size:,}: not used")


def _dump_build_id(dump: Dump) -> str | None:
    info = dump.vmcoreinfo
    value = info.get("BUILD-ID") if info is not None else None
    return value.strip().lower() if value else None


def _check_addresses(dump: Dump, what: str, symbols: list[Symbol]) -> None:
    """The file's (relocated) addresses of VMCOREINFO's symbols must be VMCOREINFO's."""
    if dump.vmcoreinfo is None:
        return                      # nothing to compare with: the build id was the only check
    known = vmcoreinfo_symbols(dump.vmcoreinfo)
    ours = {s.name: s.address for s in symbols}
    compared = [(n, ours[n], a) for n, a in sorted(known.items()) if n in ours]
    wrong = [(n, mine, theirs) for n, mine, theirs in compared if mine != theirs]
    if compared and len(wrong) * 2 > len(compared):
        n, mine, theirs = wrong[0]
        raise BadFile(f"{what}: {len(wrong)} of {len(compared)} symbols VMCOREINFO also names "
                      f"are elsewhere ({n} at {mine:#x} after KASLR offset "
                      f"{kaslr_offset(dump.vmcoreinfo):#x}, the dump's at {theirs:#x}): "
                      f"another build, not used")
