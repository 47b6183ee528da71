"""Kernel type layouts from a vmlinux's DWARF, reading only the compile units that hold them.

A distro debug vmlinux carries hundreds of MB of .debug_info; the few dozen structs the
walkers need are complete in a handful of compile units.  So (dwarf_info reads the file
through a memory map, decoding only what is asked for):

  - the units are named by their first DIE; those of HINT_UNITS (kernel/fork.c,
    lib/maple_tree.c, fs/namespace.c, mm/mmap.c) are read first, and only their top-level
    DIEs (subtrees are jumped over);
  - named complete struct/union/enum DIEs are indexed by name as they pass; a struct's
    members are read from its DIE only when asked for;
  - a name the hint units lack is looked for in at most MAX_EXTRA_UNITS more units, then
    taken as absent (a 6.x-only type on a 5.10 kernel must not cost a walk of every unit);
  - resolved layouts, absent ones included, go to a JSON cache keyed by the vmlinux's build
    id and release (types.LayoutCache), so a second mount reads no DWARF at all.

The file is open only while types are being resolved.  Relocations in .rela.debug_*
(vmlinux linked with --emit-relocs) are not applied: a linked vmlinux's sections already
hold final values.
"""

from __future__ import annotations

import struct
import threading
import time
from contextlib import contextmanager

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from dumpfs.errors import BadFile, TypeMissing
from dumpfs.kernel import dwarf_info as dw
from dumpfs.kernel.types import LayoutCache, StructLayout, Types, flatten_into

# the structs and enums the walkers use: found in one scan
WANTED_STRUCTS = (
    "task_struct", "list_head", "mm_struct", "maple_tree", "maple_node", "maple_range_64",
    "maple_arange_64", "maple_metadata", "vm_area_struct", "file", "path", "dentry", "qstr",
    "inode", "super_block", "cred", "signal_struct", "vfsmount", "mount",
    "vm_special_mapping", "pt_regs", "thread_struct", "rb_root", "rb_node",
    "pid", "upid", "pid_namespace", "idr", "xa_node",      # the pid IDR (crash's `ps` route)
)
WANTED_ENUMS = ("maple_type",)
# compile units that define the wanted types completely: kernel/fork.c (tasks, mm, files,
# creds, registers), lib/maple_tree.c (6.1+ maple nodes), fs/namespace.c (the fs-private
# struct mount), mm/mmap.c (vm_special_mapping), kernel/pid.c (the pid IDR's nodes)
HINT_UNITS = ("kernel/fork.c", "lib/maple_tree.c", "fs/namespace.c", "mm/mmap.c", "kernel/pid.c")
# how many other units a name missing from the hint units is looked for in
MAX_EXTRA_UNITS = 48

DwarfError = BadFile       # no usable DWARF; the message says why

_QUALIFIERS = (dw.TAG_TYPEDEF, dw.TAG_CONST, dw.TAG_VOLATILE, dw.TAG_RESTRICT, dw.TAG_ATOMIC)
_KINDS = {dw.TAG_STRUCT: "struct", dw.TAG_UNION: "struct", dw.TAG_ENUM: "enum"}
_DAMAGE = (IndexError, struct.error, ValueError, KeyError)


def elf_build_id(elf) -> str | None:
    """The GNU build id of an ELF (pyelftools ELFFile), hex, or None."""
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_NOTE":
            continue
        try:
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                    return note["n_desc"]
        except Exception:    # noqa: BLE001 - a damaged note section is no build id
            continue
    return None


def _debug_sections(path, elf) -> dict[str, tuple[int, int]]:
    """(file offset, size) of each .debug_* section with contents."""
    sections = {}
    for section in elf.iter_sections():
        if not section.name.startswith(".debug_") or section["sh_type"] == "SHT_NOBITS":
            continue
        if section["sh_flags"] & SH_FLAGS.SHF_COMPRESSED:
            raise DwarfError(f"{path}: compressed {section.name} (decompress the vmlinux "
                             "with objcopy --decompress-debug-sections)")
        sections[section.name] = (section["sh_offset"], section["sh_size"])
    if ".debug_info" not in sections or ".debug_abbrev" not in sections:
        raise DwarfError(f"{path}: no .debug_info (a vmlinux without DWARF)")
    return sections


class DwarfTypes(Types):
    def __init__(self, path, release: str | None = None):
        super().__init__()
        self.path = str(path)
        try:
            with open(path, "rb") as f:
                elf = ELFFile(f)
                self.build_id = elf_build_id(elf)
                self.little_endian = elf.little_endian
                sections = _debug_sections(path, elf)
        except (OSError, ELFError) as exc:
            raise DwarfError(f"{path}: {exc}") from None
        self.source = f"DWARF of {path}"
        self._info = dw.DwarfInfo(path, sections, self.little_endian)
        self._readers = 0                       # nesting of _reading(): open while > 0
        self._pending = None                    # units still to index, hints first
        self._hint_units = 0                    # how many of them are hint units
        self._index: dict[tuple[str, str], int] = {}     # (kind, name) -> DIE offset
        self._scan_lock = threading.RLock()
        self._exhausted = False                 # the extra budget spent: a miss is final
        self.scan_seconds = 0.0
        self.cu_scanned = 0
        self.cache = LayoutCache("dwarf", release, self.build_id)
        cached = self.cache.load()
        self.from_cache = cached is not None
        if cached:
            self.preload(cached)

    def close(self) -> None:
        """Nothing stays open between resolutions; kept for callers that close sources."""
        self._info.close()

    @contextmanager
    def _reading(self):
        """The file mapped for the duration (nested uses share one mapping)."""
        with self._scan_lock:
            if self._readers == 0:
                self._info.open()
            self._readers += 1
            try:
                yield self._info
            except _DAMAGE as exc:
                raise DwarfError(f"{self.path}: damaged DWARF ({type(exc).__name__}: {exc})") \
                    from None
            finally:
                self._readers -= 1
                if self._readers == 0:
                    self._info.close()

    # -- index --------------------------------------------------------------------
    @staticmethod
    def _unit_order(info: dw.DwarfInfo) -> tuple[list, list]:
        """(hint units in HINT_UNITS order, at most MAX_EXTRA_UNITS others in file order)."""
        units = [u for u in info.units() if u.unit_type in (dw.UT_COMPILE, dw.UT_PARTIAL, dw.UT_TYPE)]
        named = [(info.unit_name(u), u) for u in units]
        hints = []
        for hint in HINT_UNITS:
            # the shortest path ending in it: mm/mmap.c, not arch/s390/mm/mmap.c
            matches = [(len(name), index) for index, (name, unit) in enumerate(named)
                       if (name == hint or name.endswith("/" + hint)) and unit not in hints]
            if matches:
                hints.append(named[min(matches)[1]][1])
        others = [u for u in units if u not in hints]
        return hints, others[:MAX_EXTRA_UNITS]

    def _index_unit(self, info: dw.DwarfInfo, unit: dw.Unit) -> None:
        self.cu_scanned += 1
        for tag, offset in info.top_level(unit):
            kind = _KINDS.get(tag)
            if kind is None:
                continue
            die = info.die(offset, unit)
            name = die.name
            if name is None or dw.AT_DECLARATION in die.attributes:
                continue
            self._index.setdefault((kind, name), offset)

    def _wanted_missing(self) -> set:
        wanted = {("struct", n) for n in WANTED_STRUCTS} | {("enum", n) for n in WANTED_ENUMS}
        wanted -= set(self._index)
        wanted -= {("struct", n) for n, s in self._structs.items() if s is not None}
        wanted -= {("enum", n) for n, e in self._enums.items() if e is not None}
        return wanted

    def _find(self, info: dw.DwarfInfo, kind: str, name: str) -> dw.Die | None:
        """The DIE of (kind, name): indexed units first, then units in _unit_order until it
        is found (and, while in the hint units, everything wanted)."""
        key = (kind, name)
        if key not in self._index and not self._exhausted:
            if self._pending is None:
                hints, others = self._unit_order(info)
                self._pending, self._hint_units = iter(hints + others), len(hints)
            started = time.monotonic()
            try:
                for unit in self._pending:
                    self._index_unit(info, unit)
                    if key in self._index and (self.cu_scanned >= self._hint_units
                                               or not self._wanted_missing()):
                        break
                else:
                    self._exhausted = True
            finally:
                self.scan_seconds += time.monotonic() - started
        offset = self._index.get(key)
        return None if offset is None else info.die(offset)

    # -- DIE decoding -------------------------------------------------------------
    @staticmethod
    def _strip(die: dw.Die | None) -> dw.Die | None:
        for _ in range(64):
            if die is None or die.tag not in _QUALIFIERS:
                return die
            if dw.AT_TYPE not in die.attributes:
                return None
            die = die.ref()
        return None

    def _size(self, die: dw.Die | None, depth: int = 0) -> int:
        die = self._strip(die)
        if die is None or depth > 16:
            return 0
        if dw.AT_BYTE_SIZE in die.attributes:
            return die.attributes[dw.AT_BYTE_SIZE]
        if die.tag == dw.TAG_POINTER:
            return 8
        if die.tag == dw.TAG_ARRAY:
            return self._array_count(die) * self._size(die.ref(), depth + 1)
        return 0

    @staticmethod
    def _array_count(die: dw.Die) -> int:
        count = 1
        for sub in die.children():
            if sub.tag != dw.TAG_SUBRANGE:
                continue
            attributes = sub.attributes
            if isinstance(attributes.get(dw.AT_COUNT), int):
                count *= attributes[dw.AT_COUNT]
            elif isinstance(attributes.get(dw.AT_UPPER_BOUND), int):
                count *= attributes[dw.AT_UPPER_BOUND] + 1
            else:
                return 0
        return count

    def _describe(self, die: dw.Die | None, depth: int):
        die = self._strip(die)
        if die is None:
            return "void", 0, None
        tag, name = die.tag, die.name or ""
        if tag == dw.TAG_POINTER:
            return "*", 0, None
        if tag == dw.TAG_ARRAY:
            return "array", self._array_count(die), None
        if tag in (dw.TAG_STRUCT, dw.TAG_UNION):
            word = "struct" if tag == dw.TAG_STRUCT else "union"
            if not name:
                return f"{word} <anonymous>", 0, (self._members(die, depth + 1) if depth < 8 else [])
            return f"{word} {name}", 0, None
        if tag == dw.TAG_ENUM:
            return f"enum {name}", 0, None
        return name or "?", 0, None

    @staticmethod
    def _location(value) -> int:
        """DW_AT_data_member_location: a constant, or an expression DW_OP_plus_uconst N."""
        if isinstance(value, int):
            return value
        if value and value[0] == 0x23:
            return dw.uleb(value, 1)[0]
        return 0

    def _members(self, die: dw.Die, depth: int = 0) -> list:
        out = []
        for child in die.children():
            if child.tag != dw.TAG_MEMBER:
                continue
            attributes = child.attributes
            type_die = child.ref()
            size = self._size(type_die)
            bit_size = attributes.get(dw.AT_BIT_SIZE, 0)
            if dw.AT_DATA_BIT_OFFSET in attributes:                     # DWARF 4+ bitfields
                bit_offset = attributes[dw.AT_DATA_BIT_OFFSET]
            else:
                bit_offset = self._location(attributes.get(dw.AT_DATA_MEMBER_LOCATION, 0)) * 8
                if bit_size and dw.AT_BIT_OFFSET in attributes:         # DWARF 2/3 bitfields
                    storage = attributes.get(dw.AT_BYTE_SIZE, size)
                    old = attributes[dw.AT_BIT_OFFSET]
                    bit_offset += (storage * 8 - old - bit_size) if self.little_endian else old
            type_string, count, nested = self._describe(type_die, depth)
            out.append((child.name, bit_offset, size, bit_size, type_string, count, nested))
        return out

    # -- Types ---------------------------------------------------------------------
    def _struct(self, name: str) -> StructLayout | None:
        with self._reading() as info:
            die = self._find(info, "struct", name)
            if die is None:
                return None
            members: dict = {}
            flatten_into(members, "", 0, self._members(die))
            return StructLayout(name, die.get(dw.AT_BYTE_SIZE, 0), members)

    def _enum(self, name: str) -> dict[str, int] | None:
        with self._reading() as info:
            die = self._find(info, "enum", name)
            if die is None:
                return None
            return {c.name: c.get(dw.AT_CONST_VALUE) for c in die.children()
                    if c.tag == dw.TAG_ENUMERATOR}

    def save_cache(self) -> None:
        """Write every layout resolved so far (called after the walkers' first use)."""
        self.cache.save(self.export())

    def resolve_wanted(self) -> None:
        """Resolve every struct and enum the walkers use (absent ones recorded as such) with
        the file mapped once, then cache them all."""
        with self._lock, self._reading():       # Types' lock first, as struct() takes them
            for name in WANTED_STRUCTS:
                self.has_struct(name)
            for name in WANTED_ENUMS:
                try:
                    self.enum(name)
                except TypeMissing:
                    pass
        self.save_cache()
