"""Kernel symbols, name <-> address, from whatever the dump and the user provide.

Sources, each a function returning a list of `Symbol`:

    from_vmcoreinfo(info)         SYMBOL(...) lines (already relocated)
    from_system_map(path, off)    an nm-style System.map (link-time addresses + KASLR offset)
    from_vmlinux(path, off)       the ELF symbol table of a vmlinux (+ KASLR offset)
    from_kallsyms(kmem, info)     the kernel's own compressed kallsyms tables in memory,
                                  found through VMCOREINFO's SYMBOL(kallsyms_*) (6.0+)
                                  or by a scan of the kernel image (dumpfs.kernel.kallsyms)

`kernel_symbols(dump, kmem, ...)` merges them into a `SymbolTable` and says
which sources were used and, for each one missing, why.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from dumpfs.errors import BadFile, KernelUnavailable, SymbolError
from dumpfs.kernel.address_space import KernelMemory
from dumpfs.kernel.image import vmcoreinfo_symbols
from dumpfs.kernel.kallsyms import decode, find_tables, known_symbols, tables_from_vmcoreinfo
from dumpfs.model import Dump, VmcoreInfo


class Symbol(NamedTuple):
    """One symbol; a tuple, so that a kernel's 100,000 cost one small object each."""

    name: str
    address: int
    type: str = "?"      # nm/kallsyms type letter when known


@dataclass
class SymbolTable:
    """Symbols sorted by address (for address -> symbol) and by name (first source wins)."""

    symbols: list[Symbol] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)        # "kallsyms in memory: 31013 symbols"
    problems: list[str] = field(default_factory=list)       # why a source is missing

    def __post_init__(self):
        self._by_name: dict[str, Symbol] = {}
        self._sorted: list[Symbol] | None = None
        self._addresses: list[int] = []
        pending, self.symbols = self.symbols, []
        self.add(pending)

    def add(self, symbols, source: str | None = None) -> int:
        """Add one source's symbols whose names no earlier source knew (a source's own
        duplicates, e.g. static functions of the same name, are all kept; by name, the
        first wins); returns how many were added."""
        known = self._by_name
        fresh = [symbol for symbol in symbols if symbol.name not in known]
        # by name the first wins: the reversed pairs leave each name's first symbol
        known.update(zip(map(attrgetter("name"), reversed(fresh)), reversed(fresh)))
        self.symbols += fresh
        added = len(fresh)
        self._sorted = None
        if source is not None:
            self.sources.append(source)
        return added

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Symbol | None:
        return self._by_name.get(name)

    def address(self, name: str) -> int | None:
        symbol = self._by_name.get(name)
        return symbol.address if symbol is not None else None

    def why_absent(self, name: str) -> str:
        """Why `name` has no address: kallsyms was not found (and why), or no source lists it."""
        kallsyms = next((p[len("kallsyms: "):] for p in self.problems if p.startswith("kallsyms: ")), None)
        return f"kallsyms not found ({kallsyms})" if kallsyms else f"the kernel's symbols have no {name}"

    def sorted(self) -> list[Symbol]:
        if self._sorted is None:
            self._sorted = sorted(self.symbols, key=lambda s: (s.address, s.name))
            self._addresses = [s.address for s in self._sorted]
        return self._sorted

    def lookup(self, address: int) -> tuple[Symbol, int] | None:
        """The symbol at or below `address` and the offset into it (like `%pS`)."""
        symbols = self.sorted()
        i = bisect.bisect_right(self._addresses, address) - 1
        if i < 0:
            return None
        return symbols[i], address - symbols[i].address

    def system_map(self) -> str:
        """System.map-style text: "ffffffff81000000 T _stext" lines, by address."""
        return "".join(f"{s.address:016x} {s.type} {s.name}\n" for s in self.sorted())


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------

def kaslr_offset(info: VmcoreInfo | None) -> int:
    """KERNELOFFSET from VMCOREINFO (hex without 0x), 0 when absent."""
    if info is None:
        return 0
    return info.number("KERNELOFFSET", 16) or 0


def from_vmcoreinfo(info: VmcoreInfo) -> list[Symbol]:
    return [Symbol(name, address) for name, address in vmcoreinfo_symbols(info).items()]


def _relocator(offset: int, text_start: int | None):
    """Link-time -> run-time address: only addresses of the kernel image move
    (per-CPU offsets and absolute values below _text stay)."""
    def relocate(address: int) -> int:
        if offset and text_start is not None and address >= text_start:
            return (address + offset) % (1 << 64)
        return address
    return relocate


def from_system_map(path, offset: int = 0) -> list[Symbol]:
    entries = []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            try:
                entries.append((int(parts[0], 16), parts[1], parts[2]))
            except ValueError:
                continue
    if not entries:
        raise BadFile(f"{path}: no 'address type name' lines")
    text = [a for a, _t, n in entries if n in ("_text", "_stext")]
    relocate = _relocator(offset, min(text) if text else None)
    return [Symbol(name, relocate(address), type_) for address, type_, name in entries]


def _nm_type(sym_type: int, bind: int, shndx: int, sections) -> str | None:
    """nm's letter for an ELF symbol, None for symbols nm would not list."""
    STT_SECTION, STT_FILE = 3, 4
    STB_LOCAL, STB_WEAK = 0, 2
    SHN_UNDEF, SHN_ABS = 0, 0xFFF1
    if sym_type in (STT_SECTION, STT_FILE) or shndx == SHN_UNDEF:
        return None
    if shndx == SHN_ABS:
        letter = "A"
    elif shndx >= len(sections):
        return None
    else:
        sh_type, sh_flags = sections[shndx]
        SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHT_NOBITS = 1, 2, 4, 8
        if not sh_flags & SHF_ALLOC:
            return None
        if sh_flags & SHF_EXECINSTR:
            letter = "T"
        elif sh_type == SHT_NOBITS:
            letter = "B"
        elif sh_flags & SHF_WRITE:
            letter = "D"
        else:
            letter = "R"
    if bind == STB_WEAK:
        letter = "V" if sym_type == 1 else "W"
    elif bind == STB_LOCAL:
        letter = letter.lower()
    return letter


def from_vmlinux(path, offset: int = 0) -> list[Symbol]:
    """The .symtab of a vmlinux; pyelftools finds the tables, struct reads the entries."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                raise BadFile(f"{path}: no .symtab (stripped vmlinux)")
            strtab = elf.get_section(symtab["sh_link"])
            sections = [(s["sh_type"], s["sh_flags"]) for s in elf.iter_sections()]
            sections = [({"SHT_NOBITS": 8}.get(t, 0) if isinstance(t, str) else t, fl)
                        for t, fl in sections]
            little = elf.little_endian
            if elf.elfclass != 64:
                raise BadFile(f"{path}: not a 64-bit ELF")
            symbols_raw, strings = symtab.data(), strtab.data()
    except (OSError, ELFError) as exc:
        raise BadFile(f"{path}: {exc}") from None
    entry = struct.Struct(("<" if little else ">") + "IBBHQQ")
    raw = []
    for pos in range(entry.size, len(symbols_raw) - entry.size + 1, entry.size):
        st_name, st_info, _other, shndx, value, _size = entry.unpack_from(symbols_raw, pos)
        letter = _nm_type(st_info & 0xF, st_info >> 4, shndx, sections)
        if letter is None or not st_name:
            continue
        end = strings.find(b"\0", st_name)
        name = strings[st_name:end].decode("utf-8", "replace")
        if name:
            raw.append((name, value, letter))
    text = [v for n, v, _t in raw if n in ("_text", "_stext")]
    relocate = _relocator(offset, min(text) if text else None)
    return [Symbol(name, relocate(value), letter) for name, value, letter in raw]


def kallsyms_in_memory(kmem: KernelMemory, info: VmcoreInfo | None) -> tuple[list[Symbol], str]:
    """The kernel's own kallsyms tables (see dumpfs.kernel.kallsyms) and where they were
    found: through VMCOREINFO's SYMBOL(kallsyms_*) (6.0+), else by a scan of the image."""
    try:
        try:
            tables = tables_from_vmcoreinfo(info)
        except KernelUnavailable as not_listed:
            if info is None:
                raise
            try:
                tables, raw = find_tables(kmem, info)
            except KernelUnavailable as exc:
                raise KernelUnavailable(f"not found: {not_listed}; {exc}") from None
            how = f"found in the kernel image at {tables.token_table:#x}"
        else:
            raw = decode(kmem, tables, known_symbols(info))
            how = "listed in VMCOREINFO"
    except KernelUnavailable as exc:
        raise SymbolError(str(exc)) from None
    # tuple.__new__(Symbol, (name, address, letter)) is Symbol(...) without a Python call
    return list(map(tuple.__new__, repeat(Symbol), raw)), how


def from_kallsyms(kmem: KernelMemory, info: VmcoreInfo | None) -> list[Symbol]:
    """The kernel's own kallsyms symbols, wherever their tables were found."""
    return kallsyms_in_memory(kmem, info)[0]


# ---------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------

def kernel_symbols(dump: Dump, kmem: KernelMemory | None = None, system_map=None,
                   vmlinux=None) -> SymbolTable:
    """Every available source, best first: kallsyms (types, run-time addresses),
    vmlinux, System.map, then VMCOREINFO; `problems` says why a source is absent."""
    table = SymbolTable()
    info = dump.vmcoreinfo
    offset = kaslr_offset(info)
    if kmem is not None:
        try:
            symbols, how = kallsyms_in_memory(kmem, info)
            table.add(symbols, f"kallsyms in memory ({how}): {len(symbols)} symbols")
        except SymbolError as exc:
            table.problems.append(f"kallsyms: {exc}")
    else:
        table.problems.append("kallsyms: kernel memory cannot be translated")
    for label, path, reader in (("vmlinux", vmlinux, from_vmlinux), ("System.map", system_map, from_system_map)):
        if path is None:
            continue
        try:
            symbols = reader(path, offset)
            table.add(symbols, f"{label} {Path(path).name} (+ KASLR offset {offset:#x}): "
                               f"{len(symbols)} symbols")
        except (BadFile, OSError) as exc:
            table.problems.append(f"{label}: {exc}")
    if info is not None:
        symbols = from_vmcoreinfo(info)
        added = table.add(symbols)
        table.sources.append(f"VMCOREINFO: {len(symbols)} symbols ({added} not known otherwise)")
    else:
        table.problems.append("VMCOREINFO: absent from the dump")
    if vmlinux is None and system_map is None:
        table.problems.append("vmlinux / System.map: none given")
    return table
