"""DWARF 2-5 debugging information entries, decoded in place from a memory map of the file.

A distro debug vmlinux holds hundreds of MB of .debug_info; the type layouts dumpfs needs
are complete in a handful of its compile units.  pyelftools reads whole sections into
memory (gigabytes of Python objects for a 5.10 kernel), so this reader maps the file and
decodes only what is asked for:

  - `units()` walks the unit headers (a few bytes each, one jump per unit) and names each
    compile unit by its first DIE's DW_AT_name;
  - `top_level(unit)` lists a unit's top-level DIEs, jumping over subtrees through
    DW_AT_sibling (or skipping their attributes by size when a DIE has no sibling link);
  - `die(offset)` and `children(die)` decode single entries.

Abbreviation tables are parsed lazily, only as far as the codes met so far.  DIE offsets
are offsets in .debug_info; units of a DWARF 4 .debug_types section get offsets after the
end of .debug_info, so one integer names any DIE (DW_FORM_ref_sig8 resolves to one).
"""

from __future__ import annotations

import bisect
import mmap
import re
import struct
from dataclasses import dataclass, field

from dumpfs.errors import BadFile

# tags and attributes the type readers use
TAG_ARRAY, TAG_ENUM, TAG_MEMBER, TAG_POINTER = 0x01, 0x04, 0x0D, 0x0F
TAG_STRUCT, TAG_TYPEDEF, TAG_UNION, TAG_SUBRANGE = 0x13, 0x16, 0x17, 0x21
TAG_CONST, TAG_ENUMERATOR, TAG_VOLATILE, TAG_RESTRICT, TAG_ATOMIC = 0x26, 0x28, 0x35, 0x37, 0x47
AT_SIBLING, AT_NAME, AT_BYTE_SIZE, AT_BIT_OFFSET, AT_BIT_SIZE = 0x01, 0x03, 0x0B, 0x0C, 0x0D
AT_CONST_VALUE, AT_UPPER_BOUND, AT_COUNT, AT_DATA_MEMBER_LOCATION = 0x1C, 0x2F, 0x37, 0x38
AT_DECLARATION, AT_TYPE, AT_DATA_BIT_OFFSET, AT_STR_OFFSETS_BASE = 0x3C, 0x49, 0x6B, 0x72

# forms (0x02 is reserved)
(F_ADDR, _F_0X02, F_BLOCK2, F_BLOCK4, F_DATA2, F_DATA4, F_DATA8, F_STRING, F_BLOCK, F_BLOCK1, F_DATA1,
 F_FLAG, F_SDATA, F_STRP, F_UDATA, F_REF_ADDR, F_REF1, F_REF2, F_REF4, F_REF8, F_REF_UDATA,
 F_INDIRECT, F_SEC_OFFSET, F_EXPRLOC, F_FLAG_PRESENT, F_STRX, F_ADDRX, F_REF_SUP4, F_STRP_SUP,
 F_DATA16, F_LINE_STRP, F_REF_SIG8, F_IMPLICIT_CONST, F_LOCLISTX, F_RNGLISTX, F_REF_SUP8,
 F_STRX1, F_STRX2, F_STRX3, F_STRX4, F_ADDRX1, F_ADDRX2, F_ADDRX3, F_ADDRX4) = range(0x01, 0x2D)
F_GNU_ADDR_INDEX, F_GNU_STR_INDEX, F_GNU_REF_ALT, F_GNU_STRP_ALT = 0x1F01, 0x1F02, 0x1F20, 0x1F21

_FIXED_SIZES = {
    F_FLAG_PRESENT: 0, F_IMPLICIT_CONST: 0,
    F_DATA1: 1, F_REF1: 1, F_FLAG: 1, F_STRX1: 1, F_ADDRX1: 1,
    F_DATA2: 2, F_REF2: 2, F_STRX2: 2, F_ADDRX2: 2,
    F_STRX3: 3, F_ADDRX3: 3,
    F_DATA4: 4, F_REF4: 4, F_REF_SUP4: 4, F_STRX4: 4, F_ADDRX4: 4,
    F_DATA8: 8, F_REF8: 8, F_REF_SIG8: 8, F_REF_SUP8: 8,
    F_DATA16: 16,
}
_OFFSET_SIZED = frozenset((F_STRP, F_SEC_OFFSET, F_LINE_STRP, F_STRP_SUP, F_GNU_REF_ALT,
                           F_GNU_STRP_ALT))

UT_COMPILE, UT_TYPE, UT_PARTIAL, UT_SKELETON, UT_SPLIT_COMPILE, UT_SPLIT_TYPE = range(1, 7)
MAX_DEPTH = 512


def uleb(data, pos: int) -> tuple[int, int]:
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    result, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos + 1
        shift += 7


def sleb(data, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return (result - (1 << shift) if byte & 0x40 else result), pos


@dataclass
class Abbrev:
    """One abbreviation as a unit sees it: `size` is the attributes' byte count when every
    form has a fixed size; `sibling` the (byte offset, form) of DW_AT_sibling when only
    fixed-size attributes precede it."""
    tag: int
    has_children: bool
    specs: list                  # (attribute, form, implicit constant)
    size: int | None = None
    sibling: tuple[int, int] | None = None


# one abbreviation: code, tag, children byte, (attribute, form[, implicit constant]) pairs,
# 0 0; matched whole by the regex engine, so finding a code far into a table costs one
# match per entry (specs are decoded only for the codes used)
_ULEB = rb"[\x80-\xff]*[\x00-\x7f]"
_ENTRY = re.compile(rb"(" + _ULEB + rb")" + _ULEB + rb"[\x00\x01](?:(?!\x00\x00)" + _ULEB
                    + rb"(?:\x21" + _ULEB + rb"|" + _ULEB + rb"))*\x00\x00")


class AbbrevTable:
    """An abbreviation table in .debug_abbrev, read only as far as the codes asked for."""

    def __init__(self, start: int, end: int):
        self.pos, self.end = start, end
        self.spans: dict[int, int] = {}         # code -> position of its tag
        self.entries: dict[int, tuple[int, bool, list]] = {}

    def get(self, data, code: int) -> tuple[int, bool, list]:
        entry = self.entries.get(code)
        if entry is not None:
            return entry
        where = self.spans.get(code)
        while where is None:
            if self.pos >= self.end or data[self.pos] == 0:
                raise BadFile(f"DWARF abbreviation {code} not in its table")
            match = _ENTRY.match(data, self.pos, self.end)
            if match is None:
                raise BadFile(f"DWARF abbreviation table damaged at {self.pos:#x}")
            number, tag_at = uleb(data, self.pos)
            self.spans.setdefault(number, tag_at)
            self.pos = match.end()
            if number == code:
                where = tag_at
        tag, pos = uleb(data, where)
        has_children = data[pos] != 0
        pos += 1
        specs = []
        while True:
            attribute, pos = uleb(data, pos)
            form, pos = uleb(data, pos)
            const = None
            if form == F_IMPLICIT_CONST:
                const, pos = sleb(data, pos)
            if attribute == 0 and form == 0:
                break
            specs.append((attribute, form, const))
        entry = self.entries[code] = (tag, has_children, specs)
        return entry


@dataclass(eq=False)
class Unit:
    offset: int                  # of the header, in the combined offset space
    end: int
    version: int
    unit_type: int
    address_size: int
    offset_size: int
    abbrev_offset: int
    die_offset: int              # the unit's first DIE
    base: int                    # file position = base + offset
    signature: int | None = None
    type_offset: int | None = None
    str_offsets_base: int | None = None
    name: str | None = None
    abbrevs: dict = field(default_factory=dict)      # code -> Abbrev


class DwarfInfo:
    """The DWARF of one ELF file, read through a memory map while open (`open()`/`close()`,
    or `with`; what was learnt about units and abbreviations outlives a close).  `sections`
    maps a section name to its (file offset, size); `little_endian` from the ELF header."""

    def __init__(self, path, sections: dict[str, tuple[int, int]], little_endian: bool):
        if ".debug_info" not in sections or ".debug_abbrev" not in sections:
            raise BadFile(f"{path}: no .debug_info (a vmlinux without DWARF)")
        self.path = str(path)
        self._file = None
        self.data = None
        self.sections = sections
        self.endian = "<" if little_endian else ">"
        self._u16, self._u32, self._u64 = (struct.Struct(self.endian + c) for c in "HIQ")
        self.info_start, self.info_size = sections[".debug_info"]
        self._tables: dict[int, AbbrevTable] = {}
        self._units: list[Unit] | None = None
        self._unit_starts: list[int] = []
        self._signatures: dict[int, int] | None = None

    def open(self) -> None:
        if self.data is not None:
            return
        self._file = open(self.path, "rb")
        try:
            self.data = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            self._file.close()
            raise BadFile(f"{self.path}: {exc}") from None
        if hasattr(self.data, "madvise"):
            self.data.madvise(mmap.MADV_RANDOM)     # touch only the pages decoded
        for name, (offset, size) in self.sections.items():
            if offset + size > len(self.data):
                self.close()
                raise BadFile(f"{self.path}: {name} runs past the end of the file (truncated?)")

    def close(self) -> None:
        if self.data is not None:
            self.data.close()
            self._file.close()
            self.data = self._file = None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *_exc):
        self.close()

    # -- units --------------------------------------------------------------------
    def units(self) -> list[Unit]:
        """Every unit of .debug_info, then of .debug_types (headers only)."""
        if self._units is None:
            units = list(self._section_units(".debug_info", 0))
            if ".debug_types" in self.sections:
                units += self._section_units(".debug_types", self.info_size)
            self._units = units
            self._unit_starts = [u.offset for u in units]
        return self._units

    def _section_units(self, name: str, first: int):
        start, size = self.sections[name]
        base = start - first                 # file position of combined offset 0
        offset, end = first, first + size
        while offset + 11 <= end:
            unit = self._unit_header(base, offset, name == ".debug_types")
            if unit.end > end or unit.end <= offset:
                raise BadFile(f"DWARF unit at {offset:#x} of {name} runs past its section")
            yield unit
            offset = unit.end

    def _unit_header(self, base: int, offset: int, types_section: bool) -> Unit:
        pos = base + offset
        length, offset_size = self._u32.unpack_from(self.data, pos)[0], 4
        pos += 4
        if length == 0xFFFFFFFF:
            length, offset_size = self._u64.unpack_from(self.data, pos)[0], 8
            pos += 8
        end = pos - base + length
        word = self._u32 if offset_size == 4 else self._u64
        version = self._u16.unpack_from(self.data, pos)[0]
        pos += 2
        signature = type_offset = None
        if version >= 5:
            unit_type, address_size = self.data[pos], self.data[pos + 1]
            abbrev_offset = word.unpack_from(self.data, pos + 2)[0]
            pos += 2 + offset_size
            if unit_type in (UT_SKELETON, UT_SPLIT_COMPILE):
                pos += 8
            elif unit_type in (UT_TYPE, UT_SPLIT_TYPE):
                signature = self._u64.unpack_from(self.data, pos)[0]
                type_offset = word.unpack_from(self.data, pos + 8)[0]
                pos += 8 + offset_size
        elif 2 <= version <= 4:
            abbrev_offset = word.unpack_from(self.data, pos)[0]
            address_size = self.data[pos + offset_size]
            pos += offset_size + 1
            unit_type = UT_COMPILE
            if types_section:
                unit_type = UT_TYPE
                signature = self._u64.unpack_from(self.data, pos)[0]
                type_offset = word.unpack_from(self.data, pos + 8)[0]
                pos += 8 + offset_size
        else:
            raise BadFile(f"DWARF unit at {offset:#x}: version {version} unknown")
        return Unit(offset, end, version, unit_type, address_size, offset_size, abbrev_offset,
                    pos - base, base, signature,
                    None if type_offset is None else offset + type_offset)

    def unit_at(self, offset: int) -> Unit:
        units = self.units()
        index = bisect.bisect_right(self._unit_starts, offset) - 1
        if index < 0 or offset >= units[index].end:
            raise BadFile(f"DWARF offset {offset:#x} is in no unit")
        return units[index]

    def unit_name(self, unit: Unit) -> str:
        """The unit DIE's DW_AT_name ("" if none); also notes its DW_AT_str_offsets_base."""
        if unit.name is None:
            top = self.die(unit.die_offset, unit)
            unit.name = top.name or "" if top is not None else ""
        return unit.name

    # -- abbreviations -------------------------------------------------------------
    def _abbrev(self, unit: Unit, code: int) -> Abbrev:
        abbrev = unit.abbrevs.get(code)
        if abbrev is not None:
            return abbrev
        table = self._tables.get(unit.abbrev_offset)
        if table is None:
            start, size = self.sections[".debug_abbrev"]
            if unit.abbrev_offset >= size:
                raise BadFile(f"DWARF unit at {unit.offset:#x}: abbreviations past their section")
            table = self._tables[unit.abbrev_offset] = AbbrevTable(start + unit.abbrev_offset,
                                                                   start + size)
        tag, has_children, specs = table.get(self.data, code)
        abbrev = Abbrev(tag, has_children, specs)
        size = 0
        for attribute, form, _const in specs:
            if attribute == AT_SIBLING and size is not None and abbrev.sibling is None:
                abbrev.sibling = (size, form)
            width = self._fixed_size(unit, form)
            size = None if width is None or size is None else size + width
        abbrev.size = size
        unit.abbrevs[code] = abbrev
        return abbrev

    @staticmethod
    def _fixed_size(unit: Unit, form: int) -> int | None:
        """The byte size of a form's value in this unit, None if it varies (LEBs, blocks,
        inline strings, DW_FORM_indirect)."""
        size = _FIXED_SIZES.get(form)
        if size is not None:
            return size
        if form == F_ADDR:
            return unit.address_size
        if form == F_REF_ADDR:
            return unit.address_size if unit.version == 2 else unit.offset_size
        if form in _OFFSET_SIZED:
            return unit.offset_size
        return None

    # -- forms ----------------------------------------------------------------------
    def _form(self, unit: Unit, form: int, pos: int, const) -> tuple[object, int]:
        """(value, next position) of one attribute at file position `pos`.  References
        become combined offsets, strings str, blocks bytes, constants int."""
        data = self.data
        if form == F_STRP or form == F_LINE_STRP:
            word = self._u32 if unit.offset_size == 4 else self._u64
            offset = word.unpack_from(data, pos)[0]
            section = ".debug_str" if form == F_STRP else ".debug_line_str"
            return self._string(section, offset), pos + unit.offset_size
        if form == F_DATA1 or form == F_FLAG:
            return data[pos], pos + 1
        if form == F_REF4:
            return unit.offset + self._u32.unpack_from(data, pos)[0], pos + 4
        if form == F_DATA2:
            return self._u16.unpack_from(data, pos)[0], pos + 2
        if form == F_FLAG_PRESENT:
            return True, pos
        if form == F_IMPLICIT_CONST:
            return const, pos
        if form == F_DATA4:
            return self._u32.unpack_from(data, pos)[0], pos + 4
        if form == F_SEC_OFFSET or form == F_GNU_STRP_ALT or form == F_GNU_REF_ALT \
                or form == F_STRP_SUP:
            word = self._u32 if unit.offset_size == 4 else self._u64
            return word.unpack_from(data, pos)[0], pos + unit.offset_size
        if form == F_EXPRLOC or form == F_BLOCK:
            length, pos = uleb(data, pos)
            return bytes(data[pos:pos + length]), pos + length
        if form == F_UDATA:
            return uleb(data, pos)
        if form == F_SDATA:
            return sleb(data, pos)
        if form == F_DATA8:
            return self._u64.unpack_from(data, pos)[0], pos + 8
        if form == F_STRING:
            end = data.find(b"\0", pos)
            if end < 0:
                raise BadFile("DWARF string runs past the end of the file")
            return data[pos:end].decode("utf-8", "replace"), end + 1
        if form in (F_REF1, F_REF2, F_REF8):
            size = self._fixed_size(unit, form)
            return unit.offset + self._unsigned(pos, size), pos + size
        if form == F_REF_UDATA:
            value, pos = uleb(data, pos)
            return unit.offset + value, pos
        if form == F_REF_SIG8:
            return self._signature(self._u64.unpack_from(data, pos)[0]), pos + 8
        if form == F_STRX or form == F_GNU_STR_INDEX:
            index, pos = uleb(data, pos)
            return self._indexed_string(unit, index), pos
        if form in (F_STRX1, F_STRX2, F_STRX3, F_STRX4):
            size = self._fixed_size(unit, form)
            return self._indexed_string(unit, self._unsigned(pos, size)), pos + size
        if form in (F_BLOCK1, F_BLOCK2, F_BLOCK4):
            size = {F_BLOCK1: 1, F_BLOCK2: 2, F_BLOCK4: 4}[form]
            length = self._unsigned(pos, size)
            pos += size
            return bytes(data[pos:pos + length]), pos + length
        if form in (F_ADDRX, F_LOCLISTX, F_RNGLISTX, F_GNU_ADDR_INDEX):
            return uleb(data, pos)
        size = self._fixed_size(unit, form)     # addresses, ref_addr, addrx1-4, ref_sup, data16
        if size is not None:
            return self._unsigned(pos, size), pos + size
        if form == F_INDIRECT:
            real, pos = uleb(data, pos)
            return self._form(unit, real, pos, const)
        raise BadFile(f"DWARF form {form:#x} unknown")

    def _unsigned(self, pos: int, size: int) -> int:
        return int.from_bytes(self.data[pos:pos + size], "little" if self.endian == "<" else "big")

    def _string(self, section: str, offset: int) -> str:
        if section not in self.sections:
            raise BadFile(f"DWARF string in a missing {section}")
        start, size = self.sections[section]
        if offset >= size:
            raise BadFile(f"DWARF string offset {offset:#x} past {section}")
        end = self.data.find(b"\0", start + offset, start + size)
        return self.data[start + offset:end if end >= 0 else start + size].decode("utf-8", "replace")

    def _indexed_string(self, unit: Unit, index: int) -> str:
        if ".debug_str_offsets" not in self.sections:
            raise BadFile("DWARF string index without .debug_str_offsets")
        start, size = self.sections[".debug_str_offsets"]
        base = unit.str_offsets_base if unit.str_offsets_base is not None else \
            (8 if unit.offset_size == 4 else 16)
        where = base + index * unit.offset_size
        if where + unit.offset_size > size:
            raise BadFile(f"DWARF string index {index} past .debug_str_offsets")
        word = self._u32 if unit.offset_size == 4 else self._u64
        return self._string(".debug_str", word.unpack_from(self.data, start + where)[0])

    def _signature(self, signature: int) -> int:
        """The type DIE of a type unit (DW_FORM_ref_sig8)."""
        if self._signatures is None:
            self._signatures = {u.signature: u.type_offset for u in self.units()
                                if u.signature is not None}
        offset = self._signatures.get(signature)
        if offset is None:
            raise BadFile(f"DWARF type signature {signature:#x} in no type unit")
        return offset

    # -- DIEs -----------------------------------------------------------------------------
    def die(self, offset: int, unit: Unit | None = None) -> "Die | None":
        """The DIE at a combined offset (None for a null entry)."""
        if unit is None or not unit.offset <= offset < unit.end:
            unit = self.unit_at(offset)
        pos = unit.base + offset
        code, pos = uleb(self.data, pos)
        if code == 0:
            return None
        abbrev = self._abbrev(unit, code)
        attributes = {}
        form_value = self._form
        for attribute, form, const in abbrev.specs:
            attributes[attribute], pos = form_value(unit, form, pos, const)
        if abbrev.tag in (0x11, 0x41, 0x3C) and AT_STR_OFFSETS_BASE in attributes:
            unit.str_offsets_base = attributes[AT_STR_OFFSETS_BASE]
        return Die(self, unit, offset, abbrev.tag, abbrev.has_children, attributes,
                   pos - unit.base)

    def _skip(self, unit: Unit, pos: int) -> tuple[Abbrev | None, int]:
        """Past one DIE and its subtree at file position `pos`: (its abbreviation or None for
        a null entry, the file position after it)."""
        data = self.data
        depth = 0
        first = None
        while True:
            code, pos = uleb(data, pos)
            if code == 0:
                if depth == 0:
                    return first, pos
                depth -= 1
                if depth == 0:
                    return first, pos
                continue
            abbrev = unit.abbrevs.get(code) or self._abbrev(unit, code)
            if first is None:
                first = abbrev
            start = pos
            if abbrev.sibling is not None and abbrev.has_children:
                where, form = abbrev.sibling
                target, _ = self._form(unit, form, start + where, None)
                if depth == 0:
                    return first, unit.base + target
                pos = unit.base + target
                continue
            if abbrev.size is not None:
                pos += abbrev.size
            else:
                for _attribute, form, const in abbrev.specs:
                    _value, pos = self._form(unit, form, pos, const)
            if abbrev.has_children:
                depth += 1
                if depth > MAX_DEPTH:
                    raise BadFile("DWARF DIEs nested too deep")
            elif depth == 0:
                return first, pos

    def _child_list(self, unit: Unit, die: "Die | None"):
        """(abbreviation, offset) of each child of `die`, subtrees jumped over."""
        if die is None or not die.has_children:
            return
        pos, end = unit.base + die.end, unit.base + unit.end
        while pos < end:
            offset = pos - unit.base
            abbrev, pos = self._skip(unit, pos)
            if abbrev is None:
                return
            yield abbrev, offset

    def top_level(self, unit: Unit):
        """(tag, offset) of each child of the unit's first DIE."""
        for abbrev, offset in self._child_list(unit, self.die(unit.die_offset, unit)):
            yield abbrev.tag, offset

    def children(self, die: "Die"):
        """The child DIEs of `die`."""
        for _abbrev, offset in self._child_list(die.unit, die):
            yield self.die(offset, die.unit)


class Die:
    """One decoded entry: `attributes` maps attribute codes to values."""

    __slots__ = ("info", "unit", "offset", "tag", "has_children", "attributes", "end")

    def __init__(self, info, unit, offset, tag, has_children, attributes, end):
        self.info, self.unit, self.offset, self.tag = info, unit, offset, tag
        self.has_children, self.attributes, self.end = has_children, attributes, end

    @property
    def name(self) -> str | None:
        return self.attributes.get(AT_NAME)

    def get(self, attribute: int, default=None):
        return self.attributes.get(attribute, default)

    def ref(self, attribute: int = AT_TYPE) -> "Die | None":
        """The DIE an attribute refers to (DW_AT_type by default), None if absent."""
        offset = self.attributes.get(attribute)
        if offset is None:
            return None
        return self.info.die(offset, self.unit)

    def children(self):
        return self.info.children(self)
