"""Dump formats, detected by content in the order of REGISTRY, from header bytes only.

Each entry says what its backend recognises (magic bytes and where they
are); the backend's module is imported only when one of them matches, and
then its `detect(probe)` decides (dissect.target's lazy registry is the
model).  Detection sees one `Probe`: the first and last bytes of the source,
read once.  Device lookups (a partition's disk, the other volumes of a set)
happen while opening, never while detecting.

A backend module has `detect(probe) -> bool` and `open(source) -> Dump`; an
entry with `partitions` also has `open_partition(partition, disk, start) ->
Dump | None`, for a partition device that its disk's layout names as the
dump partition; a dump tool's backend (s390mv, s390, scsi) has `check(source)`
for `dumpfs check` (devcheck.py).  Backends know about bytes and the model,
never about FUSE or views.
"""

from __future__ import annotations

import importlib
import os
import stat
import struct
from dataclasses import dataclass
from itertools import islice
from types import ModuleType

from dumpfs.compressed import open_compressed
from dumpfs.errors import DumpError, NoDump
from dumpfs.model import Dump, PageState
from dumpfs.url import is_url
from dumpfs.s390dump import MAGIC_S390, MAGIC_S390_EXT
from dumpfs.source import FileSource, Source

from .probe import Probe
from .sysblock import parent_disk

S390 = MAGIC_S390.to_bytes(8, "big")
S390_EXT = MAGIC_S390_EXT.to_bytes(8, "big")
ZIPL = b"zIPL"
TAPE_TOOL_HEAD = struct.pack(">QQ", 0x0008000080002018, 0x0700000060000001)


@dataclass(frozen=True)
class Backend:
    """One dump format: where its magic is, and the module that confirms and opens it."""

    name: str                               # module dumpfs.backends.<name>
    recognises: str                         # for people
    magics: tuple[tuple[int, bytes], ...]   # (offset, bytes): any one makes the format a candidate
    partitions: bool = False                # opens a partition device through its disk's layout

    def module(self) -> ModuleType:
        return importlib.import_module(f"dumpfs.backends.{self.name}")

    def matches(self, probe: Probe) -> bool:
        return any(probe.read(offset, len(magic)) == magic for offset, magic in self.magics) \
            and self.module().detect(probe)


# Detection order: most specific magic first.
REGISTRY = [
    Backend("flattened", "makedumpfile flattened stream around a kdump or ELF file",
            ((0, b"makedumpfile\0\0\0\0"),)),
    Backend("kdump", "kdump-compressed (makedumpfile, QEMU)", ((0, b"KDUMP   "),)),
    Backend("vmdump", "z/VM VMDUMP spool file (vmur rec)", ((0x38, "VMDUMP  ".encode("cp500")),)),
    Backend("lkcd", "LKCD v8 s390 (old zfcpdump files dump.N, vmconvert)",
            ((0, 0xA8190173618F23ED.to_bytes(8, "big")),)),
    Backend("scsi", "SCSI dump disk (zfcpdump): zipl MBR, superblock, ELF in the partition",
            ((0, ZIPL), (0, b"zfcpdump busy\0")), partitions=True),
    Backend("s390mv", "IBM Z multi-volume DASD dump (s390mv_ext): disk or member partition",
            tuple((3 * size, b"XMULT64") for size in (512, 1024, 2048, 4096)) + ((0, S390_EXT),)),
    Backend("tape", "IBM Z tape dump: tape image, AWSTAPE (a tape device: open_paths)",
            ((0, S390), (0, S390_EXT), (0, TAPE_TOOL_HEAD), (6, TAPE_TOOL_HEAD),
             (0, b"\x00\x10\x00\x00"))),        # AWSTAPE: a first block of 4 KiB, the dump header
    Backend("s390", "IBM Z stand-alone dump (s390, s390_ext), image or DASD",
            ((0, S390), (0, S390_EXT), (0x1000 + 92, ZIPL), (0x70, ZIPL), (0x200, S390_EXT))
            + tuple((0, tool) for tool in (b"XECKD64", b"XDFBA64", b"XMULT64", b"ZECKD64", b"ZDFBA64")),
            partitions=True),
    Backend("ngdump", "NGDump partition: ext4 with ngdump.meta and an ELF dump file",
            ((1024 + 0x38, b"\x53\xef"),)),
    Backend("elf", "ELF64 core (/proc/vmcore style)", ((0, b"\x7fELF"),)),
]
BACKENDS = [backend.name for backend in REGISTRY]
BY_NAME = {backend.name: backend for backend in REGISTRY}


def detect(source: Source) -> Backend | None:
    """The first backend whose format `source` has, judged from its header bytes only."""
    probe = Probe.of(source)
    return next((backend for backend in REGISTRY if backend.matches(probe)), None)


class _Disk:
    """A partition device's whole disk, looked up (sysfs) and probed once, when first asked."""

    def __init__(self, partition: Source):
        self.partition = partition
        self.looked_up = False
        self.source: Source | None = None
        self.start = 0
        self.probe: Probe | None = None

    def open(self) -> bool:
        if not self.looked_up:
            self.looked_up = True
            parent = parent_disk(self.partition) if self.partition.is_block_device else None
            if parent is not None:
                try:
                    self.source = FileSource(parent[0])
                except DumpError:
                    return False
                self.start = parent[1]
                self.probe = Probe.of(self.source)
        return self.source is not None

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def open_source(source: Source, probe: Probe | None = None) -> Dump:
    """Detect the format of `source` and open it; DumpError names what is wrong."""
    if source.size == 0:
        raise NoDump(f"{source.name}: empty file, not a dump")
    probe = probe or Probe.of(source)
    disk = _Disk(source)
    try:
        for backend in REGISTRY:
            if backend.partitions and disk.open() and backend.matches(disk.probe):
                dump = backend.module().open_partition(source, disk.source, disk.start)
                if dump is not None:
                    return _opened(dump, source)
            if backend.matches(probe):
                return _opened(backend.module().open(source), source)
    finally:
        disk.close()
    raise NoDump(f"{source.name}: unknown dump format (first bytes {probe.head[:8].hex(' ')}); "
                 f"known formats: {', '.join(BACKENDS)}")


def _opened(dump: Dump, source: Source) -> Dump:
    if source.name not in dump.sources:
        dump.sources.append(source.name)
    if source not in dump.resources:
        dump.resources.append(source)
    container = getattr(source, "container", None)     # compression, a remote object: what holds it
    if container:
        dump.meta.details.setdefault("container", container)
    _complete_from_memory(dump)
    return dump


def _complete_from_memory(dump: Dump) -> None:
    """VMCOREINFO that the format lacks but the kernel keeps in memory (s390 lowcore)."""
    from dumpfs.kernel.vmcoreinfo import locate_vmcoreinfo

    dump.meta.details["vmcoreinfo"] = locate_vmcoreinfo(dump)
    if not dump.meta.kernel_release and dump.vmcoreinfo is not None:
        dump.meta.kernel_release = dump.vmcoreinfo.get("OSRELEASE")
    _name_missing_memory(dump)


MAX_MISSING_RANGES = 16


def _name_missing_memory(dump: Dump) -> None:
    """An incomplete dump's details name the address ranges it lacks ("missing memory").

    The problems say why (a volume, a segment, the end of a file); this says
    exactly which memory is unreadable because of it.  Complete dumps are not
    walked, so opening a big dump stays lazy.
    """
    if dump.meta.complete:
        return
    ranges = dump.memory.runs.ranges(PageState.MISSING)
    shown = list(islice(ranges, MAX_MISSING_RANGES))
    if not shown:
        return
    total = dump.memory.size_in(PageState.MISSING)
    count = len(shown) + sum(1 for _ in ranges)
    more = count - MAX_MISSING_RANGES
    dump.meta.details["missing memory"] = (
        f"{', '.join(f'{start:#x}-{end:#x}' for start, end in shown)}"
        f"{f' and {more} more ranges (see memory/map)' if more > 0 else ''} "
        f"({total:,} bytes in {count} range{'s' if count > 1 else ''})")


def open_sources(sources: list[Source], *, partial: bool = False) -> list[Dump]:
    """Open several sources; the volumes of one multi-volume dump become one Dump.

    Dumps come in the order of their first source.  `partial`: open a
    multi-volume dump with volumes missing (their memory is MISSING).
    On failure every source is closed.
    """
    dumps: list[Dump] = []
    try:
        probes = {id(source): Probe.of(source) for source in sources}
        multi_volume = BY_NAME["s390mv"]
        volumes = [s for s in sources if s.size and multi_volume.matches(probes[id(s)])]
        groups, _rest = multi_volume.module().group(volumes) if volumes else ([], [])
        firsts = {id(g[0].source): g for g in groups}
        grouped = {id(m.source) for g in groups for m in g}
        for source in sources:
            if id(source) in firsts:
                members = firsts[id(source)]
                search = any(m.source.is_block_device for m in members)
                dump = multi_volume.module().open_members(members, search=search, partial=partial)
                _complete_from_memory(dump)
                dumps.append(dump)
            elif id(source) not in grouped:
                dumps.append(open_source(source, probes[id(source)]))
    except BaseException:
        for dump in dumps:
            dump.close()
        for source in sources:
            source.close()
        raise
    return dumps


def open_paths(paths: list[str], *, partial: bool = False) -> list[Dump]:
    """open_sources for paths given on the command line."""
    sources: list[Source] = []
    tapes: dict[str, Dump] = {}
    try:
        for path in paths:
            tape = _tape_device(path)
            if tape is not None:
                _complete_from_memory(tape)
                tapes[path] = tape
            else:
                sources.append(_look_inside(_open_path(path)))
    except BaseException:
        for source in sources:
            source.close()
        for dump in tapes.values():
            dump.close()
        raise
    dumps = open_sources(sources, partial=partial)
    if not tapes:
        return dumps
    by_first = {d.sources[0]: d for d in dumps if d.sources}
    ordered = [tapes[p] if p in tapes else by_first.get(p) for p in paths]
    return [d for d in ordered if d is not None]


def _open_path(path: str) -> Source:
    """A local file or block device, or an http(s):// or s3:// URL (dumpfs.remote)."""
    if not is_url(path):
        return FileSource(path)
    remote = importlib.import_module("dumpfs.remote")     # fsspec, aiohttp: only for URLs
    return remote.open_url(path)


def _tape_device(path: str) -> Dump | None:
    """A tape character device is no random-access Source: the tape backend reads it itself."""
    if is_url(path):
        return None
    try:
        if not stat.S_ISCHR(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    tape = BY_NAME["tape"].module()
    return tape.open_device(path) if tape.is_tape_device(path) else None


def _look_inside(source: Source) -> Source:
    """Detection looks through compression: a gzip, bzip2, xz or zstd file is the dump
    inside it (dumpfs.compressed: a seek index or a one-pass cache, built once)."""
    try:
        return open_compressed(source) or source
    except BaseException:
        source.close()
        raise


def open_dump(path: str) -> Dump:
    dump = _tape_device(path)
    if dump is not None:
        _complete_from_memory(dump)
        return dump
    source = _open_path(path)
    try:
        source = _look_inside(source)
        return open_source(source)
    except BaseException:
        source.close()
        raise
