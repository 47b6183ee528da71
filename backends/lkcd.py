"""LKCD v8 dumps, s390 flavour: old zfcpdump (v1/v2, files dump.N) and vmconvert output.

A 734-byte dump header, the s390 "asm" header at hdr_size (lc_vec: each
CPU's prefix), zeros to 0x10000, then page records: a 16-byte page header
(addr, size, flags) and raw or zlib data, in ascending address order, until
an end record.  Pages not in the file are zero.  Registers live in each
CPU's prefix page, as for s390 stand-alone dumps.

A full uncompressed dump is located by arithmetic; any other is scanned
once for its page headers (one pass, block-buffered) on first memory use.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from array import array

from construct import Array, Bytes, Int16ub, Int32ub, Int64ub, Struct

from dumpfs.arch import s390x
from dumpfs.clock import unix_time
from dumpfs.backends.s390 import cpus_from_lowcores
from dumpfs.errors import DamagedDump, MemoryUnavailable, Problem, Severity, Unsupported
from dumpfs.model import Dump, DumpMeta, Memory, MemoryChunk, PageCache, PageState
from dumpfs.waiting import may_wait
from dumpfs.extents import SourceRange
from dumpfs.source import Source

MAGIC = 0xA8190173618F23ED
ASM_MAGIC = 0x733339302D64756D      # "s390-dum"
DATA_START = 0x10000
PAGE = 4096
PAGE_HEADER = struct.Struct(">QII")  # df_lkcd_pg_hdr: addr, size, flags
DH_RAW, DH_COMPRESSED, DH_END = 1, 2, 4
COMPRESS_NONE, COMPRESS_GZIP = 0, 2
CPU_MAX = 512
MAX_MEM_SIZE = 1 << 50
SCAN_BLOCK = 4 << 20

# struct df_lkcd_hdr, 734 bytes, packed, big-endian
LkcdHeader = Struct(
    "magic" / Int64ub,              # 0x000 0xA8190173618F23ED
    "version" / Int32ub,            # 0x008 8
    "hdr_size" / Int32ub,           # 0x00C 734: where the asm header starts
    "dump_level" / Int32ub,         # 0x010
    "page_size" / Int32ub,          # 0x014 4096
    "mem_size" / Int64ub,           # 0x018 dumped memory size
    "mem_start" / Int64ub,          # 0x020 0
    "mem_end" / Int64ub,            # 0x028 end of dumped memory, exclusive
    "num_dump_pgs" / Int32ub,       # 0x030 pages
    "panic_string" / Bytes(256),    # 0x034 zfcpdump: "zSeries-dump (CPUID = ...)"
    "time_tv_sec" / Int64ub,        # 0x134 dump time, Unix seconds
    "time_tv_usec" / Int64ub,       # 0x13C
    "utsname_sysname" / Bytes(65),  # 0x144
    "utsname_nodename" / Bytes(65),  # 0x185
    "utsname_release" / Bytes(65),  # 0x1C6
    "utsname_version" / Bytes(65),  # 0x207
    "utsname_machine" / Bytes(65),  # 0x248 "s390x"
    "utsname_domainname" / Bytes(65),   # 0x289
    "current_task" / Int64ub,       # 0x2CA
    "dump_compress" / Int32ub,      # 0x2D2 0 none, 2 gzip (zlib pages)
    "dump_flags" / Int32ub,         # 0x2D6
    "dump_device" / Int32ub,        # 0x2DA
)
assert LkcdHeader.sizeof() == 734

# struct df_lkcd_hdr_asm, 2068 bytes, at hdr_size
AsmHeader = Struct(
    "magic" / Int64ub,              # 0x00 "s390-dum"
    "version" / Int32ub,            # 0x08 0
    "hdr_size" / Int32ub,           # 0x0C 2068
    "cpu_cnt" / Int16ub,            # 0x10 valid lc_vec entries
    "real_cpu_cnt" / Int16ub,       # 0x12
    "lc_vec" / Array(CPU_MAX, Int32ub),     # 0x14 prefix of each CPU
)


def detect(source: Source) -> bool:
    head = source.read(0, 8)
    return len(head) == 8 and struct.unpack(">Q", head)[0] == MAGIC


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()


class LkcdDump:
    def __init__(self, source: Source):
        self.source = source
        self.problems: list[Problem] = []
        name = source.name
        self.hdr = hdr = LkcdHeader.parse(source.read_exact(0, LkcdHeader.sizeof(), "LKCD dump header"))
        if source.size < DATA_START:
            raise DamagedDump(f"{name}: truncated: an LKCD dump has its pages from 0x10000, "
                              f"the file ends at {source.size:#x}")
        machine = _text(hdr.utsname_machine)
        if machine != "s390x":
            raise Unsupported(f"{name}: LKCD dump of a '{machine}' machine; only s390x is supported")
        if hdr.page_size != PAGE:
            raise Unsupported(f"{name}: LKCD page_size {hdr.page_size}, expected 4096")
        self.mem_end = hdr.mem_end or hdr.mem_size
        if self.mem_end == 0 or self.mem_end > MAX_MEM_SIZE:
            raise DamagedDump(f"{name}: LKCD mem_end {self.mem_end:#x} is absurd")
        if hdr.dump_compress not in (COMPRESS_NONE, COMPRESS_GZIP):
            raise Unsupported(f"{name}: LKCD dump_compress {hdr.dump_compress} is unknown")
        self.prefixes: list[int] = []
        self.real_cpu_cnt = None
        if hdr.hdr_size + AsmHeader.sizeof() <= DATA_START:
            asm = AsmHeader.parse(source.read_exact(hdr.hdr_size, AsmHeader.sizeof(), "asm header"))
            if asm.magic == ASM_MAGIC:
                if asm.cpu_cnt > CPU_MAX:
                    raise DamagedDump(f"{name}: asm header cpu_cnt {asm.cpu_cnt} exceeds {CPU_MAX}")
                self.prefixes = list(asm.lc_vec[:asm.cpu_cnt])
                self.real_cpu_cnt = asm.real_cpu_cnt
        if self.real_cpu_cnt is None:
            self.problems.append(Problem("no s390 asm header: the dump has no CPU information",
                                         Severity.WARNING))
        pages = self.mem_end // PAGE
        self.full = (hdr.dump_compress == COMPRESS_NONE and
                     source.size == DATA_START + pages * (PAGE_HEADER.size + PAGE) + PAGE_HEADER.size)
        self.cache = PageCache(capacity=256)
        self._addresses = array("Q")    # page addresses, ascending (flex dumps)
        self._offsets = array("Q")      # file offset of each page's header
        self._scanned = False

    # -- the page records -----------------------------------------------------------------

    def _scan(self) -> None:
        """Every page header from 0x10000 to the end record (block-buffered, one pass)."""
        source, problems = self.source, self.problems
        offset, previous = DATA_START, None
        buffer, base = b"", DATA_START
        while True:
            if offset + PAGE_HEADER.size > base + len(buffer):
                base, buffer = offset, source.read(offset, SCAN_BLOCK)
            if offset + PAGE_HEADER.size > base + len(buffer):
                problems.append(Problem(f"no end record: the file ends at {source.size:#x} "
                                        f"after {len(self._addresses)} pages"))
                self.incomplete_after = previous + PAGE if previous is not None else 0
                return
            address, size, flags = PAGE_HEADER.unpack_from(buffer, offset - base)
            if flags == DH_END or address == previous or (address == 0 and size == 4 and flags == 0):
                return                          # end record, or the vmconvert / zfcpdump work-arounds
            where = f"page header at {offset:#x}"
            if flags not in (DH_RAW, DH_COMPRESSED) or size == 0 or size > 2 * PAGE or \
                    address % PAGE or address + PAGE > self.mem_end or \
                    (previous is not None and address < previous):
                problems.append(Problem(f"{where} is invalid (addr {address:#x}, size {size}, "
                                        f"flags {flags}): the pages end here"))
                self.incomplete_after = previous + PAGE if previous is not None else 0
                return
            if offset + PAGE_HEADER.size + size > source.size:
                problems.append(Problem(f"{where}: the page at {address:#x} is cut off "
                                        f"(the file ends at {source.size:#x})"))
                self.incomplete_after = address
                return
            self._addresses.append(address)
            self._offsets.append(offset)
            previous = address
            offset += PAGE_HEADER.size + size

    def chunks(self) -> list[MemoryChunk]:
        if self.full:
            return [MemoryChunk(0, self.mem_end // PAGE * PAGE, PageState.PRESENT, self._read_pages)]
        self.incomplete_after = None
        self._scan()
        self._scanned = True
        chunks: list[MemoryChunk] = []
        covered = 0
        addresses = self._addresses
        i = 0
        while i < len(addresses):
            start = addresses[i]
            j = i
            while j + 1 < len(addresses) and addresses[j + 1] == addresses[j] + PAGE:
                j += 1
            if start > covered:
                chunks.append(MemoryChunk(covered, start - covered, PageState.ZERO))
            end = addresses[j] + PAGE
            chunks.append(MemoryChunk(start, end - start, PageState.PRESENT,
                                      SourceRange(self._read_pages, start)))
            covered = end
            i = j + 1
        if covered < self.mem_end:
            state = PageState.ZERO if self.incomplete_after is None else PageState.MISSING
            chunks.append(MemoryChunk(covered, self.mem_end - covered, state))
        return chunks

    def _page(self, address: int) -> bytes:
        data = self.cache.get(address)
        if data is not None:
            return data
        if self.full:
            offset = DATA_START + address // PAGE * (PAGE_HEADER.size + PAGE)
        else:
            i = bisect.bisect_left(self._addresses, address)
            if i == len(self._addresses) or self._addresses[i] != address:
                return bytes(PAGE)
            offset = self._offsets[i]
        raw = self.source.read(offset, PAGE_HEADER.size + 2 * PAGE)
        addr, size, flags = PAGE_HEADER.unpack_from(raw)
        if addr != address:
            raise MemoryUnavailable(address, f"page header at {offset:#x} says {addr:#x}")
        body = raw[PAGE_HEADER.size:PAGE_HEADER.size + size]
        if flags == DH_COMPRESSED:
            may_wait("decompressing an LKCD page")
            try:
                data = zlib.decompress(body)
            except zlib.error as e:
                raise MemoryUnavailable(address, f"corrupt zlib page at {offset:#x}: {e}") from None
        else:
            data = body
        if len(data) != PAGE:
            raise MemoryUnavailable(address, f"page at {offset:#x} holds {len(data)} bytes, not 4096")
        self.cache.put(address, data)
        return data

    def _read_pages(self, address: int, length: int) -> bytes:
        if self.full and length > PAGE:
            return self._read_full_run(address, length)
        parts = []
        end = address + length
        while address < end:
            page, inner = address - address % PAGE, address % PAGE
            take = min(end - address, PAGE - inner)
            parts.append(self._page(page)[inner:inner + take])
            address += take
        return b"".join(parts)

    def _read_full_run(self, address: int, length: int) -> bytes:
        """Full dump: one read for many pages, the 16-byte headers cut out with memoryview."""
        first = address // PAGE
        last = (address + length - 1) // PAGE
        stride = PAGE_HEADER.size + PAGE
        raw = memoryview(self.source.read(DATA_START + first * stride, (last - first + 1) * stride))
        if len(raw) < (last - first + 1) * stride:
            raise MemoryUnavailable(address, "the file ends inside the pages")
        data = b"".join(raw[k * stride + PAGE_HEADER.size:(k + 1) * stride] for k in range(last - first + 1))
        skip = address - first * PAGE
        return data[skip:skip + length]

    # -- metadata -------------------------------------------------------------------------

    def meta(self) -> DumpMeta:
        hdr = self.hdr
        details: dict[str, object] = {
            "version": hdr.version,
            "panic_string": _text(hdr.panic_string),
            "mem_end": self.mem_end,
            "dump": "full (every page, uncompressed)" if self.full else "pages scanned from 0x10000",
        }
        if self.real_cpu_cnt is not None:
            details["CPU count (real)"] = self.real_cpu_cnt
            details["lc_vec"] = [f"{p:#x}" for p in self.prefixes]
        for field in ("sysname", "nodename", "release", "version"):
            text = _text(getattr(hdr, f"utsname_{field}"))
            if text and text != "<unknown>":
                details[f"utsname {field}"] = text
        when = unix_time(hdr.time_tv_sec + hdr.time_tv_usec / 1e6) if hdr.time_tv_sec else None
        release = _text(hdr.utsname_release)
        writer = "zfcpdump (v1/v2)" if _text(hdr.panic_string).startswith("zSeries-dump") else "LKCD (vmconvert or zfcpdump)"
        return DumpMeta(format="lkcd", writer=writer, dump_time=when,
                        kernel_release=release if release and release != "<unknown>" else None,
                        compression="zlib" if hdr.dump_compress == COMPRESS_GZIP else None,
                        details=details, problems=self.problems)


def open(source: Source) -> Dump:
    reader = LkcdDump(source)
    memory = Memory(reader.chunks)
    memory.chunks                           # scan now: problems belong in meta
    cpus = cpus_from_lowcores(memory, reader.prefixes, reader.mem_end, reader.problems)
    return Dump(arch=s390x.ARCH, page_size=PAGE, memory=memory, cpus=cpus, meta=reader.meta())
