"""s390x: PSW, GPRs, access, control, floating point and vector registers from the CPU notes
and the lowcore save areas, and the kernel's rules (DAT in `s390x_dat`, os_info and KASLR in
`s390x_os_info`, task and register layouts)."""

from __future__ import annotations

from construct import Array, Bytes, Int32ub, Int64ub, Struct

from dumpfs.arch.machine import NT_PRFPREG, NT_PRSTATUS, PR_REG_OFFSET, Arch
from dumpfs.arch import s390x_dat as dat
from dumpfs.arch.kernel_arch import KernelArch
from dumpfs.arch.s390x_os_info import LOWCORE_SIZE  # noqa: F401 - the prefix area, for its users
from dumpfs.arch.s390x_os_info import VMCOREINFO_FINDERS, S390IdentityMap
from dumpfs.errors import KernelUnavailable, MemoryUnavailable
from dumpfs.model import Note

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


class S390xKernel(KernelArch):
    byteorder = "big"
    mm_members = ("context.asce", "context.asce_limit")
    vmcoreinfo_finders = VMCOREINFO_FINDERS
    MAX_TASK_SIZE = (1 << 63) - 4096        # proc/PID/mem's st_size is signed

    def kernel_space(self, dump, tables):
        return dat.kernel_space(dump, tables)

    def user_space(self, dump, root, tables):
        """`root`: an ASCE, or a physical table origin."""
        return dat.DatSpace.from_asce(tables, root)

    def user_root(self, mm, kmem):
        return mm.get("context.asce") or kmem.translate(mm["pgd"])

    def image_to_physical(self, dump, address):
        return S390IdentityMap(dump).physical(address)

    def task_size(self, mm):
        limit = mm.get("context.asce_limit") or 0     # what the ASCE reaches
        if 0 < limit < 1 << 63:
            return limit
        size = mm.get("task_size") or 0
        return size if 0 < size < 1 << 63 else self.MAX_TASK_SIZE

    def user_registers(self, pt_regs, task, kmem, types):
        """s390_regs (PSW, GPRs, access registers) and orig_gpr2."""
        mask, addr = Array(2, Int64ub).parse(pt_regs[types.offsetof("pt_regs", "psw"):])
        gprs = Array(16, Int64ub).parse(pt_regs[types.offsetof("pt_regs", "gprs"):])
        orig_gpr2 = Int64ub.parse(pt_regs[types.offsetof("pt_regs", "orig_gpr2"):])
        try:
            acrs = kmem.array("I", task + types.offsetof("task_struct", "thread")
                              + types.offsetof("thread_struct", "acrs"), 16)
        except (MemoryUnavailable, KernelUnavailable):
            acrs = (0,) * 16
        return S390Regs.build(dict(psw_mask=mask, psw_addr=addr, gprs=gprs, acrs=acrs)) \
            + Int64ub.build(orig_gpr2)


# EM_S390 = 22; its memory images can also be shown as dump.s390
ARCH = Arch("s390x", "big", 22, 4096, decode_registers, kernel=S390xKernel(), s390_dump=True)


# -- the store-status save area in a CPU's prefix (lowcore) page --------------------------
#
# Memory-image formats (s390, s390_ext, tape, LKCD) have no register records:
# the dump tool stores each CPU's status into lowcore 0x1200-0x13FF of that
# CPU's prefix page, and `zgetdump -f s390` writes them there from ELF notes.

SAVE_AREA_OFFSET = 0x1200           # where STORE STATUS puts the registers
LOWCORE_VECTOR_SAVE_AREA = 0x11B0   # u64: address of the 512-byte vector save area, 0 = none
VECTOR_SAVE_AREA_SIZE = 512         # V0-V31, 16 bytes each

# struct lowcore 0x1200-0x13FF (arch/s390/include/asm/lowcore.h), offsets relative to 0x1200
SaveArea = Struct(
    "floating_pt_save_area" / Array(16, Int64ub),   # 0x1200 F0-F15
    "gpregs_save_area" / Array(16, Int64ub),        # 0x1280 R0-R15
    "psw_mask" / Int64ub,                           # 0x1300 PSW bytes 0-7
    "psw_addr" / Int64ub,                           # 0x1308 PSW bytes 8-15
    "pad_0x1310" / Bytes(8),                        # 0x1310 unused
    "prefixreg_save_area" / Int32ub,                # 0x1318 prefix register
    "fpt_creg_save_area" / Int32ub,                 # 0x131C floating-point control
    "pad_0x1320" / Bytes(4),                        # 0x1320 unused
    "tod_progreg_save_area" / Int32ub,              # 0x1324 TOD programmable register
    "cpu_timer_save_area" / Int64ub,                # 0x1328 CPU timer
    "clock_comp_save_area" / Int64ub,               # 0x1330 clock comparator (store-status form, >> 8)
    "pad_0x1338" / Bytes(8),                        # 0x1338 unused
    "access_regs_save_area" / Array(16, Int32ub),   # 0x1340 A0-A15
    "cregs_save_area" / Array(16, Int64ub),         # 0x1380 C0-C15
)
SAVE_AREA_SIZE = SaveArea.sizeof()  # 0x200


def has_vector_save_area(address: int) -> bool:
    """The dumper and zgetdump use the pointer only when non-zero and 1 KiB aligned."""
    return address != 0 and address % 1024 == 0


def registers_from_save_area(save_area: bytes, vector_save_area: bytes | None = None) -> dict[str, int]:
    """Registers from lowcore 0x1200-0x13FF (and the 512-byte vector save area, if any)."""
    s = SaveArea.parse(save_area[:SAVE_AREA_SIZE])
    regs = {"psw_mask": s.psw_mask, "psw_addr": s.psw_addr}
    regs.update((f"r{i}", v) for i, v in enumerate(s.gpregs_save_area))
    regs.update((f"a{i}", v) for i, v in enumerate(s.access_regs_save_area))
    regs.update((f"c{i}", v) for i, v in enumerate(s.cregs_save_area))
    regs.update(prefix=s.prefixreg_save_area, cpu_timer=s.cpu_timer_save_area,
                clock_comparator=s.clock_comp_save_area, todpreg=s.tod_progreg_save_area,
                fpc=s.fpt_creg_save_area)
    regs.update((f"f{i}", v) for i, v in enumerate(s.floating_pt_save_area))
    if vector_save_area is not None and len(vector_save_area) >= VECTOR_SAVE_AREA_SIZE:
        regs.update((f"v{i}", _u(vector_save_area[16 * i:], 16)) for i in range(32))
    return {name: regs[name] for name in REGISTER_ORDER if name in regs}


def save_area_from_registers(regs: dict[str, int], original: bytes) -> bytes:
    """`original` with the registers written over it, field for field as zgetdump's cpu2lc_64.

    Like zgetdump, the TOD programmable register is not written (the original
    bytes stay), nor are the unused fields.
    """
    s = SaveArea.parse(original[:SAVE_AREA_SIZE])
    s.floating_pt_save_area = [regs.get(f"f{i}", 0) for i in range(16)]
    s.gpregs_save_area = [regs.get(f"r{i}", 0) for i in range(16)]
    s.psw_mask, s.psw_addr = regs.get("psw_mask", 0), regs.get("psw_addr", 0)
    s.prefixreg_save_area = regs.get("prefix", 0)
    s.fpt_creg_save_area = regs.get("fpc", 0)
    s.cpu_timer_save_area = regs.get("cpu_timer", 0)
    s.clock_comp_save_area = regs.get("clock_comparator", 0)
    s.access_regs_save_area = [regs.get(f"a{i}", 0) for i in range(16)]
    s.cregs_save_area = [regs.get(f"c{i}", 0) for i in range(16)]
    return SaveArea.build(s)


def vector_save_area_from_registers(regs: dict[str, int]) -> bytes | None:
    if "v0" not in regs:
        return None
    return b"".join(regs.get(f"v{i}", 0).to_bytes(16, "big") for i in range(32))


# -- the kernel's per-CPU note group, for dumps whose registers come from memory ----------

def notes_from_registers(regs: dict[str, int], number: int = 0) -> list:
    """NT_PRSTATUS ... NT_S390_VXRS_HIGH as zgetdump's ELF writer emits them (pr_pid = number + 1)."""

    def u64s(names):
        return b"".join(regs.get(n, 0).to_bytes(8, "big") for n in names)

    prstatus = ARCH.kernel.prstatus(number + 1, 0, 0, 0, S390Regs.build(dict(
        psw_mask=regs.get("psw_mask", 0), psw_addr=regs.get("psw_addr", 0),
        gprs=[regs.get(f"r{i}", 0) for i in range(16)],
        acrs=[regs.get(f"a{i}", 0) for i in range(16)])))
    fpregs = S390FpRegs.build(dict(fpc=regs.get("fpc", 0), pad=bytes(4),
                                   fprs=[regs.get(f"f{i}", 0) for i in range(16)]))
    notes = [
        Note("CORE", NT_PRSTATUS, prstatus),
        Note("CORE", NT_PRFPREG, fpregs),
        Note("LINUX", NT_S390_TIMER, u64s(["cpu_timer"])),
        Note("LINUX", NT_S390_TODCMP, u64s(["clock_comparator"])),
        Note("LINUX", NT_S390_TODPREG, regs.get("todpreg", 0).to_bytes(4, "big")),
        Note("LINUX", NT_S390_CTRS, u64s([f"c{i}" for i in range(16)])),
        Note("LINUX", NT_S390_PREFIX, regs.get("prefix", 0).to_bytes(4, "big")),
    ]
    if "v0" in regs:
        low = b"".join((regs.get(f"v{i}", 0) & (2**64 - 1)).to_bytes(8, "big") for i in range(16))
        high = b"".join(regs.get(f"v{i}", 0).to_bytes(16, "big") for i in range(16, 32))
        notes += [Note("LINUX", NT_S390_VXRS_LOW, low), Note("LINUX", NT_S390_VXRS_HIGH, high)]
    return notes
