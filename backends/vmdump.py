"""z/VM VMDUMP spool files, as received with `vmur rec` (no conversion).

The file is 4 KiB records: ADSR (symptom record), FMBK (file map), FIR
records (CPU registers), ALBK, ASIZBK (address space), then the page map and
the stored pages.  64-bit big storage format (FIR format 0x02): index pages,
one bit per 16 MiB group, each set bit followed by a key page, one byte per
guest page (bit 0x01 = stored).  Classic 64-bit (0x82, removed libvmdump):
a flat bitmap, then key pages.  Stored pages follow the map in ascending
order; absent pages are zero.

Page location needs the count of stored pages before a page, i.e. every key
page below it: the index is built per 16 MiB group on first access, key
pages are kept in a bounded cache, and only small dumps are counted through
at open (to see truncation).
"""

from __future__ import annotations

import itertools
import struct
import threading
from datetime import datetime

from construct import Array, Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Padding, Struct

from dumpfs.arch import s390x
from dumpfs.s390dump import tod_to_datetime
from dumpfs.errors import DamagedDump, MemoryUnavailable, Problem, Unsupported
from dumpfs.model import Cpu, Dump, DumpMeta, Memory, MemoryChunk, PageCache, PageState
from dumpfs.waiting import may_wait
from dumpfs.extents import SourceRange
from dumpfs.source import Source

RECORD = 4096
PAGE = 4096
GROUP_PAGES = 4096                 # guest pages per key page (16 MiB)
INDEX_BITS = RECORD * 8            # key pages per index page (512 GiB)
SR = b"\xe2\xd9"                   # EBCDIC "SR"
DUMP_TYPE = "VMDUMP  ".encode("cp500")
FMBK_ID = "HCPDFMBK".encode("cp500")
ASIZBK_ID = "ASIZBK  ".encode("cp500")
FIR_BIG, FIR_CLASSIC, FIR_ESA = 0x02, 0x82, 0x00
MAX_CPUS = 512
# z/VM 7.3 gives a guest at most 4 TiB of storage; 64 TiB is room to spare.  The page map has
# one entry per 16 MiB group, so the bound keeps it to 4 Mi entries whatever ASIZBK claims.
MAX_MEM_SIZE = 1 << 46
EAGER_KEY_PAGES = 4096             # count through at open up to 64 GiB of key-paged storage

# ADSR, record 1 (first 88 bytes)
Adsr = Struct(
    "sr" / Bytes(2),                        # 0x00 EBCDIC "SR"
    "cpu_model" / Bytes(4),                 # 0x02
    "cpu_serial" / Bytes(6),                # 0x06
    "time_zone_conversion_factor" / Int32ub,  # 0x0C
    "tod" / Int64ub,                        # 0x10 TOD clock of the dump
    "time_stamp_str" / Bytes(4),            # 0x18 EBCDIC
    "date_str" / Bytes(6),                  # 0x1C EBCDIC
    "node_name" / Bytes(8),                 # 0x22 EBCDIC system name
    "product_id" / Bytes(4),                # 0x2A
    "feature_level" / Bytes(8),             # 0x2E
    "record_status_flag1" / Int8ub,         # 0x36
    "record_status_flag2" / Int8ub,         # 0x37
    "dump_type" / Bytes(8),                 # 0x38 EBCDIC "VMDUMP  "
    "arch_level" / Int16ub,                 # 0x40
    "sec2_len" / Int16ub,                   # 0x42
    "sec2_1_len" / Int16ub, "sec2_1_offset" / Int16ub,   # 0x44
    "sec3_len" / Int16ub, "sec3_offset" / Int16ub,       # 0x48
    "sec4_len" / Int16ub, "sec4_offset" / Int16ub,       # 0x4C
    "sec5_len" / Int16ub, "sec5_offset" / Int16ub,       # 0x50 symptom string (EBCDIC)
    "sec6_len" / Int16ub, "sec6_offset" / Int16ub,       # 0x54
)

# FMBK, record 2
Fmbk = Struct(
    "id" / Bytes(8),                        # 0x00 EBCDIC "HCPDFMBK"
    "rec_nr_fir" / Int32ub,                 # 0x08 record of the first FIR
    "rec_nr_vector" / Int32ub,              # 0x0C vector register records (unused)
    "rec_nr_access" / Int32ub,              # 0x10 ALBK; the ASIZBK is the next record
    "num_acc_recs" / Int32ub,               # 0x14
    "num_addr_spaces" / Int32ub,            # 0x18
    "rec_nr_asibk" / Int32ub,               # 0x1C (unused, as by zgetdump)
)

# struct vmd_fir_64: the first CPU, 1104 bytes (hot enough to unpack by offset below)
FIR_SIZE, FIR_OTHER_SIZE = 1104, 552
FIR_FORMAT_OFFSET = 0xBB
FIR_ONLINE_CPUS_OFFSET = 0x390

# ASIZBK (big storage format), the record after the ALBK
Asizbk = Struct(
    "id" / Bytes(8),                        # 0x000 EBCDIC "ASIZBK  "
    "as_token" / Int64ub,                   # 0x008
    "spaceid" / Bytes(33),                  # 0x010
    Padding(2),                             # 0x031
    "asizbk_format" / Int8ub,               # 0x033
    Padding(12),                            # 0x034
    "storage_size_with_dcss" / Int64ub,     # 0x040
    "storage_size_def_store" / Int64ub,     # 0x048 highest defined byte + 1
    Padding(136),                           # 0x050
    "range_table_entry_count" / Int32ub,    # 0x0D8 valid requested_range_table entries
    "dcss_table_entry_count" / Int32ub,     # 0x0DC
    "online_storage_table" / Array(8, Int64ub[2]),      # 0x0E0 {start, end}
    "requested_range_table" / Array(64, Int64ub[2]),    # 0x160 {start, last byte}
)

# classic ASIBK (FIR format 0x82)
AsibkClassic = Struct(
    "id" / Bytes(8),                        # 0x00
    "as_token" / Int64ub,                   # 0x08
    "spaceid" / Bytes(33),                  # 0x10
    Padding(3),                             # 0x31
    "storage_size_2GB" / Int32ub,           # 0x34 guest storage size in bytes
    "dcss_bitmap_first_rec" / Int32ub,      # 0x38
    "byte_past_highest_defined_byte" / Int32ub,   # 0x3C
    "format_of_as" / Int64ub,               # 0x40
)


def detect(source: Source) -> bool:
    head = source.read(0, 0x40)
    return len(head) == 0x40 and head[:2] == SR and head[0x38:0x40] == DUMP_TYPE


def _ebcdic(raw: bytes) -> str:
    return raw.decode("cp500", "replace").strip("\0 ")


# -- registers ------------------------------------------------------------------------------

def _u(raw: bytes, offset: int, size: int) -> int:
    return int.from_bytes(raw[offset:offset + size], "big")


# Where each register sits in struct vmd_fir_64 (the dumping CPU) and in
# struct vmd_fir_other_64 (every other CPU): (offset, size) for single
# registers, offset of the 16-entry array for gprs, acrs, ctrs and fprs.
FIR_FIRST = {
    "psw_mask": (0xC0, 8), "psw_addr": (0xC8, 8), "prefix": (0x090, 4),
    "cpu_timer": (0x0A9, 8),
    "clock_comparator": (0x1D1, 8),             # 8 bytes at 0x1D1, as zgetdump
    "todpreg": (0x1DC, 4), "fpc": (0x3C8, 4),
    "gprs": 0x010, "acrs": 0x230, "ctrs": 0x0D0, "fprs": 0x150,
}
FIR_OTHER = {
    "psw_mask": (0x110, 8), "psw_addr": (0x118, 8), "prefix": (0x128, 4), "fpc": (0x12C, 4),
    "todpreg": (0x134, 4),                      # "tod": the TOD programmable register
    "cpu_timer": (0x138, 8), "clock_comparator": (0x140, 8),
    "gprs": 0x090, "acrs": 0x150, "ctrs": 0x190, "fprs": 0x010,
}
REGISTER_ARRAYS = {"gprs": ("r", ">16Q"), "acrs": ("a", ">16I"), "ctrs": ("c", ">16Q"),
                   "fprs": ("f", ">16Q")}


def registers_from_fir(fir: bytes, layout: dict) -> dict[str, int]:
    """One FIR record -> dumpfs register names, in the s390x order."""
    regs = {}
    for name, where in layout.items():
        if name in REGISTER_ARRAYS:
            prefix, fmt = REGISTER_ARRAYS[name]
            regs.update((f"{prefix}{i}", v) for i, v in enumerate(struct.unpack_from(fmt, fir, where)))
        else:
            offset, size = where
            regs[name] = _u(fir, offset, size)
    return {name: regs[name] for name in s390x.REGISTER_ORDER if name in regs}


# -- the page map ---------------------------------------------------------------------------

class PageMap:
    """Where each stored page is: per 16 MiB group a key page, and stored pages counted before it.

    `groups[g]` is the record offset of group g's key page (None: no key
    page, all absent).  `_before[k]` = stored pages in the first k key-paged
    groups, grown on demand by reading key pages in file order.
    """

    def __init__(self, source: Source, total_pages: int, groups: list[int | None], data_start: int,
                 classic_bitmap: int | None = None):
        self.source = source
        self.total_pages = total_pages
        self.groups = groups
        self.data_start = data_start
        self.classic_bitmap = classic_bitmap      # classic format: file offset of the flat bitmap
        self.keyed = [g for g, where in enumerate(groups) if where is not None]
        self._rank = {g: k for k, g in enumerate(self.keyed)}
        self._before = [0]
        self._lock = threading.Lock()
        self.cache = PageCache(capacity=256)      # stored flags + running counts per group

    def flags(self, group: int) -> tuple[bytes, list[int]]:
        """One byte per page (1 = stored) and the stored pages before each page, for one group."""
        cached = self.cache.get(group)
        if cached is not None:
            return cached
        may_wait("indexing a VMDUMP page group")
        where = self.groups[group]
        pages = min(GROUP_PAGES, self.total_pages - group * GROUP_PAGES)
        if self.classic_bitmap is None:
            raw = self.source.read(where, pages)
            if len(raw) < pages:
                raise MemoryUnavailable(group * GROUP_PAGES * PAGE,
                                        f"the key page at {where:#x} is cut off")
            stored = raw.translate(_LOW_BIT)
        else:
            raw = self.source.read(self.classic_bitmap + group * GROUP_PAGES // 8, -(-pages // 8))
            raw = raw.ljust(-(-pages // 8), b"\0")
            stored = bytes(raw[i >> 3] >> (7 - (i & 7)) & 1 for i in range(pages))
        counts = list(itertools.accumulate(stored, initial=0))
        value = (stored, counts)
        self.cache.put(group, value)
        return value

    def stored_before(self, group: int) -> int:
        """Stored pages in all groups before `group` (reads the key pages up to it once)."""
        rank = self._rank[group]
        with self._lock:
            while len(self._before) <= rank:
                k = len(self._before) - 1
                self._before.append(self._before[k] + self.flags(self.keyed[k])[1][-1])
            return self._before[rank]

    def count_all(self) -> int:
        return self.stored_before(self.keyed[-1]) + self.flags(self.keyed[-1])[1][-1] if self.keyed else 0

    def page_offset(self, page: int) -> int | None:
        """File offset of a stored page, None if the page is absent (zero)."""
        group, inner = divmod(page, GROUP_PAGES)
        if self.groups[group] is None:
            return None
        stored, counts = self.flags(group)
        if not stored[inner]:
            return None
        return self.data_start + (self.stored_before(group) + counts[inner]) * PAGE


_LOW_BIT = bytes(b & 1 for b in range(256))


class VmDump:
    def __init__(self, source: Source):
        self.source = source
        self.problems: list[Problem] = []
        name = source.name
        self.adsr = Adsr.parse(source.read_exact(0, Adsr.sizeof(), "ADSR"))
        self.fmbk = fmbk = Fmbk.parse(source.read_exact(RECORD, Fmbk.sizeof(), "FMBK record"))
        if fmbk.id != FMBK_ID:
            raise DamagedDump(f"{name}: VMDUMP record 2 is not an FMBK (found {fmbk.id.hex(' ')})")
        if not 3 <= fmbk.rec_nr_fir < fmbk.rec_nr_access or fmbk.rec_nr_access > source.size // RECORD + 1:
            raise DamagedDump(f"{name}: FMBK record numbers are absurd (FIR {fmbk.rec_nr_fir}, "
                              f"access list {fmbk.rec_nr_access}, file of {source.size // RECORD} records)")
        fir_offset = (fmbk.rec_nr_fir - 1) * RECORD
        fir = source.read_exact(fir_offset, FIR_SIZE, "FIR record")
        self.fir_format = fir[FIR_FORMAT_OFFSET]
        if self.fir_format == FIR_ESA:
            raise Unsupported(f"{name}: 31-bit ESA/390 VMDUMP (FIR format 0x00, z/VM before 5.2); "
                              f"only 64-bit dumps are supported")
        if self.fir_format not in (FIR_BIG, FIR_CLASSIC):
            raise Unsupported(f"{name}: unknown VMDUMP FIR format {self.fir_format:#04x}")
        online = struct.unpack_from(">H", fir, FIR_ONLINE_CPUS_OFFSET)[0]
        if online + 1 > MAX_CPUS:
            raise DamagedDump(f"{name}: FIR says {online + 1} CPUs, more than {MAX_CPUS}")
        others = source.read(fir_offset + FIR_SIZE, online * FIR_OTHER_SIZE)
        registers = [registers_from_fir(fir, FIR_FIRST)]
        for i in range(len(others) // FIR_OTHER_SIZE):
            registers.append(registers_from_fir(others[i * FIR_OTHER_SIZE:(i + 1) * FIR_OTHER_SIZE], FIR_OTHER))
        if len(registers) < online + 1:
            self.problems.append(Problem(f"FIR records of CPUs {len(registers)}-{online} are cut off"))
        self.registers = registers
        self.storage_size = fir_storage = _u(fir, 0x280, 8)
        asizbk_offset = fmbk.rec_nr_access * RECORD
        raw = source.read_exact(asizbk_offset, RECORD, "ASIZBK record")
        if raw[:8] != ASIZBK_ID:
            raise DamagedDump(f"{name}: invalid ASIZBK record at {asizbk_offset:#x} "
                              f"(found {raw[:8].hex(' ')})")
        map_start = asizbk_offset + RECORD
        if self.fir_format == FIR_BIG:
            self.map = self._big_map(Asizbk.parse(raw), map_start)
        else:
            self.map = self._classic_map(AsibkClassic.parse(raw), map_start)
        self.mem_size = self.map.total_pages * PAGE
        self.storage_size = fir_storage or self.mem_size
        self.stored_pages: int | None = None
        self.cut_page: int | None = None      # first stored page the file does not hold
        if len(self.map.keyed) <= EAGER_KEY_PAGES:
            self._check_length()

    def _big_map(self, asizbk, map_start: int) -> PageMap:
        name = self.source.name
        count = min(asizbk.range_table_entry_count, 64)
        end = max((last + 1 for _, last in asizbk.requested_range_table[:count]), default=0)
        size = end or asizbk.storage_size_def_store
        if size == 0 or size > MAX_MEM_SIZE:
            raise DamagedDump(f"{name}: ASIZBK storage size {size:#x} is absurd")
        total = -(-size // PAGE)
        groups: list[int | None] = []
        position = map_start
        total_groups = -(-total // GROUP_PAGES)
        while len(groups) < total_groups:
            index = self.source.read(position, RECORD)
            if len(index) < RECORD:
                raise DamagedDump(f"{name}: truncated: index page at {position:#x} of the page map "
                                  f"is cut off (file ends at {self.source.size:#x})")
            position += RECORD
            for i in range(min(INDEX_BITS, total_groups - len(groups))):
                if index[i >> 3] & (0x80 >> (i & 7)):
                    groups.append(position)
                    position += RECORD
                else:
                    groups.append(None)
        if position > self.source.size:
            raise DamagedDump(f"{name}: truncated: the page map ends at {position:#x}, "
                              f"the file at {self.source.size:#x}")
        return PageMap(self.source, total, groups, position)

    def _classic_map(self, asibk, map_start: int) -> PageMap:
        size = asibk.storage_size_2GB
        if size == 0:
            raise DamagedDump(f"{self.source.name}: classic ASIBK storage size is 0")
        total = size // PAGE
        bitmap_records = -(-(total // 8) // RECORD)
        key_records = -(-total // GROUP_PAGES)
        data_start = map_start + (bitmap_records + key_records) * RECORD
        if data_start > self.source.size:
            raise DamagedDump(f"{self.source.name}: truncated: the page bitmap ends at {data_start:#x}, "
                              f"the file at {self.source.size:#x}")
        groups = [map_start] * (-(-total // GROUP_PAGES))
        return PageMap(self.source, total, groups, data_start, classic_bitmap=map_start)

    def _check_length(self) -> None:
        """Count every stored page (small dumps only): a shorter file is truncated."""
        self.stored_pages = stored = self.map.count_all()
        held = max(0, (self.source.size - self.map.data_start) // PAGE)
        if held < stored:
            self.cut_page = held
            self.problems.append(Problem(f"{stored - held} of {stored} stored pages are missing: "
                                         f"the file ends at {self.source.size:#x}"))

    def _cut_address(self) -> int | None:
        """Guest address of the first stored page the file lacks."""
        if self.cut_page is None:
            return None
        m = self.map
        for group in m.keyed:
            before = m.stored_before(group)
            stored, counts = m.flags(group)
            if before + counts[-1] > self.cut_page:
                inner = next(i for i, c in enumerate(counts) if c > self.cut_page - before)
                return (group * GROUP_PAGES + inner - 1) * PAGE
        return None

    # -- memory ---------------------------------------------------------------------------

    def chunks(self) -> list[MemoryChunk]:
        """One chunk per run of groups with / without key pages; after a cut, MISSING."""
        chunks: list[MemoryChunk] = []
        cut = self._cut_address()
        reader = self._reader()
        for keyed, run in itertools.groupby(range(len(self.map.groups)),
                                            key=lambda g: self.map.groups[g] is not None):
            run = list(run)
            start = run[0] * GROUP_PAGES * PAGE
            end = min((run[-1] + 1) * GROUP_PAGES, self.map.total_pages) * PAGE
            if not keyed:
                chunks.append(MemoryChunk(start, end - start, PageState.ZERO))
                continue
            present_end = end if cut is None else max(start, min(end, cut))
            if present_end > start:
                chunks.append(MemoryChunk(start, present_end - start, PageState.PRESENT,
                                          SourceRange(reader, start)))
            if present_end < end:
                chunks.append(MemoryChunk(present_end, end - present_end, PageState.MISSING))
        return chunks

    def _reader(self):
        page_offset, read, size = self.map.page_offset, self.source.read, self.source.size

        def read_address(address: int, length: int) -> bytes:
            """Guest bytes; absent pages are zeros, consecutive stored pages one pread."""
            out = bytearray()
            end = address + length
            while address < end:
                page, inner = divmod(address, PAGE)
                offset = page_offset(page)
                take = min(end - address, PAGE - inner)
                if offset is None:
                    out += bytes(take)
                    address += take
                    continue
                # extend over the following pages while they are stored back to back
                run_end = address + take
                while run_end < end and page_offset(run_end // PAGE) == offset + run_end - address + inner:
                    run_end = min(end, run_end + PAGE)
                data = read(offset + inner, run_end - address)
                if len(data) < run_end - address:
                    raise MemoryUnavailable(address + len(data),
                                            f"missing: the file ends at {size:#x}")
                out += data
                address = run_end
            return bytes(out)
        return read_address

    # -- CPUs and metadata ----------------------------------------------------------------

    def cpus(self) -> dict[int, Cpu]:
        return {n: Cpu(n, regs, s390x.notes_from_registers(regs, n))
                for n, regs in enumerate(self.registers)}

    def meta(self) -> DumpMeta:
        adsr = self.adsr
        details: dict[str, object] = {
            "version": self.fir_format,
            "FIR format": {FIR_BIG: "64-bit big storage (0x02)",
                           FIR_CLASSIC: "64-bit classic (0x82)"}[self.fir_format],
            "node name": _ebcdic(adsr.node_name),
            "CPU count (real)": len(self.registers),
            "storage size": self.storage_size,
            "key pages": len(self.map.keyed),
        }
        if self.stored_pages is not None:
            details["stored pages"] = self.stored_pages
        else:
            details["stored pages"] = (f"not counted at open ({len(self.map.keyed)} key pages); "
                                       f"a truncated file shows on access")
        if adsr.sec5_len and adsr.sec5_offset:
            symptom = self.source.read(adsr.sec5_offset, min(adsr.sec5_len, 256))
            details["symptom"] = _ebcdic(symptom)
        when: datetime | None = tod_to_datetime(adsr.tod)
        return DumpMeta(format="vmdump", writer="z/VM VMDUMP", dump_time=when,
                        details=details, problems=self.problems)


def open(source: Source) -> Dump:
    if source.size < 3 * RECORD:
        raise DamagedDump(f"{source.name}: truncated: a VMDUMP file has at least 3 records, "
                          f"this one {source.size} bytes")
    reader = VmDump(source)
    return Dump(arch=s390x.ARCH, page_size=PAGE, memory=Memory(reader.chunks), cpus=reader.cpus(),
                meta=reader.meta())
