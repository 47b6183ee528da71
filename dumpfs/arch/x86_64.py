"""x86_64: user_regs_struct in NT_PRSTATUS, QEMU's QEMUCPUState note, and the kernel's rules
(4/5-level paging in `x86_64_paging`, the kernel image map, task and register layouts)."""

from __future__ import annotations

from construct import Array, Int32ul, Int64ul, Struct

from dumpfs.arch.machine import NT_PRSTATUS, PR_REG_OFFSET, Arch
from dumpfs.arch import x86_64_paging as paging
from dumpfs.arch.kernel_arch import KernelArch
from dumpfs.errors import KernelUnavailable, MemoryUnavailable

# struct user_regs_struct, the pr_reg of NT_PRSTATUS (arch/x86/include/asm/user_64.h)
USER_REGS = ["r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
             "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "rflags",
             "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs"]
UserRegs = Array(len(USER_REGS), Int64ul)
PT_REGS_WORDS = 21      # struct pt_regs: r15 .. ss, the first 21 words of user_regs_struct
# the rest of user_regs_struct, from task->thread (struct thread_struct)
THREAD_SEGMENTS = ("fsbase", "gsbase", "ds", "es", "fsindex", "gsindex")

QEMUCPUSegment = Struct(
    "selector" / Int32ul,   # segment selector
    "limit" / Int32ul,      # segment limit
    "flags" / Int32ul,      # descriptor attribute bits as QEMU keeps them
    "pad" / Int32ul,
    "base" / Int64ul,       # segment base address
)

# QEMU's per-CPU "QEMU" note (target/i386/arch_dump.c, version 1)
QEMUCPUState = Struct(
    "version" / Int32ul,    # layout version, 1
    "size" / Int32ul,       # size of this structure
    "gprs" / Array(16, Int64ul),   # rax rbx rcx rdx rsi rdi rsp rbp r8..r15
    "rip" / Int64ul,
    "rflags" / Int64ul,
    "cs" / QEMUCPUSegment, "ds" / QEMUCPUSegment, "es" / QEMUCPUSegment,
    "fs" / QEMUCPUSegment, "gs" / QEMUCPUSegment, "ss" / QEMUCPUSegment,
    "ldt" / QEMUCPUSegment, "tr" / QEMUCPUSegment,
    "gdt" / QEMUCPUSegment, "idt" / QEMUCPUSegment,
    "cr" / Array(5, Int64ul),      # CR0..CR4
)
# QEMU keeps the descriptor's second word as flags: bits 0-7 and 24-31 are
# base address bits (already in *_base), the rest are the attributes.
SEGMENT_ATTRIBUTE_BITS = 0x00FFFF00
QEMU_GPRS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]

# The order `registers` files list them in: what `info registers` shows.
REGISTER_ORDER = (QEMU_GPRS + ["rip", "rflags", "orig_rax"]
                  + [f"{s}{suffix}" for s in ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr")
                     for suffix in ("", "_base", "_limit", "_flags")]
                  + ["gdt_base", "gdt_limit", "idt_base", "idt_limit",
                     "cr0", "cr2", "cr3", "cr4"])


def decode_registers(notes) -> dict[str, int]:
    regs: dict[str, int] = {}
    for note in notes:
        if note.type == NT_PRSTATUS and len(note.desc) >= PR_REG_OFFSET + 8 * len(USER_REGS):
            values = UserRegs.parse(note.desc[PR_REG_OFFSET:])
            regs.update(zip(USER_REGS, values))
        elif note.name == "QEMU" and len(note.desc) >= QEMUCPUState.sizeof():
            state = QEMUCPUState.parse(note.desc)
            regs.update(zip(QEMU_GPRS, state.gprs))
            regs["rip"], regs["rflags"] = state.rip, state.rflags
            for seg in ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr"):
                s = state[seg]
                regs[seg] = s.selector
                regs[f"{seg}_base"], regs[f"{seg}_limit"] = s.base, s.limit
                regs[f"{seg}_flags"] = s.flags & SEGMENT_ATTRIBUTE_BITS
            for table in ("gdt", "idt"):
                regs[f"{table}_base"], regs[f"{table}_limit"] = state[table].base, state[table].limit
            for i in (0, 2, 3, 4):
                regs[f"cr{i}"] = state.cr[i]
    known = [name for name in REGISTER_ORDER if name in regs]
    return {name: regs[name] for name in known + [n for n in regs if n not in REGISTER_ORDER]}


class X86_64Kernel(KernelArch):
    byteorder = "little"
    kallsyms_absolute_percpu = True     # SMP: non-negative kallsyms_offsets are per-CPU offsets
    DEFAULT_TASK_SIZE = (1 << 47) - 4096     # TASK_SIZE_MAX with 4-level paging
    MAX_TASK_SIZE = 1 << 57                  # with 5-level paging

    def kernel_space(self, dump, tables):
        return paging.kernel_space(dump, tables)

    def user_space(self, dump, root, tables):
        return paging.user_space(dump, root, tables)

    def image_to_physical(self, dump, address):
        info = dump.vmcoreinfo
        if address < paging.START_KERNEL_MAP or info is None:
            return None
        return paging.image_to_physical(address, info.number("NUMBER(phys_base)") or 0)

    def task_size(self, mm):
        size = mm.get("task_size") or 0
        return size if 0 < size <= self.MAX_TASK_SIZE else self.DEFAULT_TASK_SIZE

    def user_registers(self, pt_regs, task, kmem, types):
        words = list(Array(PT_REGS_WORDS, Int64ul).parse(pt_regs))
        segments = [0] * len(THREAD_SEGMENTS)        # cosmetic: zeros when unreadable
        try:
            thread = task + types.offsetof("task_struct", "thread")
            for i, name in enumerate(THREAD_SEGMENTS):
                member = types.member("thread_struct", name)
                segments[i] = int.from_bytes(kmem.read(thread + member.offset, member.size), "little")
        except (MemoryUnavailable, KernelUnavailable):
            pass
        return UserRegs.build(words + segments)


# EM_X86_64 = 62
ARCH = Arch("x86_64", "little", 62, 4096, decode_registers, kernel=X86_64Kernel())
