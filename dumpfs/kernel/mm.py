"""A process's memory: its address space, VMAs and the strings /proc shows from them.

    user space      the root the machine's rules take from the mm (`KernelArch.user_root`:
                    mm->pgd through the kernel's direct map, or the mm's own ASCE)
    VMAs            mm->mm_mt, a maple tree (6.1+): encoded node pointers carry the node
                    type in bits 3-6 (maple_leaf_64, maple_range_64, maple_arange_64);
                    leaves' slots are vm_area_struct pointers, pivots the last index
                    of each slot's range.  Older kernels: mm->mmap, a list by vm_next.
    names           vm_file->f_path (dentry names up to the root, crossing mounts), else
                    the special mapping's name ([vdso], [vvar]), else [heap] / [stack]
                    from mm->start_brk..brk and mm->start_stack (fs/proc/task_mmu.c)

Every walk is capped and remembers visited nodes; a VMA must belong to the mm
and the VMAs must come in order, else the walk stops with a reason.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dumpfs.errors import MemoryUnavailable, TypeMissing, WalkError
from dumpfs.kernel.address_space import KernelMemory
from dumpfs.kernel.tasks import Offsets
from dumpfs.kernel.types import Types

MAX_VMAS = 1 << 16              # sysctl vm.max_map_count is 65530
MAX_MAPLE_NODES = 1 << 15
MAX_PATH_DEPTH = 256
MAX_ARGS = 1 << 20
MAPLE_NODE_MASK = 0xFF
XA_ZERO_ENTRY = 0x406
VM_READ, VM_WRITE, VM_EXEC, VM_MAYSHARE = 0x1, 0x2, 0x4, 0x80


@dataclass
class Vma:
    start: int
    end: int
    flags: int
    pgoff: int                  # in pages
    dev: int = 0
    inode: int = 0
    name: str = ""
    file: int = 0               # struct file *

    @property
    def perms(self) -> str:
        f = self.flags
        return ("r" if f & VM_READ else "-") + ("w" if f & VM_WRITE else "-") + \
               ("x" if f & VM_EXEC else "-") + ("s" if f & VM_MAYSHARE else "p")

    def maps_line(self, page_shift: int = 12) -> str:
        """One line of /proc/PID/maps (show_map_vma)."""
        pgoff = self.pgoff << page_shift if self.file else 0
        line = (f"{self.start:08x}-{self.end:08x} {self.perms} {pgoff:08x} "
                f"{self.dev >> 20:02x}:{self.dev & 0xFFFFF:02x} {self.inode} ")
        if self.name:
            line = line.ljust(73) + self.name
        return line


class MmWalker:
    """Reads mm_structs, their VMAs and user memory for one kernel."""

    def __init__(self, kmem: KernelMemory, symbols, types: Types):
        self.kmem = kmem
        self.dump = kmem.dump
        self.arch = kmem.dump.arch.kernel
        self.types = types
        self.symbols = symbols
        self.prefix = kmem.prefix
        self._u64 = struct.Struct(self.prefix + "Q")
        try:
            self.mm = Offsets(types, "mm_struct",
                              ("pgd", "start_brk", "brk", "start_stack", "arg_start", "arg_end",
                               "env_start", "env_end"),
                              ("mm_mt.ma_root", "mmap", "task_size", "map_count", "saved_auxv")
                              + self.arch.mm_members)
            self.vma = Offsets(types, "vm_area_struct",
                               ("vm_start", "vm_end", "vm_mm", "vm_flags", "vm_pgoff", "vm_file"),
                               ("vm_next", "vm_ops", "vm_private_data"))
            self.file = Offsets(types, "file", ("f_path.dentry", "f_path.mnt", "f_inode"))
            self.dentry = Offsets(types, "dentry", ("d_parent", "d_name.name", "d_name.len"))
            self.inode = Offsets(types, "inode", ("i_ino", "i_sb"))
            self.sb = Offsets(types, "super_block", ("s_dev",))
        except TypeMissing as exc:
            raise WalkError(f"type information lacks what memory maps need: {exc}") from None
        self.maple = None
        if self.mm["mm_mt.ma_root"] is not None:
            try:
                self.maple = {
                    "type": types.enum("maple_type"),
                    "range_pivot": types.offsetof("maple_range_64", "pivot"),
                    "range_slot": types.offsetof("maple_range_64", "slot"),
                    "range_slots": types.member("maple_range_64", "slot").count,
                    "range_meta_end": types.offsetof("maple_range_64", "meta")
                    + types.offsetof("maple_metadata", "end"),
                    "arange_pivot": types.offsetof("maple_arange_64", "pivot"),
                    "arange_slot": types.offsetof("maple_arange_64", "slot"),
                    "arange_slots": types.member("maple_arange_64", "slot").count,
                    "arange_meta_end": types.offsetof("maple_arange_64", "meta")
                    + types.offsetof("maple_metadata", "end"),
                    "node_size": types.sizeof("maple_node"),
                }
            except TypeMissing as exc:
                raise WalkError(f"type information lacks the maple tree nodes: {exc}") from None
        elif self.mm["mmap"] is None or self.vma["vm_next"] is None:
            raise WalkError("mm_struct has neither mm_mt nor mmap")
        self.mount = None
        try:
            self.mount = Offsets(types, "mount", ("mnt", "mnt_parent", "mnt_mountpoint"))
            self.vfsmount_root = types.offsetof("vfsmount", "mnt_root")
        except TypeMissing:
            self.mount = None
        self.special_vmops = {a for a in (symbols.address("special_mapping_vmops"),
                                          symbols.address("legacy_special_mapping_vmops"))
                              if a is not None}

    # -- mm_struct -----------------------------------------------------------------
    def read_mm(self, mm: int) -> dict[str, int]:
        try:
            raw = self.kmem.read(mm, self.mm.size)
        except MemoryUnavailable as exc:
            raise WalkError(f"mm_struct at {mm:#x} unreadable: {exc}") from None
        return {name: self._u64.unpack_from(raw, off)[0]
                for name, off in self.mm.offsets.items() if off is not None and name != "saved_auxv"
                and name != "map_count"} | {"address": mm, "raw_auxv": self._auxv(raw)}

    def _auxv(self, raw: bytes) -> bytes:
        off = self.mm["saved_auxv"]
        if off is None:
            return b""
        size = self.types.member("mm_struct", "saved_auxv").size
        data = raw[off:off + size]
        for pos in range(0, len(data) - 15, 16):          # up to and including AT_NULL
            if self._u64.unpack_from(data, pos)[0] == 0:
                return data[:pos + 16]
        return data

    def user_memory(self, mm: dict[str, int]) -> KernelMemory:
        """A reader of the process's address space."""
        try:
            root = self.arch.user_root(mm, self.kmem)
        except MemoryUnavailable as exc:
            raise WalkError(f"mm->pgd {mm['pgd']:#x} does not translate: {exc}") from None
        tables = self.kmem.tables
        return KernelMemory(self.dump, self.arch.user_space(self.dump, root, tables), tables=tables,
                            pages=self.kmem.pages)

    def task_size(self, mm: dict[str, int]) -> int:
        return self.arch.task_size(mm)

    # -- VMAs ---------------------------------------------------------------------
    def vma_addresses(self, mm: dict[str, int]) -> tuple[list[int], str | None]:
        if self.maple is not None:
            return self._maple_entries(mm["mm_mt.ma_root"])
        return self._vma_list(mm["mmap"])

    def _vma_list(self, first: int) -> tuple[list[int], str | None]:
        out, seen, vma = [], set(), first
        while vma:
            if vma in seen:
                return out, f"the VMA list loops back to {vma:#x}"
            if len(out) >= MAX_VMAS:
                return out, f"more than {MAX_VMAS} VMAs"
            seen.add(vma)
            out.append(vma)
            try:
                vma = self.kmem.read_pointer(vma + self.vma["vm_next"])
            except MemoryUnavailable as exc:
                return out, f"VMA list: {exc}"
        return out, None

    def _maple_entries(self, root: int) -> tuple[list[int], str | None]:
        """Leaf entries of a maple tree, in index order (drgn's mt_for_each, depth first)."""
        m = self.maple
        types = m["type"]
        leaf, range64, arange64 = types["maple_leaf_64"], types["maple_range_64"], types["maple_arange_64"]
        if not (root & 3 == 2 and root > 4096):         # xa_is_node
            return ([root] if root and root != XA_ZERO_ENTRY else []), None
        out: list[int] = []
        seen: set[int] = set()
        stack = [(root, 0, (1 << 64) - 1)]
        u64 = self._u64
        while stack:
            entry, low, high = stack.pop()
            node = entry & ~MAPLE_NODE_MASK
            kind = (entry >> 3) & 0xF
            if node in seen:
                return out, f"maple tree: node {node:#x} reached twice (a loop)"
            if len(seen) >= MAX_MAPLE_NODES:
                return out, f"maple tree: more than {MAX_MAPLE_NODES} nodes"
            seen.add(node)
            try:
                raw = self.kmem.read(node, m["node_size"])
            except MemoryUnavailable as exc:
                return out, f"maple tree: node unreadable: {exc}"
            if kind == arange64:
                pivot_off, slot_off, slots = m["arange_pivot"], m["arange_slot"], m["arange_slots"]
                end = raw[m["arange_meta_end"]]
            elif kind in (range64, leaf):
                pivot_off, slot_off, slots = m["range_pivot"], m["range_slot"], m["range_slots"]
                last_pivot = u64.unpack_from(raw, pivot_off + 8 * (slots - 2))[0]
                if not last_pivot:
                    end = raw[m["range_meta_end"]]
                elif last_pivot == high:
                    end = slots - 2
                else:
                    end = slots - 1
            else:
                return out, f"maple tree: node {node:#x} of unknown type {kind}"
            if end >= slots:
                return out, f"maple tree: node {node:#x} claims {end + 1} of {slots} slots"
            pivots = struct.unpack_from(f"{self.prefix}{slots - 1}Q", raw, pivot_off)
            values = struct.unpack_from(f"{self.prefix}{slots}Q", raw, slot_off)
            ranges = []
            prev = low
            for i in range(end + 1):
                pivot = pivots[i] if i < end else high
                if pivot < prev and i < end:
                    return out, f"maple tree: node {node:#x} pivots go backwards"
                ranges.append((values[i], prev, pivot))
                prev = pivot + 1
            if kind == leaf:
                for value, _lo, _hi in ranges:
                    if value and value != XA_ZERO_ENTRY:
                        if len(out) >= MAX_VMAS:
                            return out, f"more than {MAX_VMAS} VMAs"
                        out.append(value)
            else:
                for value, lo, hi in reversed(ranges):
                    if value:
                        stack.append((value, lo, hi))
        return out, None

    def vmas(self, mm: dict[str, int]) -> tuple[list[Vma], str | None]:
        addresses, problem = self.vma_addresses(mm)
        out: list[Vma] = []
        v = self.vma
        last_end = 0
        for address in addresses:
            try:
                raw = self.kmem.read(address, v.size)
            except MemoryUnavailable as exc:
                return out, problem or f"VMA at {address:#x} unreadable: {exc}"
            get = lambda name: self._u64.unpack_from(raw, v[name])[0]   # noqa: E731
            if get("vm_mm") != mm["address"]:
                return out, problem or f"VMA at {address:#x} belongs to another mm (damaged tree)"
            start, end = get("vm_start"), get("vm_end")
            if not last_end <= start < end:
                return out, problem or f"VMA at {address:#x} ({start:#x}-{end:#x}) out of order"
            last_end = end
            vma = Vma(start, end, get("vm_flags"), get("vm_pgoff"), file=get("vm_file"))
            self._name(vma, mm, raw)
            out.append(vma)
        return out, problem

    def _name(self, vma: Vma, mm: dict[str, int], raw: bytes) -> None:
        v = self.vma
        if vma.file:
            try:
                dentry = self.kmem.read_pointer(vma.file + self.file["f_path.dentry"])
                mnt = self.kmem.read_pointer(vma.file + self.file["f_path.mnt"])
                inode = self.kmem.read_pointer(vma.file + self.file["f_inode"])
                vma.inode = self.kmem.read_u64(inode + self.inode.i_ino)
                sb = self.kmem.read_pointer(inode + self.inode.i_sb)
                vma.dev = self.kmem.read_u32(sb + self.sb.s_dev)
                vma.name = self.d_path(dentry, mnt)
            except (MemoryUnavailable, WalkError) as exc:
                vma.name = f"[unreadable file: {exc}]"
            return
        if v["vm_ops"] is not None and v["vm_private_data"] is not None:
            ops = self._u64.unpack_from(raw, v["vm_ops"])[0]
            private = self._u64.unpack_from(raw, v["vm_private_data"])[0]
            if ops and ops in self.special_vmops and private:
                try:
                    name = self.kmem.read_pointer(private)     # vm_special_mapping.name
                    vma.name = self.kmem.read_cstring(name, 64).decode("utf-8", "replace")
                    return
                except MemoryUnavailable:
                    pass
        if vma.start <= mm["brk"] and vma.end >= mm["start_brk"]:
            vma.name = "[heap]"
        elif vma.start <= mm["start_stack"] <= vma.end:
            vma.name = "[stack]"

    def d_path(self, dentry: int, vfsmount: int) -> str:
        """The path of (vfsmount, dentry) from the root, crossing mount points (prepend_path)."""
        names: list[bytes] = []
        mount = vfsmount - self.mount.mnt if self.mount is not None and vfsmount else 0
        seen = set()
        for _ in range(MAX_PATH_DEPTH):
            if (dentry, mount) in seen:
                raise WalkError("the dentry chain loops")
            seen.add((dentry, mount))
            parent = self.kmem.read_pointer(dentry + self.dentry.d_parent)
            if mount and dentry == self.kmem.read_pointer(mount + self.mount.mnt + self.vfsmount_root):
                parent_mount = self.kmem.read_pointer(mount + self.mount.mnt_parent)
                if parent_mount == mount or not parent_mount:
                    break                               # the root of the namespace
                dentry = self.kmem.read_pointer(mount + self.mount.mnt_mountpoint)
                mount = parent_mount
                continue
            if parent == dentry:
                break
            length = self.kmem.read_u32(dentry + self.dentry["d_name.len"])
            name = self.kmem.read_pointer(dentry + self.dentry["d_name.name"])
            names.append(self.kmem.read(name, min(length, 255)))
            dentry = parent
        else:
            raise WalkError("path deeper than 256 components")
        return "/" + "/".join(n.decode("utf-8", "replace") for n in reversed(names))

    # -- strings from user memory ---------------------------------------------------
    @staticmethod
    def read_range(umem: KernelMemory, start: int, end: int) -> bytes:
        if not start or end <= start:
            return b""
        return umem.read(start, min(end - start, MAX_ARGS))
