"""An IDR's entries, read like lib/idr.c's idr_for_each (drgn's idr_for_each is the model).

    struct idr { struct radix_tree_root idr_rt; unsigned int idr_base; ... }
    4.20+:  radix_tree_root is struct xarray: xa_head, nodes struct xa_node; an entry is a
            node when (entry & 3) == 2 and entry > 4096 (smaller internal entries are
            sibling/retry markers), a value when bit 0 is set
    4.x:    struct radix_tree_root: rnode, nodes struct radix_tree_node; an entry is a node
            when (entry & 3) == 1 (RADIX_TREE_INTERNAL_NODE)
    node:   shift (bits of the index below this level), slots[RADIX_TREE_MAP_SIZE]

The index of an entry is the sum of (slot << shift) down its path, plus idr_base.
Dumps can be hostile: nodes are visited at most once, a child's shift must be
below its parent's, and the number of nodes and entries is capped; what stops
the walk is said, and the entries found up to there are kept.
"""

from __future__ import annotations

import struct

from dumpfs.errors import MemoryUnavailable, TypeMissing, WalkError
from dumpfs.kernel.address_space import KernelMemory
from dumpfs.kernel.types import Types

XA_NODE_MIN = 4096              # xa_is_node(): internal entries up to here are markers
POINTER = struct.calcsize("Q")


class IdrLayout:
    """Where an IDR's tree is, for one kernel: xarray (4.20+) or radix tree (4.x)."""

    def __init__(self, types: Types):
        try:
            # idr_rt's own type says which: no search for a struct this kernel does not have
            root = types.member("idr", "idr_rt").type
            if root == "struct xarray":
                self.node_tag, node, head = 2, "xa_node", "idr_rt.xa_head"
            elif root == "struct radix_tree_root":
                self.node_tag, node, head = 1, "radix_tree_node", "idr_rt.rnode"
            else:
                raise TypeMissing(f"{types.source}: idr.idr_rt is a {root or 'type'} "
                                  "(neither struct xarray nor struct radix_tree_root)")
            self.head = types.offsetof("idr", head)
            self.base = (types.offsetof("idr", "idr_base")
                         if types.has_member("idr", "idr_base") else None)
            self.shift = types.offsetof(node, "shift")
            slots = types.member(node, "slots")
        except TypeMissing as exc:
            raise WalkError(f"the IDR's layout is unknown: {exc}") from None
        if not slots.count:
            raise WalkError(f"{node}.slots has no element count")
        self.slots, self.fanout = slots.offset, slots.count
        self.node_bytes = max(self.shift + 1, self.slots + POINTER * self.fanout)


def idr_entries(kmem: KernelMemory, layout: IdrLayout, idr: int, limit: int,
                what: str) -> tuple[list[tuple[int, int]], list[str]]:
    """(index, entry) of every pointer stored in the IDR at `idr`, by index, at most `limit`;
    the second value lists what could not be read (empty when the walk was complete)."""
    problems: list[str] = []
    try:
        root = kmem.read_pointer(idr + layout.head)
        base = kmem.read_u32(idr + layout.base) if layout.base is not None else 0
    except MemoryUnavailable as exc:
        return [], [f"{what}: the IDR at {idr:#x} unreadable: {exc}"]
    slots = struct.Struct(f"{kmem.prefix}{layout.fanout}Q")
    tag = layout.node_tag
    out: list[tuple[int, int]] = []
    seen: set[int] = set()
    stack = [(root, 0, 64)]             # (entry, index of its first slot, parent's shift)
    while stack:
        entry, index, parent_shift = stack.pop()
        if entry & 3 == tag:
            if entry <= XA_NODE_MIN and tag == 2:
                continue                # sibling, retry or zero marker
            node = entry - tag
            if node in seen:
                problems.append(f"{what}: node {node:#x} reached twice")
                continue
            if len(seen) >= limit:
                problems.append(f"{what}: more than {limit} nodes (the tree is damaged)")
                break
            seen.add(node)
            try:
                raw = kmem.read(node, layout.node_bytes)
            except MemoryUnavailable as exc:
                problems.append(f"{what}: node {node:#x} (indexes from {index + base}) "
                                f"unreadable: {exc}")
                continue
            shift = raw[layout.shift]
            if shift >= parent_shift:
                problems.append(f"{what}: node {node:#x} has shift {shift} under a parent "
                                f"with shift {parent_shift}")
                continue
            children = slots.unpack_from(raw, layout.slots)
            for slot in range(layout.fanout - 1, -1, -1):
                if children[slot]:
                    stack.append((children[slot], index + (slot << shift), shift))
        elif entry and not entry & 3:
            if len(out) >= limit:
                problems.append(f"{what}: more than {limit} entries (the tree is damaged)")
                break
            out.append((index + base, entry))
    return out, problems
