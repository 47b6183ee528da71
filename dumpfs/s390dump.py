"""The s390 stand-alone dump format's own layout: header, end marker, TOD clock.

Shared by the readers in backends/ (s390, multi-volume, tape, LKCD) and the
`dump.s390` view, which writes the format; neither owns it.
"""

from __future__ import annotations

from datetime import datetime

from construct import Array, Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Padding, Struct

from dumpfs.clock import unix_time

MAGIC_S390 = 0xA8190173618F23FD        # plain
MAGIC_S390_EXT = 0xA8190173618F23FE    # extended (segments), also the multi-volume signature
HEADER_SIZE = 0x1000
CPU_MAX = 512
ARCH_S390X = 2
END_MARKER_MAGIC = b"DUMP_END"
TOD_UNIX_EPOCH = 0x7D91048BCA000000    # TOD clock value of 1970-01-01 00:00 UTC


# struct df_s390_hdr (include/dump/s390_dump.h), 4096 bytes, big-endian, packed
DumpHeader = Struct(
    "magic" / Int64ub,              # 0x000 ...23FD plain, ...23FE extended
    "version" / Int32ub,            # 0x008 5 from zgetdump, 1/2 for s390_ext v1/v2
    "hdr_size" / Int32ub,           # 0x00C 0x1000
    "dump_level" / Int32ub,         # 0x010 always 4
    "page_size" / Int32ub,          # 0x014 4096
    "mem_size" / Int64ub,           # 0x018 bytes of memory dumped, from address 0
    "mem_start" / Int64ub,          # 0x020 0
    "mem_end" / Int64ub,            # 0x028 mem_size (dumpers) or mem_size - 1 (some zgetdump)
    "num_pages" / Int32ub,          # 0x030 mem_size / 4096
    "pad" / Int32ub,                # 0x034
    "tod" / Int64ub,                # 0x038 TOD clock when the dump started
    "cpu_id" / Int64ub,             # 0x040 STIDP of the dumping CPU
    "arch" / Int32ub,               # 0x048 1 = s390 (31 bit), 2 = s390x
    "volnr" / Int32ub,              # 0x04C volume number (multi-volume)
    "build_arch" / Int32ub,         # 0x050 architecture of the dump tool, 0 = not set
    "mem_size_real" / Int64ub,      # 0x054 real memory size the dumper found
    "mvdump" / Int8ub,              # 0x05C 1 = multi-volume dumper
    "cpu_cnt" / Int16ub,            # 0x05D valid entries in lc_vec
    "real_cpu_cnt" / Int16ub,       # 0x05F CPUs the dumper found
    "zlib_version_s390" / Int8ub,   # 0x061 1 = compression allowed (v2)
    "zlib_entry_size" / Int32ub,    # 0x062 uncompressed size of one zlib entry (1 MiB)
    Padding(0x200 - 0x66),          # 0x066 end_pad1
    "mvdump_sign" / Int64ub,        # 0x200 ...23FE on volumes prepared by zipl -M
    "mvdump_zipl_time" / Int64ub,   # 0x208 unused
    Padding(0x800 - 0x210),         # 0x210 end_pad2
    "lc_vec" / Array(CPU_MAX, Int32ub),   # 0x800 prefix register of each CPU
)
assert DumpHeader.sizeof() == HEADER_SIZE

# struct df_s390_em, right after the memory (plain) or the last segment (extended)
EndMarker = Struct(
    "str" / Bytes(8),               # "DUMP_END"
    "tod" / Int64ub,                # TOD clock when the dump finished
)


def tod_to_datetime(tod: int) -> datetime | None:
    """TOD clock to UTC time; zgetdump ignores times whose seconds are 0 (not set)."""
    if tod < TOD_UNIX_EPOCH:
        return None
    microseconds = (tod - TOD_UNIX_EPOCH) >> 12
    if microseconds < 1_000_000:
        return None
    return unix_time(microseconds / 1e6)


def datetime_to_tod(when: datetime) -> int:
    microseconds = round(when.timestamp() * 1_000_000)
    return (microseconds << 12) + TOD_UNIX_EPOCH
