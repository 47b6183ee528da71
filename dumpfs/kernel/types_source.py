"""Choosing a dump's type information: --btf file, --vmlinux DWARF, or the kernel's own BTF."""

from __future__ import annotations

import time
from pathlib import Path

HINT = "pass --vmlinux or --btf"


def _dump_build_id(dump) -> str | None:
    info = dump.vmcoreinfo
    value = info.get("BUILD-ID") if info is not None else None
    return value.strip().lower() if value else None


def kernel_types(context):
    """(types or None, notes, reason when None)."""
    from dumpfs.kernel.btf import BtfError, btf_from_file, btf_from_memory
    from dumpfs.kernel.context import KernelUnavailable
    notes: list[str] = []
    reasons: list[str] = []
    if context.btf is not None:
        try:
            types = btf_from_file(context.btf)
            notes.append(f"{types.source} (--btf)")
            return types, notes, None
        except (BtfError, OSError) as exc:
            reasons.append(f"--btf {context.btf}: {exc}")
    if context.vmlinux is not None:
        from dumpfs.kernel.dwarf import DwarfError, DwarfTypes
        try:
            release = context.release
        except KernelUnavailable:
            release = None
        started = time.monotonic()
        try:
            types = DwarfTypes(context.vmlinux, release)
            wanted = _dump_build_id(context.dump)
            if wanted and types.build_id and not wanted.startswith(types.build_id[:len(wanted)]) \
                    and not types.build_id.startswith(wanted):
                raise DwarfError(f"{Path(context.vmlinux).name} has build id {types.build_id}, "
                                 f"the dumped kernel {wanted}: another kernel")
            if not types.from_cache:
                types.resolve_wanted()
            notes.append(f"DWARF of {Path(context.vmlinux).name} (--vmlinux, build id "
                         f"{types.build_id or 'unknown'}): "
                         + (f"layouts from the cache {types.cache.path}" if types.from_cache else
                            f"{types.cu_scanned} compile units read in "
                            f"{time.monotonic() - started:.2f} s, cached in {types.cache.path}"))
            return types, notes, None
        except (DwarfError, OSError) as exc:
            reasons.append(f"--vmlinux: {exc}")
    try:
        kmem, symbols = context.memory, context.symbols
        types = btf_from_memory(kmem, symbols, context.dump.vmcoreinfo)
        notes.extend(f"not used: {r}" for r in reasons)
        notes.append(types.source)
        return types, notes, None
    except KernelUnavailable as exc:
        reasons.append(f"no BTF from the dump: {exc}")
    except BtfError as exc:
        reasons.append(str(exc))
    if context.btf is None and context.vmlinux is None:
        reasons.insert(0, "no --btf or --vmlinux given")
    reason = "processes need type information: " + "; ".join(reasons) + f" — {HINT}"
    return None, notes, reason
