"""The Linux kernel's rules on one machine: what `dumpfs.kernel` asks instead of a name test.

Each architecture module subclasses `KernelArch` once and hangs the instance on
its `Arch.kernel`:

    kernel_space, user_space    the kernel's address space; a process's, from its root
    user_root                   that root, from a process's mm_struct
    mm_members                  the extra mm_struct members user_root and task_size read
    image_to_physical           a kernel-image address without page tables (KASLR included)
    task_size, thread_size      the top of user space; the kernel stack (pt_regs at its top)
    kallsyms_absolute_percpu    CONFIG_KALLSYMS_ABSOLUTE_PERCPU: how kallsyms_offsets decode
    user_registers, prstatus    user_regs_struct from pt_regs, and NT_PRSTATUS around it
    vmcoreinfo_finders          where the kernel keeps VMCOREINFO when a dump has no note
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from construct import Int16sb, Int16sl, Int32sb, Int32sl, Int64ub, Int64ul, Padding, Struct

from dumpfs.arch import PR_REG_OFFSET

if TYPE_CHECKING:
    from dumpfs.kernel.address_space import AddressSpace, KernelMemory, TableCache
    from dumpfs.kernel.types import Types
    from dumpfs.model import Dump


def _elf_prstatus_head(little: bool) -> Struct:
    """struct elf_prstatus up to pr_reg (include/linux/elfcore.h, 64-bit)."""
    i16, i32, u64 = (Int16sl, Int32sl, Int64ul) if little else (Int16sb, Int32sb, Int64ub)
    return Struct(
        "si_signo" / i32, "si_code" / i32, "si_errno" / i32,    # pr_info
        "pr_cursig" / i16, Padding(2),
        "pr_sigpend" / u64, "pr_sighold" / u64,
        "pr_pid" / i32, "pr_ppid" / i32, "pr_pgrp" / i32, "pr_sid" / i32,
        Padding(64),            # pr_utime, pr_stime, pr_cutime, pr_cstime (timevals)
    )


ELF_PRSTATUS_HEAD = {"little": _elf_prstatus_head(True), "big": _elf_prstatus_head(False)}
assert ELF_PRSTATUS_HEAD["little"].sizeof() == PR_REG_OFFSET
PR_FPVALID_SIZE = 8             # int pr_fpvalid, padded to 8


class KernelArch:
    """Defaults are what most 64-bit machines share; subclasses override the rest."""

    byteorder = "little"
    thread_size = 16384                         # THREAD_SIZE
    user_regs_size = 216                        # sizeof(user_regs_struct), ELF_NGREG * 8
    kallsyms_absolute_percpu = False
    mm_members: tuple[str, ...] = ()
    vmcoreinfo_finders: tuple[tuple[str, Callable[["Dump"], bytes | None]], ...] = ()
    """(where, finder) pairs; a finder returns the raw VMCOREINFO text or None."""

    # -- address spaces ------------------------------------------------------------
    def kernel_space(self, dump: Dump, tables: TableCache) -> tuple[AddressSpace, list[str]]:
        """The kernel's own address space, and notes on how it was found; raises
        TranslationError when there is none."""
        raise NotImplementedError

    def user_space(self, dump: Dump, root: int, tables: TableCache) -> AddressSpace:
        """A process's address space from its top-level table (`user_root`)."""
        raise NotImplementedError

    def user_root(self, mm: dict[str, int], kmem: KernelMemory) -> int:
        """What `user_space` takes, from a read mm_struct; raises MemoryUnavailable."""
        return kmem.translate(mm["pgd"])

    def image_to_physical(self, dump: Dump, address: int) -> int | None:
        """The physical address of a kernel-image address without page tables (None: unknown)."""
        return None

    # -- sizes -------------------------------------------------------------------
    def task_size(self, mm: dict[str, int]) -> int:
        """The top of a process's user address space (the size of its proc/PID/mem)."""
        raise NotImplementedError

    # -- registers ---------------------------------------------------------------
    def user_registers(self, pt_regs: bytes, task: int, kmem: KernelMemory, types: Types) -> bytes:
        """pr_reg of NT_PRSTATUS from the task's saved pt_regs (task: its task_struct)."""
        raise NotImplementedError

    def prstatus(self, pid: int, ppid: int, pgrp: int, sid: int, pr_reg: bytes | None) -> bytes:
        """An NT_PRSTATUS payload; pr_reg None: the registers are unknown (zeros)."""
        head = ELF_PRSTATUS_HEAD[self.byteorder].build(dict(
            si_signo=0, si_code=0, si_errno=0, pr_cursig=0, pr_sigpend=0, pr_sighold=0,
            pr_pid=pid, pr_ppid=ppid, pr_pgrp=pgrp, pr_sid=sid))
        regs = (pr_reg or b"").ljust(self.user_regs_size, b"\0")[:self.user_regs_size]
        return head + regs + bytes(PR_FPVALID_SIZE)
