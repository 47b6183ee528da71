"""IBM Z stand-alone dumps, single volume: plain `s390` and segmented `s390_ext`.

Written by the dump tools `zipl -d` installs on ECKD and FBA DASD, and (plain,
version 5) by `zgetdump -f s390`.  The dump starts at offset 0 of an image or
a dump partition, or behind the dump tool on a whole disk (ECKD CDL/LDL, FBA:
the zipl boot info says where the partition starts).

Memory: plain = one flat image, address A at dump offset 0x1000 + A.
s390_ext = segment headers each followed by raw data (v1, v2) or by 1 MiB
zlib entries (v2); omitted megabytes are zero.  Registers live in each CPU's
prefix page (the header's lc_vec), see `dumpfs.arch.s390x`.
"""

from __future__ import annotations

import struct
import threading
import zlib
from dataclasses import dataclass

from construct import Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Padding, Struct

from dumpfs.arch import s390x
from dumpfs.s390dump import (ARCH_S390X, CPU_MAX, END_MARKER_MAGIC, HEADER_SIZE, MAGIC_S390,
                             MAGIC_S390_EXT, DumpHeader, EndMarker, tod_to_datetime)
from dumpfs.errors import DamagedDump, MemoryUnavailable, MissingPart, NoDump, Problem, Unsupported
from dumpfs.inflate import inflate_prefix
from dumpfs.readahead import READ_AHEAD_BYTES, ReadAhead
from dumpfs.model import Cpu, Dump, DumpMeta, Memory, MemoryChunk, PageCache, PageState
from dumpfs.waiting import may_wait
from dumpfs.source import Source

from .devcheck import Report
from .probe import Probe
from .sysblock import block_size

SEGMENT_HEADER_SIZE = 0x1000
ENTRY_UNCOMPRESSED = 0x80000000        # entry_offset bit 31: stored raw
ENTRY_MAX = (SEGMENT_HEADER_SIZE - 0x34) // 4
MAX_MEM_SIZE = 1 << 50                 # 1 PiB: more than any IBM Z machine has
# The dump tools and zgetdump write 1 MiB zlib entries; an entry is decoded whole and 64 of them
# are cached, so its size bounds the cache: 4 MiB entries (four times the real ones) are 256 MiB.
MAX_ZLIB_ENTRY_SIZE = 4 << 20


# struct df_s390_dump_segm_hdr, 4096 bytes in front of every segment's data (hot: struct)
SEGMENT_FORMAT = ">QQQI20xI"    # start, len, stop_marker, size_on_disk, reserved_pad, entry_count
SEGMENT_ENTRIES = 0x34          # entry_offset[entry_count], u32 each

# zipl boot info (struct boot_info), on disks prepared with zipl -d
BootInfo = Struct(
    "magic" / Bytes(4),             # "zIPL"
    "version" / Int8ub,             # 1
    "bp_type" / Int8ub,             # 1 = dump
    "dev_type" / Int8ub,            # 0 = ECKD, 1 = FBA, 2 = SCSI
    "flags" / Int8ub,               # 0x01 = s390x
    "param" / Bytes(16),            # eckd_dump_param or fba_dump_param
)
EckdDumpParam = Struct(
    "blk_start" / Int32ub,          # first 4 KiB block of the dump partition
    "blk_end" / Int32ub,            # last block of the dump partition
    "blk_size" / Int16ub,           # 4096
    "num_heads" / Int8ub,
    "bpt" / Int8ub,                 # blocks per track
)
FbaDumpParam = Struct(
    "res1" / Int32ub,
    "blk_start" / Int32ub,          # first 512-byte block of the dump partition
    "res2" / Int32ub,
    "blk_end" / Int32ub,            # last block usable by the dump
)
BOOT_INFO_ECKD_CDL = 0x1000 + 92    # block 1 (IPL2): stage 1, boot info in its last 40 bytes
BOOT_INFO_BLOCK0 = 0x70             # ECKD LDL and FBA: after stage 0 (and stage 1 on LDL)
BP_TYPE_DUMP, DEV_ECKD, DEV_FBA = 1, 0, 1
DUMPER_MAGICS = (b"XECKD64", b"XDFBA64", b"XMULT64", b"ZECKD64", b"ZDFBA64")
DUMPER_BLOCK = 3                    # the ECKD (and multi-volume) dump tool starts at device block 3
FBA_DUMPER_SIZE = 0x3000            # the FBA dump tool: the last 0x3000 bytes of the disk
ECKD_DUMPER_SIZES = {2: 0x8000}     # by version byte; 0x3000 for the others

# struct stage2dump_parm_tail: the last 16 bytes of a dump tool image
DumperTail = Struct(
    Padding(6),
    "no_compress" / Int8ub,         # irrelevant for the DASD tools: they never compress
    "mvdump_force" / Int8ub,        # 1: zipl --force, the dumper skips the signature check
    "mem_upper_limit" / Int64ub,    # dump size limit, all ones = none
)


def size_limit(tail) -> str:
    """A dump tool's size limit, as zgetdump -d says it."""
    limit = tail.mem_upper_limit
    return "none" if limit == (1 << 64) - 1 else f"{limit >> 20} MB"


def detect(probe: Source | Probe) -> bool:
    """A dump header at byte 0, a disk with a zipl dump record, or an unused dump partition."""
    return _has_header(probe) or _device_layout(probe) is not None or \
        _empty_dump_partition(probe) is not None


def _has_header(source: Source | Probe, offset: int = 0) -> bool:
    head = source.read(offset, 8)
    return len(head) == 8 and struct.unpack(">Q", head)[0] in (MAGIC_S390, MAGIC_S390_EXT)


# -- where the dump is ----------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    base: int               # source offset of the dump header
    description: str        # for `info` and error messages


def _boot_info(source: Source, offset: int):
    raw = source.read(offset, BootInfo.sizeof())
    if len(raw) < BootInfo.sizeof():
        return None
    info = BootInfo.parse(raw)
    if info.magic != b"zIPL" or info.bp_type != BP_TYPE_DUMP or info.dev_type not in (DEV_ECKD, DEV_FBA):
        return None
    return info


def _device_layout(source: Source) -> Layout | None:
    """A whole DASD (or its image) with a zipl dump record: where its dump partition starts."""
    if source.read(0, 4) == b"\x7fELF":
        return None
    info = _boot_info(source, BOOT_INFO_ECKD_CDL)
    if info is not None and info.dev_type == DEV_ECKD:
        param = EckdDumpParam.parse(info.param)
        if param.blk_size in (512, 1024, 2048, 4096) and param.blk_start:
            return Layout(param.blk_start * param.blk_size,
                          f"ECKD CDL disk, dump partition at block {param.blk_start}")
    info = _boot_info(source, BOOT_INFO_BLOCK0)
    if info is not None and info.dev_type == DEV_ECKD:
        param = EckdDumpParam.parse(info.param)
        if param.blk_size in (512, 1024, 2048, 4096):
            start = param.blk_start or 3
            return Layout(start * param.blk_size, f"ECKD LDL disk, dump partition at block {start}")
    if info is not None and info.dev_type == DEV_FBA:
        param = FbaDumpParam.parse(info.param)
        if param.blk_start:
            return Layout(param.blk_start * 512,
                          f"FBA disk, dump partition at 512-byte block {param.blk_start}")
    return None


def _empty_dump_partition(source: Source) -> str | None:
    """What a prepared but unused dump partition looks like at its start, if it does."""
    head = source.read(0, 0x208)
    if head[:7] in DUMPER_MAGICS:
        return f"the dump tool {head[:7].decode()} v{head[7]} is at its start (LDL: a dump overwrites it)"
    if len(head) == 0x208 and not any(head[:0x200]) and \
            struct.unpack_from(">Q", head, 0x200)[0] == MAGIC_S390_EXT:
        return "prepared for a multi-volume dump (zipl -M), no dump written yet"
    return None


def _dump_tool(source: Source, layout: Layout) -> str | None:
    """The dump tool's name and version, where the layout keeps it."""
    for offset in (3 * 4096, source.size - 0x3000):
        head = source.read(offset, 8) if offset >= 0 else b""
        if head[:7] in DUMPER_MAGICS and offset != layout.base:
            return f"{head[:7].decode()} v{head[7]}"
    return None


PAGE = 4096                 # a page cut by the end of the source is missing as a whole


# -- segments of s390_ext -------------------------------------------------------------------

@dataclass
class Segment:
    number: int
    start: int              # absolute address of the first byte
    length: int             # memory bytes in the segment
    data: int               # source offset of its data (after the segment header)
    stored: int             # bytes of data the source really holds (less if cut off)
    size_on_disk: int       # bytes on disk if compressed, else 0
    entries: tuple[int, ...] = ()
    source: Source | None = None    # where its data is (a multi-volume dump's volume); None: the dump's

    @property
    def end(self) -> int:
        return self.start + self.length


class S390Dump:
    """Reads one single-volume dump: header, segments, end marker, memory, save areas.

    `flat=True` reads a header with the extended magic as one flat image, as
    the tape dumper writes it (tape.md §1.2).  Subclasses: multi-volume DASD
    (backends/s390mv.py) walks the segments over several volumes.
    """

    multi_volume = False        # True: headers with mvdump/volnr are expected
    end_source: Source | None = None    # where the end marker is, if not on `source`

    def __init__(self, source: Source, layout: Layout, *, flat: bool = False):
        self.source = source
        self.base = layout.base
        self.layout = layout
        self.problems: list[Problem] = []
        self.block_size = block_size(source)
        self.cache = PageCache(capacity=64)     # decoded 1 MiB zlib entries
        self._decoding: dict[tuple[int, int], threading.Event] = {}    # entries being decoded
        self._decoding_lock = threading.Lock()
        self._flat: list[tuple[Segment, int]] | None = None    # every zlib-segment entry, in order
        self._flat_base: dict[int, int] = {}       # segment number -> flat number of its entry 0
        self._read_ahead: ReadAhead | None = None
        raw = source.read(self.base, HEADER_SIZE)
        if len(raw) < HEADER_SIZE:
            raise DamagedDump(f"{source.name}: truncated: the s390 dump header at {self.base:#x} "
                              f"needs 4096 bytes, the source ends at {source.size:#x}")
        self.hdr = hdr = DumpHeader.parse(raw)
        self.extended = hdr.magic == MAGIC_S390_EXT and not flat
        where = f"{source.name}: s390 dump header" + (f" at {self.base:#x}" if self.base else "")
        # plain headers before version 5 have no cpu_cnt/lc_vec, before version 2 no arch
        self.legacy = hdr.magic != MAGIC_S390_EXT and hdr.version < 5
        self.cpu_cnt = 0 if self.legacy else hdr.cpu_cnt
        # the removed non-extended multi-volume dumper (ZMULT64): ...FD magic and signature
        self.legacy_mv = not self.extended and hdr.mvdump_sign == MAGIC_S390
        if self.legacy and hdr.version < 2 and hdr.arch == 0:
            pass                        # not recorded yet: the s390x reader is the only one left
        elif hdr.arch != ARCH_S390X:
            raise Unsupported(f"{where}: arch {hdr.arch} "
                              f"({'31-bit s390' if hdr.arch == 1 else 'unknown'}); only s390x (2) is supported")
        if hdr.build_arch not in (0, ARCH_S390X):
            raise Unsupported(f"{where}: build_arch {hdr.build_arch} is not s390x")
        if self.cpu_cnt > CPU_MAX:
            raise DamagedDump(f"{where}: cpu_cnt {hdr.cpu_cnt} exceeds the {CPU_MAX} lc_vec entries")
        if hdr.mem_size == 0 or hdr.mem_size > MAX_MEM_SIZE:
            raise DamagedDump(f"{where}: mem_size {hdr.mem_size:#x} is absurd")
        if hdr.zlib_entry_size > MAX_ZLIB_ENTRY_SIZE:
            raise DamagedDump(f"{where}: zlib_entry_size {hdr.zlib_entry_size:#x} is more than "
                              f"{MAX_ZLIB_ENTRY_SIZE:#x}")
        if hdr.zlib_version_s390 and hdr.version != 2:
            raise DamagedDump(f"{where}: zlib_version_s390 {hdr.zlib_version_s390} "
                              f"with header version {hdr.version} (only version 2 compresses)")
        if self.legacy_mv and hdr.volnr:
            raise MissingPart(f"{where}: volume {hdr.volnr} of a non-extended multi-volume dump "
                              f"(ZMULT64); its memory slice starts where volume {hdr.volnr - 1}'s "
                              f"ends, so it cannot be read alone: open volume 0")
        if not self.legacy_mv and not self.multi_volume and (hdr.mvdump or (hdr.mvdump_sign == MAGIC_S390_EXT and hdr.volnr)):
            raise MissingPart(f"{where}: volume {hdr.volnr} of a multi-volume dump; "
                              f"open the whole multi-volume set instead")
        self.mem_size = hdr.mem_size
        self.segments: list[Segment] = []
        if self.extended:
            end_marker_offset = self._walk_segments()
        else:
            end_marker_offset = self.base + HEADER_SIZE + self.mem_size
            stored = max(0, min(self.mem_size, source.size - self.base - HEADER_SIZE))
            if stored < self.mem_size:
                stored -= stored % PAGE     # a page only partly in the file is missing, not half-served
            if stored < self.mem_size and self.legacy_mv:
                self.problems.append(Problem(f"memory {stored:#x}-{self.mem_size:#x} is missing: it is on "
                                             f"the other volumes of the non-extended multi-volume dump"))
                end_marker_offset = None
            elif stored < self.mem_size:
                self.problems.append(Problem(f"memory {stored:#x}-{self.mem_size:#x} is missing: "
                                             f"the source ends at {source.size:#x}"))
                end_marker_offset = None
            self.segments.append(Segment(0, 0, self.mem_size, self.base + HEADER_SIZE, stored, 0))
        self.end_tod = self._check_end_marker(end_marker_offset)

    def _walk_segments(self) -> int | None:
        """Reads every segment header; returns where the end marker should be, None if nowhere."""
        end, stopped = self.walk_segments(self.source, self.base + HEADER_SIZE)
        return end if stopped else None

    def walk_segments(self, source: Source, offset: int, limit: int | None = None) -> tuple[int | None, bool]:
        """Segment headers from `offset` on; returns (offset after the last one, stop marker seen).

        None: a problem ended the walk (recorded in `problems`).  No header
        starts at or past `limit` (a multi-volume partition's last usable
        block).  Each step moves on by at least one 4 KiB header, and a
        header that is empty, out of order or past the source stops the
        walk: no hang on zeros or stale data after an interrupted dump.
        """
        hdr = self.hdr
        previous_end = self.segments[-1].end if self.segments else 0
        for _ in range(source.size // SEGMENT_HEADER_SIZE + 1):
            if limit is not None and offset >= limit:
                return offset, False
            number = len(self.segments)
            raw = source.read(offset, SEGMENT_HEADER_SIZE)
            what = f"segment header #{number} at {offset:#x}" + \
                (f" of {source.name}" if source is not self.source else "")
            if len(raw) < SEGMENT_HEADER_SIZE:
                self.problems.append(Problem(f"{what} is missing: the source ends at {source.size:#x}"))
                return None, False
            start, length, stop_marker, size_on_disk, entry_count = struct.unpack_from(SEGMENT_FORMAT, raw)
            data = offset + SEGMENT_HEADER_SIZE
            if length == 0:
                if stop_marker:         # the dumper's empty last segment: no data
                    return data, True
                self.problems.append(Problem(f"{what} is empty and not the last one: "
                                             f"the dump was interrupted"))
                return None, False
            if start + length > self.mem_size:
                self.problems.append(Problem(f"{what}: memory {start:#x}-{start + length:#x} lies past "
                                             f"mem_size {self.mem_size:#x}; the segments end here"))
                return None, False
            entries: tuple[int, ...] = ()
            if size_on_disk:
                unit = hdr.zlib_entry_size
                if hdr.version != 2 or not unit:
                    self.problems.append(Problem(f"{what}: compressed, but the header (version "
                                                 f"{hdr.version}, zlib_entry_size {unit}) allows no "
                                                 f"compression"))
                    return None, False
                if entry_count != -(-length // unit) or entry_count > ENTRY_MAX:
                    self.problems.append(Problem(f"{what}: entry_count {entry_count} does not fit "
                                                 f"{length:#x} bytes in {unit:#x}-byte entries"))
                    return None, False
                entries = struct.unpack_from(f">{entry_count}I", raw, SEGMENT_ENTRIES)
                on_disk = size_on_disk * self.block_size
            else:
                on_disk = length
            stored = max(0, min(on_disk, source.size - data))
            if start < previous_end:
                self.problems.append(Problem(f"{what}: memory {start:#x}-{start + length:#x} overlaps the "
                                             f"previous segment (ends {previous_end:#x}); its overlapping "
                                             f"part is ignored"))
            segment = Segment(number, start, length, data, stored, on_disk if size_on_disk else 0,
                              entries, None if source is self.source else source)
            self.segments.append(segment)
            previous_end = max(previous_end, start + length)
            if stored < on_disk:
                self.problems.append(Problem(f"{what}: memory {start:#x}-{start + length:#x} is cut off: "
                                             f"{on_disk:#x} bytes of data, the source ends after "
                                             f"{stored:#x}"))
                return None, False
            offset = data + on_disk
            if stop_marker:
                return offset, True
        self.problems.append(Problem("more segment headers than the source can hold"))
        return None, False

    def _check_end_marker(self, offset: int | None) -> int | None:
        if offset is None:
            self.problems.append(Problem("no end marker: the dump was interrupted"
                                         if self.extended or not self.problems else
                                         "no end marker: the source ends before it"))
            return None
        source = self.end_source or self.source
        raw = source.read(offset, EndMarker.sizeof())
        if len(raw) < EndMarker.sizeof():
            self.problems.append(Problem(f"no end marker at {offset:#x}: "
                                         f"the source ends at {source.size:#x}"))
            return None
        marker = EndMarker.parse(raw)
        if marker.str != END_MARKER_MAGIC:
            self.problems.append(Problem(f"no end marker at {offset:#x} (found {raw[:8].hex(' ')}): "
                                         f"the dump was interrupted"))
            return None
        if marker.tod < self.hdr.tod:
            self.problems.append(Problem(f"end marker at {offset:#x} is older than the header "
                                         f"(tod {marker.tod:#x} < {self.hdr.tod:#x})"))
            return None
        return marker.tod

    # -- memory ---------------------------------------------------------------------------

    def chunks(self) -> list[MemoryChunk]:
        """Segments as chunks; gaps between them are zero (omitted), after an interruption unknown."""
        chunks: list[MemoryChunk] = []
        covered = 0
        for segment in self.segments:
            start = max(segment.start, covered)
            if start >= segment.end:
                continue
            if start > covered:
                chunks.append(MemoryChunk(covered, start - covered, PageState.ZERO))
            skip = start - segment.start
            present = self._present(segment)
            if present > skip:
                chunks.append(MemoryChunk(start, present - skip, PageState.PRESENT,
                                          self._reader(segment, skip)))
            if present < segment.length:
                chunks.append(MemoryChunk(segment.start + max(present, skip),
                                          segment.length - max(present, skip), PageState.MISSING))
            covered = segment.end
        if covered < self.mem_size:
            state = PageState.ZERO if self.end_tod is not None else PageState.MISSING
            chunks.append(MemoryChunk(covered, self.mem_size - covered, state))
        return chunks

    def _present(self, segment: Segment) -> int:
        """Memory bytes of the segment whose data the source holds."""
        if not segment.size_on_disk:
            if segment.stored < segment.length:
                return segment.stored - segment.stored % PAGE   # only whole pages of a cut segment
            return segment.stored
        ends = [(e & ~ENTRY_UNCOMPRESSED) * self.block_size for e in segment.entries[1:]]
        ends.append(segment.size_on_disk)
        complete = 0
        while complete < len(ends) and ends[complete] <= segment.stored:
            complete += 1
        return min(segment.length, complete * self.hdr.zlib_entry_size)

    def _reader(self, segment: Segment, skip: int):
        if not segment.size_on_disk:
            read, data = (segment.source or self.source).read, segment.data + skip

            def read_raw(offset: int, length: int) -> bytes:
                got = read(data + offset, length)
                if len(got) < length:
                    raise MemoryUnavailable(segment.start + skip + offset + len(got),
                                            "the source ends inside the segment")
                return got
            return read_raw

        def read_zlib(offset: int, length: int) -> bytes:
            return self._read_entries(segment, skip + offset, length)
        return read_zlib

    def _read_entries(self, segment: Segment, offset: int, length: int) -> bytes:
        unit = self.hdr.zlib_entry_size
        read_ahead = self._read_ahead or self._start_read_ahead()
        base = self._flat_base[segment.number] * unit
        read_ahead.note(base + offset, base + offset + length)
        parts = []
        while length > 0:
            index, inner = divmod(offset, unit)
            entry = self._entry(segment, index)
            part = entry if inner == 0 and length >= len(entry) else entry[inner:inner + length]
            parts.append(part)
            offset += len(part)
            length -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _start_read_ahead(self) -> ReadAhead:
        """Number the entries of every zlib segment one after another (the order a sequential
        reader meets them) and decode ahead of sequential reads on every CPU."""
        with self._decoding_lock:
            if self._read_ahead is None:
                flat = []
                for segment in self.segments:
                    if segment.size_on_disk:
                        self._flat_base[segment.number] = len(flat)
                        flat.extend((segment, index) for index in range(len(segment.entries)))
                self._flat = flat
                unit = self.hdr.zlib_entry_size
                self._read_ahead = ReadAhead(self._fetch, unit, max(2, READ_AHEAD_BYTES // unit),
                                             len(flat), "s390-zlib")
        return self._read_ahead

    def _fetch(self, number: int) -> None:
        segment, index = self._flat[number]
        if self.cache.get((segment.number, index)) is None:
            self._entry_if_possible(segment, index)

    def close(self) -> None:
        """Stop the read-ahead threads; closing the dump does (the reader is one of its resources)."""
        if self._read_ahead is not None:
            self._read_ahead.close()

    def _entry_if_possible(self, segment: Segment, index: int) -> None:
        try:
            self._entry(segment, index)
        except MemoryUnavailable:
            pass        # the reader asking for it later gets the error

    def _entry(self, segment: Segment, index: int) -> bytes:
        """One decoded entry, decoded once: a request for an entry another thread is decoding
        (FUSE readahead sends neighbouring requests in parallel) waits for that decode."""
        key = (segment.number, index)
        while True:
            data = self.cache.get(key)
            if data is not None:
                return data
            may_wait("decoding a zlib entry")
            with self._decoding_lock:
                data = self.cache.get(key)      # cached between the check above and the lock
                if data is not None:
                    return data
                event = self._decoding.get(key)
                owner = event is None
                if owner:
                    event = self._decoding[key] = threading.Event()
            if not owner:
                event.wait()
                continue            # cached now; or the decode failed: try (and fail) here too
            try:
                data = self._decode_entry(segment, index, key)
            finally:
                with self._decoding_lock:
                    del self._decoding[key]
                event.set()
            return data

    def _decode_entry(self, segment: Segment, index: int, key) -> bytes:
        unit = self.hdr.zlib_entry_size
        address = segment.start + index * unit
        size = min(unit, segment.length - index * unit)
        value = segment.entries[index]
        start = (value & ~ENTRY_UNCOMPRESSED) * self.block_size
        if index + 1 < len(segment.entries):
            limit = (segment.entries[index + 1] & ~ENTRY_UNCOMPRESSED) * self.block_size
        else:
            limit = segment.size_on_disk
        if value & ENTRY_UNCOMPRESSED:
            limit = start + size
        if not start < limit <= segment.stored:
            raise MemoryUnavailable(address, f"zlib entry {index} of segment #{segment.number} "
                                             f"has a bad offset {value:#x}")
        raw = (segment.source or self.source).read(segment.data + start, min(limit - start, size + 0x10000))
        if value & ENTRY_UNCOMPRESSED:
            data = raw
        else:
            try:
                data = inflate_prefix(raw, size)
            except zlib.error as e:
                raise MemoryUnavailable(address, f"zlib entry {index} of segment "
                                                 f"#{segment.number} is corrupt: {e}") from None
        if len(data) != size:
            raise MemoryUnavailable(address, f"entry {index} of segment #{segment.number} holds "
                                             f"{len(data):#x} of {size:#x} bytes")
        self.cache.put(key, data)
        return data

    # -- CPUs -----------------------------------------------------------------------------

    def cpus(self, memory: Memory) -> dict[int, Cpu]:
        """Registers from each CPU's save area; numbered in lc_vec order."""
        return cpus_from_lowcores(memory, self.hdr.lc_vec[:self.cpu_cnt], self.mem_size, self.problems)

    # -- metadata -------------------------------------------------------------------------

    def meta(self) -> DumpMeta:
        hdr = self.hdr
        details: dict[str, object] = {"version": hdr.version}
        if self.base or self.layout.description != "image":
            details["layout"] = self.layout.description
            tool = _dump_tool(self.source, self.layout)
            if tool:
                details["dump tool"] = tool
        if self.end_tod is not None and tod_to_datetime(self.end_tod):
            details["dump ended"] = tod_to_datetime(self.end_tod).isoformat()
        details["dump_end_tod"] = self.end_tod
        if hdr.cpu_id:
            details["cpu_id"] = hdr.cpu_id
        details["mem_size"] = hdr.mem_size
        if self.legacy:
            details["legacy header"] = f"version {hdr.version} (before 5): no CPU information"
        else:
            details["real_cpu_cnt"] = hdr.real_cpu_cnt
            details["lc_vec"] = [f"{p:#x}" for p in hdr.lc_vec[:self.cpu_cnt]]
        if not self.legacy or hdr.version >= 3:
            details["mem_size_real"] = hdr.mem_size_real
        details["build_arch"] = hdr.build_arch
        if self.legacy_mv:
            details["multi-volume"] = "non-extended (ZMULT64), volume 0 of the set"
        compression = None
        if self.extended:
            details["dump file size"] = sum(s.size_on_disk or s.length for s in self.segments)
            details["segments"] = len(self.segments)
            details["block size"] = self.block_size
            if any(s.size_on_disk for s in self.segments):
                compression = "zlib"
            if hdr.zlib_version_s390:
                details["zlib_entry_size"] = hdr.zlib_entry_size
        if self.legacy_mv:
            writer = "non-extended multi-volume dump tool (ZMULT64)"
        elif self.legacy:
            writer = "old stand-alone dump tool"
        elif self.extended or hdr.build_arch:
            writer = "stand-alone dump tool"
        else:
            writer = "zgetdump -f s390 (or an old stand-alone dump tool)"
        return DumpMeta(format="s390_ext" if self.extended else "s390", writer=writer,
                        dump_time=tod_to_datetime(hdr.tod),
                        dump_level=None, compression=compression, details=details,
                        problems=self.problems)


def cpus_from_lowcores(memory: Memory, prefixes, mem_size: int, problems: list[Problem]) -> dict[int, Cpu]:
    """Registers from each CPU's prefix page (s390, s390_ext, tape, LKCD); CPU i is prefixes[i].

    The memory-image formats have no reliable CPU address (lowcore 0x84 is the
    external-interrupt CPU address, not the CPU's own), so CPU i is the i-th
    lc_vec entry, like zgetdump's pr_pid i + 1.
    """
    cpus = {}
    for number, prefix in enumerate(prefixes):
        try:
            if prefix + s390x.LOWCORE_SIZE > mem_size:
                raise MemoryUnavailable(prefix, f"lies past mem_size {mem_size:#x}")
            save_area = memory.read_physical(prefix + s390x.SAVE_AREA_OFFSET, s390x.SAVE_AREA_SIZE)
            pointer = struct.unpack(">Q", memory.read_physical(
                prefix + s390x.LOWCORE_VECTOR_SAVE_AREA, 8))[0]
        except MemoryUnavailable as e:
            problems.append(Problem(f"CPU {number}: prefix page {prefix:#x} unreadable ({e.reason}); "
                                    f"no registers"))
            cpus[number] = Cpu(number, {"prefix": prefix})
            continue
        vector = None
        if s390x.has_vector_save_area(pointer):
            try:
                vector = memory.read_physical(pointer, s390x.VECTOR_SAVE_AREA_SIZE)
            except MemoryUnavailable as e:
                problems.append(Problem(f"CPU {number}: vector save area {pointer:#x} "
                                        f"unreadable ({e.reason})"))
        registers = s390x.registers_from_save_area(save_area, vector)
        cpus[number] = Cpu(number, registers, s390x.notes_from_registers(registers, number))
    return cpus


def check(source: Source) -> Report | None:
    """`dumpfs check` of a disk with the single-volume ECKD or FBA dump tool (zgetdump's
    dt_s390sv): its settings and the dump; None for any other source."""
    bs = block_size(source)
    eckd = source.read(DUMPER_BLOCK * bs, 8)
    fba = source.read(source.size - FBA_DUMPER_SIZE, 8) if source.size > FBA_DUMPER_SIZE else b""
    if eckd[:7] == b"XECKD64":
        version, end = eckd[7], DUMPER_BLOCK * bs + ECKD_DUMPER_SIZES.get(eckd[7], 0x3000)
    elif fba[:7] == b"XDFBA64":
        version, end = fba[7], source.size
    else:
        return None
    tail = DumperTail.parse(source.read(end - DumperTail.sizeof(), DumperTail.sizeof()))
    report = Report.for_tool("Single-volume DASD dump tool (extended)", version,
                             f"DASD type.........: {'ECKD' if eckd[:7] == b'XECKD64' else 'FBA'}",
                             f"Dump size limit...: {size_limit(tail)}")
    report.dump_from(lambda: open(source))
    return report


def open(source: Source) -> Dump:
    layout = Layout(0, "image")
    if not _has_header(source):
        empty = _empty_dump_partition(source)
        if empty:
            raise NoDump(f"no dump on {source.name}: {empty}")
        layout = _device_layout(source)
        if layout is None:
            raise NoDump(f"{source.name}: not an s390 dump")
        if not _has_header(source, layout.base):
            head = source.read(layout.base, 8)
            tool = _dump_tool(source, layout)
            if head[:7] in DUMPER_MAGICS:
                state = f"starts with the dump tool {head[:7].decode()} v{head[7]} (LDL: a dump overwrites it)"
            elif not any(source.read(layout.base, 0x1000)):
                state = "holds zeros"
            else:
                state = f"starts with {head.hex(' ')}, not a dump header"
            raise NoDump(f"no dump on {source.name}: {layout.description}"
                         f"{f' with dump tool {tool}' if tool else ''}; the partition {state}")
    reader = S390Dump(source, layout)
    memory = Memory(reader.chunks)
    cpus = reader.cpus(memory)
    return Dump(arch=s390x.ARCH, page_size=4096, memory=memory, cpus=cpus, meta=reader.meta(),
                resources=[reader])


def open_partition(partition: Source, disk: Source, start: int) -> Dump | None:
    """The partition device at byte `start` of `disk`, if the disk's zipl dump record names it
    as the dump partition (else None): its dump, or NoDump saying what the partition holds."""
    layout = _device_layout(disk)
    if layout is None or layout.base != start:
        return None
    if detect(partition):
        return open(partition)
    tool = _dump_tool(disk, layout)
    head = partition.read(0, 8)
    state = "holds zeros" if not any(partition.read(0, 0x1000)) else \
        f"starts with {head.hex(' ')}, not a dump header"
    raise NoDump(f"no dump on {partition.name}: the dump partition of {disk.name} "
                 f"({layout.description}{f', dump tool {tool}' if tool else ''}); the partition {state}")
