"""SCSI dump disks written by zfcpdump (zipl -d on a SCSI/FCP or NVMe partition).

Disk byte 0 holds zipl's SCSI master boot record; its boot info (dev_type 2,
a dump record) gives the byte offset of the SCSI dump superblock, which
says where the dump partition starts (`part_start`) and where in it the dump
is (`dump_offset`, `dump_size`).  The dump itself is the ELF core zfcpdump
copied from /proc/vmcore: read by the ELF backend through a window.

The dump partition device alone (/dev/sda1) holds no pointer to the
superblock; sysfs names its disk and start, and when the disk's superblock
describes a partition starting there, the partition opens as the disk does.

zfcpdump writes `zfcpdump busy` at the partition start first, the ELF
header last, and then the superblock checksum (CKSM with seed 0x12345678
over `csum_size` bytes at part_start + csum_offset).
"""

from __future__ import annotations

import struct

from construct import Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Struct

from dumpfs.backends import elf
from dumpfs.errors import DamagedDump, DumpError, NoDump, Problem
from dumpfs.model import Dump
from dumpfs.source import Source, WindowSource

from .devcheck import Report
from .probe import Probe

ZIPL_MAGIC = b"zIPL"
SB_MAGIC = b"ZFCPDUMP"
BUSY = b"zfcpdump busy\0"
DEV_SCSI, BP_TYPE_DUMP = 2, 1
CSUM_SEED = 0x12345678
MAX_CSUM_SIZE = 1 << 20

# struct scsi_mbr (first 0x70 bytes), disk byte 0
ScsiMbr = Struct(
    "magic" / Bytes(4),                     # 0x00 "zIPL"
    "version_id" / Int32ub,                 # 0x04 1
    "reserved" / Bytes(8),                  # 0x08
    "program_table_blockno" / Int64ub,      # 0x10 linear block pointer to the program table
    "program_table_size" / Int16ub,         # 0x18
    "program_table_blockct" / Int16ub,      # 0x1A
    "program_table_reserved" / Bytes(4),    # 0x1C
)
# struct boot_info at MBR 0x70, with scsi_dump_param
ScsiBootInfo = Struct(
    "magic" / Bytes(4),                     # "zIPL"
    "version" / Int8ub,                     # 1
    "bp_type" / Int8ub,                     # 1 = dump
    "dev_type" / Int8ub,                    # 2 = SCSI
    "flags" / Int8ub,                       # 0x01 = s390x
    "block" / Int64ub,                      # scsi_dump_param: byte offset of the superblock on the disk
    "reserved" / Int64ub,
)
BOOT_INFO_OFFSET = 0x70

# struct scsi_dump_sb, 72 bytes
Superblock = Struct(
    "magic" / Bytes(8),                     # 0x00 "ZFCPDUMP"
    "version" / Int64ub,                    # 0x08 1
    "part_start" / Int64ub,                 # 0x10 byte offset of the dump partition on the disk
    "part_size" / Int64ub,                  # 0x18 partition size in bytes
    "dump_offset" / Int64ub,                # 0x20 dump start within the partition (0)
    "dump_size" / Int64ub,                  # 0x28 bytes available for the dump
    "csum_offset" / Int64ub,                # 0x30 checksummed range, within the partition
    "csum_size" / Int64ub,                  # 0x38 4096
    "csum" / Int64ub,                       # 0x40 CKSM of that range, seed 0x12345678
)


def cksm(data: bytes, seed: int) -> int:
    """z/Architecture CHECKSUM: 32-bit big-endian words added with end-around carry."""
    data = bytes(data) + bytes(-len(data) % 4)
    total = seed
    for (word,) in struct.iter_unpack(">I", data):
        total += word
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def _boot_info(source: Source | Probe):
    raw = source.read(0, BOOT_INFO_OFFSET + ScsiBootInfo.sizeof())
    if len(raw) < BOOT_INFO_OFFSET + ScsiBootInfo.sizeof() or raw[:4] != ZIPL_MAGIC:
        return None
    info = ScsiBootInfo.parse(raw[BOOT_INFO_OFFSET:])
    if info.magic != ZIPL_MAGIC or info.dev_type != DEV_SCSI or info.bp_type != BP_TYPE_DUMP:
        return None
    return info


def detect(probe: Source | Probe) -> bool:
    """A whole SCSI dump disk (zipl MBR with a SCSI dump record) or an interrupted dump
    partition (the dump partition device of a SCSI dump disk: `open_partition`)."""
    return _boot_info(probe) is not None or probe.read(0, len(BUSY)) == BUSY


def open(source: Source) -> Dump:
    name = source.name
    info = _boot_info(source)
    if info is None:
        raise DamagedDump(f"{name}: zfcpdump was interrupted: the partition starts with "
                          f"'zfcpdump busy', the ELF header is written last")
    sb = _superblock(source, info)
    return _open_partition(source, sb.part_start, sb, f"{name}[partition at {sb.part_start:#x}]")


def _superblock(disk: Source, info):
    """The whole disk's SCSI dump superblock that `info` points to, checked for sanity."""
    raw = disk.read(info.block, Superblock.sizeof())
    if len(raw) < Superblock.sizeof():
        raise DamagedDump(f"{disk.name}: truncated: the SCSI dump superblock at {info.block:#x} "
                          f"is past the end of the disk ({disk.size:#x})")
    sb = Superblock.parse(raw)
    where = f"{disk.name}: SCSI dump superblock at {info.block:#x}"
    if sb.magic != SB_MAGIC:
        raise DamagedDump(f"{where}: wrong magic {sb.magic.hex(' ')} (expected ZFCPDUMP)")
    if sb.part_start + sb.part_size > disk.size or sb.part_size == 0 or \
            sb.dump_offset + sb.dump_size > sb.part_size or sb.csum_size > MAX_CSUM_SIZE:
        raise DamagedDump(f"{where}: absurd layout: partition {sb.part_start:#x}+{sb.part_size:#x}, "
                          f"dump {sb.dump_offset:#x}+{sb.dump_size:#x}, checksummed {sb.csum_size:#x} "
                          f"bytes, disk of {disk.size:#x} bytes")
    return sb


def open_partition(partition: Source, disk: Source, start: int) -> Dump | None:
    """The dump partition device at byte `start` of the SCSI dump disk `disk`, if its superblock
    describes that partition (else None): the dump is at the partition's byte 0."""
    sb = _partition_superblock(disk, start)
    return None if sb is None else _open_partition(partition, 0, sb, partition.name)


def _partition_superblock(disk: Source, start: int):
    """The superblock of the SCSI dump disk `disk` if its dump partition starts at `start`."""
    info = _boot_info(disk)
    try:
        sb = _superblock(disk, info) if info is not None else None
    except DumpError:                       # the disk's damage is said when the disk is opened
        return None
    return sb if sb is not None and sb.part_start == start else None


def _partition_checksum(source: Source, base: int, sb) -> int:
    """CKSM of the range the superblock checksums, in the dump partition at byte `base`."""
    return cksm(source.read(base + sb.csum_offset, sb.csum_size), CSUM_SEED)


def check(source: Source) -> Report | None:
    """`dumpfs check` of a SCSI dump disk (zgetdump's dt_scsi): the superblock, its checksum and
    what the dump partition starts with; None for any other source."""
    info = _boot_info(source)
    if info is None:
        return None
    report = Report("Single-volume SCSI dump tool")
    raw = source.read(info.block, Superblock.sizeof())
    if len(raw) < Superblock.sizeof() or raw[:len(SB_MAGIC)] != SB_MAGIC:
        report.dump = f"no SCSI dump superblock at {info.block:#x}"
        return report
    sb = Superblock.parse(raw)
    report = Report.for_tool(report.tool, sb.version, f"Maximum dump size.: {sb.dump_size >> 20} MB")
    if _partition_checksum(source, sb.part_start, sb) != sb.csum:
        report.dump = "superblock checksum does not match: the dump partition changed"
        return report
    start = source.read(sb.part_start + sb.dump_offset, 16)
    if start.startswith(BUSY[:-1]):
        report.dump = "incomplete: zfcpdump was interrupted (zfcpdump busy)"
    elif not any(start):
        report.dump = "dump tool installed, no dump"
    elif start[:4] == b"\x7fELF":
        report.dump = f"ELF dump at partition offset 0 ({sb.dump_size >> 20} MB available)"
        report.valid = True
    else:
        report.dump = f"partition starts with {start[:8].hex(' ')}, not a dump"
    return report


def _open_partition(source: Source, base: int, sb, label: str) -> Dump:
    """The dump in the dump partition at byte `base` of `source` (the disk, or the partition: 0)."""
    name = source.name
    problems = []
    csum = _partition_checksum(source, base, sb)
    if csum != sb.csum:
        problems.append(Problem(f"superblock checksum {sb.csum:#010x} does not match the partition "
                                f"start ({csum:#010x}): the dump was changed or not finished"))
    start = base + sb.dump_offset
    head = source.read(start, 64)
    layout = f"SCSI dump disk, partition at {sb.part_start:#x} ({sb.part_size >> 20} MiB)"
    if head.startswith(BUSY):
        raise DamagedDump(f"{name}: {layout}: zfcpdump was interrupted (the partition starts "
                          f"with 'zfcpdump busy'; the ELF header is written last)")
    if not head.startswith(b"\x7fELF"):
        state = "holds zeros" if not any(head) else f"starts with {head[:8].hex(' ')}"
        raise NoDump(f"no dump on {name}: {layout}; the dump area {state}")
    dump = elf.open(WindowSource(source, start, sb.dump_size, label))
    dump.meta.writer = "zfcpdump"
    dump.meta.details.update({"layout": layout, "superblock version": sb.version,
                              "dump area": f"{sb.dump_size >> 20} MiB at partition offset "
                                           f"{sb.dump_offset:#x}"})
    dump.meta.problems[:0] = problems
    return dump
