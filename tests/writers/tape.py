"""Test-side writer of tape dumps (tape.md §1) as a list of tape blocks, stored as a plain
image (the blocks concatenated) or as an AWSTAPE file (6-byte block headers, tapemarks)."""

from __future__ import annotations

import struct

from . import s390 as w

TAPE_BLOCK = 32768
TOOL_SIZE = 0x3000
TAPEMARK = None


def tool_block() -> bytes:
    """The tape dump tool: IPL PSW (entry 0x2018), REWIND and READ 0x3000 CCWs, code, tail."""
    block = bytearray(TOOL_SIZE)
    struct.pack_into(">QQQ", block, 0, 0x0008000080002018, 0x0700000060000001, 0x0200200020003000)
    struct.pack_into(">6xBBQ", block, TOOL_SIZE - 16, 0, 0, (1 << 64) - 1)
    return bytes(block)


def dump_blocks(read, mem_size: int, cpus, *, tod_start: int, tod_end: int, with_tool: bool = True):
    """Blocks the tape dumper writes: [tool, TM,] header, 32 KiB memory blocks, end marker, TM."""
    read = w.memory_with_status(read, cpus)
    if with_tool:
        yield tool_block()
        yield TAPEMARK
    yield w.header(magic=w.MAGIC_S390_EXT, version=2, mem_size=mem_size, cpus=cpus, tod_start=tod_start)
    for address in range(0, mem_size, TAPE_BLOCK):
        yield read(address, min(TAPE_BLOCK, mem_size - address))
    yield w.end_marker(tod_end)
    yield TAPEMARK


def write_plain(f, blocks) -> None:
    for block in blocks:
        if block is not TAPEMARK:
            f.write(block)


def write_aws(f, blocks) -> None:
    previous = 0
    for block in blocks:
        if block is TAPEMARK:
            f.write(struct.pack("<HHBB", 0, previous, 0x40, 0))
            previous = 0
        else:
            f.write(struct.pack("<HHBB", len(block), previous, 0xA0, 0))
            f.write(block)
            previous = len(block)
