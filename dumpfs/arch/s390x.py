"""s390x: PSW, GPRs, access, control, floating point and vector registers from the CPU notes."""

from __future__ import annotations

from construct import Array, Bytes, Int32ub, Int64ub, Struct

from dumpfs.arch import NT_PRFPREG, NT_PRSTATUS, Arch

NT_S390_TIMER = 0x301
NT_S390_TODCMP = 0x302
NT_S390_TODPREG = 0x303
NT_S390_CTRS = 0x304
NT_S390_PREFIX = 0x305
NT_S390_VXRS_LOW = 0x309
NT_S390_VXRS_HIGH = 0x30A

# pr_reg of NT_PRSTATUS (s390_regs, at offset 0x70 of struct elf_prstatus)
S390Regs = Struct(
    "psw_mask" / Int64ub,           # PSW bytes 0-7
    "psw_addr" / Int64ub,           # PSW bytes 8-15
    "gprs" / Array(16, Int64ub),    # general registers R0-R15
    "acrs" / Array(16, Int32ub),    # access registers A0-A15
)
PR_REG_OFFSET = 0x70

# NT_PRFPREG payload (s390_fp_regs)
S390FpRegs = Struct(
    "fpc" / Int32ub,                # floating-point control register
    "pad" / Bytes(4),
    "fprs" / Array(16, Int64ub),    # F0-F15
)

REGISTER_ORDER = (["psw_mask", "psw_addr"] + [f"r{i}" for i in range(16)]
                  + [f"a{i}" for i in range(16)] + [f"c{i}" for i in range(16)]
                  + ["prefix", "cpu_timer", "clock_comparator", "todpreg", "fpc"]
                  + [f"f{i}" for i in range(16)] + [f"v{i}" for i in range(32)])


def _u(data: bytes, size: int) -> int:
    return int.from_bytes(data[:size], "big")


def decode_registers(notes) -> dict[str, int]:
    regs: dict[str, int] = {}
    vxrs_low = None
    for note in notes:
        desc = note.desc
        if note.type == NT_PRSTATUS and note.name == "CORE" and len(desc) >= PR_REG_OFFSET + S390Regs.sizeof():
            r = S390Regs.parse(desc[PR_REG_OFFSET:])
            regs["psw_mask"], regs["psw_addr"] = r.psw_mask, r.psw_addr
            regs.update((f"r{i}", v) for i, v in enumerate(r.gprs))
            regs.update((f"a{i}", v) for i, v in enumerate(r.acrs))
        elif note.type == NT_PRFPREG and len(desc) >= S390FpRegs.sizeof():
            fp = S390FpRegs.parse(desc)
            regs["fpc"] = fp.fpc
            regs.update((f"f{i}", v) for i, v in enumerate(fp.fprs))
        elif note.type == NT_S390_CTRS and len(desc) >= 128:
            regs.update((f"c{i}", _u(desc[8 * i:], 8)) for i in range(16))
        elif note.type == NT_S390_PREFIX and len(desc) >= 4:
            regs["prefix"] = _u(desc, 4)
        elif note.type == NT_S390_TIMER and len(desc) >= 8:
            regs["cpu_timer"] = _u(desc, 8)
        elif note.type == NT_S390_TODCMP and len(desc) >= 8:
            regs["clock_comparator"] = _u(desc, 8)
        elif note.type == NT_S390_TODPREG and len(desc) >= 4:
            regs["todpreg"] = _u(desc, 4)     # 8-byte variants carry it in the first 4
        elif note.type == NT_S390_VXRS_LOW and len(desc) >= 128:
            vxrs_low = [_u(desc[8 * i:], 8) for i in range(16)]
        elif note.type == NT_S390_VXRS_HIGH and len(desc) >= 256:
            regs.update((f"v{16 + i}", _u(desc[16 * i:], 16)) for i in range(16))
    if vxrs_low is not None:
        # V0-V15: the left halves are F0-F15, the right halves are in VXRS_LOW
        for i in range(16):
            regs[f"v{i}"] = (regs.get(f"f{i}", 0) << 64) | vxrs_low[i]
    return {name: regs[name] for name in REGISTER_ORDER if name in regs}


ARCH = Arch(
    name="s390x",
    byteorder="big",
    elf_machine=22,
    page_size=4096,
    decode_registers=decode_registers,
)
