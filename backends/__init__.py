"""Dump formats, detected by content in this order.

Each backend module has `NAME`, `detect(source) -> bool` (cheap: magic bytes)
and `open(source) -> Dump`.  Backends know about bytes and the model, never
about FUSE or views.
"""

from __future__ import annotations

import importlib

from dumpfs.compressed import open_compressed
from dumpfs.model import Dump, DumpError, PageState
from dumpfs.source import FileSource, Source

# Detection order: most specific magic first.
BACKENDS = [
    "flattened",   # makedumpfile flattened stream around a kdump or ELF file
    "kdump",       # kdump-compressed (makedumpfile, QEMU)
    "vmdump",      # z/VM VMDUMP spool file (vmur rec)
    "lkcd",        # LKCD v8 s390 (old zfcpdump files dump.N, vmconvert)
    "scsi",        # SCSI dump disk (zfcpdump): zipl MBR, superblock, ELF in the partition
    "s390mv",      # IBM Z multi-volume DASD dump (s390mv_ext): disk or member partition
    "tape",        # IBM Z tape dump: tape device, tape image, AWSTAPE
    "s390",        # IBM Z stand-alone dump (s390, s390_ext), image or DASD
    "ngdump",      # NGDump partition: ext4 with ngdump.meta and an ELF dump file
    "elf",         # ELF64 core (/proc/vmcore style)
]


def backend_modules():
    for name in BACKENDS:
        yield importlib.import_module(f"dumpfs.backends.{name}")


def open_source(source: Source) -> Dump:
    """Detect the format of `source` and open it; DumpError names what is wrong."""
    if source.size == 0:
        raise DumpError(f"{source.name}: empty file, not a dump")
    for module in backend_modules():
        if module.detect(source):
            dump = module.open(source)
            if source.name not in dump.sources:
                dump.sources.append(source.name)
            if source not in dump.resources:
                dump.resources.append(source)
            if getattr(source, "container", None):      # compressed-file hook (issue 11), to port
                dump.meta.details.setdefault("container", source.container)
            _complete_from_memory(dump)
            return dump
    head = source.read(0, 16)
    raise DumpError(f"{source.name}: unknown dump format (first bytes {head[:8].hex(' ')}); "
                    f"known formats: {', '.join(BACKENDS)}")


def _complete_from_memory(dump: Dump) -> None:
    """VMCOREINFO that the format lacks but the kernel keeps in memory (s390 lowcore)."""
    from dumpfs.kernel.vmcoreinfo import locate_vmcoreinfo

    dump.meta.details["vmcoreinfo"] = locate_vmcoreinfo(dump)
    if not dump.meta.kernel_release and dump.vmcoreinfo is not None:
        dump.meta.kernel_release = dump.vmcoreinfo.get("OSRELEASE")
    _name_missing_memory(dump)


MAX_MISSING_RANGES = 16


def _name_missing_memory(dump: Dump) -> None:
    """An incomplete dump's details name the address ranges it lacks ("missing memory").

    The problems say why (a volume, a segment, the end of a file); this says
    exactly which memory is unreadable because of it.  Complete dumps are not
    walked, so opening a big dump stays lazy.
    """
    if dump.meta.complete:
        return
    ranges: list[list[int]] = []
    for chunk in dump.memory:
        if chunk.state is not PageState.MISSING:
            continue
        if ranges and ranges[-1][1] == chunk.start:
            ranges[-1][1] = chunk.end
        else:
            ranges.append([chunk.start, chunk.end])
    if not ranges:
        return
    total = sum(end - start for start, end in ranges)
    shown = ", ".join(f"{start:#x}-{end:#x}" for start, end in ranges[:MAX_MISSING_RANGES])
    more = len(ranges) - MAX_MISSING_RANGES
    dump.meta.details["missing memory"] = (
        f"{shown}{f' and {more} more ranges (see memory/map)' if more > 0 else ''} "
        f"({total:,} bytes in {len(ranges)} range{'s' if len(ranges) > 1 else ''})")


def open_sources(sources: list[Source], *, partial: bool = False) -> list[Dump]:
    """Open several sources; the volumes of one multi-volume dump become one Dump.

    Dumps come in the order of their first source.  `partial`: open a
    multi-volume dump with volumes missing (their memory is MISSING).
    On failure every source is closed.
    """
    from dumpfs.backends import s390mv

    dumps: list[Dump] = []
    try:
        groups, rest = s390mv.group(sources)
        firsts = {id(g[0].source): g for g in groups}
        for source in sources:
            if id(source) in firsts:
                members = firsts[id(source)]
                search = any(m.source.is_block_device for m in members)
                dump = s390mv.open_members(members, search=search, partial=partial)
                _complete_from_memory(dump)
                dumps.append(dump)
            elif source in rest:
                dumps.append(open_source(source))
    except BaseException:
        for dump in dumps:
            dump.close()
        for source in sources:
            source.close()
        raise
    return dumps


def open_paths(paths: list[str], *, partial: bool = False) -> list[Dump]:
    """open_sources for paths given on the command line."""
    sources: list[Source] = []
    tapes: dict[str, Dump] = {}
    try:
        for path in paths:
            tape = _tape_device(path)
            if tape is not None:
                _complete_from_memory(tape)
                tapes[path] = tape
            else:
                sources.append(_look_inside(FileSource(path)))
    except BaseException:
        for source in sources:
            source.close()
        for dump in tapes.values():
            dump.close()
        raise
    dumps = open_sources(sources, partial=partial)
    if not tapes:
        return dumps
    by_first = {d.sources[0]: d for d in dumps if d.sources}
    ordered = [tapes[p] if p in tapes else by_first.get(p) for p in paths]
    return [d for d in ordered if d is not None]


def _tape_device(path: str) -> Dump | None:
    """A tape character device is no random-access Source: the tape backend reads it itself."""
    from dumpfs.backends import tape
    return tape.open_device(path) if tape.is_tape_device(path) else None


def _look_inside(source: FileSource) -> Source:
    """Compressed-file hook (issue 11), to port into detection: the bytes inside a compressed file."""
    try:
        return open_compressed(source) or source
    except BaseException:
        source.close()
        raise


def open_dump(path: str) -> Dump:
    dump = _tape_device(path)
    if dump is not None:
        _complete_from_memory(dump)
        return dump
    source = FileSource(path)
    try:
        source = _look_inside(source)
        return open_source(source)
    except BaseException:
        source.close()
        raise
