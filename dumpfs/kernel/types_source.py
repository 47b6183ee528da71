"""Choosing a dump's type information, BTF before DWARF: --btf file, the --vmlinux's .BTF
section, the kernel's own BTF in the dump (located through the symbols, the vmlinux's
among them), and only then the --vmlinux's DWARF (slow the first time: some distributions'
kernels, RHEL 8.0/8.1 and kernels built without BTF have nothing else)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from dumpfs.errors import BadFile, BtfError, KernelUnavailable
from dumpfs.kernel.btf import btf_from_file
from dumpfs.kernel.dwarf import DwarfError, DwarfTypes, elf_build_id
from dumpfs.kernel.types import Types
from dumpfs.model import Dump

HINT = "pass --vmlinux or --btf"


def _dump_build_id(dump: Dump) -> str | None:
    info = dump.vmcoreinfo
    value = info.get("BUILD-ID") if info is not None else None
    return value.strip().lower() if value else None


def _vmlinux_build_id(dump: Dump, vmlinux) -> str | None:
    """The vmlinux's build id; BadFile if the dumped kernel's (VMCOREINFO BUILD-ID) differs."""
    try:
        with open(vmlinux, "rb") as f:
            build_id = elf_build_id(ELFFile(f))
    except (OSError, ELFError) as exc:
        raise BadFile(f"{vmlinux}: {exc}") from None
    wanted = _dump_build_id(dump)
    if wanted and build_id and not wanted.startswith(build_id[:len(wanted)]) \
            and not build_id.startswith(wanted):
        raise BadFile(f"{Path(vmlinux).name} has build id {build_id}, the dumped kernel {wanted}: "
                      "another kernel")
    return build_id


def kernel_types(dump: Dump, btf=None, vmlinux=None, release: str | None = None,
                 dump_btf: Callable[[], Types] | None = None):
    """(types or None, notes, reason when None).

    In order: the `btf` file; the `vmlinux`'s .BTF section (refused with the rest of the
    vmlinux when its build id is another kernel's); `dump_btf()`, the kernel's own BTF
    (raising KernelUnavailable or BtfError, called only when needed; the symbols that
    locate it include the vmlinux's); the `vmlinux`'s DWARF (its layout cache is keyed by
    `release`), only where there is no BTF anywhere.
    The reason names every step that failed, and that no --btf or --vmlinux was given.
    """
    notes: list[str] = []
    reasons: list[str] = []
    if btf is not None:
        try:
            types = btf_from_file(btf)
            notes.append(f"{types.source} (--btf)")
            return types, notes, None
        except (BtfError, OSError) as exc:
            reasons.append(f"--btf {btf}: {exc}")
    usable = None                           # the vmlinux, once known to be this kernel's
    if vmlinux is not None:
        try:
            build_id = _vmlinux_build_id(dump, vmlinux)
            usable = vmlinux
            types = btf_from_file(vmlinux)
            notes.append(f"{types.source} (--vmlinux, build id {build_id or 'unknown'})")
            return types, notes, None
        except BtfError as exc:             # before BadFile: a BtfError is one
            reasons.append(f"--vmlinux {Path(vmlinux).name}: no BTF ({exc})")
        except (BadFile, OSError) as exc:
            reasons.append(f"--vmlinux: {exc}")
    if dump_btf is not None:
        try:
            types = dump_btf()
            notes.extend(f"not used: {r}" for r in reasons)
            notes.append(types.source + (" (located with the symbols, the --vmlinux's among "
                                         "them)" if usable is not None else ""))
            return types, notes, None
        except BtfError as exc:
            reasons.append(str(exc))
        except KernelUnavailable as exc:
            reasons.append(f"no BTF from the dump: {exc}")
    if usable is not None:
        started = time.monotonic()
        try:
            types = DwarfTypes(usable, release)
            if not types.from_cache:
                types.resolve_wanted()
            notes.extend(f"not used: {r}" for r in reasons)
            notes.append(f"DWARF of {Path(usable).name} (--vmlinux, build id "
                         f"{types.build_id or 'unknown'}, no BTF anywhere): "
                         + (f"layouts from the cache {types.cache.path}" if types.from_cache else
                            f"{types.cu_scanned} compile units read in "
                            f"{time.monotonic() - started:.2f} s, cached in {types.cache.path}"))
            return types, notes, None
        except (DwarfError, OSError) as exc:
            reasons.append(f"--vmlinux: {exc}")
    if btf is None and vmlinux is None:
        reasons.insert(0, "no --btf or --vmlinux given")
    reason = "processes need type information: " + "; ".join(reasons) + f" — {HINT}"
    return None, notes, reason
