"""Synthetic dumps for tests: the one place in tests/ that assembles a `Dump` by hand.

Tests say what memory, CPUs and VMCOREINFO they need; only this module knows the
model's constructors (`Dump`, `Memory`, `MemoryChunk`, `DumpMeta`, `Cpu`, `VmcoreInfo`),
so a change to them is made here once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping

from dumpfs.arch import Arch, x86_64
from dumpfs.model import (ChunkReader, Cpu, Dump, DumpMeta, Memory, MemoryChunk, Note, PageState,
                          VmcoreInfo)

X86_64_PRSTATUS_SIZE = 336
X86_64_PRSTATUS_RIP = 0xF0      # pr_reg starts at 0x70; rip is its 17th u64


def x86_64_prstatus(rip: int = 0) -> Note:
    """An x86_64 NT_PRSTATUS note, all registers zero but rip."""
    prstatus = bytearray(X86_64_PRSTATUS_SIZE)
    prstatus[X86_64_PRSTATUS_RIP:X86_64_PRSTATUS_RIP + 8] = rip.to_bytes(8, "little")
    return Note("CORE", 1, bytes(prstatus))


def synthetic_dump(*, arch: Arch = x86_64.ARCH, memory: Mapping[int, bytes] | None = None,
                   ranges: Iterable[tuple[int, int, ChunkReader | PageState]] = (),
                   cpus: Mapping[int, list[Note]] | None = None,
                   vmcoreinfo: bytes | None = None, page_size: int = 4096) -> Dump:
    """A dump of `arch` whose physical memory is
    - `memory`: address -> bytes held there, and
    - `ranges`: (start, size, reader) read on demand, or (start, size, state) for a range
      without data (ZERO, EXCLUDED, MISSING);
    `cpus`: number -> that CPU's notes (registers decoded by the architecture)."""
    chunks = [MemoryChunk(start, len(data), PageState.PRESENT, _reader_of(data))
              for start, data in (memory or {}).items()]
    for start, size, content in ranges:
        if isinstance(content, PageState):
            chunks.append(MemoryChunk(start, size, content))
        else:
            chunks.append(MemoryChunk(start, size, PageState.PRESENT, content))
    return Dump(arch=arch, page_size=page_size, memory=Memory(chunks),
                cpus={n: Cpu(n, arch.decode_registers(notes), notes) for n, notes in (cpus or {}).items()},
                meta=DumpMeta(format="synthetic"),
                vmcoreinfo=None if vmcoreinfo is None else VmcoreInfo(vmcoreinfo))


def patched_dump(dump: Dump, patches: Mapping[int, bytes]) -> Dump:
    """A copy of `dump` whose memory shows `patches` (physical address -> bytes) over its own
    bytes, with no problems or details recorded yet."""
    chunks = []
    for chunk in dump.memory:
        overlapping = {where: value for where, value in patches.items()
                       if where < chunk.end and chunk.start < where + len(value)}
        if not overlapping or chunk.state not in (PageState.PRESENT, PageState.ZERO):
            chunks.append(chunk)
            continue
        underneath = chunk.read if chunk.state is PageState.PRESENT else _zeros
        chunks.append(MemoryChunk(chunk.start, chunk.size, PageState.PRESENT,
                                  overlaid(underneath, overlapping, base=chunk.start)))
    return replace(dump, memory=Memory(chunks), meta=replace(dump.meta, problems=[], details={}))


def _reader_of(data: bytes) -> ChunkReader:
    return lambda offset, length: data[offset:offset + length]


def _zeros(offset: int, length: int) -> bytes:
    return bytes(length)


def overlaid(read: ChunkReader, patches: Mapping[int, bytes], base: int = 0) -> ChunkReader:
    """`read(offset, length)` of the bytes at address `base` + offset, with `patches`
    (address -> bytes; later ones win where they overlap) written over what it returns."""
    def read_patched(offset: int, length: int) -> bytes:
        data = bytearray(read(offset, length))
        address = base + offset
        for where, value in patches.items():
            lo, hi = max(where, address), min(where + len(value), address + length)
            if lo < hi:
                data[lo - address:hi - address] = value[lo - where:hi - where]
        return bytes(data)
    return read_patched


def excluding(dump: Dump, pages: Iterable[int]) -> Dump:
    """A copy of `dump` whose physical pages at `pages` (any address in each) are EXCLUDED, as
    a filtering dump writer (makedumpfile -d) leaves pages out."""
    size = dump.page_size
    cut = sorted({page - page % size for page in pages})
    chunks = []
    for chunk in dump.memory:
        start = chunk.start
        for page in [p for p in cut if chunk.start <= p < chunk.end] + [chunk.end]:
            if start < page:
                chunks.append(_piece(chunk, start, page))
            if page < chunk.end:
                chunks.append(MemoryChunk(page, min(size, chunk.end - page), PageState.EXCLUDED))
            start = page + size
    return replace(dump, memory=Memory(chunks), meta=replace(dump.meta, problems=[], details={}))


def _piece(chunk: MemoryChunk, start: int, end: int) -> MemoryChunk:
    """The part [start, end) of `chunk`."""
    if chunk.state is not PageState.PRESENT:
        return MemoryChunk(start, end - start, chunk.state)
    skip = start - chunk.start
    return MemoryChunk(start, end - start, PageState.PRESENT,
                       lambda offset, length: chunk.read(offset + skip, length))
