"""Test-side writers of IBM Z stand-alone dumps and DASD layouts, independent of dumpfs' reader.

Memory comes from a `read(address, length)` callable (the tests use a real
fixture through the model); registers are stored into each CPU's prefix page
the way the dump tool's STORE STATUS does, with plain struct packing here so
that the reader is checked against a second implementation.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from synthetic import overlaid

MAGIC_S390 = 0xA8190173618F23FD
MAGIC_S390_EXT = 0xA8190173618F23FE
HEADER_FORMAT = ">QIIIIQQQIIQQIIIQBHHBI"     # df_s390_hdr up to zlib_entry_size (0x66 bytes)
MIB = 1 << 20
TOD_UNIX_EPOCH = 0x7D91048BCA000000


@dataclass
class CpuState:
    """One CPU's registers by dumpfs' register names (prefix, psw_mask, r0.., v0.. optional)."""

    registers: dict[str, int]


def cpu_states(dump) -> list[CpuState]:
    """The CPUs of a dumpfs Dump, as the writers take them."""
    return [CpuState(dict(dump.cpus[n].registers)) for n in sorted(dump.cpus)]


@dataclass
class Image:
    """What a writer produced: the dump bytes' layout facts the tests check against."""

    mem_size: int
    segments: list[tuple[int, int]] = field(default_factory=list)   # (start, length) written
    end_marker_offset: int | None = None


def tod(unix_seconds: float) -> int:
    return (int(unix_seconds * 1_000_000) << 12) + TOD_UNIX_EPOCH


def header(*, magic: int, version: int, mem_size: int, cpus: list[CpuState], tod_start: int,
           zlib_entry_size: int = 0, build_arch: int = 2, real_cpu_cnt: int | None = None,
           mem_size_real: int | None = None, cpu_id: int = 0xFF0123452964) -> bytes:
    raw = bytearray(4096)
    struct.pack_into(HEADER_FORMAT, raw, 0, magic, version, 0x1000, 4, 4096, mem_size, 0, mem_size,
                     (mem_size >> 12) & 0xFFFFFFFF, 0, tod_start, cpu_id, 2, 0, build_arch,
                     mem_size if mem_size_real is None else mem_size_real, 0, len(cpus),
                     len(cpus) if real_cpu_cnt is None else real_cpu_cnt,
                     1 if zlib_entry_size else 0, zlib_entry_size)
    for i, cpu in enumerate(cpus):
        struct.pack_into(">I", raw, 0x800 + 4 * i, cpu.registers["prefix"])
    return bytes(raw)


def store_status(read, cpus: list[CpuState]) -> dict[int, bytes]:
    """Overlays {address: bytes}: each CPU's save area at prefix + 0x1200 and its vector save area."""
    overlays = {}
    for cpu in cpus:
        r = cpu.registers
        prefix = r["prefix"]
        area = bytearray(read(prefix + 0x1200, 0x200))
        g = lambda name: r.get(name, 0)   # noqa: E731
        struct.pack_into(">16Q", area, 0x000, *(g(f"f{i}") for i in range(16)))
        struct.pack_into(">16Q", area, 0x080, *(g(f"r{i}") for i in range(16)))
        struct.pack_into(">QQ", area, 0x100, g("psw_mask"), g("psw_addr"))
        struct.pack_into(">II", area, 0x118, prefix, g("fpc"))
        struct.pack_into(">IQQ", area, 0x124, g("todpreg"), g("cpu_timer"), g("clock_comparator"))
        struct.pack_into(">16I", area, 0x140, *(g(f"a{i}") for i in range(16)))
        struct.pack_into(">16Q", area, 0x180, *(g(f"c{i}") for i in range(16)))
        overlays[prefix + 0x1200] = bytes(area)
        pointer = struct.unpack(">Q", read(prefix + 0x11B0, 8))[0]
        if "v0" in r and pointer and pointer % 1024 == 0:
            overlays[pointer] = b"".join(g(f"v{i}").to_bytes(16, "big") for i in range(32))
    return overlays


def memory_with_status(read, cpus: list[CpuState]):
    return overlaid(read, dict(sorted(store_status(read, cpus).items())))


def end_marker(tod_end: int, pad_to: int = 16) -> bytes:
    return (b"DUMP_END" + struct.pack(">Q", tod_end)).ljust(pad_to, b"\0")


def write_s390(f, read, mem_size: int, cpus: list[CpuState], *, tod_start: int, tod_end: int,
               with_end_marker: bool = True, build_arch: int = 0) -> Image:
    """Plain s390 (magic ...FD, version 5): header, flat memory, end marker."""
    read = memory_with_status(read, cpus)
    f.write(header(magic=MAGIC_S390, version=5, mem_size=mem_size, cpus=cpus, tod_start=tod_start,
                   build_arch=build_arch))
    for address in range(0, mem_size, 16 * MIB):
        f.write(read(address, min(16 * MIB, mem_size - address)))
    image = Image(mem_size, [(0, mem_size)])
    if with_end_marker:
        image.end_marker_offset = f.tell()
        f.write(end_marker(tod_end))
    return image


def _segments(read, mem_size: int, max_length: int, first_forced: bool):
    """Maximal runs of non-zero megabytes, capped at max_length, as the dumper forms them."""
    zero = bytes(MIB)
    runs, start = ([(0, min(MIB, mem_size))], None) if first_forced else ([], None)
    for address in range(MIB if first_forced else 0, mem_size, MIB):
        size = min(MIB, mem_size - address)
        if read(address, size) != zero[:size]:
            if start is None:
                start = address
            elif address - start >= max_length:
                runs.append((start, address - start))
                start = address
        elif start is not None:
            runs.append((start, address - start))
            start = None
    if start is not None:
        runs.append((start, mem_size - start))
    return runs


def write_s390_ext(f, read, mem_size: int, cpus: list[CpuState], *, version: int, tod_start: int,
                   tod_end: int, block_size: int = 4096, with_end_marker: bool = True,
                   stop_after: int | None = None) -> Image:
    """s390_ext v1 (raw segments) or v2 (first MiB raw, then 1 MiB zlib entries per segment)."""
    read = memory_with_status(read, cpus)
    compress = version == 2
    f.write(header(magic=MAGIC_S390_EXT, version=version, mem_size=mem_size, cpus=cpus,
                   tod_start=tod_start, zlib_entry_size=MIB if compress else 0))
    runs = _segments(read, mem_size, 1011 * MIB if compress else 1 << 62, first_forced=compress)
    if stop_after is not None:
        runs = runs[:stop_after]
    image = Image(mem_size)
    for number, (start, length) in enumerate(runs):
        last = number == len(runs) - 1 and stop_after is None
        seg = bytearray(4096)
        if compress and number > 0:
            entries, blob = [], bytearray()
            for entry_start in range(start, start + length, MIB):
                raw = read(entry_start, min(MIB, start + length - entry_start))
                packed = zlib.compress(raw, 1)
                offset = len(blob) // block_size
                if len(packed) < len(raw):
                    blob += packed
                    entries.append(offset)
                else:
                    blob += raw
                    entries.append(offset | 0x80000000)
                blob += bytes(-len(blob) % block_size)
            struct.pack_into(">QQQI20xI", seg, 0, start, length, (1 << 64) - 1 if last else 0,
                             len(blob) // block_size, len(entries))
            struct.pack_into(f">{len(entries)}I", seg, 0x34, *entries)
            f.write(seg)
            f.write(blob)
        else:
            struct.pack_into(">QQQI", seg, 0, start, length, (1 << 64) - 1 if last else 0, 0)
            f.write(seg)
            for address in range(start, start + length, 16 * MIB):
                f.write(read(address, min(16 * MIB, start + length - address)))
        image.segments.append((start, length))
    if with_end_marker and stop_after is None:
        image.end_marker_offset = f.tell()
        f.write(end_marker(tod_end, block_size))
    return image


# -- DASD whole-disk layouts (zipl -d) -----------------------------------------------------------

def boot_info(dev_type: int, param: bytes) -> bytes:
    """struct boot_info: zIPL, version 1, bp_type 1 (dump), dev_type, flags 1 (s390x), param."""
    return b"zIPL" + bytes([1, 1, dev_type, 1]) + param.ljust(16, b"\0") + bytes(16)


def dumper_image(magic: bytes, version: int, size: int, mem_upper_limit: int = (1 << 64) - 1) -> bytes:
    """A stand-in for the dump tool: head magic + version, parameter tail (no code)."""
    body = bytearray(size)
    body[:8] = magic + bytes([version])
    struct.pack_into(">6xBBQ", body, size - 16, 0, 0, mem_upper_limit)
    return bytes(body)


def eckd_cdl_disk(f, dump_bytes_writer, *, partition_block: int = 24, blocks: int | None = None,
                  bpt: int = 12, heads: int = 15) -> int:
    """ECKD CDL disk: IPL1, IPL2 (stage 1 + boot info), VOL1, XECKD64 v2 at block 3, partition.

    Returns the partition's byte offset; `dump_bytes_writer(f)` writes the dump
    (or nothing, for an empty dump device) at that offset.
    """
    block0 = bytearray(4096)
    block0[:4] = "IPL1".encode("cp500")
    block1 = bytearray(4096)
    block1[:4] = "IPL2".encode("cp500")
    end = blocks - 1 if blocks else 0xFFFFFFFF
    param = struct.pack(">IIHBB", partition_block, end, 4096, heads, bpt)
    block1[4 + 128 - 40:4 + 128] = boot_info(0, param)
    block2 = bytearray(4096)
    block2[:4] = "VOL1".encode("cp500")
    f.write(block0 + block1 + block2 + dumper_image(b"XECKD64", 2, 0x8000))
    f.write(bytes(partition_block * 4096 - f.tell()))
    f.write(bytes(0x10000))          # zipl zeroes the first 64 KiB of the partition
    f.seek(partition_block * 4096)
    dump_bytes_writer(f)
    if blocks:
        f.truncate(blocks * 4096)
    return partition_block * 4096


def eckd_ldl_disk(f, dump_bytes_writer) -> int:
    """ECKD LDL: stage 0 + stage 1 at block 0 (boot info at 0x70), partition from block 3."""
    block0 = bytearray(3 * 4096)
    block0[0x70:0x70 + 40] = boot_info(0, struct.pack(">IIHBB", 3, 0xFFFFFFFF, 4096, 15, 12))
    f.write(block0)
    f.write(dumper_image(b"XECKD64", 2, 0x8000))
    f.seek(3 * 4096)
    dump_bytes_writer(f)
    return 3 * 4096


def fba_disk(f, dump_bytes_writer, *, partition_block: int = 128, disk_bytes: int) -> int:
    """FBA: stage 0 with boot info at 0x70, partition from 512-byte block N, XDFBA64 at the end."""
    block0 = bytearray(partition_block * 512)
    last = disk_bytes // 512 - 0x3000 // 512 - 2 - 1
    block0[0x70:0x70 + 40] = boot_info(1, struct.pack(">IIII", 0, partition_block, 0, last))
    f.write(block0)
    f.write(bytes(0x10000))
    f.seek(partition_block * 512)
    dump_bytes_writer(f)
    f.truncate(disk_bytes)
    f.seek(disk_bytes - 0x3000)
    f.write(dumper_image(b"XDFBA64", 1, 0x3000))
    return partition_block * 512
