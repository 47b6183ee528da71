"""`dumpfs check DEVICE`: which dump tool a disk carries, and whether it holds a complete dump.

Like `zgetdump -d` (dasd-device-layout.md §8), probed in this order:
multi-volume DASD (XMULT64 at block 3), single-volume ECKD (XECKD64 at block
3), FBA (XDFBA64 in the last 0x3000 bytes), SCSI (zIPL MBR, dump boot info,
ZFCPDUMP superblock with its checksum).  A partition is checked through its
disk (/sys/class/block/<dev>/..) when sysfs knows it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dumpfs.model import DumpError
from dumpfs.source import FileSource, Source

from . import s390, s390mv
from .sysblock import parent_disk

SCSI_SB_MAGIC = b"ZFCPDUMP"
DEV_SCSI = 2


@dataclass
class Report:
    tool: str | None = None                     # e.g. "Multi-volume DASD dump tool (extended)"
    lines: list[str] = field(default_factory=list)
    dump: str = "no dump"                       # what is on it
    valid: bool = False                         # a valid, complete dump

    def text(self, name: str) -> str:
        out = [f"{name}:", f"  Dump tool.........: {self.tool or 'none found'}"]
        out += [f"  {line}" for line in self.lines]
        out.append(f"  Dump..............: {self.dump}")
        return "\n".join(out) + "\n"


def _tail(source: Source, end: int) -> tuple[int, int]:
    """(force, mem_upper_limit) from a dump tool's parameter tail ending at `end`."""
    force, limit = struct.unpack(">BQ", source.read(end - 9, 9))
    return force, limit


def _limit(limit: int) -> str:
    return "none" if limit == (1 << 64) - 1 else f"{limit >> 20} MB"


def _describe(dump) -> str:
    meta = dump.meta
    size = dump.memory.end >> 20
    when = f", created {meta.dump_time:%Y-%m-%d %H:%M:%S %Z}" if meta.dump_time else ""
    if meta.complete:
        return f"valid, complete {meta.format} dump: {size} MB, {len(dump.cpus)} CPUs{when}"
    return f"incomplete {meta.format} dump: " + "; ".join(meta.problems)


def _open_as_dump(report: Report, opener) -> None:
    try:
        dump = opener()
    except DumpError as e:
        text = str(e)
        report.dump = ("dump tool installed, no dump" if text.startswith("no dump") else text)
        return
    try:
        report.dump = _describe(dump)
        report.valid = dump.meta.complete
    finally:
        dump.close()


def check_source(source: Source) -> Report:
    report = Report()
    bs = s390.block_size(source)
    m = s390mv.member(source)
    if m is not None and m.table_raw is not None:
        table = m.table
        version = int(m.dumper.rsplit("v", 1)[1])
        report.tool = "Multi-volume DASD dump tool (extended)"
        report.lines += [f"Version...........: {version}", "Architecture......: s390x (64 bit)",
                         f"Dump size limit...: {_limit(m.tail.mem_upper_limit)}",
                         f"Force specified...: {'yes' if m.tail.mvdump_force else 'no'}",
                         f"Volumes...........: {table.num_param}"]
        _open_as_dump(report, lambda: s390mv.open_members([m], search=source.is_block_device,
                                                           partial=True))
        try:
            found = s390mv.search_disks([m]) if source.is_block_device else []
            volumes = s390mv.assemble([m] + found)
            report.lines += [f"  Volume {s390mv.volume_line(v)}" for v in volumes.volumes]
            for f in found:
                f.source.close()
        except DumpError:
            pass
        return report
    head = source.read(3 * bs, 8)
    fba = source.read(source.size - 0x3000, 8) if source.size > 0x3000 else b""
    if head[:7] == b"XECKD64" or fba[:7] == b"XDFBA64":
        eckd = head[:7] == b"XECKD64"
        version = (head if eckd else fba)[7]
        size = 0x8000 if eckd and version == 2 else 0x3000
        _force, limit = _tail(source, 3 * bs + size if eckd else source.size)
        report.tool = "Single-volume DASD dump tool (extended)"
        report.lines += [f"Version...........: {version}", "Architecture......: s390x (64 bit)",
                         f"DASD type.........: {'ECKD' if eckd else 'FBA'}",
                         f"Dump size limit...: {_limit(limit)}"]
        _open_as_dump(report, lambda: s390.open(source))
        return report
    mbr = source.read(0, 0x70 + 40)
    info = mbr[0x70:0x70 + 8]
    if mbr[:4] == b"zIPL" and info[:4] == b"zIPL" and info[5] == s390.BP_TYPE_DUMP and info[6] == DEV_SCSI:
        sb_offset = struct.unpack_from(">Q", mbr, 0x70 + 8)[0]
        sb = source.read(sb_offset, 72)
        report.tool = "Single-volume SCSI dump tool"
        if len(sb) < 72 or sb[:8] != SCSI_SB_MAGIC:
            report.dump = f"no SCSI dump superblock at {sb_offset:#x}"
            return report
        (_magic, version, part_start, part_size, dump_offset, dump_size, csum_offset, csum_size,
         csum) = struct.unpack(">8sQQQQQQQQ", sb)
        report.lines += [f"Version...........: {version}", "Architecture......: s390x (64 bit)",
                         f"Maximum dump size.: {dump_size >> 20} MB"]
        if _cksm(source.read(part_start + csum_offset, csum_size)) != csum & 0xFFFFFFFF:
            report.dump = "superblock checksum does not match: the dump partition changed"
            return report
        start = source.read(part_start + dump_offset, 16)
        if start.startswith(b"zfcpdump busy"):
            report.dump = "incomplete: zfcpdump was interrupted (zfcpdump busy)"
        elif not any(start):
            report.dump = "dump tool installed, no dump"
        elif start[:4] == b"\x7fELF":
            report.dump = f"ELF dump at partition offset 0 ({dump_size >> 20} MB available)"
            report.valid = True
        else:
            report.dump = f"partition starts with {start[:8].hex(' ')}, not a dump"
        return report
    return report


def _cksm(data: bytes, seed: int = 0x12345678) -> int:
    data += b"\0" * (-len(data) % 4)
    total = seed
    for (word,) in struct.iter_unpack(">I", data):
        total += word
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def check(path: str) -> tuple[Report, str]:
    """The report for `path` and the name it is about (the disk, for a partition)."""
    source = FileSource(path)
    try:
        report = check_source(source)
        if report.tool is not None or not source.is_block_device:
            return report, path
        parent = parent_disk(source)
    finally:
        source.close()
    if parent is None:
        return report, path
    disk, start = parent
    with_disk, _ = check(disk)
    with_disk.lines.append(f"Partition.........: {path} starts at byte {start:#x} of {disk}")
    return with_disk, f"{path} (on {disk})"
