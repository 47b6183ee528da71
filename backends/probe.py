"""What format detection may look at: a source's first and last bytes, read once.

Every backend's `detect(probe)` reads through `Probe.read`, which answers
like `Source.read` where the head or the tail holds the bytes and with
nothing elsewhere, so detection never reaches further into a source (nor
into another device) than these two reads.  A `Source` answers the same
calls, so a backend may also detect the format of a file it holds inside
(the flattened stream's inner file, the NGDump partition's dump file).
"""

from __future__ import annotations

from dataclasses import dataclass

from dumpfs.source import Source

from .sysblock import block_size

HEAD_SIZE = 256 << 10       # every fixed-place header, and three AWSTAPE blocks of up to 64 KiB
TAIL_SIZE = 64 << 10        # trailers: the FBA dump tool (last 0x3000 bytes), a tape's end marker


@dataclass(frozen=True)
class Probe:
    name: str
    size: int
    head: bytes                 # the first HEAD_SIZE bytes (fewer in a smaller source)
    tail: bytes                 # the last bytes not in the head, up to TAIL_SIZE
    block_size: int             # the source's own logical block size (4096 for images)

    @classmethod
    def of(cls, source: Source) -> Probe:
        head = source.read(0, HEAD_SIZE)
        tail_start = max(len(head), source.size - TAIL_SIZE)
        tail = source.read(tail_start, source.size - tail_start) if tail_start < source.size else b""
        return cls(source.name, source.size, head, tail, block_size(source))

    def read(self, offset: int, length: int) -> bytes:
        """The bytes at `offset` (short at the end of the source), or b"" where the probe has none."""
        end = min(offset + length, self.size)
        if offset < 0 or offset >= end:
            return b""
        if end <= len(self.head):
            return self.head[offset:end]
        tail_start = self.size - len(self.tail)
        if offset >= tail_start:
            return self.tail[offset - tail_start:end - tail_start]
        return b""
