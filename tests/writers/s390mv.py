"""Test-side writer of multi-volume DASD dumps, as `zipl -M` prepares the disks and the
XMULT64 dumper fills them (s390-multivolume.md), independent of dumpfs' reader."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from . import s390 as w

MIB = 1 << 20
BS = 4096
PARTITION_BLOCK = 24            # CDL: the first partition behind the VTOC
ALL_ONES = (1 << 64) - 1


@dataclass
class VolumeSpec:
    devno: int                  # device number, e.g. 0x5a10 -> bus ID 0.0.5a10
    part_blocks: int            # size of the dump partition in 4 KiB blocks
    ssid: int = 0

    @property
    def part_off(self) -> int:
        return PARTITION_BLOCK * BS

    @property
    def part_size(self) -> int:
        return self.part_blocks * BS

    @property
    def busid(self) -> str:
        return f"0.{self.ssid:x}.{self.devno:04x}"


@dataclass
class MultiVolumeImage:
    segments: list[list[tuple[int, int]]] = field(default_factory=list)    # per volume (start, len)
    end_marker: tuple[int, int] | None = None                              # (volume, offset in disk)


def parm_table(timestamp: int, volumes: list[VolumeSpec], bpt: int = 12, heads: int = 15) -> bytes:
    """struct mvdump_parm_table: timestamp, num_param, 32 x 13-byte entries, 32 ssids, pad."""
    raw = bytearray(512)
    struct.pack_into(">QH", raw, 0, timestamp, len(volumes))
    for i, v in enumerate(volumes):
        struct.pack_into(">HIIBBB", raw, 10 + 13 * i, v.devno, PARTITION_BLOCK,
                         PARTITION_BLOCK + v.part_blocks - 1, BS >> 8, bpt, heads)
        raw[0x1AA + i] = v.ssid
    return bytes(raw)


def prepare_disk(f, table: bytes, spec: VolumeSpec, *, force: bool = False,
                 mem_upper_limit: int = ALL_ONES, version: int = 2) -> None:
    """zipl -M on one disk: IPL records, XMULT64 at block 3, the table behind it, stage 1b,
    and (without --force) 64 KiB of zeros with the signature at 0x200 at the partition start.
    Dumper version 2 is 0x4000 bytes (current zipl), version 1 0x3000 (what zgetdump 2.16 knows)."""
    f.seek(0)
    block0 = bytearray(BS)
    block0[:4] = "IPL1".encode("cp500")
    block1 = bytearray(BS)
    block1[:4] = "IPL2".encode("cp500")
    block2 = bytearray(BS)
    block2[:4] = "VOL1".encode("cp500")
    size = {1: 0x3000, 2: 0x4000}[version]
    dumper = bytearray(w.dumper_image(b"XMULT64", version, size, mem_upper_limit))
    dumper[size - 9] = 1 if force else 0
    f.write(block0 + block1 + block2 + dumper + table + bytes(BS - len(table)) + bytes(BS))
    f.truncate((PARTITION_BLOCK + spec.part_blocks) * BS)
    if not force:
        f.seek(spec.part_off)
        f.write(bytes(0x200) + struct.pack(">Q", w.MAGIC_S390_EXT) + bytes(0x10000 - 0x208))


def volume_header(i: int, mem_size: int, cpus, tod_start: int) -> bytes:
    raw = bytearray(w.header(magic=w.MAGIC_S390_EXT, version=2, mem_size=mem_size, cpus=cpus,
                             tod_start=tod_start))
    struct.pack_into(">I", raw, 0x4C, i)               # volnr
    raw[0x5C] = 1                                      # mvdump
    struct.pack_into(">Q", raw, 0x200, w.MAGIC_S390_EXT)   # mvdump_sign
    return bytes(raw)


def write_dump(files, specs: list[VolumeSpec], read, mem_size: int, cpus, *, tod_start: int,
               tod_end: int, stop_after_segments: int | None = None) -> MultiVolumeImage:
    """The XMULT64 dumper (eckd2dump_mv.c): per volume a header, then raw segments of non-zero
    megabytes capped at the free space; the end marker after the last segment, on its volume.
    `stop_after_segments`: an interrupted dump (no stop marker, no end marker)."""
    read = w.memory_with_status(read, cpus)
    zero = bytes(MIB)
    nonzero = [a for a in range(0, mem_size, MIB) if read(a, min(MIB, mem_size - a)) != zero[:min(MIB, mem_size - a)]]
    image = MultiVolumeImage()
    index, written = 0, 0
    for i, (f, spec) in enumerate(zip(files, specs)):
        image.segments.append([])
        f.seek(spec.part_off)
        f.write(volume_header(i, mem_size, cpus, tod_start))
        free = spec.part_size - BS - 2 * BS
        while True:
            cap = free // MIB * MIB
            if cap == 0:
                break
            start = end = nonzero[index]
            while index < len(nonzero) and nonzero[index] == end and end - start < cap:
                end += MIB
                index += 1
            end = min(end, mem_size)
            last = index == len(nonzero)
            seg = bytearray(BS)
            struct.pack_into(">QQQI", seg, 0, start, end - start, ALL_ONES if last else 0, 0)
            f.write(seg)
            for address in range(start, end, 16 * MIB):
                f.write(read(address, min(16 * MIB, end - address)))
            image.segments[i].append((start, end - start))
            written += 1
            if stop_after_segments is not None and written >= stop_after_segments:
                return image
            free -= end - start
            if free:
                free -= BS
            if last:
                image.end_marker = (i, f.tell())
                f.write(w.end_marker(tod_end, BS))
                return image
            if free < MIB:
                break
    raise ValueError("Device too small: the volumes cannot hold the dump")
