"""IBM Z tape dumps (`s390tape`): a tape device, a plain image of its blocks, or an AWSTAPE file.

`zipl -d /dev/ntibm0` writes the dump tool as the tape's first block (0x3000
bytes) and the dumper writes, as tape file 2, the 4 KiB dump header, memory
in 32 KiB blocks (address A in block 1 + A // 32768) and the 16-byte end
marker, between tapemarks (tape.md §1).  Concatenated, file 2 is the flat
s390 layout, but with the extended magic (...FE).

* A plain image (file or block device: the blocks concatenated, with or
  without the dump tool block in front) is read in place.
* A tape device and an AWSTAPE file (each block behind a 6-byte header:
  length, previous length, flags; tapemarks are headers of length 0) are
  read once, sequentially, into a cache file in the plain layout under
  $DUMPFS_CACHE_DIR, else $XDG_CACHE_HOME/dumpfs/tape, else
  ~/.cache/dumpfs/tape, keyed by the input's identity; all later reads are
  random access on that file.  A tape that ends early leaves what it had:
  the rest of memory is MISSING.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import json
import os
import stat
import struct
import sys

from construct import Int8ub, Int16ul, Struct

from dumpfs.arch import s390x
from dumpfs.cache import cache_dir
from dumpfs.errors import DamagedDump, MissingPart, NoDump, Problem
from dumpfs.model import Dump, Memory
from dumpfs.source import FileSource, Source

from . import s390
from dumpfs.s390dump import HEADER_SIZE, MAGIC_S390, MAGIC_S390_EXT, DumpHeader

from .probe import Probe
from .s390 import Layout

TAPE_BLOCK = 32768                      # memory bytes per tape block
TOOL_SIZE = 0x3000                      # the tape dump tool: one block, file 1
TOOL_HEAD = struct.pack(">QQ", 0x0008000080002018,     # IPL PSW: entry 0x2018
                        0x0700000060000001)            # CCW: REWIND, CC+SLI, count 1
END_MARKER = b"DUMP_END"
END_OF_VOLUME = b"ENDOFVOL"             # legacy multi-cartridge dumps: more on the next cartridge
MIB = 1 << 20
# The longest block a tape dump has is 32 KiB of memory (the header 4 KiB, the tool 12 KiB);
# tape drives read at most 256 KiB in one block.  An AWSTAPE block longer than that has lost
# its end-of-record flag: its pieces would otherwise pile up to the size of the file.
MAX_BLOCK = 256 << 10

# AWSTAPE block header (Hercules, P/390), little-endian, in front of every block segment
AwsHeader = Struct(
    "curblkl" / Int16ul,            # length of this block segment, 0 for a tapemark
    "prvblkl" / Int16ul,            # length of the previous block segment
    "flags1" / Int8ub,              # 0x80 new record, 0x40 tapemark, 0x20 end of record
    "flags2" / Int8ub,              # 0 (compression flags in HET files)
)
AWS_NEWREC, AWS_TAPEMARK, AWS_ENDREC = 0x80, 0x40, 0x20

# Linux tape ioctls (linux/mtio.h, 64-bit)
MTIOCTOP = 0x40086D01                   # struct mtop { short mt_op; int mt_count; }
MTIOCGET = 0x80306D02                   # struct mtget, 48 bytes
MTIOCPOS = 0x80086D03                   # struct mtpos { long mt_blkno; }
MTSEEK = 22


# -- detection --------------------------------------------------------------------------------

def _dump_header_at(source: Source, offset: int):
    raw = source.read(offset, HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        return None
    hdr = DumpHeader.parse(raw)
    if hdr.magic not in (MAGIC_S390, MAGIC_S390_EXT) or hdr.mvdump or hdr.volnr:
        return None
    return hdr


def _plausible_segment(raw: bytes, mem_size: int) -> bool:
    """Could these bytes be s390_ext's first segment header (rather than memory at address 0)?"""
    if len(raw) < 0x34:
        return False
    start, length, stop_marker, _size, _count = struct.unpack_from(s390.SEGMENT_FORMAT, raw)
    return (start % MIB == 0 and 0 < length and start + length <= mem_size
            and stop_marker in (0, (1 << 64) - 1) and not any(raw[0x1C:0x30]))


def plain_base(source: Source) -> int | None:
    """Where the dump header of a plain tape image is (0, or behind the dump tool), else None."""
    base = TOOL_SIZE if source.read(0, 16) == TOOL_HEAD else 0
    hdr = _dump_header_at(source, base)
    if hdr is None or (hdr.magic == MAGIC_S390 and not base):
        return None                     # ...FD without the tool block: plain s390, not ours
    if base:
        return base
    end = source.read(base + HEADER_SIZE + hdr.mem_size, 8)
    if end in (END_MARKER, END_OF_VOLUME):
        return base                     # memory is flat: no segments
    if source.size - HEADER_SIZE < hdr.mem_size and \
            not _plausible_segment(source.read(HEADER_SIZE, 0x34), hdr.mem_size):
        return base                     # cut off, and address 0 is not a segment header
    return None


def is_aws(source: Source) -> bool:
    """An AWSTAPE file: a chain of consistent block headers, starting with the tape dump tool
    or a 4 KiB block (file 2 alone)."""
    offset, previous = 0, 0
    for n in range(3):
        raw = source.read(offset, 6)
        if len(raw) < 6:
            return n > 0
        h = AwsHeader.parse(raw)
        if h.prvblkl != previous or h.flags2 or h.flags1 & ~(AWS_NEWREC | AWS_TAPEMARK | AWS_ENDREC):
            return False
        if h.flags1 & AWS_TAPEMARK:
            if h.curblkl or n == 0:
                return False
        elif n == 0 and (h.curblkl != HEADER_SIZE and source.read(6, 16) != TOOL_HEAD):
            return False
        elif not h.curblkl:
            return False
        offset += 6 + h.curblkl
        previous = h.curblkl
    return True


def detect(probe: Source | Probe) -> bool:
    """An AWSTAPE file or a plain tape image (the end marker is in the probe's tail)."""
    return is_aws(probe) or plain_base(probe) is not None


# -- reading tape blocks sequentially -------------------------------------------------------

def aws_blocks(source: Source):
    """Blocks of an AWSTAPE file in order: bytes, or None for a tapemark."""
    offset, parts = 0, []
    while True:
        raw = source.read(offset, 6)
        if not raw:
            if parts:
                raise DamagedDump(f"the file ends inside a block at {offset:#x}")
            return
        if len(raw) < 6:
            raise DamagedDump(f"the file ends inside a block header at {offset:#x}")
        h = AwsHeader.parse(raw)
        if h.flags1 & AWS_TAPEMARK:
            offset += 6
            yield None
            continue
        data = source.read(offset + 6, h.curblkl)
        if len(data) < h.curblkl:
            raise DamagedDump(f"the file ends inside a block at {offset:#x} "
                              f"({len(data)} of {h.curblkl} bytes)")
        parts.append(data)
        if sum(map(len, parts)) > MAX_BLOCK:
            raise DamagedDump(f"AWSTAPE block at {offset:#x}: its pieces make more than {MAX_BLOCK} "
                              f"bytes without an end-of-record flag (flags1)")
        offset += 6 + h.curblkl
        if h.flags1 & AWS_ENDREC or not h.flags1:
            yield b"".join(parts)
            parts = []


def device_blocks(fd: int, limit: int = MAX_BLOCK):
    """Blocks from a tape character device: one read() is one block; 0 bytes is a tapemark."""
    while True:
        try:
            data = os.read(fd, limit)
        except OSError as e:
            raise DamagedDump(f"read error: {e.strerror}") from None
        yield data if data else None


def _progress(total: int, name: str):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc=f"reading tape {os.path.basename(name)}", leave=False)


def copy_to_cache(blocks, name: str, identity: str) -> tuple[str, dict]:
    """One pass over the tape's blocks: file 2 into the cache file (plain layout), and its index.

    Returns (cache path, facts): facts say how many memory bytes arrived, where
    the end marker is and what went wrong.  A complete cache is reused.
    """
    directory = str(cache_dir("tape"))
    os.makedirs(directory, exist_ok=True)
    key = hashlib.sha256(identity.encode()).hexdigest()[:32]
    path = os.path.join(directory, key + ".s390")
    meta_path = path + ".json"
    try:
        with builtins.open(meta_path) as f:
            facts = json.load(f)
        if facts.get("identity") == identity and os.path.getsize(path) == facts["size"]:
            return path, facts
    except (OSError, ValueError, KeyError):
        pass
    facts = {"identity": identity, "problems": [], "memory": 0, "end_marker": None,
             "tool": False, "blocks": 0}
    tmp = f"{path}.tmp{os.getpid()}"
    bar = None
    try:
        with builtins.open(tmp, "wb") as out:
            bar = _scan(blocks, out, facts, name)
            facts["size"] = out.tell()
        os.replace(tmp, path)
    finally:
        if bar is not None:
            bar.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    with builtins.open(meta_path + ".tmp", "w") as f:
        json.dump(facts, f)
    os.replace(meta_path + ".tmp", meta_path)
    return path, facts


def _scan(blocks, out, facts: dict, name: str):
    """Writes header, memory blocks and end marker of file 2; records the facts."""
    problems = facts["problems"]
    stream = iter(blocks)
    bar = None
    try:
        block = next(stream, None)
        if block is not None and block[:16] == TOOL_HEAD:
            facts["tool"] = True
            while block is not None:            # the rest of file 1, up to its tapemark
                block = next(stream, None)
            block = next(stream, None)
        if block is None or len(block) != HEADER_SIZE or \
                struct.unpack_from(">Q", block)[0] not in (MAGIC_S390, MAGIC_S390_EXT):
            raise NoDump(f"{name}: no dump on the tape: file 2 does not start with a "
                         f"4096-byte s390 dump header"
                         + (f" (found a {len(block)}-byte block)" if block else ""))
        out.write(block)
        hdr = DumpHeader.parse(block)
        bar = _progress(hdr.mem_size, name)
        while facts["memory"] < hdr.mem_size:
            block = next(stream, None)
            if block is None:
                problems.append(f"the tape file ends after {facts['memory']:#x} of {hdr.mem_size:#x} "
                                f"bytes of memory: the dump is truncated")
                return bar
            if block[:8] in (END_MARKER, END_OF_VOLUME) and len(block) in (8, 16):
                if block[:8] == END_OF_VOLUME:
                    problems.append(f"memory continues on another cartridge after {facts['memory']:#x} "
                                    f"(ENDOFVOL): multi-cartridge dumps are not supported")
                else:
                    problems.append(f"end marker after {facts['memory']:#x} of {hdr.mem_size:#x} "
                                    f"bytes of memory: the dump is truncated")
                return bar
            if len(block) != TAPE_BLOCK and facts["memory"] + len(block) != hdr.mem_size:
                problems.append(f"memory block {facts['blocks']} holds {len(block)} bytes, not "
                                f"{TAPE_BLOCK}: memory after {facts['memory']:#x} is not where "
                                f"the layout puts it")
                return bar
            out.write(block)
            facts["memory"] += len(block)
            facts["blocks"] += 1
            if bar is not None:
                bar.update(len(block))
        block = next(stream, None)
        if block is not None and block[:8] == END_MARKER and len(block) in (8, 16):
            facts["end_marker"] = out.tell()
            out.write(block.ljust(16, b"\0"))
        else:
            problems.append("no end marker after the memory: the dump was interrupted")
    except DamagedDump as e:     # the medium ended inside a block, or a read failed
        problems.append(f"{e}: the tape image is truncated")
    return bar


# -- the dump ---------------------------------------------------------------------------------

class TapeDump(s390.S390Dump):
    def meta(self):
        meta = super().meta()
        meta.format = "s390tape"
        meta.writer = "tape dump tool"
        return meta


def _open_flat(source: Source, base: int, description: str, problems=()) -> Dump:
    hdr = _dump_header_at(source, base)
    if hdr is None:
        raise DamagedDump(f"{source.name}: no s390 dump header at {base:#x}")
    reader = TapeDump(source, Layout(base, description), flat=True)
    for text in problems:           # the cache's facts keep them as text
        if Problem(text) not in reader.problems:
            reader.problems.insert(0, Problem(text))
    memory = Memory(reader.chunks)
    cpus = reader.cpus(memory)
    meta = reader.meta()
    meta.details["layout"] = description
    return Dump(arch=s390x.ARCH, page_size=4096, memory=memory, cpus=cpus, meta=meta, resources=[reader])


def _open_cache(path: str, facts: dict, name: str) -> Dump:
    cache = FileSource(path)
    cache.name = f"{name} (cached in {path})"
    try:
        dump = _open_flat(cache, 0, "tape file 2, cached", facts["problems"])
    except BaseException:
        cache.close()
        raise
    dump.resources.append(cache)
    dump.meta.details["cache"] = path
    return dump


def open(source: Source) -> Dump:
    if is_aws(source):
        identity = f"aws:{getattr(source, 'identity', source.name)}:{os.path.realpath(source.name)}"
        path, facts = copy_to_cache(aws_blocks(source), source.name, identity)
        dump = _open_cache(path, facts, source.name)
        dump.meta.details["container"] = "AWSTAPE"
        return dump
    base = plain_base(source)
    if base is None:
        raise NoDump(f"{source.name}: not a tape dump image")
    return _open_flat(source, base, "plain tape image" + (", dump tool block first" if base else ""))


def is_tape_device(path: str) -> bool:
    try:
        if not stat.S_ISCHR(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.ioctl(fd, MTIOCGET, bytes(48))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def open_device(path: str) -> Dump:
    """A tape character device (e.g. /dev/ntibm0), positioned at the dump tool or at file 2.

    Read once into the cache; the tape is put back where it was (MTSEEK), as
    zgetdump does.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise MissingPart(f"{path}: cannot open: {e.strerror}") from None
    try:
        return read_tape(fd, path)
    finally:
        os.close(fd)


def read_tape(fd: int, name: str) -> Dump:
    """The dump on an open tape: one read() is one block, an empty read a tapemark.

    The position ioctls are used where the device has them (a real drive) and
    skipped where it does not.
    """
    try:
        start = struct.unpack("l", fcntl.ioctl(fd, MTIOCPOS, bytes(8)))[0]
    except OSError:
        start = None
    rdev = os.fstat(fd).st_rdev
    blocks = device_blocks(fd)
    seen = []                       # up to the dump header: the tool block, its tapemark
    for block in blocks:
        seen.append(block)
        if block is not None and len(block) == HEADER_SIZE or len(seen) > 3:
            break
    head = seen[-1] if seen and seen[-1] is not None else b""
    identity = f"tape:{rdev}:{start}:{hashlib.sha256(head).hexdigest()}"

    def replay():
        yield from seen
        yield from blocks
    try:
        cache, facts = copy_to_cache(replay(), name, identity)
    finally:
        if start is not None:
            try:
                fcntl.ioctl(fd, MTIOCTOP, struct.pack("hi", MTSEEK, start))
            except OSError:
                pass
    dump = _open_cache(cache, facts, name)
    dump.sources.append(name)
    return dump
