"""Choosing a dump's type information, BTF before DWARF: --btf file, the --vmlinux's .BTF
section, the kernel's own BTF in the dump (located through the symbols, the vmlinux's
among them), and only then the --vmlinux's DWARF (slow the first time: Debian's s390x
kernels, RHEL 8.0/8.1 and kernels built without BTF have nothing else)."""

from __future__ import annotations

import time
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from dumpfs.errors import BadFile
from dumpfs.kernel.btf import BtfError, btf_from_file, btf_from_memory
from dumpfs.kernel.context import KernelUnavailable
from dumpfs.kernel.dwarf import DwarfError, DwarfTypes, elf_build_id

HINT = "pass --vmlinux or --btf"


def _dump_build_id(dump) -> str | None:
    info = dump.vmcoreinfo
    value = info.get("BUILD-ID") if info is not None else None
    return value.strip().lower() if value else None


def _vmlinux_build_id(context) -> str | None:
    """The --vmlinux's build id; BadFile if the dumped kernel's (VMCOREINFO BUILD-ID) differs."""
    path = context.vmlinux
    try:
        with open(path, "rb") as f:
            build_id = elf_build_id(ELFFile(f))
    except (OSError, ELFError) as exc:
        raise BadFile(f"{path}: {exc}") from None
    wanted = _dump_build_id(context.dump)
    if wanted and build_id and not wanted.startswith(build_id[:len(wanted)]) \
            and not build_id.startswith(wanted):
        raise BadFile(f"{Path(path).name} has build id {build_id}, the dumped kernel {wanted}: "
                      "another kernel")
    return build_id


def kernel_types(context):
    """(types or None, notes, reason when None)."""
    notes: list[str] = []
    reasons: list[str] = []
    if context.btf is not None:
        try:
            types = btf_from_file(context.btf)
            notes.append(f"{types.source} (--btf)")
            return types, notes, None
        except (BtfError, OSError) as exc:
            reasons.append(f"--btf {context.btf}: {exc}")
    vmlinux = None                          # the --vmlinux, once known to be this kernel's
    if context.vmlinux is not None:
        name = Path(context.vmlinux).name
        try:
            build_id = _vmlinux_build_id(context)
            vmlinux = context.vmlinux
            types = btf_from_file(vmlinux)
            notes.append(f"{types.source} (--vmlinux, build id {build_id or 'unknown'})")
            return types, notes, None
        except BadFile as exc:
            reasons.append(f"--vmlinux: {exc}")
        except (BtfError, OSError) as exc:
            reasons.append(f"--vmlinux {name}: no BTF ({exc})")
    try:
        kmem, symbols = context.memory, context.symbols
        types = btf_from_memory(kmem, symbols)
        notes.extend(f"not used: {r}" for r in reasons)
        located = " (__start_BTF from the --vmlinux's symbol table)" if vmlinux is not None \
            and any(s.startswith("vmlinux ") for s in symbols.sources) else ""
        notes.append(types.source + located)
        return types, notes, None
    except KernelUnavailable as exc:
        reasons.append(f"no BTF from the dump: {exc}")
    except BtfError as exc:
        reasons.append(str(exc))
    if vmlinux is not None:
        try:
            release = context.release
        except KernelUnavailable:
            release = None
        started = time.monotonic()
        try:
            types = DwarfTypes(vmlinux, release)
            if not types.from_cache:
                types.resolve_wanted()
            notes.extend(f"not used: {r}" for r in reasons)
            notes.append(f"DWARF of {Path(vmlinux).name} (--vmlinux, build id "
                         f"{types.build_id or 'unknown'}, no BTF anywhere): "
                         + (f"layouts from the cache {types.cache.path}" if types.from_cache else
                            f"{types.cu_scanned} compile units read in "
                            f"{time.monotonic() - started:.2f} s, cached in {types.cache.path}"))
            return types, notes, None
        except (DwarfError, OSError) as exc:
            reasons.append(f"--vmlinux: {exc}")
    reason = "processes need type information: " + "; ".join(reasons) + f" — {HINT}"
    return None, notes, reason
