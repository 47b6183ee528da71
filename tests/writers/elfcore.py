"""ELF cores read with pyelftools and os.pread, independent of dumpfs: memory and s390x CPU registers."""

from __future__ import annotations

import os

from elftools.elf.elffile import ELFFile

NOTE_TYPES = {"NT_PRSTATUS": 1, "NT_FPREGSET": 2, "NT_PRPSINFO": 3}
NT_PRSTATUS, NT_FPREGSET = 1, 2
NT_S390_TIMER, NT_S390_TODCMP, NT_S390_TODPREG, NT_S390_CTRS, NT_S390_PREFIX = 0x301, 0x302, 0x303, 0x304, 0x305
NT_S390_VXRS_LOW, NT_S390_VXRS_HIGH = 0x309, 0x30A
PR_REG = 112            # offset of pr_reg in the s390x elf_prstatus


class ElfCore:
    """Memory (PT_LOAD by physical address; holes and p_memsz > p_filesz read as zeros) and
    the CPU notes of an ELF core, read with pyelftools and os.pread."""

    def __init__(self, path):
        self.file = open(path, "rb")
        elf = ELFFile(self.file)
        self.loads, notes = [], []
        for segment in elf.iter_segments():
            if segment["p_type"] == "PT_LOAD":
                self.loads.append((segment["p_paddr"], segment["p_offset"], segment["p_filesz"],
                                   segment["p_memsz"]))
            elif segment["p_type"] == "PT_NOTE":
                for note in segment.iter_notes():
                    kind = note["n_type"]
                    notes.append((note["n_name"], NOTE_TYPES.get(kind, kind), bytes(note["n_descdata"])))
        self.loads.sort()
        self.end = max(p + m for p, _, _, m in self.loads)
        self.cpus = cpu_registers(notes)

    def read(self, address: int, length: int) -> bytes:
        out = bytearray(length)
        end = address + length
        for paddr, offset, filesz, _ in self.loads:
            low, high = max(address, paddr), min(end, paddr + filesz)
            if low < high:
                data = os.pread(self.file.fileno(), high - low, offset + low - paddr)
                assert len(data) == high - low, f"short read at {offset + low - paddr:#x}"
                out[low - address:high - address] = data
        return bytes(out)

    def close(self):
        self.file.close()


def _u(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset:offset + size], "big")


def cpu_registers(notes) -> list[dict[str, int]]:
    """Per CPU (each NT_PRSTATUS starts one), register name -> value, from the raw note payloads."""
    cpus: list[dict[str, int]] = []
    for name, kind, desc in notes:
        if kind == NT_PRSTATUS and name == "CORE":
            cpus.append({})
            regs = cpus[-1]
            regs["psw_mask"], regs["psw_addr"] = _u(desc, PR_REG, 8), _u(desc, PR_REG + 8, 8)
            regs.update((f"r{i}", _u(desc, PR_REG + 16 + 8 * i, 8)) for i in range(16))
            regs.update((f"a{i}", _u(desc, PR_REG + 144 + 4 * i, 4)) for i in range(16))
            continue
        if not cpus or name not in ("CORE", "LINUX"):
            continue
        regs = cpus[-1]
        if kind == NT_FPREGSET:
            regs["fpc"] = _u(desc, 0, 4)
            regs.update((f"f{i}", _u(desc, 8 + 8 * i, 8)) for i in range(16))
        elif kind == NT_S390_TIMER:
            regs["cpu_timer"] = _u(desc, 0, 8)
        elif kind == NT_S390_TODCMP:
            regs["clock_comparator"] = _u(desc, 0, 8)
        elif kind == NT_S390_CTRS:
            regs.update((f"c{i}", _u(desc, 8 * i, 8)) for i in range(16))
        elif kind == NT_S390_PREFIX:
            regs["prefix"] = _u(desc, 0, 4)
        elif kind == NT_S390_VXRS_LOW:
            regs.update((f"v{i}.low", _u(desc, 8 * i, 8)) for i in range(16))
        elif kind == NT_S390_VXRS_HIGH:
            regs.update((f"v{16 + i}", _u(desc, 16 * i, 16)) for i in range(16))
        # NT_S390_TODPREG: zgetdump never writes it into the s390 format; not compared
    return cpus
