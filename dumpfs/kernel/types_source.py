"""Choosing a dump's type information: --btf file, --vmlinux DWARF, or the kernel's own BTF."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from dumpfs.errors import BtfError, KernelUnavailable
from dumpfs.kernel.btf import btf_from_file
from dumpfs.kernel.dwarf import DwarfError, DwarfTypes
from dumpfs.kernel.types import Types
from dumpfs.model import Dump

HINT = "pass --vmlinux or --btf"


def _dump_build_id(dump: Dump) -> str | None:
    info = dump.vmcoreinfo
    value = info.get("BUILD-ID") if info is not None else None
    return value.strip().lower() if value else None


def kernel_types(dump: Dump, btf=None, vmlinux=None, release: str | None = None,
                 dump_btf: Callable[[], Types] | None = None):
    """(types or None, notes, reason when None).

    In order: the `btf` file, the `vmlinux`'s DWARF (its layout cache is keyed by
    `release`; refused when its build id is another kernel's), else `dump_btf()`, the
    kernel's own BTF (raising KernelUnavailable or BtfError), called only when needed.
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
    if vmlinux is not None:
        started = time.monotonic()
        try:
            types = DwarfTypes(vmlinux, release)
            wanted = _dump_build_id(dump)
            if wanted and types.build_id and not wanted.startswith(types.build_id[:len(wanted)]) \
                    and not types.build_id.startswith(wanted):
                raise DwarfError(f"{Path(vmlinux).name} has build id {types.build_id}, "
                                 f"the dumped kernel {wanted}: another kernel")
            if not types.from_cache:
                types.resolve_wanted()
            notes.append(f"DWARF of {Path(vmlinux).name} (--vmlinux, build id "
                         f"{types.build_id or 'unknown'}): "
                         + (f"layouts from the cache {types.cache.path}" if types.from_cache else
                            f"{types.cu_scanned} compile units read in "
                            f"{time.monotonic() - started:.2f} s, cached in {types.cache.path}"))
            return types, notes, None
        except (DwarfError, OSError) as exc:
            reasons.append(f"--vmlinux: {exc}")
    if dump_btf is not None:
        try:
            types = dump_btf()
            notes.extend(f"not used: {r}" for r in reasons)
            notes.append(types.source)
            return types, notes, None
        except BtfError as exc:
            reasons.append(str(exc))
        except KernelUnavailable as exc:
            reasons.append(f"no BTF from the dump: {exc}")
    if btf is None and vmlinux is None:
        reasons.insert(0, "no --btf or --vmlinux given")
    reason = "processes need type information: " + "; ".join(reasons) + f" — {HINT}"
    return None, notes, reason
