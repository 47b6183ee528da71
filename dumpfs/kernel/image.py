"""The kernel image in the dump, for scans that must not rely on its symbols (kallsyms, BTF).

Its place comes from VMCOREINFO alone, on every architecture: init_uts_ns lives in
.data, which the linker script puts after .rodata (where kallsyms and .BTF are), and
_stext, where listed, is the image's start.  The window below init_uts_ns is bounded
and read through the kernel's page tables in big chunks.
"""

from __future__ import annotations

from dumpfs.errors import KernelUnavailable, MemoryUnavailable

SCAN_WINDOW = 64 << 20                  # how far below init_uts_ns the image is searched
CHUNK = 4 << 20


def vmcoreinfo_symbols(info) -> dict[str, int]:
    """VMCOREINFO's SYMBOL(...) entries (run-time addresses), by name."""
    out = {}
    if info is None:
        return out
    for key, value in info.entries.items():
        if key.startswith("SYMBOL(") and key.endswith(")"):
            try:
                out[key[7:-1]] = int(value, 16)
            except ValueError:
                continue
    return out


def image_bounds(info) -> tuple[int, int]:
    """[low, high) to search: below init_uts_ns, not below _stext."""
    known = vmcoreinfo_symbols(info)
    high = known.get("init_uts_ns")
    if high is None:
        raise KernelUnavailable("VMCOREINFO has no SYMBOL(init_uts_ns) to place the kernel image by")
    low = max(high - SCAN_WINDOW, 0)
    stext = known.get("_stext")
    if stext is not None and low < stext < high:
        low = stext
    return low, high


class ImageWindow:
    """A bounded stretch of the kernel image, read in big chunks; unreadable pages read as zeros."""

    def __init__(self, kmem, low: int, high: int):
        self.kmem, self.low, self.high = kmem, low, high
        self._chunks: dict[int, bytes] = {}

    @classmethod
    def of(cls, kmem, info) -> "ImageWindow":
        return cls(kmem, *image_bounds(info))

    def __str__(self) -> str:
        return f"{self.low:#x}-{self.high:#x}"

    def _chunk(self, base: int) -> bytes:
        data = self._chunks.get(base)
        if data is None:
            size = min(CHUNK, self.high - base)
            try:
                data = self.kmem.read(base, size)
            except MemoryUnavailable:
                page = self.kmem.page_size
                data = b"".join(self.kmem.try_read(a, min(page, base + size - a)) or
                                bytes(min(page, base + size - a)) for a in range(base, base + size, page))
            self._chunks[base] = data
        return data

    def read(self, address: int, size: int) -> bytes:
        """Bytes of [address, address + size) that lie inside the window."""
        address, end = max(address, self.low), min(address + size, self.high)
        parts = []
        while address < end:
            base = self.low + (address - self.low) // CHUNK * CHUNK
            chunk = self._chunk(base)
            parts.append(chunk[address - base:min(end - base, len(chunk))])
            address = base + len(chunk)
        return b"".join(parts)

    def find_all(self, needle: bytes, downward: bool = True):
        """Addresses where `needle` occurs (also across two chunks), from the top down or
        the bottom up."""
        bases = range(self.low, self.high, CHUNK)
        for base in (reversed(bases) if downward else bases):
            data = self._chunk(base) + self.read(base + CHUNK, len(needle) - 1)
            hits = []
            pos = data.find(needle)
            while pos >= 0:
                hits.append(base + pos)
                pos = data.find(needle, pos + 1)
            yield from (reversed(hits) if downward else hits)
