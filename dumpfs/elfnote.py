"""ELF notes: parse a note segment, build one, and sort notes into CPUs.

ELF vmcores carry notes in PT_NOTE; kdump-compressed files carry a copy of
the same bytes; the `vmcore` view writes them back.
"""

from __future__ import annotations

import struct

from dumpfs.arch import NT_PRPSINFO, NT_PRSTATUS, Arch
from dumpfs.errors import Problem
from dumpfs.limits import MAX_CPUS, MAX_NOTES, MAX_VMCOREINFO_BYTES
from dumpfs.model import Cpu, Note, VmcoreInfo

MAX_NOTE_NAME = 256


def _align4(n: int) -> int:
    return (n + 3) & ~3


def parse_notes(data: bytes, byteorder: str, problems: list[Problem] | None = None) -> list[Note]:
    """Every note in `data`; stops quietly at padding or a note that does not fit, and after
    MAX_NOTES notes (a Problem in `problems`)."""
    fmt = ("<" if byteorder == "little" else ">") + "III"
    notes = []
    pos = 0
    while pos + 12 <= len(data):
        if len(notes) == MAX_NOTES:
            if problems is not None:
                problems.append(Problem(f"more than {MAX_NOTES} ELF notes; the rest are ignored"))
            break
        namesz, descsz, ntype = struct.unpack_from(fmt, data, pos)
        if namesz == 0 or namesz > MAX_NOTE_NAME:
            break
        name_end = pos + 12 + namesz
        desc_start = pos + 12 + _align4(namesz)
        if desc_start + descsz > len(data):
            break
        name = data[pos + 12:name_end].rstrip(b"\0").decode("ascii", "replace")
        notes.append(Note(name, ntype, bytes(data[desc_start:desc_start + descsz])))
        pos = desc_start + _align4(descsz)
    return notes


def build_note(note: Note, byteorder: str) -> bytes:
    name = note.name.encode() + b"\0"
    header = struct.pack(("<" if byteorder == "little" else ">") + "III",
                         len(name), len(note.desc), note.type)
    return (header + name.ljust(_align4(len(name)), b"\0")
            + note.desc.ljust(_align4(len(note.desc)), b"\0"))


def is_vmcoreinfo(note: Note) -> bool:
    return note.name == "VMCOREINFO"


def sort_notes(arch: Arch, notes: list[Note], problems: list[Problem] | None = None
               ) -> tuple[dict[int, Cpu], list[Note], VmcoreInfo | None]:
    """Split notes into CPUs, dump-wide notes and VMCOREINFO.

    The k-th note of each (name, type) belongs to the k-th CPU: that holds both
    for the kernel's interleaved per-CPU groups and for QEMU, which writes all
    NT_PRSTATUS notes first and its own "QEMU" notes after them.  CPUs are
    numbered in note order, which is the kernel's CPU order.  A VMCOREINFO
    note over MAX_VMCOREINFO_BYTES and CPUs past MAX_CPUS are ignored, with a
    Problem in `problems`.
    """
    problems = problems if problems is not None else []
    vmcoreinfo = None
    dump_notes: list[Note] = []
    per_cpu: list[list[Note]] = []
    seen: dict[tuple[str, int], int] = {}
    for note in notes:
        if is_vmcoreinfo(note):
            if len(note.desc) > MAX_VMCOREINFO_BYTES:
                problems.append(Problem(f"VMCOREINFO note of {len(note.desc)} bytes is larger than "
                                        f"{MAX_VMCOREINFO_BYTES}; ignored"))
            else:
                vmcoreinfo = VmcoreInfo(note.desc)
            continue
        if note.type == NT_PRPSINFO and note.name == "CORE":
            dump_notes.append(note)
            continue
        index = seen.get((note.name, note.type), 0)
        seen[(note.name, note.type)] = index + 1
        if index >= MAX_CPUS:
            if index == MAX_CPUS:
                problems.append(Problem(f"more than {MAX_CPUS} CPUs' {note.name} notes of type "
                                        f"{note.type:#x}; CPUs past {MAX_CPUS} are ignored"))
            continue
        if note.type != NT_PRSTATUS and index >= len(per_cpu):
            dump_notes.append(note)     # more of these than CPUs: keep, but not per CPU
            continue
        while len(per_cpu) <= index:
            per_cpu.append([])
        per_cpu[index].append(note)
    cpus = {}
    for number, cpu_notes in enumerate(per_cpu):
        cpus[number] = Cpu(number, arch.decode_registers(cpu_notes), cpu_notes)
    return cpus, dump_notes, vmcoreinfo
