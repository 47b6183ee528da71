"""`dumpfs check DEVICE`: which dump tool a disk carries, and whether it holds a complete dump.

Like `zgetdump -d` (dasd-device-layout.md §8), each dump tool's backend checks
its own layout with `check(source) -> Report | None`, as zgetdump's dt_*
modules do, in this order: multi-volume DASD (s390mv: XMULT64 at block 3),
single-volume ECKD and FBA (s390: XECKD64 at block 3, XDFBA64 in the last
0x3000 bytes), SCSI (scsi: zIPL MBR, dump boot info, ZFCPDUMP superblock
with its checksum).  A partition is checked through its disk
(/sys/class/block/<dev>/..) when sysfs knows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from dumpfs.errors import DumpError, NoDump
from dumpfs.model import Dump
from dumpfs.source import FileSource, Source

from . import BY_NAME
from .sysblock import parent_disk

TOOLS = ("s390mv", "s390", "scsi")      # backends with a dump tool to check, in zgetdump's order


@dataclass
class Report:
    tool: str | None = None                     # e.g. "Multi-volume DASD dump tool (extended)"
    lines: list[str] = field(default_factory=list)
    dump: str = "no dump"                       # what is on it
    valid: bool = False                         # a valid, complete dump

    @classmethod
    def for_tool(cls, tool: str, version: int, *lines: str) -> Report:
        return cls(tool, [f"Version...........: {version}", "Architecture......: s390x (64 bit)", *lines])

    def dump_from(self, opener: Callable[[], Dump]) -> None:
        """What the dump the tool wrote is: opened, described, closed."""
        try:
            dump = opener()
        except NoDump:
            self.dump = "dump tool installed, no dump"
            return
        except DumpError as e:
            self.dump = str(e)
            return
        try:
            self.dump = _describe(dump)
            self.valid = dump.meta.complete
        finally:
            dump.close()

    def text(self, name: str) -> str:
        out = [f"{name}:", f"  Dump tool.........: {self.tool or 'none found'}"]
        out += [f"  {line}" for line in self.lines]
        out.append(f"  Dump..............: {self.dump}")
        return "\n".join(out) + "\n"


def _describe(dump: Dump) -> str:
    meta = dump.meta
    size = dump.memory.end >> 20
    when = f", created {meta.dump_time:%Y-%m-%d %H:%M:%S %Z}" if meta.dump_time else ""
    if meta.complete:
        return f"valid, complete {meta.format} dump: {size} MB, {len(dump.cpus)} CPUs{when}"
    return f"incomplete {meta.format} dump: " + "; ".join(str(problem) for problem in meta.problems)


def check_source(source: Source) -> Report:
    for name in TOOLS:
        report = BY_NAME[name].module().check(source)
        if report is not None:
            return report
    return Report()


def check(path: str) -> tuple[Report, str]:
    """The report for `path` and the name it is about (the disk, for a partition)."""
    source = FileSource(path)
    try:
        report = check_source(source)
        if report.tool is not None or not source.is_block_device:
            return report, path
        parent = parent_disk(source)
    finally:
        source.close()
    if parent is None:
        return report, path
    disk, start = parent
    with_disk, _ = check(disk)
    with_disk.lines.append(f"Partition.........: {path} starts at byte {start:#x} of {disk}")
    return with_disk, f"{path} (on {disk})"
