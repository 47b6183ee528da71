"""NGDump partitions: an ext4 file system with `ngdump.meta` and the dump file it names.

The NGDump dumper (zipl -d on NVMe, or ECKD with --ldipl-dump) writes the
dump as an ELF core into a file of the partition's ext4 file system and
records the file name in `ngdump.meta` (`version=1`, `file=`, `sha256sum=`).
The file system is read with dissect.extfs, without mounting: the dump
file's extents become a `RunsSource` over the partition, which the ELF
backend reads directly.

File systems that zfcpdump v1/v2 (zipl --dumptofs) wrote LKCD files
`dump.N` into are opened too: the highest N.
"""

from __future__ import annotations

import re
import struct

from dumpfs.errors import DamagedDump, MissingPart, NoDump, Problem, Unsupported
from dumpfs.model import Dump
from dumpfs.source import BytesSource, RunsSource, Source
from dumpfs.sourcefile import SourceFile

SUPERBLOCK = 1024
EXT_MAGIC = 0xEF53                  # s_magic at superblock + 0x38, little-endian
META = "ngdump.meta"
MAX_META = 64 << 10
EXT4_INLINE_DATA_FL = 0x10000000


def detect(source: Source) -> bool:
    raw = source.read(SUPERBLOCK + 0x38, 2)
    return len(raw) == 2 and struct.unpack("<H", raw)[0] == EXT_MAGIC


def parse_meta(text: str) -> dict[str, str]:
    """key=value lines; blank lines and # comments ignored, white space stripped."""
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            entries[key.strip()] = value.strip()
    return entries


def _file_source(fs, inode, source: Source, name: str) -> Source:
    """The file's bytes: its extents over the partition (inline data: in memory)."""
    if inode.inode.i_flags & EXT4_INLINE_DATA_FL:
        return BytesSource(inode.open().read(), name)
    runs = [(None if block is None else block * fs.block_size, count * fs.block_size)
            for block, count in inode.dataruns()]
    return RunsSource(source, runs, inode.size, name)


def open(source: Source) -> Dump:
    try:
        from dissect.extfs import ExtFS
    except ImportError:
        raise Unsupported(f"{source.name}: an ext2/3/4 file system; reading NGDump partitions needs "
                          f"the Python package dissect.extfs (pip install dissect.extfs)") from None
    from dumpfs.backends import elf, lkcd

    name = source.name
    try:
        fs = ExtFS(SourceFile(source))
        root = fs.root.listdir()
    except Exception as e:      # the library's own errors: damaged or truncated file system
        raise DamagedDump(f"{name}: ext file system unreadable: {e}") from None
    if META not in root:
        numbered = sorted((int(m.group(1)), n) for n in root if (m := re.fullmatch(r"dump\.(\d+)", n)))
        if numbered:
            return _open_lkcd_file(fs, root[numbered[-1][1]], source, numbered, lkcd)
        raise NoDump(f"{name}: an ext file system without {META} (nor zfcpdump dump.N files): "
                     f"not an NGDump partition")
    meta_inode = root[META]
    if meta_inode.size > MAX_META:
        raise DamagedDump(f"{name}: {META} of {meta_inode.size} bytes is absurd")
    try:
        meta = parse_meta(meta_inode.open().read().decode("utf-8", "replace"))
    except Exception as e:
        raise DamagedDump(f"{name}: {META} unreadable: {e}") from None
    if meta.get("version") != "1":
        raise Unsupported(f"{name}: {META} version {meta.get('version')!r}, only version 1 is known")
    path = meta.get("file", "")
    if not path:
        raise NoDump(f"no dump on {name}: an NGDump partition whose {META} names no dump file yet")
    try:
        inode = fs.get(path)
        inner = _file_source(fs, inode, source, f"{name}:{path}")
    except FileNotFoundError:
        raise MissingPart(f"{name}: {META} names '{path}', which is not in the file system") from None
    except Exception as e:
        raise DamagedDump(f"{name}: the dump file '{path}' is unreadable: {e}") from None
    if not elf.detect(inner):
        raise DamagedDump(f"{name}: the NGDump file '{path}' is not an ELF dump "
                          f"(starts with {inner.read(0, 8).hex(' ')})")
    dump = elf.open(inner)
    dump.meta.writer = "NGDump dumper"
    dump.meta.details.update({"layout": f"NGDump partition ({META} version 1)", "dump file": path,
                              "dump file size": inode.size,
                              "sha256sum": meta.get("sha256sum") or "(none recorded)",
                              "sha256 check": "not done (would read the whole file)"})
    if not meta.get("sha256sum"):
        dump.meta.problems.append(Problem(f"{META} records no sha256sum for '{path}'"))
    return dump


def _open_lkcd_file(fs, inode, source: Source, numbered, lkcd) -> Dump:
    name = f"{source.name}:dump.{numbered[-1][0]}"
    inner = _file_source(fs, inode, source, name)
    if not lkcd.detect(inner):
        raise DamagedDump(f"{name}: not an LKCD dump (starts with {inner.read(0, 8).hex(' ')})")
    dump = lkcd.open(inner)
    dump.meta.details["layout"] = (f"zfcpdump v1/v2 file system, newest of "
                                   f"{', '.join(f'dump.{n}' for n, _ in numbered)}")
    return dump
