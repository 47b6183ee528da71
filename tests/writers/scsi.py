"""Test-side writers of zfcpdump output: an s390x ELF core as the kernel's /proc/vmcore has it,
and a whole SCSI dump disk (zipl MBR, boot info, dump partition, bootmap area with superblock),
from dasd-device-layout.md §9 and elf-vmcore.md alone.
"""

from __future__ import annotations

import struct

EHDR = ">16sHHIQQQIHHHHHH"
PHDR = ">IIQQQQQQ"
SECTOR = 512
BLOCK = 4096


def _note(name: str, type_: int, desc: bytes) -> bytes:
    raw = name.encode() + b"\0"
    return (struct.pack(">III", len(raw), len(desc), type_) + raw.ljust(-(-len(raw) // 4) * 4, b"\0")
            + desc.ljust(-(-len(desc) // 4) * 4, b"\0"))


def write_elf(f, read, mem_size: int, notes: list[tuple[str, int, bytes]]) -> int:
    """ELF64 big-endian s390x ET_CORE: PT_NOTE, one PT_LOAD [0, mem_size); returns bytes written."""
    blob = b"".join(_note(*n) for n in notes)
    phnum = 2
    notes_at = 64 + 56 * phnum
    data_at = -(-(notes_at + len(blob)) // BLOCK) * BLOCK
    ident = b"\x7fELF\x02\x02\x01".ljust(16, b"\0")
    f.write(struct.pack(EHDR, ident, 4, 22, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0))
    f.write(struct.pack(PHDR, 4, 0, notes_at, 0, 0, len(blob), 0, 0))
    f.write(struct.pack(PHDR, 1, 7, data_at, 0, 0, mem_size, mem_size, BLOCK))
    f.write(blob.ljust(data_at - notes_at, b"\0"))
    for address in range(0, mem_size, 16 << 20):
        f.write(read(address, min(16 << 20, mem_size - address)))
    return data_at + mem_size


def elf_bytes_writer(read, mem_size: int, notes):
    def write(f):
        return write_elf(f, read, mem_size, notes)
    return write


def cksm(data: bytes, seed: int) -> int:
    data = data + b"\0" * (-len(data) % 4)
    s = seed
    for (w,) in struct.iter_unpack(">I", data):
        s += w
        s = (s & 0xFFFFFFFF) + (s >> 32)
    return s


def write_scsi_disk(f, dump_writer, *, part_start: int = 1 << 20, part_size: int,
                    bootmap_size: int = 64 * BLOCK, busy: bool = False) -> dict:
    """MBR + MSDOS partition 1 + dump partition + bootmap area; returns the layout facts.

    `dump_writer(f)` writes the ELF at the partition start (None: an empty,
    freshly prepared partition).  `busy` leaves `zfcpdump busy` there instead
    of the ELF header, as an interrupted zfcpdump does.
    """
    dump_size = part_size - bootmap_size
    bootmap = part_start + dump_size
    sb_offset = bootmap + 2 * BLOCK
    program_table = bootmap + 3 * BLOCK
    component = bootmap + 4 * BLOCK
    f.truncate(part_start + part_size)
    f.seek(part_start)
    f.write(bytes(0x10000))                  # zipl zeroes the first 64 KiB of the partition
    if dump_writer is not None:
        f.seek(part_start)
        dump_writer(f)
        assert f.tell() <= bootmap, "the dump does not fit the dump area"
    if busy:
        f.seek(part_start)
        f.write(b"zfcpdump busy\0")
    # bootmap header, an empty block, the superblock, the program table, one component table
    f.seek(program_table)
    f.write(b"zIPL".ljust(16, b"\0") + struct.pack(">QHH4x", component // SECTOR, SECTOR, 0))
    f.seek(component)
    f.write(b"zIPL" + bytes([1]) + bytes(27))          # component header: type 1 = dump
    f.seek(part_start)
    first = f.read(BLOCK)
    sb = struct.pack(">8s8Q", b"ZFCPDUMP", 1, part_start, part_size, 0, dump_size, 0, BLOCK,
                     cksm(first, 0x12345678))
    f.seek(sb_offset)
    f.write(sb)
    mbr = bytearray(SECTOR)
    mbr[0:4] = b"zIPL"
    struct.pack_into(">I", mbr, 4, 1)
    struct.pack_into(">QHH", mbr, 0x10, program_table // SECTOR, SECTOR, 0)
    mbr[0x70:0x98] = b"zIPL" + bytes([1, 1, 2, 1]) + struct.pack(">QQ", sb_offset, 0) + bytes(16)
    # an MSDOS partition table in the same sector, as zipl preserves it
    struct.pack_into("<B3sB3sII", mbr, 0x1BE, 0, b"\0\0\0", 0x83, b"\0\0\0",
                     part_start // SECTOR, part_size // SECTOR)
    mbr[0x1FE:0x200] = b"\x55\xaa"
    f.seek(0)
    f.write(mbr)
    return {"part_start": part_start, "part_size": part_size, "dump_size": dump_size,
            "superblock": sb_offset}
