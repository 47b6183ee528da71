"""kdump-compressed files ("KDUMP   "): makedumpfile -c/-l/-p/-z/none and QEMU kdump-*.

open() reads the main header, the sub header and the notes only.  The two
bitmaps are scanned into memory chunks when the memory map is first used;
the scan also numbers the page descriptors (descriptor k belongs to the k-th
set bit of the 2nd bitmap), so a present run knows its first descriptor and
reading a page never needs a popcount.  Pages are decoded on demand, in
batches: one pread for a run of descriptors, one pread per stretch of
contiguous page data, decoded pages kept in a bounded LRU.  Present runs are
ranges of one "descriptor space" (the pages of descriptors 0, 1, ... back to
back), so a read over runs split only by excluded pages is one read; pages
stored raw are served with one pread per stretch; sequential readers of a
compressed dump have the batches ahead decoded on every CPU
(`dumpfs.readahead`; zlib batches of a local file in worker processes,
`dumpfs.decodepool`, unless DUMPFS_DECODE_PROCESSES=0).
"""

from __future__ import annotations

import re
import struct
import sys
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
import zlib
from dataclasses import dataclass
from itertools import accumulate
from operator import sub

from construct import (Bytes, Int32sb, Int32sl, Int32ub, Int32ul, Int64sb, Int64sl, Int64ub,
                       Int64ul, Padding, Struct)

from dumpfs import arch as arches
from dumpfs.clock import unix_time
from dumpfs import decodepool
from dumpfs.elfnote import parse_notes, sort_notes
from dumpfs.extents import join
from dumpfs.inflate import decompress as fast_decompress, inflate
from dumpfs.readahead import READ_AHEAD_BYTES, ReadAhead
from dumpfs.errors import DamagedDump, MemoryUnavailable, Problem, Severity, Unsupported
from dumpfs.limits import MAX_MEMORY_BYTES, MAX_MEMORY_RUNS, MAX_NOTE_BYTES, MAX_VMCOREINFO_BYTES
from dumpfs.model import (EXCLUDED_RUN, MISSING_RUN, PRESENT_READERS, Dump, DumpMeta, Memory, PageCache,
                          PageState, Runs, VmcoreInfo, may_wait)
from dumpfs.source import FileSource, Source

SIGNATURE = b"KDUMP   "

NEWEST_HEADER_VERSION = 6       # the newest layout we know; newer ones are read as 6
PLAUSIBLE_HEADER_VERSIONS = range(1, 64)
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 512, 1 << 20
PAGE_DESC_SIZE = 24
BITMAP_PIECE = 4 << 20          # bitmap bytes scanned per pread (32 Mi pfns)
MAX_PAGES_PER_BATCH = 256       # pages decoded per descriptor pread
PAGES_PER_BATCH = 256           # descriptors per read-ahead unit (and decode-once claim)
STREAM_TRIGGER = 2 * MAX_PAGES_PER_BATCH    # descriptors read in a row before decoding ahead
MAX_COALESCED_READ = 4 << 20    # bytes of page data per pread
MAX_RAW_RUN = 1024              # pages checked at once for raw, back-to-back storage
MAX_SHARED_ZERO_PAGES = 16      # data offsets remembered as "the shared zero page"

# status (main header) and page_desc.flags bits
DUMP_DH_COMPRESSED_ZLIB = 0x01
DUMP_DH_COMPRESSED_LZO = 0x02
DUMP_DH_COMPRESSED_SNAPPY = 0x04
DUMP_DH_COMPRESSED_INCOMPLETE = 0x08
DUMP_DH_EXCLUDED_VMEMMAP = 0x10
DUMP_DH_COMPRESSED_ZSTD = 0x20
COMPRESSION_NAMES = {DUMP_DH_COMPRESSED_ZLIB: "zlib", DUMP_DH_COMPRESSED_LZO: "lzo",
                     DUMP_DH_COMPRESSED_SNAPPY: "snappy", DUMP_DH_COMPRESSED_ZSTD: "zstd"}
COMPRESSION_BITS = DUMP_DH_COMPRESSED_ZLIB | DUMP_DH_COMPRESSED_LZO | DUMP_DH_COMPRESSED_SNAPPY \
    | DUMP_DH_COMPRESSED_ZSTD
# module to import and pip package that provides it, per compression
COMPRESSION_MODULES = {"lzo": ("lzo", "python-lzo"), "snappy": ("snappy", "python-snappy"),
                       "zstd": ("zstandard", "zstandard")}

UTSNAME_FIELD = 65
UTSNAME_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")


def disk_dump_header(i32, u32, long, timeval_padding):
    """struct disk_dump_header; `long` is 8 bytes in the LP64 layout, 4 in the 32-bit one."""
    return Struct(
        "signature" / Bytes(8),             # "KDUMP   "
        "header_version" / i32,             # 6 in current makedumpfile and QEMU
        "utsname" / Bytes(6 * UTSNAME_FIELD),   # struct new_utsname, 6 NUL-padded strings
        Padding(timeval_padding),           # alignment of the timeval
        "tv_sec" / long,                    # timestamp: seconds (QEMU writes 0)
        "tv_usec" / long,                   # timestamp: microseconds
        "status" / u32,                     # DUMP_DH_* flags
        "block_size" / i32,                 # bytes per block = page size
        "sub_hdr_size" / i32,               # sub header + notes, in blocks
        "bitmap_blocks" / u32,              # both bitmaps together, in blocks
        "max_mapnr" / u32,                  # pfn count, truncated to 32 bits (obsolete since v6)
        "total_ram_blocks" / u32,           # unused
        "device_blocks" / u32,              # unused
        "written_blocks" / u32,             # unused
        "current_cpu" / u32,                # unused
        "nr_cpus" / i32,                    # CPUs of the dumped system
    )


def kdump_sub_header64(i32, u64, i64):
    """struct kdump_sub_header, LP64 layout (104 bytes)."""
    return Struct(
        "phys_base" / u64,                  # v1: physical base of the kernel
        "dump_level" / i32,                 # v1: makedumpfile -d level
        "split" / i32,                      # v2: 1 if one part of a --split dump
        "start_pfn" / u64,                  # v2: first pfn of this part (obsolete since v6)
        "end_pfn" / u64,                    # v2: end pfn of this part (obsolete since v6)
        "offset_vmcoreinfo" / i64,          # v3: file offset of the VMCOREINFO text
        "size_vmcoreinfo" / u64,            # v3: its length
        "offset_note" / i64,                # v4: file offset of the copied ELF notes
        "size_note" / u64,                  # v4: their length
        "offset_eraseinfo" / i64,           # v5: file offset of the erase info
        "size_eraseinfo" / u64,             # v5: its length
        "start_pfn_64" / u64,               # v6: first pfn of a split part
        "end_pfn_64" / u64,                 # v6: end pfn of a split part
        "max_mapnr_64" / u64,               # v6: pfn count (authoritative)
    )


def kdump_sub_header32(i32, u32, u64, i64):
    """QEMU's packed KdumpSubHeader32 (80 bytes)."""
    return Struct(
        "phys_base" / u32,                  # v1
        "dump_level" / i32,                 # v1
        "split" / i32,                      # v2
        "start_pfn" / u32,                  # v2
        "end_pfn" / u32,                    # v2
        "offset_vmcoreinfo" / i64,          # v3
        "size_vmcoreinfo" / u32,            # v3
        "offset_note" / i64,                # v4
        "size_note" / u32,                  # v4
        "offset_eraseinfo" / i64,           # v5
        "size_eraseinfo" / u32,             # v5
        "start_pfn_64" / u64,               # v6
        "end_pfn_64" / u64,                 # v6
        "max_mapnr_64" / u64,               # v6
    )


# header_version that introduced each sub-header field; older files leave them undefined
SUB_HEADER_SINCE = {"phys_base": 1, "dump_level": 1, "split": 2, "start_pfn": 2, "end_pfn": 2,
                    "offset_vmcoreinfo": 3, "size_vmcoreinfo": 3, "offset_note": 4,
                    "size_note": 4, "offset_eraseinfo": 5, "size_eraseinfo": 5,
                    "start_pfn_64": 6, "end_pfn_64": 6, "max_mapnr_64": 6}


@dataclass(frozen=True)
class Layout:
    """Byte order and word size of one kdump file, and the structures in that layout."""

    byteorder: str          # "little" or "big"
    bits: int               # 64 or 32
    header: Struct
    sub_header: Struct
    page_desc: struct.Struct    # offset (off_t), size, flags, page_flags


def _layout(byteorder: str, bits: int) -> Layout:
    little = byteorder == "little"
    i32, u32 = (Int32sl, Int32ul) if little else (Int32sb, Int32ub)
    i64, u64 = (Int64sl, Int64ul) if little else (Int64sb, Int64ub)
    prefix = "<" if little else ">"
    if bits == 64:
        header = disk_dump_header(i32, u32, i64, 6)
        sub = kdump_sub_header64(i32, u64, i64)
    else:
        header = disk_dump_header(i32, u32, i32, 2)
        sub = kdump_sub_header32(i32, u32, u64, i64)
    return Layout(byteorder, bits, header, sub, struct.Struct(prefix + "qIIQ"))


BLOCK_SIZE_OFFSET = {64: 0x1AC, 32: 0x1A0}


def detect(source: Source) -> bool:
    return source.read(0, 8) == SIGNATURE


def _detect_layout(source: Source) -> Layout:
    """Byte order from a plausible header_version, word size from a power-of-two block_size."""
    head = source.read_exact(0, 0x1B0, "kdump main header")
    orders = [order for order in ("little", "big")
              if int.from_bytes(head[8:12], order) in PLAUSIBLE_HEADER_VERSIONS]
    if not orders:
        raise DamagedDump(f"{source.name}: kdump header_version {head[8:12].hex()} is not a "
                          f"plausible version in either byte order")
    order = orders[0]
    for bits in (64, 32):
        off = BLOCK_SIZE_OFFSET[bits]
        block_size = int.from_bytes(head[off:off + 4], order)
        if _plausible_block_size(block_size):
            return _layout(order, bits)
    raise DamagedDump(f"{source.name}: kdump block_size is not a power of two between "
                      f"{MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE} in either the 64-bit or the "
                      f"32-bit layout")


def _plausible_block_size(n: int) -> bool:
    return MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE and n & (n - 1) == 0


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _signed64(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def open(source: Source) -> Dump:
    name = source.name
    layout = _detect_layout(source)
    hdr = layout.header.parse(source.read_exact(0, layout.header.sizeof(), "kdump main header"))
    version = hdr.header_version
    block_size = hdr.block_size
    problems: list[Problem] = []
    details: dict[str, object] = {"header_version": version, "layout": f"{layout.bits}-bit "
                                  f"{layout.byteorder}-endian", "block_size": block_size}
    if version > NEWEST_HEADER_VERSION:
        problems.append(Problem(f"header_version {version} is newer than {NEWEST_HEADER_VERSION}; "
                                f"read as version {NEWEST_HEADER_VERSION}", Severity.WARNING))
    uts = {field: _cstr(hdr.utsname[i * UTSNAME_FIELD:(i + 1) * UTSNAME_FIELD])
           for i, field in enumerate(UTSNAME_FIELDS)}

    # sub header: block 1 .. sub_hdr_size
    if hdr.sub_hdr_size < 1:
        raise DamagedDump(f"{name}: kdump sub_hdr_size is {hdr.sub_hdr_size}; it must be at least 1 block")
    sub_area_end = (1 + hdr.sub_hdr_size) * block_size
    if sub_area_end > source.size:
        raise DamagedDump(f"{name}: truncated: kdump sub header and notes ({hdr.sub_hdr_size} blocks "
                          f"at {block_size:#x}) end at {sub_area_end:#x}, the file ends at {source.size:#x}")
    sub_raw = source.read_exact(block_size, min(layout.sub_header.sizeof(), hdr.sub_hdr_size * block_size),
                                "kdump sub header")
    sub = layout.sub_header.parse(sub_raw.ljust(layout.sub_header.sizeof(), b"\0"))
    sub = {field: (value if version >= SUB_HEADER_SINCE[field] else 0)
           for field, value in sub.items() if field in SUB_HEADER_SINCE}

    max_mapnr = sub["max_mapnr_64"] or hdr.max_mapnr
    details["max_mapnr"] = max_mapnr
    details["nr_cpus"] = hdr.nr_cpus
    details["status"] = hdr.status
    if max_mapnr == 0:
        raise DamagedDump(f"{name}: kdump max_mapnr is 0: the dump describes no memory")
    if max_mapnr > MAX_MEMORY_BYTES // block_size:
        raise DamagedDump(f"{name}: kdump max_mapnr {max_mapnr:#x} is absurd (beyond "
                          f"{MAX_MEMORY_BYTES:#x} bytes of memory)")

    # bitmaps: the 1st and 2nd bitmap share bitmap_blocks equally
    bitmap1 = sub_area_end
    bitmap_len = hdr.bitmap_blocks * block_size // 2
    bitmap_needed = (max_mapnr + 7) // 8
    if bitmap_needed > bitmap_len:
        raise DamagedDump(f"{name}: kdump bitmap_blocks {hdr.bitmap_blocks} gives {bitmap_len} bytes "
                          f"per bitmap, too few for max_mapnr {max_mapnr} ({bitmap_needed} bytes)")
    bitmap2 = bitmap1 + bitmap_len
    if bitmap2 + bitmap_len > source.size:
        raise DamagedDump(f"{name}: truncated: kdump bitmaps ({hdr.bitmap_blocks} blocks at "
                          f"{bitmap1:#x}) end at {bitmap2 + bitmap_len:#x}, the file ends at "
                          f"{source.size:#x}")
    if bitmap_len > -(-bitmap_needed // block_size) * block_size:
        problems.append(Problem(f"bitmap_blocks {hdr.bitmap_blocks} is larger than max_mapnr "
                                f"{max_mapnr} needs", Severity.WARNING))
    table_start = (1 + hdr.sub_hdr_size + hdr.bitmap_blocks) * block_size

    arch, arch_note = _choose_arch(name, layout, uts["machine"])
    if arch_note:
        details["arch"] = arch_note

    notes = []
    if sub["size_note"]:
        notes = parse_notes(_read_header_area(source, sub["offset_note"], sub["size_note"], MAX_NOTE_BYTES,
                                              sub_area_end, "ELF notes"), arch.byteorder, problems)
    cpus, dump_notes, vmcoreinfo = sort_notes(arch, notes, problems)
    if vmcoreinfo is None and sub["size_vmcoreinfo"]:
        vmcoreinfo = VmcoreInfo(_read_header_area(source, sub["offset_vmcoreinfo"], sub["size_vmcoreinfo"],
                                                  MAX_VMCOREINFO_BYTES, sub_area_end, "VMCOREINFO"))

    compression = _compression(hdr.status)
    _require_compression_module(name, compression)

    writer = "qemu" if not uts["sysname"] and hdr.tv_sec == 0 else "makedumpfile"
    meta = DumpMeta(format="kdump", writer=writer, dump_level=sub["dump_level"],
                    compression=compression, details=details, problems=problems,
                    kernel_release=uts["release"] or (vmcoreinfo.get("OSRELEASE") if vmcoreinfo else None),
                    dump_time=unix_time(hdr.tv_sec))
    if uts["nodename"]:
        details["nodename"] = uts["nodename"]
    if uts["version"]:
        details["kernel_version"] = uts["version"]
    _choose_phys_base(meta, sub["phys_base"], vmcoreinfo)
    if hdr.status & DUMP_DH_EXCLUDED_VMEMMAP:
        details["excluded_vmemmap"] = True
    if hdr.status & DUMP_DH_COMPRESSED_INCOMPLETE:
        problems.append(Problem("the writer marked the dump incomplete (status 0x08): pages near "
                                "the end may be missing"))

    first_pfn, end_pfn = 0, max_mapnr
    if sub["split"]:
        first_pfn = sub["start_pfn_64"] or sub["start_pfn"]
        end_pfn = min(max_mapnr, sub["end_pfn_64"] or sub["end_pfn"] or max_mapnr)
        details["split"] = f"pfns {first_pfn:#x}-{end_pfn:#x}"
        problems.append(Problem(f"one part of a --split dump: only pfns {first_pfn:#x}-{end_pfn:#x} "
                                f"are here"))

    pages = KdumpPages(source, layout, block_size, bitmap1, bitmap2, table_start,
                       first_pfn, end_pfn, meta)
    return Dump(arch=arch, page_size=block_size, memory=Memory(pages.chunks), cpus=cpus,
                meta=meta, vmcoreinfo=vmcoreinfo, notes=dump_notes, resources=[pages])


def _choose_arch(name: str, layout: Layout, machine: str):
    """The architecture from utsname.machine; QEMU may leave it empty, then byte order decides."""
    if layout.bits != 64:
        raise Unsupported(f"{name}: 32-bit kdump layout (machine {machine or 'unknown'!r}); only "
                          f"64-bit x86_64 and s390x dumps are supported")
    if machine:
        arch = arches.by_name(machine.lower())
        if arch is None:
            raise Unsupported(f"{name}: kdump of machine {machine!r} is not supported "
                              f"(x86_64 and s390x are)")
        if arch.byteorder != layout.byteorder:
            raise Unsupported(f"{name}: {arch.name} kdump in {layout.byteorder}-endian byte order")
        return arch, None
    arch = arches.by_name("s390x" if layout.byteorder == "big" else "x86_64")
    return arch, f"{arch.name}, guessed from the byte order (utsname.machine is empty)"


def _read_header_area(source: Source, offset: int, size: int, limit: int, area_end: int,
                      what: str) -> bytes:
    """Notes or VMCOREINFO text, which must lie in the sub-header area and be at most `limit` bytes."""
    if size > limit:
        raise DamagedDump(f"{source.name}: kdump {what} size {size:#x} is more than {limit:#x} bytes")
    if offset < 0 or offset + size > area_end:
        raise DamagedDump(f"{source.name}: kdump {what} at {offset:#x} of {size:#x} bytes lie outside "
                          f"the sub-header area (ends at {area_end:#x})")
    return source.read_exact(offset, size, f"kdump {what}")


def _compression(status: int) -> str:
    used = [COMPRESSION_NAMES[bit] for bit in COMPRESSION_NAMES if status & bit]
    return "+".join(used) if used else "none"


def _require_compression_module(name: str, compression: str) -> None:
    for method in compression.split("+"):
        if method in COMPRESSION_MODULES:
            module, package = COMPRESSION_MODULES[method]
            try:
                __import__(module)
            except ImportError:
                raise Unsupported(f"{name}: pages are {method}-compressed; install the Python "
                                  f"package {package} (pip install {package})") from None


def _choose_phys_base(meta: DumpMeta, header_value: int, vmcoreinfo: VmcoreInfo | None) -> None:
    """VMCOREINFO's phys_base wins: QEMU 7.2 writes a wrong header value under KASLR."""
    header_phys_base = _signed64(header_value)
    meta.details["phys_base_header"] = header_phys_base
    chosen = header_phys_base
    if vmcoreinfo is not None:
        from_vmcoreinfo = vmcoreinfo.number("NUMBER(phys_base)")
        if from_vmcoreinfo is not None:
            from_vmcoreinfo = _signed64(from_vmcoreinfo % (1 << 64))
            meta.details["phys_base_vmcoreinfo"] = from_vmcoreinfo
            chosen = from_vmcoreinfo
    meta.details["phys_base"] = chosen


# --- bitmap scanning ---------------------------------------------------------------

def _ones_in_byte(value: int) -> tuple[tuple[int, int], ...]:
    runs, bit = [], 0
    while bit < 8:
        if value >> bit & 1:
            start = bit
            while bit < 8 and value >> bit & 1:
                bit += 1
            runs.append((start, bit))
        else:
            bit += 1
    return tuple(runs)


ONES_IN_BYTE = [_ones_in_byte(v) for v in range(256)]
FULL_OR_MIXED_BYTES = re.compile(rb"\xff+|[^\x00\xff]")
LIMIT_CHECK_BYTES = 1 << 16     # a bitmap holds at most 4 runs a byte: 256 Ki between checks


def add_bit_runs(bitmap: bytes, first_bit: int, runs: array, limit: int = MAX_MEMORY_RUNS) -> None:
    """Append the maximal runs of set bits (LSB-first, numbered from `first_bit`) to `runs` as
    start, end pairs, continuing its last run if that ends where this bitmap's first begins.
    Full bytes are matched in C, bits only at edges.  Stops once `runs` holds more than
    `limit` runs (checked every LIMIT_CHECK_BYTES)."""
    append = runs.append
    end = runs[-1] if runs else None
    most, check = 2 * limit, LIMIT_CHECK_BYTES
    for match in FULL_OR_MIXED_BYTES.finditer(bitmap):
        start = match.start()
        base = first_bit + 8 * start
        if bitmap[start] == 0xFF:
            pieces = ((0, 8 * (match.end() - start)),)
        else:
            pieces = ONES_IN_BYTE[bitmap[start]]
            if start >= check:
                if len(runs) > most:
                    return
                check = start + LIMIT_CHECK_BYTES
        for low, high in pieces:
            if base + low == end:
                runs[-1] = end = base + high
            else:
                append(base + low)
                append(base + high)
                end = base + high


def clip_runs(runs: array, low: int, high: int) -> None:
    """Cut the runs (start, end pairs, sorted) to [low, high), in place."""
    first = 0
    while first < len(runs) and runs[first + 1] <= low:
        first += 2
    del runs[:first]
    last = len(runs)
    while last > 0 and runs[last - 2] >= high:
        last -= 2
    del runs[last:]
    if runs:
        runs[0] = max(runs[0], low)
        runs[-1] = min(runs[-1], high)


def _split_lost(present: array, lost: list[tuple[int, int]]) -> tuple[array, array, bytearray]:
    """The present runs (start, end pfn pairs) cut where the file lost descriptors [first, end)
    (`lost`, sorted): the pieces, each piece's first descriptor, and per piece 1 if lost.
    Linear: the runs between cuts are copied as slices."""
    descriptors = array("q", accumulate(map(sub, present[1::2], present[0::2]), initial=0))
    runs = len(present) // 2
    pieces, firsts = array("q"), array("q")
    copied = copied_firsts = 0      # how much of `present` and of `descriptors` is in already
    for cut in sorted({point for span in lost for point in span}):
        i = bisect_right(descriptors, cut) - 1          # the run holding descriptor `cut`
        if 0 <= i < runs and descriptors[i] < cut < descriptors[i + 1]:
            pfn = present[2 * i] + cut - descriptors[i]
            pieces.extend(present[copied:2 * i + 1])
            pieces.extend((pfn, pfn))
            firsts.extend(descriptors[copied_firsts:i + 1])
            firsts.append(cut)
            copied, copied_firsts = 2 * i + 1, i + 1
    pieces.extend(present[copied:])
    firsts.extend(descriptors[copied_firsts:runs])
    lost_flags = bytearray(len(firsts))
    for first, end in lost:
        low, high = bisect_left(firsts, first), bisect_left(firsts, end)
        lost_flags[low:high] = b"\1" * (high - low)
    return pieces, firsts, lost_flags


# --- pages -------------------------------------------------------------------------

class KdumpPages:
    """The bitmaps, descriptor table and page data of one kdump file."""

    def __init__(self, source: Source, layout: Layout, block_size: int, bitmap1: int, bitmap2: int,
                 table_start: int, first_pfn: int, end_pfn: int, meta: DumpMeta):
        self.source = source
        self.page_desc = layout.page_desc
        self.block_size = block_size
        self.page_shift = block_size.bit_length() - 1
        self.bitmap1, self.bitmap2 = bitmap1, bitmap2
        self.table_start = table_start
        self.first_pfn, self.end_pfn = first_pfn, end_pfn
        self.meta = meta
        self.cut_pfn: int | None = None     # the bitmaps hold more than MAX_MEMORY_RUNS runs from here
        self.cache = PageCache()        # decoded pages, for random readers
        self.read_ahead: ReadAhead | None = None     # compressed dumps, once the map is known
        self.batches: PageCache | None = None   # batch -> its pages decoded ahead, in order
        self.pool: decodepool.DecodePool | None = None  # zlib batches of a local file: in processes
        self.dumpable = 0
        self._run_pfns = array("q")             # each present run: its first pfn and descriptor
        self._run_descriptors = array("q")
        self._claims: dict[int, threading.Event] = {}   # batches being decoded (decode once)
        self._claims_lock = threading.Lock()
        self._per_thread = threading.local()     # decoder state a thread reuses (zstd)
        # descriptors in the machine's byte order can be checked a whole batch at once
        self.native_table = layout.byteorder == sys.byteorder and layout.page_desc.size == 24
        self.zero_page = bytes(block_size)
        self.zero_offsets: set[int] = set()     # data offsets of raw zero pages (the shared one)
        marked_incomplete = meta.details["status"] & DUMP_DH_COMPRESSED_INCOMPLETE
        self.incomplete_note = " (the dump is marked incomplete)" if marked_incomplete else ""
        self.decoders = {DUMP_DH_COMPRESSED_ZLIB: self._zlib, DUMP_DH_COMPRESSED_LZO: self._lzo,
                         DUMP_DH_COMPRESSED_SNAPPY: self._snappy, DUMP_DH_COMPRESSED_ZSTD: self._zstd}

    # memory map

    def chunks(self) -> Runs:
        """Present runs (2nd bitmap), excluded runs (1st but not 2nd); pfns in neither are holes.

        A present page whose descriptor or data lies past the end of a cut file is MISSING,
        so the map and `info` count exactly the pages that cannot be read.  A run costs a
        few bytes and well under a microsecond: hostile bitmaps of random bits give millions."""
        present, excluded = self._scan_bitmaps()
        shift = self.page_shift
        count = sum(present[1::2]) - sum(present[0::2])
        lost = self._lost_descriptors(count)
        present, descriptors, lost_flags = _split_lost(present, lost)
        starts, sizes, which, wheres = array("Q"), array("Q"), array("I"), array("Q")
        add_start, add_size, add_which, add_where = starts.append, sizes.append, which.append, wheres.append

        def add_hole(first: int, end: int, number: int) -> None:
            add_start(first << shift)
            add_size((end - first) << shift)
            add_which(number)
            add_where(first << shift)

        run_pfns, run_descriptors = self._run_pfns, self._run_descriptors
        e, excluded_end = 0, len(excluded)
        for k, pfn in enumerate(present[0::2]):       # in address order, the excluded runs between
            while e < excluded_end and excluded[e] < pfn:
                add_start(excluded[e] << shift)             # add_hole, inline: this is the hot loop
                add_size((excluded[e + 1] - excluded[e]) << shift)
                add_which(EXCLUDED_RUN)
                add_where(excluded[e] << shift)
                e += 2
            add_start(pfn << shift)
            add_size((present[2 * k + 1] - pfn) << shift)
            if lost_flags[k]:
                add_which(MISSING_RUN)
                add_where(pfn << shift)
            else:
                add_which(PRESENT_READERS)
                add_where(descriptors[k] << shift)
                run_pfns.append(pfn)
                run_descriptors.append(descriptors[k])
        for e in range(e, excluded_end, 2):
            add_hole(excluded[e], excluded[e + 1], EXCLUDED_RUN)
        if self.cut_pfn is not None:
            add_hole(self.cut_pfn, self.end_pfn, MISSING_RUN)
        lost_pages = sum(end - start for start, end in lost)
        missing_pages = lost_pages + (0 if self.cut_pfn is None else self.end_pfn - self.cut_pfn)
        excluded_pages = sum(excluded[1::2]) - sum(excluded[0::2])
        totals = {PageState.PRESENT: (count - lost_pages) << shift, PageState.ZERO: 0,
                  PageState.EXCLUDED: excluded_pages << shift, PageState.MISSING: missing_pages << shift}
        runs = Runs.from_columns(starts, sizes, which, wheres, [self.read], totals)
        self.meta.details["dumpable_pages"] = count
        if lost_pages:
            self._problem(f"truncated: the file ends at {self.source.size:#x}; the descriptors or "
                          f"data of {lost_pages} pages lie past it: those pages are missing")
        self.dumpable = count
        if self.meta.compression not in (None, "none") and count:
            window = max(2, READ_AHEAD_BYTES // (PAGES_PER_BATCH * self.block_size))
            self.batches = PageCache(2 * window)
            self.read_ahead = ReadAhead(self._fetch, PAGES_PER_BATCH, window,
                                        -(-count // PAGES_PER_BATCH), "kdump",
                                        trigger=STREAM_TRIGGER)
            source = self.source
            if decodepool.ENABLED and type(source) is FileSource and not source.is_block_device:
                self.pool = decodepool.DecodePool(source.fd, self.block_size, PAGES_PER_BATCH)
        return runs

    def close(self) -> None:
        """Stop the read-ahead threads and the decoding processes; closing the dump does."""
        if self.read_ahead is not None:
            self.read_ahead.close()
        if self.pool is not None:
            self.pool.close()

    def _scan_bitmaps(self) -> tuple[array, array]:
        """Runs of present and of excluded pfns, each as start, end, start, end, ... in an array
        (16 bytes a run); read in pieces so huge bitmaps never sit in memory."""
        present, excluded = array("q"), array("q")
        first_byte = self.first_pfn // 8
        end_byte = (self.end_pfn + 7) // 8
        for offset in range(first_byte, end_byte, BITMAP_PIECE):
            length = min(BITMAP_PIECE, end_byte - offset)
            dumpable = self.source.read_exact(self.bitmap2 + offset, length, "kdump 2nd bitmap")
            existing = self.source.read_exact(self.bitmap1 + offset, length, "kdump 1st bitmap")
            marks = len(present), len(excluded)
            add_bit_runs(dumpable, 8 * offset, present, MAX_MEMORY_RUNS - len(excluded) // 2)
            if existing != dumpable:
                only_existing = (int.from_bytes(existing, "little")
                                 & ~int.from_bytes(dumpable, "little")).to_bytes(length, "little")
                add_bit_runs(only_existing, 8 * offset, excluded, MAX_MEMORY_RUNS - len(present) // 2)
            if (len(present) + len(excluded)) // 2 > MAX_MEMORY_RUNS:
                del present[marks[0]:], excluded[marks[1]:]
                self.cut_pfn = max(self.first_pfn, 8 * offset)
                self._problem(f"the kdump bitmaps hold more than {MAX_MEMORY_RUNS} runs of pages; "
                              f"memory from {self.cut_pfn << self.page_shift:#x} on is not served")
                break
        high = self.end_pfn if self.cut_pfn is None else self.cut_pfn
        clip_runs(present, self.first_pfn, high)
        clip_runs(excluded, self.first_pfn, high)
        return present, excluded

    def _lost_descriptors(self, count: int) -> list[tuple[int, int]]:
        """Runs [first, end) of descriptor indices whose page the file cannot deliver: the
        descriptor lies past the end of the file, or its data does (or is corrupt).

        Data is written in pfn order, except that zero pages all point at one shared copy
        at the start of the data area; so the table is read backwards from its end until
        the last page whose own data the file holds, and every descriptor after that one
        is checked (the cost is that of the lost tail only)."""
        file_size, block_size = self.source.size, self.block_size
        usable = min(count, max(0, (file_size - self.table_start) // PAGE_DESC_SIZE))
        lost: list[tuple[int, int]] = [(usable, count)] if usable < count else []
        shared_zero_page = self.table_start + count * PAGE_DESC_SIZE
        end = usable
        while end > 0:
            start = max(0, end - MAX_PAGES_PER_BATCH * 16)
            table = self.source.read(self.table_start + start * PAGE_DESC_SIZE,
                                     (end - start) * PAGE_DESC_SIZE)
            descriptors = list(self.page_desc.iter_unpack(table))
            for index in range(end - 1, start - 1, -1):
                offset, size, _flags, _ = descriptors[index - start]
                if 0 <= offset and 0 < size <= block_size and offset + size <= file_size:
                    if offset != shared_zero_page:
                        return sorted(lost)
                    continue
                if lost and lost[-1][0] == index + 1:
                    lost[-1] = (index, lost[-1][1])
                else:
                    lost.append((index, index + 1))
            end = start
        return sorted(lost)

    def _problem(self, text: str) -> None:
        self.meta.add_problem(text)

    # reading

    def _address(self, descriptor: int) -> int:
        """The physical address of the page with this descriptor (for error messages)."""
        i = bisect_right(self._run_descriptors, descriptor) - 1
        return (self._run_pfns[i] + descriptor - self._run_descriptors[i]) << self.page_shift

    def read(self, offset: int, length: int) -> bytes:
        """Bytes at `offset` of the descriptor space: the pages of descriptors 0, 1, ... back to
        back (what the pages of the present runs are, in pfn order)."""
        if length <= 0:
            return b""
        shift = self.page_shift
        first = offset >> shift
        last = (offset + length - 1) >> shift
        skip = offset - (first << shift)
        if self.read_ahead is not None:
            streaming = self.read_ahead.note(first, last + 1)
            data = self._from_batches(first, last + 1, streaming or last + 1 - first >= PAGES_PER_BATCH)
            if data is not None:
                return data if skip == 0 and len(data) == length else data[skip:skip + length]
        if self.native_table and last - first < MAX_RAW_RUN:
            data = self._raw_run(first, last + 1 - first)
            if data is not None:
                return data if skip == 0 and len(data) == length else data[skip:skip + length]
        pages: list[bytes] = []
        page = first
        while page <= last:
            count = min(last + 1 - page, MAX_PAGES_PER_BATCH)
            pages.extend(self._pages(page, count))
            page += count
        data = b"".join(pages) if len(pages) > 1 else pages[0]
        if skip == 0 and len(data) == length:
            return data
        return data[skip:skip + length]

    def _raw_run(self, descriptor: int, count: int):
        """The data of `count` pages from `descriptor` on if all are stored raw (makedumpfile
        without compression): one pread per stretch stored back to back, the shared zero
        page from memory, no per-page decode and no page cache of ours (the source's is
        one).  None: compressed or odd pages, for the page path and its checks."""
        size = count * PAGE_DESC_SIZE
        table = self.source.read(self.table_start + descriptor * PAGE_DESC_SIZE, size)
        if len(table) != size:
            return None
        words = memoryview(table).cast("Q")     # offset, size | flags << 32, page_flags
        block_size = self.block_size
        if words[1::3].tolist() != [block_size] * count:
            return None
        offsets = words[0::3].tolist()
        start = offsets[0]
        end = start + count * block_size
        read, file_size = self.source.read, self.source.size
        if offsets == list(range(start, end, block_size)):      # the common case: one stretch
            if end > file_size:
                return None
            data = read(start, end - start)
            return data if len(data) == end - start else None
        zero_offsets, zero_page = self.zero_offsets, self.zero_page
        stored = [offset for offset in offsets if offset not in zero_offsets]
        if not stored:
            return zero_page * count
        first = stored[0]
        end = first + len(stored) * block_size
        if stored != list(range(first, end, block_size)) or end > file_size:
            return None             # zero pages not known yet, or pages out of order
        blob = memoryview(read(first, end - first))
        if len(blob) != end - first:
            return None
        parts = []                  # stretches of the blob between shared zero pages
        i = low = 0
        while i < count:
            if offsets[i] in zero_offsets:
                parts.append(zero_page)
                i += 1
                continue
            j = i + 1
            while j < count and offsets[j] == offsets[j - 1] + block_size:
                j += 1
            high = low + (j - i) * block_size
            parts.append(blob[low:high])
            low, i = high, j
        return join(parts)

    # decoding ahead of sequential readers, a batch of PAGES_PER_BATCH descriptors at a time

    def _from_batches(self, start: int, end: int, decode: bool):
        """The pages of descriptors [start, end) from the batches decoded ahead: a batch being
        decoded is waited for, one nobody decodes yet is decoded here if `decode` (a stream's
        read, or a large one: the workers decode the batches after it meanwhile).  None if a
        batch is missing (a small or random read) or odd: then the page path serves them."""
        batches, claims = self.batches, self._claims
        parts: list = []
        descriptor = start
        while descriptor < end:
            batch = descriptor // PAGES_PER_BATCH
            data = batches.get(batch)
            if data is None:
                if not decode and batch not in claims:
                    return None
                may_wait("decompressing kdump pages")
                self._fetch(batch)          # decodes it, or returns at once if claimed
                claim = claims.get(batch)
                if claim is not None:
                    claim.wait()
                data = batches.get(batch)
                if data is None:
                    return None
            stop = min(end, (batch + 1) * PAGES_PER_BATCH)
            base = batch * PAGES_PER_BATCH
            parts += data[descriptor - base:stop - base]
            descriptor = stop
        return join(parts)

    def _fetch(self, batch: int) -> None:
        """Decode a whole batch (a worker of `read_ahead`, or a reader that got there first),
        once: returns at once if it is decoded or being decoded."""
        if self.batches.get(batch) is not None:
            return
        with self._claims_lock:
            if batch in self._claims:
                return              # a reader or another worker is decoding it
            claim = self._claims[batch] = threading.Event()
        try:
            data = self._decode_batch(batch)
            if data is not None:
                self.batches.put(batch, data)
        finally:
            with self._claims_lock:
                del self._claims[batch]
            claim.set()

    def _decode_batch(self, batch: int) -> list | None:
        """The pages of one batch (bytes or views), in order; None if anything is odd (a corrupt page, data
        far apart): the page path then reports it, page by page."""
        first = batch * PAGES_PER_BATCH
        count = min(PAGES_PER_BATCH, self.dumpable - first)
        size = count * PAGE_DESC_SIZE
        table = self.source.read(self.table_start + first * PAGE_DESC_SIZE, size)
        if len(table) != size:
            return None
        if self.native_table:
            words = memoryview(table).cast("Q")
            offsets, sizes_flags = words[0::3].tolist(), words[1::3].tolist()
        else:
            descriptors = list(self.page_desc.iter_unpack(table))
            offsets = [d[0] for d in descriptors]
            sizes_flags = [d[1] | d[2] << 32 for d in descriptors]
        block_size, zero_offsets = self.block_size, self.zero_offsets
        if len(set(offsets)) < count:       # pages stored once and pointed at again
            for offset, times in Counter(offsets).items():
                if times > 1 and offset not in zero_offsets and len(zero_offsets) < MAX_SHARED_ZERO_PAGES \
                        and self.source.read(offset, block_size) == self.zero_page:
                    zero_offsets.add(offset)
        return self._decode_stored(offsets, sizes_flags)

    def _decode_stored(self, offsets: list[int], sizes_flags: list[int]) -> list | None:
        """The pages of a batch's descriptors, in order: one pread, one decoder call per
        page and as little other per-page Python work as can be (that work holds the GIL,
        which is what keeps decoding threads from running together)."""
        block_size, zero_offsets, zero_page = self.block_size, self.zero_offsets, self.zero_page
        lengths = [size_flags & 0xFFFFFFFF for size_flags in sizes_flags]
        methods = {size_flags >> 32 for size_flags in sizes_flags}
        shared = not zero_offsets.isdisjoint(offsets)
        stored = [k for k, offset in enumerate(offsets) if offset not in zero_offsets] if shared \
            else range(len(offsets))
        if not stored:
            return [zero_page] * len(offsets)
        if shared:
            low, high = min(offsets[k] for k in stored), max(offsets[k] + lengths[k] for k in stored)
        else:
            low, high = min(offsets), max(map(int.__add__, offsets, lengths))
        if low < 0 or high > self.source.size or high - low > 2 * MAX_COALESCED_READ:
            return None
        if self.pool is not None and methods <= {0, DUMP_DH_COMPRESSED_ZLIB}:
            pages = self._decode_in_process(low, high, offsets, sizes_flags, shared)
            if pages is not None:
                return pages
        blob = memoryview(self.source.read(low, high - low))
        if len(blob) != high - low:
            return None
        views = [zero_page if shared and offset in zero_offsets else blob[offset - low:offset - low + length]
                 for offset, length in zip(offsets, lengths)]
        try:
            if methods <= {0, DUMP_DH_COMPRESSED_ZLIB}:     # the common case, without dispatch
                pages = [fast_decompress(view, 15, block_size) if size_flags >> 32 else view
                         for view, size_flags in zip(views, sizes_flags)]
            else:
                decoders = {0: memoryview, **self.decoders}
                pages = [decoders[size_flags >> 32](view) for view, size_flags in zip(views, sizes_flags)]
        except Exception:       # noqa: BLE001 - any library's error: the page path reports it
            return None
        if set(map(len, pages)) != {block_size}:
            return None
        if 0 in methods:
            self._remember_zero_pages(offsets, sizes_flags, pages)
        return pages

    def _decode_in_process(self, low: int, high: int, offsets: list[int], sizes_flags: list[int],
                           shared: bool) -> list | None:
        """A zlib/raw batch decoded by a worker process (`dumpfs.decodepool`): views of one
        copy of its pages; None if the worker could not (the caller decodes it itself)."""
        zero_offsets, block_size = self.zero_offsets, self.block_size
        wanted = [-1 if offset in zero_offsets else offset for offset in offsets] if shared else offsets
        data = self.pool.decode(low, high - low, wanted, sizes_flags)
        if data is None:
            return None
        view = memoryview(data)
        pages = [view[k:k + block_size] for k in range(0, len(data), block_size)]
        self._remember_zero_pages(wanted, sizes_flags, pages)
        return pages

    def _remember_zero_pages(self, offsets, sizes_flags, pages) -> None:
        """Raw pages of zeros (offset -1 or the shared page itself: already known) are the
        shared zero page: remembered by their data offset, for the page path."""
        zero_offsets, zero_page = self.zero_offsets, self.zero_page
        if len(zero_offsets) >= MAX_SHARED_ZERO_PAGES:
            return
        for offset, size_flags, page in zip(offsets, sizes_flags, pages):
            if not size_flags >> 32 and offset >= 0 and page is not zero_page and page == zero_page:
                zero_offsets.add(offset)

    def _pages(self, descriptor: int, count: int) -> list[bytes]:
        """The decoded pages of `count` descriptors from `descriptor` on (cached by descriptor).

        Decoded once: the batches being decoded are claimed, and a reader needing pages of
        a claimed batch waits for it."""
        cache = self.cache
        pages = [cache.get(descriptor + i) for i in range(count)]
        missing = [i for i, page in enumerate(pages) if page is None]
        if not missing:
            return pages
        batches = range((descriptor + missing[0]) // PAGES_PER_BATCH,
                        (descriptor + missing[-1]) // PAGES_PER_BATCH + 1)
        claims = self._claims
        while True:
            with self._claims_lock:
                busy = next((claims[b] for b in batches if b in claims), None)
                if busy is None:
                    claim = threading.Event()
                    for b in batches:
                        claims[b] = claim
                    break
            may_wait("waiting for kdump pages being decoded")
            busy.wait()
            pages = [cache.get(descriptor + i) for i in range(count)]
            missing = [i for i, page in enumerate(pages) if page is None]
            if not missing:
                return pages
        try:
            return self._decode_pages(descriptor, pages, missing)
        finally:
            with self._claims_lock:
                for b in batches:
                    del claims[b]
            claim.set()

    def _decode_pages(self, descriptor: int, pages: list, missing: list[int]) -> list[bytes]:
        """Fill in `pages[i]` for each i in `missing` from the file (and the cache)."""
        cache = self.cache
        low, high = missing[0], missing[-1] + 1
        table_offset = self.table_start + (descriptor + low) * PAGE_DESC_SIZE
        table = self.source.read(table_offset, (high - low) * PAGE_DESC_SIZE)
        descriptors = list(self.page_desc.iter_unpack(table[:len(table) - len(table) % PAGE_DESC_SIZE]))

        # group the missing pages whose data is contiguous in the file: one pread per group
        groups: list[list] = []        # [file offset, length, [(index, size, flags), ...]]
        block_size, file_size, zero_offsets = self.block_size, self.source.size, self.zero_offsets
        group = None
        for i in missing:
            if i - low >= len(descriptors):
                raise MemoryUnavailable(self._address(descriptor + i), "page descriptor past the end "
                                        "of the file" + self.incomplete_note)
            data_offset, size, flags, _ = descriptors[i - low]
            if data_offset in zero_offsets:
                pages[i] = self.zero_page
                cache.put(descriptor + i, self.zero_page)
                continue
            if data_offset < 0 or size == 0 or size > block_size:
                raise MemoryUnavailable(self._address(descriptor + i), f"corrupt page data: "
                                        f"descriptor says {size} bytes at {data_offset:#x} "
                                        f"(block size {block_size})")
            if data_offset + size > file_size:
                raise MemoryUnavailable(self._address(descriptor + i), f"page data at "
                                        f"{data_offset:#x} lies past the end of the file"
                                        + self.incomplete_note)
            if group and group[0] + group[1] == data_offset and group[1] + size <= MAX_COALESCED_READ:
                group[1] += size
                group[2].append((i, size, flags))
            else:
                group = [data_offset, size, [(i, size, flags)]]
                groups.append(group)

        if any(flags for group in groups for _, _, flags in group[2]):
            may_wait("decompressing kdump pages")
        for data_offset, group_length, members in groups:
            blob = memoryview(self.source.read(data_offset, group_length))
            position = 0
            for i, size, flags in members:
                raw = blob[position:position + size]
                if len(raw) < size:
                    raise MemoryUnavailable(self._address(descriptor + i), "page data past the end "
                                            "of the file" + self.incomplete_note)
                page = None
                if flags == DUMP_DH_COMPRESSED_ZLIB:     # the common case, without the dispatch
                    try:
                        page = inflate(raw, block_size)
                    except zlib.error:
                        pass
                    if page is None or len(page) != block_size:
                        page = None
                if page is None:
                    page = self._decode(raw, flags, self._address(descriptor + i))
                if flags == 0 and page == self.zero_page:
                    page = self.zero_page
                    if len(zero_offsets) < MAX_SHARED_ZERO_PAGES:
                        zero_offsets.add(data_offset + position)
                position += size
                pages[i] = page
                cache.put(descriptor + i, page)
        return pages

    def _decode(self, raw: memoryview, flags: int, address: int) -> bytes:
        block_size = self.block_size
        method = flags & COMPRESSION_BITS
        if method == 0:
            if flags:
                raise MemoryUnavailable(address, f"corrupt page data: unknown page flags {flags:#x}")
            if len(raw) != block_size:
                raise MemoryUnavailable(address, f"corrupt page data: raw page of {len(raw)} bytes")
            return bytes(raw)
        decoder = self.decoders.get(method)
        if decoder is None:
            raise MemoryUnavailable(address, f"corrupt page data: page flags {flags:#x} name "
                                             f"several compressions")
        try:
            page = decoder(raw)
        except MemoryUnavailable:
            raise
        except ImportError as e:
            raise MemoryUnavailable(address, f"page is {COMPRESSION_NAMES[method]}-compressed and "
                                             f"the module is missing: {e}") from None
        except Exception as e:      # each library has its own error type; all mean corrupt data
            raise MemoryUnavailable(address, f"corrupt page data: {COMPRESSION_NAMES[method]}: "
                                             f"{e or type(e).__name__}") from None
        if len(page) != block_size:
            raise MemoryUnavailable(address, f"corrupt page data: {COMPRESSION_NAMES[method]} page "
                                             f"decompressed to {len(page)} bytes, not {block_size}")
        return page

    def _zlib(self, raw) -> bytes:
        return zlib.decompress(raw, 15, self.block_size)

    def _lzo(self, raw) -> bytes:
        import lzo
        return lzo.decompress(bytes(raw), False, self.block_size)

    def _snappy(self, raw) -> bytes:
        import snappy
        declared = _snappy_length(raw)
        if declared != self.block_size:     # checked first: a hostile length would be allocated
            raise ValueError(f"snappy header declares {declared} bytes")
        return snappy.uncompress(bytes(raw))

    def _zstd(self, raw) -> bytes:
        import zstandard
        declared = zstandard.frame_content_size(raw)
        if declared not in (-1, self.block_size):
            raise ValueError(f"zstd frame declares {declared} bytes")
        decompressor = getattr(self._per_thread, "zstd", None)
        if decompressor is None:        # a new one per page costs 2.5x the page's decoding
            decompressor = self._per_thread.zstd = zstandard.ZstdDecompressor()
        return decompressor.decompress(raw, max_output_size=self.block_size)


def _snappy_length(raw) -> int:
    """The uncompressed length in a raw snappy block's varint preamble."""
    value = shift = 0
    for byte in bytes(raw[:5]):
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        shift += 7
    return -1
