"""`cpus/<n>/registers` (one `name value` line each) and `cpus/<n>/notes/<TYPE>` raw payloads."""

from __future__ import annotations

from dumpfs.arch import NT_PRFPREG, NT_PRPSINFO, NT_PRSTATUS
from dumpfs.model import Cpu, Dump
from dumpfs.tree import Dir, File

NOTE_TYPE_NAMES = {
    ("CORE", NT_PRSTATUS): "NT_PRSTATUS",
    ("CORE", NT_PRFPREG): "NT_PRFPREG",
    ("CORE", NT_PRPSINFO): "NT_PRPSINFO",
    ("QEMU", 0): "QEMU",
}
S390_NOTE_NAMES = {
    0x300: "NT_S390_HIGH_GPRS", 0x301: "NT_S390_TIMER", 0x302: "NT_S390_TODCMP",
    0x303: "NT_S390_TODPREG", 0x304: "NT_S390_CTRS", 0x305: "NT_S390_PREFIX",
    0x306: "NT_S390_LAST_BREAK", 0x307: "NT_S390_SYSTEM_CALL", 0x308: "NT_S390_TDB",
    0x309: "NT_S390_VXRS_LOW", 0x30A: "NT_S390_VXRS_HIGH", 0x30B: "NT_S390_GS_CB",
    0x30C: "NT_S390_GS_BC", 0x30D: "NT_S390_RI_CB", 0x30E: "NT_S390_PV_CPU_DATA",
}
X86_NOTE_NAMES = {0x202: "NT_X86_XSTATE"}


def note_type_name(name: str, ntype: int) -> str:
    """The conventional NT_* name; s390 notes may be named CORE or LINUX depending on the kernel."""
    if (name, ntype) in NOTE_TYPE_NAMES:
        return NOTE_TYPE_NAMES[(name, ntype)]
    if ntype in S390_NOTE_NAMES and name in ("LINUX", "CORE"):
        return S390_NOTE_NAMES[ntype]
    if ntype in X86_NOTE_NAMES and name in ("LINUX", "CORE"):
        return X86_NOTE_NAMES[ntype]
    return f"{name}-{ntype:#x}"


def registers_text(cpu: Cpu) -> str:
    return "".join(f"{name} {value:#x}\n" for name, value in cpu.registers.items())


def cpu_dir(cpu: Cpu) -> Dir:
    notes = Dir("notes")
    for note in cpu.notes:
        name = note_type_name(note.name, note.type)
        base, n = name, 1
        while name in notes.children:
            n += 1
            name = f"{base}.{n}"
        notes.add(File.from_bytes(name, note.desc))
    return Dir(str(cpu.number), [File.from_bytes("registers", lambda: registers_text(cpu).encode()),
                                 notes])


def cpus_dir(dump: Dump) -> Dir:
    return Dir("cpus", lambda: [cpu_dir(dump.cpus[n]) for n in sorted(dump.cpus)])
