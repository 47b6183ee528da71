"""Kernel symbols, name <-> address, from whatever the dump and the user provide.

Sources, each a function returning a list of `Symbol`:

    from_vmcoreinfo(info)         SYMBOL(...) lines (already relocated)
    from_system_map(path, off)    an nm-style System.map (link-time addresses + KASLR offset)
    from_vmlinux(path, off)       the ELF symbol table of a vmlinux (+ KASLR offset)
    from_kallsyms(kmem, info)     the kernel's own compressed kallsyms tables in memory,
                                  found through VMCOREINFO's SYMBOL(kallsyms_*) (6.0+)

`kernel_symbols(dump, kmem, ...)` merges them into a `SymbolTable` and says
which sources were used and, for each one missing, why.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from dumpfs.errors import BadFile, MemoryUnavailable, SymbolError
from dumpfs.kernel.address_space import KernelMemory
from dumpfs.model import Dump, VmcoreInfo

MAX_KALLSYMS = 4_000_000
MAX_KALLSYMS_NAMES = 64 << 20


@dataclass(frozen=True)
class Symbol:
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
        known = set(self._by_name)
        added = 0
        for symbol in symbols:
            if symbol.name in known:
                continue
            self._by_name.setdefault(symbol.name, symbol)
            self.symbols.append(symbol)
            added += 1
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
    out = []
    for key, value in info.entries.items():
        if key.startswith("SYMBOL(") and key.endswith(")"):
            try:
                out.append(Symbol(key[7:-1], int(value, 16)))
            except ValueError:
                continue
    return out


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


def from_kallsyms(kmem: KernelMemory, info: VmcoreInfo | None) -> list[Symbol]:
    """Decompress the kernel's kallsyms tables (kernel/kallsyms.c, 6.1 layout).

    kallsyms_names: per symbol a length byte (two if the high bit is set) and
    that many token indexes; kallsyms_token_index[256] (u16) points into
    kallsyms_token_table (NUL-terminated tokens); the first character of the
    expanded name is the type letter.  Addresses come from kallsyms_offsets
    (s32, relative to kallsyms_relative_base; where the machine's kernel has
    CONFIG_KALLSYMS_ABSOLUTE_PERCPU, `KernelArch.kallsyms_absolute_percpu`,
    non-negative values are absolute per-CPU offsets) or kallsyms_addresses.
    """
    if info is None:
        raise SymbolError("no VMCOREINFO to find the kallsyms tables with")
    needed = ("kallsyms_names", "kallsyms_num_syms", "kallsyms_token_table", "kallsyms_token_index")
    missing = [n for n in needed if info.symbol(n) is None]
    if missing or (info.symbol("kallsyms_offsets") is None and info.symbol("kallsyms_addresses") is None):
        raise SymbolError("VMCOREINFO lacks SYMBOL(" + ", ".join(missing or ["kallsyms_offsets"]) +
                          ") (kernels before 6.0 do not export them; a rodata scan is not implemented)")
    sym = info.symbol
    try:
        num_syms = kmem.read_u32(sym("kallsyms_num_syms"))
        if not 0 < num_syms <= MAX_KALLSYMS:
            raise SymbolError(f"kallsyms_num_syms is absurd ({num_syms})")
        token_index = kmem.array("H", sym("kallsyms_token_index"), 256)
        table_addr = sym("kallsyms_token_table")
        table_size = max(token_index) + 256
        table = kmem.read(table_addr, table_size)
        tokens = []
        for start in token_index:
            end = table.find(b"\0", start)
            if end < 0:
                raise SymbolError("kallsyms_token_table: a token runs past the table")
            tokens.append(table[start:end])
        names_addr = sym("kallsyms_names")
        # the names end before kallsyms_markers, which precedes the token table
        span = table_addr - names_addr if table_addr > names_addr else MAX_KALLSYMS_NAMES
        names = kmem.read(names_addr, min(span, MAX_KALLSYMS_NAMES))
        if sym("kallsyms_offsets") is not None:
            offsets = kmem.array("i", sym("kallsyms_offsets"), num_syms)
            base = kmem.read_u64(sym("kallsyms_relative_base"))
            if kmem.dump.arch.kernel.kallsyms_absolute_percpu:
                addresses = [o if o >= 0 else (base - 1 - o) % (1 << 64) for o in offsets]
            else:
                addresses = [(base + (o & 0xFFFFFFFF)) % (1 << 64) for o in offsets]
        else:
            addresses = kmem.array("Q", sym("kallsyms_addresses"), num_syms)
    except MemoryUnavailable as exc:
        raise SymbolError(f"kallsyms tables unreadable: {exc}") from None
    out = []
    pos = 0
    for i in range(num_syms):
        if pos >= len(names):
            raise SymbolError(f"kallsyms_names ends after {i} of {num_syms} symbols")
        length = names[pos]
        pos += 1
        if length & 0x80:                            # "big" symbol: 2-byte length
            length = (length & 0x7F) | (names[pos] << 7)
            pos += 1
        if pos + length > len(names):
            raise SymbolError(f"kallsyms_names: symbol {i} runs past the table")
        expanded = b"".join(tokens[b] for b in names[pos:pos + length])
        pos += length
        if not expanded:
            continue
        out.append(Symbol(expanded[1:].decode("utf-8", "replace"), addresses[i], chr(expanded[0])))
    return out


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
            symbols = from_kallsyms(kmem, info)
            table.add(symbols, f"kallsyms in memory: {len(symbols)} symbols")
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
