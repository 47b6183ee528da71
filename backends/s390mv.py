"""IBM Z multi-volume DASD dumps (`s390mv_ext`): one s390_ext dump spread over up to 32 partitions.

`zipl -M` writes the XMULT64 dump tool and the same 512-byte volume parameter
table to every disk of the set (s390-multivolume.md §1-2); the dumper writes a
dump header (volnr = volume index) at each partition's start, then raw
segments, and the end marker after the segment with the stop marker on the
last volume it used (§4).

A set is opened from any member: a whole disk (table at block 3 + dumper
size) or a dump partition (header with the ...FE magic and signature).  The
other volumes are, in this order:
  1. the other sources given together (`dumpfs mount VOL1 VOL2 ... MNT`);
  2. for a partition: its disk, /sys/class/block/<dev>/.. (the table is there);
  3. on IBM Z: /sys/bus/ccw/devices/<bus id>/block/dasd* for each table entry;
  4. any disk in /sys/block whose table is byte-identical; which volume it is
     comes from the header at the entry's partition (volnr), since the table
     itself is the same on all volumes.  A volume holding no dump data cannot
     be told apart from another this way, and need not be: it adds nothing.
Image files are never searched for: give them all.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from construct import Array, Int8ub, Int16ub, Int32ub, Int64ub, Padding, Struct

from dumpfs.arch import s390x
from dumpfs.errors import DamagedDump, DumpError, MissingPart, NoDump, Problem
from dumpfs.model import Dump, Memory
from dumpfs.source import FileSource, Source

from . import s390
from .probe import Probe
from .sysblock import _is_block, block_disks, block_size, ccw_busid, parent_disk
from dumpfs.s390dump import HEADER_SIZE, MAGIC_S390_EXT, DumpHeader

from .devcheck import Report
from .s390 import DUMPER_BLOCK, DumperTail, Layout, Segment, size_limit

MIB = 1 << 20
DUMPER_MAGIC = b"XMULT64"
DUMPER_SIZES = {1: 0x3000, 2: 0x4000}    # by version byte (df_s390_dumper_read)
MAX_VOLUMES = 32
TABLE_COMPARED = 458                     # bytes zgetdump compares between volumes

# struct vol_parm, 13 bytes packed, one per volume
VolParm = Struct(
    "devno" / Int16ub,              # device number: last 4 hex digits of the bus ID
    "start_blk" / Int32ub,          # first block of the dump partition on the disk
    "end_blk" / Int32ub,            # last block of the dump partition (inclusive)
    "blk_size" / Int8ub,            # block size >> 8 (16 = 4096)
    "bpt" / Int8ub,                 # blocks per track
    "num_heads" / Int8ub,           # tracks per cylinder
)
# struct mvdump_parm_table, 512 bytes, right behind the dump tool
ParmTable = Struct(
    "timestamp" / Int64ub,          # (tv_sec << 20) + tv_usec of zipl -M: names the set
    "num_param" / Int16ub,          # number of volumes, 1..32
    "param" / Array(MAX_VOLUMES, VolParm),
    "ssid" / Array(MAX_VOLUMES, Int8ub),    # subchannel-set ID of each volume
    Padding(54),
)
assert ParmTable.sizeof() == 512


@dataclass
class Member:
    """One source that belongs to a set: a whole disk with the dump tool, or a dump partition."""

    source: Source
    table_raw: bytes | None = None      # the 512-byte table (disks only)
    dumper: str | None = None           # e.g. "XMULT64 v2"
    tail: object = None                 # DumperTail (disks only)
    index: int | None = None            # volume number, when known
    part_off: int = 0                   # where its dump partition starts in `source`
    part_size: int | None = None
    hdr: object = None                  # the dump header at part_off, if any

    @property
    def table(self):
        return ParmTable.parse(self.table_raw) if self.table_raw else None


def _header(source: Source | Probe, offset: int):
    raw = source.read(offset, HEADER_SIZE)
    return DumpHeader.parse(raw) if len(raw) == HEADER_SIZE else None


def _is_volume_header(hdr, index: int | None = None) -> bool:
    """A header the multi-volume dumper wrote (for volume `index`)."""
    return (hdr is not None and hdr.magic == MAGIC_S390_EXT and hdr.mvdump_sign == MAGIC_S390_EXT
            and hdr.mvdump == 1 and hdr.mem_size != 0 and (index is None or hdr.volnr == index))


def dumper_head(source: Source | Probe, bs: int) -> tuple[int, int] | None:
    """(version, image size) of an XMULT64 dump tool at block 3, else None."""
    head = source.read(DUMPER_BLOCK * bs, 8)
    if len(head) == 8 and head[:7] == DUMPER_MAGIC and head[7] in DUMPER_SIZES:
        return head[7], DUMPER_SIZES[head[7]]
    return None


def _tool_table(source: Source | Probe, bs: int) -> tuple[int, int, bytes] | None:
    """(version, image size, 512-byte volume table) of an XMULT64 dump tool at block 3, else None."""
    head = dumper_head(source, bs)
    if head is None:
        return None
    version, size = head
    table_raw = source.read(DUMPER_BLOCK * bs + size, ParmTable.sizeof())
    if len(table_raw) < ParmTable.sizeof() or not 1 <= ParmTable.parse(table_raw).num_param <= MAX_VOLUMES:
        return None
    return version, size, table_raw


def detect(probe: Probe) -> bool:
    """A disk with the XMULT64 dump tool and its volume table, or a volume's dump partition."""
    return _tool_table(probe, probe.block_size) is not None or _is_volume_header(_header(probe, 0))


def member(source: Source) -> Member | None:
    """What `source` is in a multi-volume set, or None if it is not part of one."""
    bs = block_size(source)
    found = _tool_table(source, bs)
    if found is not None:
        version, size, table_raw = found
        table = ParmTable.parse(table_raw)
        tail = DumperTail.parse(source.read(DUMPER_BLOCK * bs + size - 16, 16))
        m = Member(source, table_raw, f"XMULT64 v{version}", tail)
        for i, entry in enumerate(table.param[:table.num_param]):
            part_off = entry.start_blk * (entry.blk_size << 8)
            hdr = _header(source, part_off)
            if _is_volume_header(hdr, i):
                m.index, m.part_off, m.hdr = i, part_off, hdr
                break
        else:
            busid = ccw_busid(source)
            for i, entry in enumerate(table.param[:table.num_param]):
                hdr = _header(source, entry.start_blk * (entry.blk_size << 8))
                damaged = hdr is not None and hdr.mvdump_sign == MAGIC_S390_EXT and hdr.mvdump == 1 \
                    and hdr.volnr == i and hdr.magic != MAGIC_S390_EXT
                if busid == bus_id(table, i) or damaged:
                    m.index = i
        if m.index is not None:
            entry = table.param[m.index]
            m.part_off = entry.start_blk * (entry.blk_size << 8)
            m.part_size = (entry.end_blk - entry.start_blk + 1) * (entry.blk_size << 8)
            m.hdr = m.hdr or _header(source, m.part_off)
        return m
    hdr = _header(source, 0)
    if _is_volume_header(hdr):
        return Member(source, index=hdr.volnr, part_size=source.size, hdr=hdr)
    return None


def bus_id(table, index: int) -> str:
    return f"0.{table.ssid[index]:x}.{table.param[index].devno:04x}"


# -- finding the other volumes on this machine ---------------------------------------------------

def _disk_for_busid(busid: str) -> str | None:
    for dev in glob.glob(f"/sys/bus/ccw/devices/{busid}/block/dasd*"):
        path = "/dev/" + os.path.basename(dev)
        if _is_block(path):
            return path
    return None


def _open_member(path: str, seen: set) -> Member | None:
    try:
        rdev = os.stat(path).st_rdev
        if rdev in seen:
            return None
        source = FileSource(path)
    except (OSError, DumpError):
        return None
    try:
        found = member(source)
    except Exception:       # noqa: BLE001 - a foreign disk may hold anything
        found = None
    if found is None or found.table_raw is None:
        source.close()
        return None
    seen.add(rdev)
    return found


def _rdev(source: Source) -> int | None:
    try:
        return os.stat(source.name).st_rdev if source.is_block_device else None
    except OSError:
        return None


def search_disks(members: list[Member]) -> list[Member]:
    """Disks of this set that the system has but `members` lacks (see the module doc)."""
    seen = {r for r in (_rdev(m.source) for m in members) if r is not None}
    found: list[Member] = []
    table_raw = next((m.table_raw for m in members if m.table_raw), None)
    if table_raw is None:
        for m in members:
            parent = parent_disk(m.source)
            if parent is not None:
                disk = _open_member(parent[0], seen)
                if disk is not None:
                    found.append(disk)
                    table_raw = disk.table_raw
                    break
    if table_raw is not None:
        table = ParmTable.parse(table_raw)
        have = {m.index for m in members + found if m.index is not None}
        for i in range(table.num_param):
            if i not in have and (path := _disk_for_busid(bus_id(table, i))):
                disk = _open_member(path, seen)
                if disk is not None and disk.table_raw[:TABLE_COMPARED] == table_raw[:TABLE_COMPARED]:
                    found.append(disk)
    candidates = [d for d in (_open_member(path, seen) for path in block_disks()) if d is not None]
    if table_raw is None:           # the disk of a partition we were given holds the same header
        headers = {_same(m.hdr) for m in members if m.table_raw is None and m.hdr is not None}
        table_raw = next((d.table_raw for d in candidates if d.hdr is not None and _same(d.hdr) in headers),
                         None)
    for disk in candidates:
        if table_raw is not None and disk.table_raw[:TABLE_COMPARED] == table_raw[:TABLE_COMPARED]:
            found.append(disk)
        else:
            disk.source.close()
    return found


def _same(hdr) -> bytes:
    return DumpHeader.build(hdr)


# -- the set -------------------------------------------------------------------------------------

@dataclass
class Volume:
    index: int
    busid: str | None                   # from the table (None without a table)
    source: Source | None = None
    part_off: int = 0
    part_size: int = 0
    hdr: object = None
    state: str = "missing"              # active, valid (no data of this dump), invalid, missing

    def describe(self) -> str:
        where = f" on {self.source.name}" if self.source is not None else ""
        return f"volume {self.index}" + (f" (device {self.busid})" if self.busid else "") + where


@dataclass
class VolumeSet:
    volumes: list[Volume]
    table: object = None
    dumper: str | None = None
    tail: object = None
    resources: list[Source] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    unplaced: list[Member] = field(default_factory=list)    # disks of the set holding no dump data

    def missing(self) -> list[Volume]:
        return [v for v in self.volumes if v.state == "missing"]


def assemble(members: list[Member]) -> VolumeSet:
    """Order the members by the parameter table (or, without one, by their headers' volnr)."""
    resources = [m.source for m in members]
    disks = [m for m in members if m.table_raw]
    problems = []
    if disks:
        reference = disks[0]
        for other in disks[1:]:
            if other.table_raw[:TABLE_COMPARED] != reference.table_raw[:TABLE_COMPARED]:
                raise DamagedDump(f"{other.source.name}: its multi-volume parameter table differs "
                                  f"from {reference.source.name}'s: not the same dump set")
        table = reference.table
        volumes = [Volume(i, bus_id(table, i)) for i in range(table.num_param)]
        for v, entry in zip(volumes, table.param):
            bs = entry.blk_size << 8
            v.part_off, v.part_size = entry.start_blk * bs, (entry.end_blk - entry.start_blk + 1) * bs
    else:
        table = reference = None
        count = max((m.index for m in members if m.index is not None), default=-1) + 1
        volumes = [Volume(i, None) for i in range(count)]
    unplaced = []
    for m in members:
        if m.index is None or m.index >= len(volumes):
            unplaced.append(m)
            continue
        v = volumes[m.index]
        if v.source is not None:
            if m.hdr is not None and v.hdr is not None and _same(m.hdr) == _same(v.hdr):
                continue            # a partition and its disk: the same volume twice
            problems.append(Problem(f"{m.source.name} is {v.describe()} again; using {v.source.name}"))
            continue
        v.source = m.source
        if m.table_raw is None:         # a partition: the dump starts at its offset 0
            v.part_size = min(v.part_size, m.source.size) if v.part_size else m.source.size
            v.part_off = 0
        v.hdr = m.hdr
    reference_tod = next((v.hdr.tod for v in volumes if _is_volume_header(v.hdr, v.index)), None)
    for v in volumes:
        if v.source is None:
            continue
        if v.hdr is None or v.hdr.mvdump_sign != MAGIC_S390_EXT or v.hdr.magic not in (0, MAGIC_S390_EXT):
            v.state = "invalid"
        elif _is_volume_header(v.hdr, v.index) and v.hdr.tod == reference_tod:
            v.state = "active"
        else:
            v.state = "valid"
    return VolumeSet(volumes, table, reference.dumper if reference else None,
                     reference.tail if reference else None, resources, problems, unplaced)


class MultiVolumeDump(s390.S390Dump):
    """The s390_ext reader, walking the segments volume after volume."""

    multi_volume = True

    def __init__(self, volumes: VolumeSet, *, partial: bool = False):
        self.set = volumes
        self.partial = partial
        first = volumes.volumes[0] if volumes.volumes else None
        if first is None or first.state != "active":
            self._no_first_volume(first)
        super().__init__(first.source, Layout(first.part_off, f"volume 0 of {len(volumes.volumes)}"))
        self.problems[:0] = volumes.problems

    def _no_first_volume(self, first: Volume | None):
        names = ", ".join(s.name for s in self.set.resources)
        if first is None:
            raise MissingPart(f"{names}: multi-volume dump without volume 0")
        if not any(v.state == "active" for v in self.set.volumes) and \
                (first.state == "valid" or self.set.unplaced):
            raise NoDump(f"no dump on {names}: multi-volume dump tool {self.set.dumper} installed "
                         f"on {len(self.set.volumes)} volume(s), no dump written yet")
        if first.state == "missing":
            raise MissingPart(f"{names}: multi-volume dump: {first.describe()} is missing; it holds the "
                              f"dump header (give every volume: dumpfs mount VOL1 VOL2 ... MOUNTPOINT)")
        found = f" (magic {first.hdr.magic:#018x})" if first.hdr is not None else ""
        raise DamagedDump(f"{names}: multi-volume dump: {first.describe()} is {first.state}: "
                          f"it holds no header of this dump{found}")

    def _walk_segments(self) -> int | None:
        """Segments of each volume in table order, up to the stop marker (s390-multivolume.md §5)."""
        gap_from = None                 # memory after a missing volume: where it starts
        for v in self.set.volumes:
            if v.state != "active":
                what = {"missing": "is missing", "valid": "holds no data of this dump",
                        "invalid": "has no multi-volume signature"}[v.state]
                message = f"{v.describe()} {what}, but the dump continues past volume {v.index - 1}"
                if v.state == "missing" and not self.partial:
                    raise MissingPart(f"{self.source.name}: multi-volume dump: {message} "
                                      f"(give every volume: dumpfs mount VOL1 VOL2 ... MOUNTPOINT; "
                                      f"--partial reads the others)")
                self.problems.append(Problem(message))
                if v.state != "missing":
                    return None
                if gap_from is None:
                    gap_from = self.segments[-1].end if self.segments else 0
                continue
            before = len(self.segments)
            limit = v.part_off + v.part_size - MIB - 4096
            end, stopped = self.walk_segments(v.source, v.part_off + HEADER_SIZE, limit)
            if gap_from is not None and len(self.segments) > before:
                start = self.segments[before].start
                self.segments.insert(before, Segment(-1, gap_from, max(0, start - gap_from), 0, 0, 0))
                gap_from = None
            if end is None:
                return None
            if stopped:
                self.end_source = v.source
                return end
        if gap_from is None:
            self.problems.append(Problem(f"no segment with the stop marker on the {len(self.set.volumes)} "
                                         f"volume(s): the dump was interrupted"))
        return None

    def meta(self):
        meta = super().meta()
        meta.format = "s390mv_ext"
        meta.writer = "multi-volume DASD dump tool"
        details = meta.details
        details.pop("layout", None)
        details["dump file size"] = sum(s.length for s in self.segments if s.number >= 0)
        if self.set.dumper:
            details["dump tool"] = self.set.dumper
        if self.set.tail is not None:
            details["dump size limit"] = size_limit(self.set.tail)
            details["force"] = bool(self.set.tail.mvdump_force)
        details["volumes"] = [volume_line(v) for v in self.set.volumes]
        return meta


def volume_line(v: Volume) -> str:
    line = f"{v.index}: {v.busid or '?'} ({v.state})"
    if v.source is not None:
        line += f" {v.source.name}" + (f" at {v.part_off:#x}" if v.part_off else "")
    return line


def open_members(members: list[Member], *, search: bool, partial: bool = False) -> Dump:
    """One Dump from the members of one set; `search`: look for missing volumes on this machine.

    The caller owns (and on failure closes) the members' sources; the ones
    the search opened are closed here on failure, else with the dump.
    """
    found = search_disks(members) if search else []
    try:
        volumes = assemble(members + found)
        reader = MultiVolumeDump(volumes, partial=partial)
        memory = Memory(reader.chunks)
        cpus = reader.cpus(memory)
        dump = Dump(arch=s390x.ARCH, page_size=4096, memory=memory, cpus=cpus, meta=reader.meta(),
                    resources=[reader])
    except BaseException:
        for m in found:
            m.source.close()
        raise
    dump.sources = [m.source.name for m in members + found]
    dump.resources += [m.source for m in members + found]
    return dump


def check(source: Source) -> Report | None:
    """`dumpfs check` of a disk with the multi-volume dump tool (zgetdump's dt_s390mv): its
    settings, the volumes of its set, and the dump; None for any other source."""
    m = member(source)
    if m is None or m.table_raw is None:
        return None
    report = Report.for_tool("Multi-volume DASD dump tool (extended)", int(m.dumper.rsplit("v", 1)[1]),
                             f"Dump size limit...: {size_limit(m.tail)}",
                             f"Force specified...: {'yes' if m.tail.mvdump_force else 'no'}",
                             f"Volumes...........: {m.table.num_param}")
    report.dump_from(lambda: open_members([m], search=source.is_block_device, partial=True))
    try:
        found = search_disks([m]) if source.is_block_device else []
        volumes = assemble([m] + found)
        report.lines += [f"  Volume {volume_line(v)}" for v in volumes.volumes]
        for f in found:
            f.source.close()
    except DumpError:
        pass
    return report


def open(source: Source, *, partial: bool = False) -> Dump:
    m = member(source)
    if m is None:
        raise NoDump(f"{source.name}: not part of a multi-volume dump")
    return open_members([m], search=source.is_block_device, partial=partial)


def group(sources: list[Source]) -> tuple[list[list[Member]], list[Source]]:
    """Split sources into multi-volume sets and the rest.

    Disks belong together when their tables are the same (timestamp); a
    partition joins the set whose volumes carry its dump's TOD, else the
    other partitions with that TOD.
    """
    groups: dict[tuple, list[Member]] = {}
    rest = []
    partitions = []
    for source in sources:
        m = member(source)
        if m is None:
            rest.append(source)
        elif m.table_raw:
            groups.setdefault(("table", m.table_raw[:TABLE_COMPARED]), []).append(m)
        else:
            partitions.append(m)
    for m in partitions:
        key = next((k for k, g in groups.items() if any(
            o.hdr is not None and o.hdr.tod == m.hdr.tod for o in g)), ("tod", m.hdr.tod))
        groups.setdefault(key, []).append(m)
    return list(groups.values()), rest
