"""The file tree a mount shows: directories and files that compute their bytes on read.

Nodes know nothing about dumps or FUSE.  Directory contents may be built on
first listing (`Dir(children=callable)`), so a mount costs nothing until
someone looks.
"""

from __future__ import annotations

import errno
import itertools
import threading
from dataclasses import dataclass
from typing import Callable, Iterable


@dataclass(frozen=True)
class Access:
    """Who may read a subtree: an owner, a group and read bits (0o444 at most).

    A dump's tree gets its source's owner, group and read bits, so a dump only
    root may read stays root-only however it is mounted.  Directories get the
    search bit wherever they have the read bit.
    """

    uid: int
    gid: int
    read_bits: int

    @property
    def file_mode(self) -> int:
        return self.read_bits & 0o444

    @property
    def dir_mode(self) -> int:
        return self.file_mode | (self.file_mode >> 2)


class Node:
    _inodes = itertools.count(2)    # 1 is the FUSE root
    _lock = threading.Lock()

    def __init__(self, name: str):
        self.name = name
        with Node._lock:
            self.inode = next(Node._inodes)


class File(Node):
    """A read-only file: `size` and `read(offset, length)` (may raise OSError, e.g. EIO).

    `size` may be a callable, evaluated on first use (e.g. a vmcore whose
    layout needs the memory map).  A size that cannot be computed never hides
    the file: it is listed and stat-able (size 0, `unsized`), and only its
    read fails, with the reason.

    `unsized`: like /proc/PID/mem, the size is 0 and reads at any offset reach
    `read` (a sparse address space is no file length to copy).
    `exact_reads`: each read is answered whole or fails whole (no page cache
    splitting it into pages), so a hole fails only the requests that touch it
    and never shortens one: `dd conv=noerror,sync` keeps its offsets.
    `stored`: bytes the file really holds, for st_blocks (default: its size).
    """

    def __init__(self, name: str, size: int | Callable[[], int],
                 read: Callable[[int, int], bytes], mtime: float | None = None,
                 inline: bool = False, unsized: bool = False, exact_reads: bool = False,
                 stored: int | Callable[[], int] | None = None):
        super().__init__(name)
        self._size = size
        self._read = read
        self.mtime = mtime
        self.inline = inline
        """Reads are mostly copies from the page cache: worth trying without waiting
        (dumpfs.model.without_waiting) before handing them to a worker thread."""
        self.unsized = unsized
        self.exact_reads = exact_reads
        self._stored = stored

    @property
    def size(self) -> int:
        if self.unsized:
            return 0
        if callable(self._size):
            self._size = self._size()
        return self._size

    @property
    def stored(self) -> int:
        """Bytes the file holds (st_blocks): 0 for an unsized file, else `stored` or the size."""
        if self.unsized:
            return 0
        if self._stored is None:
            return self.size
        if callable(self._stored):
            self._stored = self._stored()
        return self._stored

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if self.unsized:
            return self._read(offset, length)
        size = self.size
        if offset >= size:
            return b""
        return self._read(offset, min(length, size - offset))

    @classmethod
    def from_bytes(cls, name: str, data: bytes | Callable[[], bytes], mtime: float | None = None,
                   failures: tuple[type[BaseException], ...] = (), inline: bool = False) -> "File":
        """A small file whose whole content is computed at most once.

        An exception of a `failures` type is kept too: every stat and read of
        the file then fails with EIO and its message, without computing again.
        `inline`: computing the content is quick (formatting what is already read).
        """
        cell: list[tuple[bool, object]] = []
        lock = threading.Lock()

        def content() -> bytes:
            with lock:
                if not cell:
                    try:
                        cell.append((True, data() if callable(data) else data))
                    except failures as exc:
                        cell.append((False, str(exc)))
            ok, value = cell[0]
            if not ok:
                raise OSError(errno.EIO, f"{name}: {value}")
            return value

        return cls(name, lambda: len(content()),
                   lambda offset, length: content()[offset:offset + length], mtime, inline=inline)


class Dir(Node):
    expires: float | None = None
    """Seconds the kernel may trust this directory's listing, its entries' names and their
    attributes; None: forever (a dump's tree never changes).  A directory whose entries come
    and go (a dump directory) sets it."""

    def __init__(self, name: str, children: Iterable[Node] | Callable[[], Iterable[Node]] = (),
                 mtime: float | None = None, access: Access | None = None, inline: bool = False):
        super().__init__(name)
        self.access = access
        """Applies to this directory and everything below it, unless a subfolder has its own."""
        self.inline = inline
        """Building the children is quick (like File.inline: worth trying without waiting)."""
        self._factory = children if callable(children) else None
        self._children: dict[str, Node] | None = None if callable(children) else {
            c.name: c for c in children}
        self._lock = threading.Lock()
        self.mtime = mtime

    @property
    def children(self) -> dict[str, Node]:
        if self._children is None:
            with self._lock:
                if self._children is None:
                    self._children = {c.name: c for c in self._factory()}
        return self._children

    @property
    def built(self) -> bool:
        """The children are there: listing or looking up costs nothing."""
        return self._children is not None

    def add(self, node: Node) -> Node:
        self.children[node.name] = node
        return node

    def lookup(self, name: str) -> Node | None:
        return self.children.get(name)

    def walk(self, path: str) -> Node | None:
        node: Node | None = self
        for part in filter(None, path.split("/")):
            if not isinstance(node, Dir):
                return None
            node = node.lookup(part)
        return node


class NamedDir(Dir):
    """A directory whose entries' names are known before the entries are built: a lookup
    builds only the entry it asks for, a listing builds the rest.  `cat proc/*/comm` then
    builds one node per process folder, not a dozen (each node, once built, stays)."""

    def __init__(self, name: str, names: Callable[[], Iterable[str]], make: Callable[[str], Node],
                 mtime: float | None = None, access: Access | None = None, inline: bool = False):
        super().__init__(name, self._make_all, mtime, access, inline)
        self._names_of = names
        self._names: tuple[str, ...] | None = None
        self._make = make
        self._made: dict[str, Node] = {}

    def _entry(self, name: str) -> Node:
        """The entry `name`, built on first use (the caller holds the lock)."""
        node = self._made.get(name)
        if node is None:
            node = self._made[name] = self._make(name)
        return node

    def _known_names(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._names_of())
        return self._names

    def _make_all(self) -> list[Node]:
        return [self._entry(name) for name in self._known_names()]

    def lookup(self, name: str) -> Node | None:
        if self._children is not None:
            return self._children.get(name)
        with self._lock:
            return self._entry(name) if name in self._known_names() else None


def unique_names(names: Iterable[str]) -> list[str]:
    """Sibling names made unique in order: a repeated `name` becomes `name-2`, `name-3`..."""
    unique: list[str] = []
    seen: set[str] = set()
    for base in names:
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}-{n}"
        seen.add(name)
        unique.append(name)
    return unique
