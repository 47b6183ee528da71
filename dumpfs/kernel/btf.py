"""BTF (include/uapi/linux/btf.h): the kernel's compact type information.

    struct btf_header { u16 magic 0xeB9F; u8 version, flags; u32 hdr_len;
                        u32 type_off, type_len, str_off, str_len; }
    struct btf_type   { u32 name_off; u32 info (vlen 0-15, kind 24-28, kind_flag 31);
                        u32 size_or_type; } followed by kind-specific data

One pass over the type section records where each type starts and indexes
the named structs, unions and enums; a struct's members are read when first
asked for.  The blob comes from the dump (`__start_BTF`..`__stop_BTF`, read
through the kernel's page tables, or where no symbol places it the BTF header
found by a scan of the kernel image) or from a file (/sys/kernel/btf/vmlinux,
or a vmlinux's .BTF section).
"""

from __future__ import annotations

import struct

from elftools.elf.elffile import ELFFile

from dumpfs.errors import BtfError, KernelUnavailable, MemoryUnavailable
from dumpfs.kernel.image import ImageWindow
from dumpfs.kernel.types import StructLayout, Types, flatten_into

BTF_MAGIC = 0xEB9F
MAX_BTF = 64 << 20
MAX_TYPES = 1 << 21

(KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD, KIND_TYPEDEF,
 KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC,
 KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64) = range(1, 20)
_QUALIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


def _extra_size(kind: int, vlen: int) -> int:
    if kind in (KIND_INT, KIND_VAR, KIND_DECL_TAG):
        return 4
    if kind == KIND_ARRAY:
        return 12
    if kind in (KIND_STRUCT, KIND_UNION, KIND_DATASEC, KIND_ENUM64):
        return 12 * vlen
    if kind in (KIND_ENUM, KIND_FUNC_PROTO):
        return 8 * vlen
    return 0


# bytes of each kind's record after its btf_type: a fixed part and one per member (vlen)
_FIXED_SIZE = tuple(12 + _extra_size(kind, 0) for kind in range(32))
_MEMBER_SIZE = tuple(_extra_size(kind, 1) - _extra_size(kind, 0) for kind in range(32))
# the kinds indexed by name, and the kind they are found as
_INDEXED_KIND = {KIND_STRUCT: KIND_STRUCT, KIND_UNION: KIND_STRUCT, KIND_ENUM: KIND_ENUM,
                 KIND_ENUM64: KIND_ENUM}


def blob_size(header: bytes, prefix: str) -> int | None:
    """Bytes a BTF blob spans by its header (struct btf_header), None unless the header
    adds up: version 1, types before strings, at most MAX_BTF."""
    _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
        struct.unpack_from(prefix + "HBBIIIII", header)
    size = hdr_len + max(type_off + type_len, str_off + str_len)
    if version != 1 or not 24 <= hdr_len <= 256 or type_off + type_len > str_off or size > MAX_BTF:
        return None
    return size


class BtfTypes(Types):
    def __init__(self, blob: bytes, source: str = "BTF"):
        super().__init__()
        self.source = source
        if len(blob) < 24:
            raise BtfError("too short for a BTF header")
        for prefix in ("<", ">"):
            if struct.unpack_from(prefix + "H", blob)[0] == BTF_MAGIC:
                break
        else:
            raise BtfError(f"bad magic {blob[:2].hex()} (not BTF)")
        self.prefix = prefix
        _magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from(prefix + "HBBIIIII", blob)
        types_start, strings_start = hdr_len + type_off, hdr_len + str_off
        if types_start + type_len > len(blob) or strings_start + str_len > len(blob):
            raise BtfError("type or string section runs past the end of the blob")
        self.blob = memoryview(blob)
        self.strings = bytes(blob[strings_start:strings_start + str_len])
        self._headers = struct.Struct(prefix + "III")
        self._offsets = [0]         # type id -> offset of its btf_type (id 0 is void)
        # (kind, name offset) -> the first type id of a named struct/union (as struct) or
        # enum/enum64 (as enum); names are decoded only when looked up
        self._named: dict[tuple[int, int], int] = {}
        self._by_name: dict[tuple[int, bytes], int] | None = None     # see _name_index
        position, end = types_start, types_start + type_len
        unpack = self._headers.unpack_from
        offsets, named = self._offsets, self._named
        fixed, per_member, indexed = _FIXED_SIZE, _MEMBER_SIZE, _INDEXED_KIND
        type_id = 0
        while position < end:
            type_id += 1
            if type_id > MAX_TYPES:
                raise BtfError(f"more than {MAX_TYPES} types")
            name_off, info, _size = unpack(blob, position)
            kind = (info >> 24) & 0x1F
            offsets.append(position)
            if name_off and kind in indexed:
                named.setdefault((indexed[kind], name_off), type_id)
            position += fixed[kind] + per_member[kind] * (info & 0xFFFF)
        if position != end:
            raise BtfError("the last type runs past the type section")

    def _named_id(self, kind: int, name: str) -> int | None:
        """The first type id of `kind` named `name` (every copy of the string counts: BTF
        deduplicates its strings, a hostile one may not)."""
        if self._by_name is None:
            self._by_name = self._name_index()
        return self._by_name.get((kind, name.encode()))

    def _name_index(self) -> dict[tuple[int, bytes], int]:
        """(kind, name) -> first type id, of the named structs and enums: built once, from
        their names only (a search of the whole string section per lookup cost more than
        this by the tenth struct).  A name is a whole string: after a NUL (or first)."""
        strings, index = self.strings, {}
        for (kind, offset), type_id in self._named.items():
            if offset > len(strings) or (offset and strings[offset - 1] != 0):
                continue
            end = strings.find(b"\0", offset)
            if end < 0:
                continue
            key = (kind, strings[offset:end])
            if key not in index or type_id < index[key]:
                index[key] = type_id
        return index

    def _name(self, offset: int) -> str:
        end = self.strings.find(b"\0", offset)
        return self.strings[offset:end if end >= 0 else None].decode("utf-8", "replace")

    def _type(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, name_off, size_or_type) of a type id."""
        if not 0 < type_id < len(self._offsets):
            raise BtfError(f"type id {type_id} out of range")
        name_off, info, size = self._headers.unpack_from(self.blob, self._offsets[type_id])
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, name_off, size

    def _resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers (bounded: BTF may be hostile)."""
        for _ in range(64):
            if type_id == 0:
                return 0
            kind, _vlen, _kf, _name, target = self._type(type_id)
            if kind not in _QUALIFIERS:
                return type_id
            type_id = target
        raise BtfError("typedef chain too long")

    def _size(self, type_id: int, depth: int = 0) -> int:
        type_id = self._resolve(type_id)
        if type_id == 0 or depth > 16:
            return 0
        kind, _vlen, _kf, _name, size = self._type(type_id)
        if kind == KIND_PTR:
            return 8
        if kind == KIND_ARRAY:
            elem, _index, count = struct.unpack_from(self.prefix + "III", self.blob,
                                                     self._offsets[type_id] + 12)
            return count * self._size(elem, depth + 1)
        if kind in (KIND_FUNC, KIND_FUNC_PROTO, KIND_FWD):
            return 0
        return size

    def _describe(self, type_id: int) -> tuple[str, int, list | None]:
        """(type string, element count, nested members if an anonymous aggregate)."""
        type_id = self._resolve(type_id)
        if type_id == 0:
            return "void", 0, None
        kind, _vlen, _kf, name_off, _size = self._type(type_id)
        name = self._name(name_off) if name_off else ""
        if kind == KIND_PTR:
            return "*", 0, None
        if kind == KIND_ARRAY:
            elem, _index, count = struct.unpack_from(self.prefix + "III", self.blob,
                                                     self._offsets[type_id] + 12)
            return "array", count, None
        if kind in (KIND_STRUCT, KIND_UNION):
            word = "struct" if kind == KIND_STRUCT else "union"
            if not name:
                return f"{word} <anonymous>", 0, self._members(type_id)
            return f"{word} {name}", 0, None
        if kind in (KIND_ENUM, KIND_ENUM64):
            return f"enum {name}", 0, None
        return name or "?", 0, None

    def _members(self, type_id: int, depth: int = 0) -> list:
        kind, vlen, kind_flag, _name, _size = self._type(type_id)
        out = []
        base = self._offsets[type_id] + 12
        for i in range(vlen):
            name_off, member_type, offset = struct.unpack_from(self.prefix + "III", self.blob,
                                                               base + 12 * i)
            bit_size = (offset >> 24) if kind_flag else 0
            bit_offset = offset & 0xFFFFFF if kind_flag else offset
            if not kind_flag:
                # without kind_flag a bitfield's width sits in its INT type
                resolved = self._resolve(member_type)
                if resolved and self._type(resolved)[0] == KIND_INT:
                    encoding = struct.unpack_from(self.prefix + "I", self.blob,
                                                  self._offsets[resolved] + 12)[0]
                    bits, extra = encoding & 0xFF, (encoding >> 16) & 0xFF
                    if bits != self._size(resolved) * 8 or extra:
                        bit_size, bit_offset = bits, bit_offset + extra
            type_string, count, nested = ("?", 0, None)
            if depth < 8:
                type_string, count, nested = self._describe(member_type)
            out.append((self._name(name_off) if name_off else None, bit_offset,
                        self._size(member_type), bit_size, type_string, count, nested))
        return out

    # -- Types ----------------------------------------------------------------
    def _struct(self, name: str) -> StructLayout | None:
        type_id = self._named_id(KIND_STRUCT, name)
        if type_id is None:
            return None
        members: dict = {}
        flatten_into(members, "", 0, self._members(type_id))
        return StructLayout(name, self._type(type_id)[4], members)

    def _enum(self, name: str) -> dict[str, int] | None:
        type_id = self._named_id(KIND_ENUM, name)
        if type_id is None:
            return None
        kind, vlen, kind_flag, _name, _size = self._type(type_id)
        base = self._offsets[type_id] + 12
        values = {}
        # kind_flag says the enum is signed (btf.h: BTF_KIND_ENUM and BTF_KIND_ENUM64)
        entry = struct.Struct(self.prefix + ("Ii" if kind_flag else "II"))
        for i in range(vlen):
            if kind == KIND_ENUM:
                name_off, value = entry.unpack_from(self.blob, base + 8 * i)
            else:
                name_off, lo, hi = struct.unpack_from(self.prefix + "III", self.blob, base + 12 * i)
                value = hi << 32 | lo
                if kind_flag and value >= 1 << 63:
                    value -= 1 << 64
            values[self._name(name_off)] = value
        return values


def btf_from_memory(kmem, symbols, info=None) -> BtfTypes:
    """The kernel's own BTF (its .BTF section): between __start_BTF and __stop_BTF when
    the symbols know them, else the BTF header found by a scan of the kernel image.
    Failing, the message says which step failed: kallsyms not found, or no BTF in the image."""
    start, stop = symbols.address("__start_BTF"), symbols.address("__stop_BTF")
    if start is not None and stop is not None:
        if not 24 <= stop - start <= MAX_BTF:
            raise BtfError(f"__start_BTF..__stop_BTF spans an absurd {stop - start} bytes")
        try:
            blob = kmem.read(start, stop - start)
        except MemoryUnavailable as exc:
            raise BtfError(f"BTF at {start:#x} unreadable: {exc}") from None
        return BtfTypes(blob, f"BTF in the dump ({stop - start} bytes at {start:#x})")
    why = symbols.why_absent("__start_BTF")
    try:
        window = ImageWindow.of(kmem, info)
    except KernelUnavailable as exc:
        raise BtfError(f"{why}, and the kernel image cannot be searched: {exc}") from None
    found = find_btf(window, kmem.prefix)
    if found is None:
        raise BtfError(f"no BTF in the kernel image ({window} searched; {why})")
    start, types = found
    types.source = (f"BTF in the dump ({len(types.blob)} bytes at {start:#x}, found in the kernel "
                    f"image: {why})")
    return types


def find_btf(window: ImageWindow, prefix: str) -> tuple[int, BtfTypes] | None:
    """(address, types) of the first BTF blob in the window whose header adds up and whose
    types parse and hold struct task_struct."""
    magic = struct.pack(prefix + "HBB", BTF_MAGIC, 1, 0)
    for address in window.find_all(magic, downward=False):
        header = window.read(address, 24)
        size = blob_size(header, prefix) if len(header) == 24 else None
        blob = window.read(address, size) if size else b""
        if not size or len(blob) < size:
            continue
        try:
            types = BtfTypes(blob)
            if not types.has_struct("task_struct"):
                continue
        except (BtfError, struct.error):
            continue
        return address, types
    return None


def btf_from_file(path) -> BtfTypes:
    """A raw BTF file, or an ELF (vmlinux) with a .BTF section."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head == b"\x7fELF":
            section = ELFFile(f).get_section_by_name(".BTF")
            if section is None:
                raise BtfError(f"{path}: ELF without a .BTF section")
            blob = section.data()
            source = f"BTF in the .BTF section of {path}"
        else:
            blob = f.read(MAX_BTF + 1)
            source = f"BTF file {path}"
    if len(blob) > MAX_BTF:
        raise BtfError(f"{path}: larger than {MAX_BTF} bytes")
    return BtfTypes(blob, source)
