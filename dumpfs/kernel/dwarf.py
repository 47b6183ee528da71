"""Kernel type layouts from a vmlinux's DWARF (pyelftools), without reading all of it.

A kernel's .debug_info is tens to hundreds of MB; parsing every DIE costs
minutes in Python.  Only a few dozen structs are needed, and every one of
them is defined at the top level of many compile units.  So:

  - compile units are visited in order; in each, only the top-level DIEs are
    read (DW_AT_sibling lets pyelftools jump over function bodies);
  - named complete struct/union/enum DIEs are indexed by name as they pass,
    and the scan stops as soon as every wanted name is found (`WANTED`,
    plus whatever was asked for);
  - a struct's members are read from its DIE only when asked for;
  - resolved layouts go to a JSON cache keyed by the vmlinux's build id and
    release (types.LayoutCache), so a second mount reads no DWARF at all.

Relocations in .rela.debug_* (vmlinux linked with --emit-relocs) are not
applied: a linked vmlinux's sections already hold final values.
"""

from __future__ import annotations

import threading
import time

from dumpfs.kernel.types import LayoutCache, StructLayout, Types, flatten_into

# the structs and enums the walkers use: found in one scan
WANTED_STRUCTS = (
    "task_struct", "list_head", "mm_struct", "maple_tree", "maple_node", "maple_range_64",
    "maple_arange_64", "maple_metadata", "vm_area_struct", "file", "path", "dentry", "qstr",
    "inode", "super_block", "cred", "signal_struct", "vfsmount", "mount",
    "vm_special_mapping", "pt_regs", "thread_struct", "rb_root", "rb_node",
)
WANTED_ENUMS = ("maple_type",)
# functions whose compile units define the wanted types (kernel/fork.c, lib/maple_tree.c
# for the maple nodes, fs/namespace.c for the fs-private struct mount, mm/mmap.c):
# visited first, the scan ends after a handful of units
HINT_FUNCTIONS = ("get_task_mm", "mtree_load", "path_mount", "_install_special_mapping")
MAX_CU_SCAN_SECONDS = 120


class DwarfError(Exception):
    """No usable DWARF; the message says why."""


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


class DwarfTypes(Types):
    def __init__(self, path, release: str | None = None):
        super().__init__()
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        self.path = str(path)
        try:
            self._file = open(path, "rb")
            self._elf = ELFFile(self._file)
            self.build_id = elf_build_id(self._elf)
            if not self._elf.has_dwarf_info() or self._elf.get_section_by_name(".debug_info") is None:
                raise DwarfError(f"{path}: no .debug_info (a vmlinux without DWARF)")
        except (OSError, ELFError) as exc:
            raise DwarfError(f"{path}: {exc}") from None
        self.little_endian = self._elf.little_endian
        self.source = f"DWARF of {path}"
        self._dwarf = None
        self._cus = None                # iterator over compile units, resumed by later scans
        self._index: dict[tuple[str, str], object] = {}     # (kind, name) -> DIE
        self._scan_lock = threading.RLock()
        self._scanned_all = False       # every unit indexed: a miss is final
        self.scan_seconds = 0.0
        self.cu_scanned = 0
        self.cache = LayoutCache("dwarf", release, self.build_id)
        cached = self.cache.load()
        self.from_cache = cached is not None
        if cached:
            self.preload(cached)

    def close(self):
        self._file.close()

    # -- index ------------------------------------------------------------------
    def _scan_until(self, kind: str, name: str) -> object | None:
        """Walk compile units until (kind, name) and everything in WANTED_* is indexed."""
        with self._scan_lock:
            if (kind, name) in self._index:
                return self._index[(kind, name)]
            if self._scanned_all:
                return None
            if self._dwarf is None:
                self._dwarf = self._elf.get_dwarf_info(relocate_dwarf_sections=False)
                self._cus = self._cu_order()
            wanted = {("struct", n) for n in WANTED_STRUCTS} | {("enum", n) for n in WANTED_ENUMS}
            wanted.add((kind, name))
            wanted -= set(self._index)
            wanted -= {("struct", n) for n, s in self._structs.items() if s is not None}
            started = time.monotonic()
            try:
                for cu in self._cus:
                    self.cu_scanned += 1
                    top = cu.get_top_DIE()
                    for die in top.iter_children():
                        tag = die.tag
                        if tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
                            key_kind = "struct"
                        elif tag == "DW_TAG_enumeration_type":
                            key_kind = "enum"
                        else:
                            continue
                        attrs = die.attributes
                        if "DW_AT_name" not in attrs or "DW_AT_declaration" in attrs:
                            continue
                        key = (key_kind, attrs["DW_AT_name"].value.decode("utf-8", "replace"))
                        if key not in self._index:
                            self._index[key] = die
                            wanted.discard(key)
                    if (kind, name) in self._index and not wanted:
                        break
                    if time.monotonic() - started > MAX_CU_SCAN_SECONDS:
                        break
                else:
                    self._scanned_all = True
            finally:
                self.scan_seconds += time.monotonic() - started
            return self._index.get((kind, name))

    def _cu_order(self):
        """Compile units, those holding a HINT_FUNCTIONS function first (found through
        .symtab and .debug_aranges: parsing each unit's top DIE would cost its whole
        abbreviation table), then all the others in order."""
        first = []
        try:
            from dumpfs.kernel.symbols import from_vmlinux
            addresses = {s.name: s.address for s in from_vmlinux(self.path)
                         if s.name in HINT_FUNCTIONS}
            aranges = self._dwarf.get_aranges()
            for function in HINT_FUNCTIONS:
                if function in addresses and aranges is not None:
                    offset = aranges.cu_offset_at_addr(addresses[function])
                    if offset is not None and offset not in first:
                        first.append(offset)
        except Exception:   # noqa: BLE001 - without hints the scan is only slower
            first = []
        for offset in first:
            try:
                yield self._dwarf.get_CU_at(offset)
            except Exception:   # noqa: BLE001
                continue
        for cu in self._dwarf.iter_CUs():
            if cu.cu_offset not in first:
                yield cu

    # -- DIE decoding -------------------------------------------------------------
    @staticmethod
    def _strip(die):
        for _ in range(64):
            if die is None or die.tag not in ("DW_TAG_typedef", "DW_TAG_const_type",
                                              "DW_TAG_volatile_type", "DW_TAG_restrict_type",
                                              "DW_TAG_atomic_type"):
                return die
            if "DW_AT_type" not in die.attributes:
                return None
            die = die.get_DIE_from_attribute("DW_AT_type")
        return None

    def _size(self, die, depth: int = 0) -> int:
        die = self._strip(die)
        if die is None or depth > 16:
            return 0
        if "DW_AT_byte_size" in die.attributes:
            return die.attributes["DW_AT_byte_size"].value
        if die.tag == "DW_TAG_pointer_type":
            return 8
        if die.tag == "DW_TAG_array_type":
            count = self._array_count(die)
            return count * self._size(die.get_DIE_from_attribute("DW_AT_type"), depth + 1)
        return 0

    @staticmethod
    def _array_count(die) -> int:
        count = 1
        for sub in die.iter_children():
            if sub.tag != "DW_TAG_subrange_type":
                continue
            attrs = sub.attributes
            if "DW_AT_count" in attrs and isinstance(attrs["DW_AT_count"].value, int):
                count *= attrs["DW_AT_count"].value
            elif "DW_AT_upper_bound" in attrs and isinstance(attrs["DW_AT_upper_bound"].value, int):
                count *= attrs["DW_AT_upper_bound"].value + 1
            else:
                return 0
        return count

    def _describe(self, die, depth: int):
        die = self._strip(die)
        if die is None:
            return "void", 0, None
        tag = die.tag
        name = die.attributes["DW_AT_name"].value.decode() if "DW_AT_name" in die.attributes else ""
        if tag == "DW_TAG_pointer_type":
            return "*", 0, None
        if tag == "DW_TAG_array_type":
            return "array", self._array_count(die), None
        if tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            word = "struct" if tag == "DW_TAG_structure_type" else "union"
            if not name:
                return f"{word} <anonymous>", 0, (self._members(die, depth + 1) if depth < 8 else [])
            return f"{word} {name}", 0, None
        if tag == "DW_TAG_enumeration_type":
            return f"enum {name}", 0, None
        return name or "?", 0, None

    def _members(self, die, depth: int = 0) -> list:
        out = []
        for child in die.iter_children():
            if child.tag != "DW_TAG_member":
                continue
            attrs = child.attributes
            type_die = child.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in attrs else None
            size = self._size(type_die)
            bit_size = attrs["DW_AT_bit_size"].value if "DW_AT_bit_size" in attrs else 0
            if "DW_AT_data_bit_offset" in attrs:                    # DWARF 4+ bitfields
                bit_offset = attrs["DW_AT_data_bit_offset"].value
            else:
                location = attrs["DW_AT_data_member_location"].value if \
                    "DW_AT_data_member_location" in attrs else 0
                if not isinstance(location, int):                   # an expression: DW_OP_plus_uconst
                    location = location[-1] if location else 0
                bit_offset = location * 8
                if bit_size and "DW_AT_bit_offset" in attrs:        # DWARF 2/3 bitfields
                    storage = attrs["DW_AT_byte_size"].value if "DW_AT_byte_size" in attrs else size
                    old = attrs["DW_AT_bit_offset"].value
                    bit_offset += (storage * 8 - old - bit_size) if self.little_endian else old
            type_string, count, nested = self._describe(type_die, depth)
            name = attrs["DW_AT_name"].value.decode() if "DW_AT_name" in attrs else None
            out.append((name, bit_offset, size, bit_size, type_string, count, nested))
        return out

    # -- Types ---------------------------------------------------------------------
    def _struct(self, name: str) -> StructLayout | None:
        die = self._scan_until("struct", name)
        if die is None:
            return None
        members: dict = {}
        flatten_into(members, "", 0, self._members(die))
        layout = StructLayout(name, die.attributes["DW_AT_byte_size"].value
                              if "DW_AT_byte_size" in die.attributes else 0, members)
        return layout

    def _enum(self, name: str) -> dict[str, int] | None:
        die = self._scan_until("enum", name)
        if die is None:
            return None
        return {c.attributes["DW_AT_name"].value.decode(): c.attributes["DW_AT_const_value"].value
                for c in die.iter_children() if c.tag == "DW_TAG_enumerator"}

    def save_cache(self) -> None:
        """Write every layout resolved so far (called after the walkers' first use)."""
        self.cache.save(self.export())

    def resolve_wanted(self) -> None:
        """Resolve every struct the walkers use, then cache them all."""
        for name in WANTED_STRUCTS:
            if self.has_struct(name):
                pass
        for name in WANTED_ENUMS:
            try:
                self.enum(name)
            except Exception:   # noqa: BLE001 - absent enums are recorded as None
                pass
        self.save_cache()
