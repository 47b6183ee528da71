"""Kernel type layouts (struct sizes, member offsets, enum values), whatever their source.

`Types` is the one interface the walkers use; `btf.BtfTypes` reads BTF (from
the dump's own `__start_BTF`..`__stop_BTF` or a file), `dwarf.DwarfTypes`
reads a vmlinux's DWARF.  Both resolve a struct on first use into a
`StructLayout`: anonymous struct/union members are flattened into their
parent, as C lets you name them; a member whose type is an anonymous
aggregate gets dotted names ("foo.bar").

Layouts are plain data (JSON-able), so a slow source (DWARF) can cache them
on disk: `LayoutCache` under $DUMPFS_CACHE_DIR, else $XDG_CACHE_HOME/dumpfs/types,
keyed by build id and kernel release.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

from dumpfs.cache import cache_dir, write_cache_file

from dumpfs.errors import TypeMissing


@dataclass(frozen=True)
class Member:
    name: str
    bit_offset: int         # from the start of the outermost struct
    size: int               # bytes (of the member's type; for bitfields the storage unit)
    bit_size: int = 0       # 0 unless a bitfield
    type: str = ""          # "struct list_head", "union x", "*", "int", "array", "enum x", ...
    count: int = 0          # arrays: element count (0: flexible or unknown)

    @property
    def offset(self) -> int:
        return self.bit_offset // 8

    def as_json(self) -> list:
        return [self.bit_offset, self.size, self.bit_size, self.type, self.count]


@dataclass
class StructLayout:
    name: str
    size: int
    members: dict[str, Member]

    def as_json(self) -> dict:
        return {"size": self.size, "members": {n: m.as_json() for n, m in self.members.items()}}

    @classmethod
    def from_json(cls, name: str, data: dict) -> "StructLayout":
        return cls(name, data["size"], {n: Member(n, *v) for n, v in data["members"].items()})


def strip_kind(name: str) -> str:
    """"struct task_struct" -> "task_struct"."""
    for kind in ("struct ", "union "):
        if name.startswith(kind):
            return name[len(kind):]
    return name


class Types:
    """A type source: subclasses implement `_struct(name)` and `_enum(name)` (None when absent)."""

    source = "types"

    def __init__(self):
        self._structs: dict[str, StructLayout | None] = {}
        self._enums: dict[str, dict[str, int] | None] = {}
        self._lock = threading.RLock()

    # -- to implement -------------------------------------------------------
    def _struct(self, name: str) -> StructLayout | None:
        raise NotImplementedError

    def _enum(self, name: str) -> dict[str, int] | None:
        raise NotImplementedError

    def _memo(self, table: dict, name: str, compute):
        """table[name], computed once (None: the type does not exist), under the lock."""
        with self._lock:
            if name not in table:
                table[name] = compute(name)
            return table[name]

    # -- interface ----------------------------------------------------------
    def struct(self, name: str) -> StructLayout:
        name = strip_kind(name)
        if not name or "<" in name:
            raise TypeMissing(f"{self.source}: no struct {name or '(unnamed)'}")
        layout = self._memo(self._structs, name, self._struct)
        if layout is None:
            raise TypeMissing(f"{self.source}: no struct {name}")
        return layout

    def has_struct(self, name: str) -> bool:
        try:
            self.struct(name)
            return True
        except TypeMissing:
            return False

    def sizeof(self, name: str) -> int:
        return self.struct(name).size

    def member(self, struct: str, path: str) -> Member:
        """`path` may go through embedded structs: "f_path.dentry", "mm_mt.ma_root"."""
        layout = self.struct(struct)
        if path in layout.members:
            return layout.members[path]
        head, dot, rest = path.partition(".")
        if dot and head in layout.members:
            inner = layout.members[head]
            if inner.type.startswith(("struct ", "union ")) and "<" not in inner.type:
                found = self.member(inner.type, rest)
                return Member(path, inner.bit_offset + found.bit_offset, found.size,
                              found.bit_size, found.type, found.count)
        raise TypeMissing(f"{self.source}: struct {strip_kind(struct)} has no member {path}")

    def has_member(self, struct: str, path: str) -> bool:
        try:
            self.member(struct, path)
            return True
        except TypeMissing:
            return False

    def offsetof(self, struct: str, path: str) -> int:
        member = self.member(struct, path)
        if member.bit_size:
            raise TypeMissing(f"{struct}.{path} is a bitfield")
        return member.offset

    def enum(self, name: str) -> dict[str, int]:
        name = name[5:] if name.startswith("enum ") else name
        values = self._memo(self._enums, name, self._enum)
        if values is None:
            raise TypeMissing(f"{self.source}: no enum {name}")
        return values

    def enum_value(self, enum: str, name: str) -> int:
        values = self.enum(enum)
        if name not in values:
            raise TypeMissing(f"{self.source}: enum {enum} has no {name}")
        return values[name]

    # -- for caches ---------------------------------------------------------
    def export(self) -> dict:
        with self._lock:
            return {"structs": {n: (s.as_json() if s else None) for n, s in self._structs.items()},
                    "enums": dict(self._enums)}

    def preload(self, data: dict) -> None:
        with self._lock:
            for name, s in data.get("structs", {}).items():
                self._structs.setdefault(name, StructLayout.from_json(name, s) if s else None)
            for name, e in data.get("enums", {}).items():
                self._enums.setdefault(name, e)


def flatten_into(out: dict[str, Member], prefix: str, base_bits: int, members) -> None:
    """Add `members` ((name or None, bit_offset, size, bit_size, type, count, nested) tuples,
    nested = the member list of an anonymous aggregate type) to `out`."""
    for name, bit_offset, size, bit_size, type_, count, nested in members:
        if nested is not None and not name:             # anonymous struct/union member
            flatten_into(out, prefix, base_bits + bit_offset, nested)
            continue
        if not name:
            continue
        full = prefix + name
        out.setdefault(full, Member(full, base_bits + bit_offset, size, bit_size, type_, count))
        if nested is not None:                          # a member of an anonymous type
            flatten_into(out, full + ".", base_bits + bit_offset, nested)


# ---------------------------------------------------------------------------
# On-disk cache of resolved layouts
# ---------------------------------------------------------------------------

class LayoutCache:
    """One JSON file per (kind, release, build id); unreadable or absent caches are ignored."""

    def __init__(self, kind: str, release: str | None, build_id: str | None):
        self.path = None
        if build_id or release:
            key = re.sub(r"[^A-Za-z0-9._-]", "_", f"{kind}-{release or 'unknown'}-{build_id or 'nobuildid'}")
            self.path = cache_dir("types") / f"{key}.json"

    def load(self) -> dict | None:
        if self.path is None:
            return None
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def save(self, data: dict) -> None:
        if self.path is not None:
            write_cache_file(self.path, lambda f: f.write(json.dumps(data).encode()))
