"""`info` (for people, in the spirit of `zgetdump -i`) and `info.json` (for programs)."""

from __future__ import annotations

import dataclasses
import json

from dumpfs.errors import KernelUnavailable
from dumpfs.kernel.context import KernelContext
from dumpfs.model import Dump, PageState
from dumpfs.views.memory import contiguous_ranges

MAX_RANGES_IN_TEXT = 32
MAX_RANGES_IN_JSON = 1 << 16     # a damaged dump's millions of ranges: the first ones and their count


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB" if size % (1 << 20) == 0 else f"{size / (1 << 20):.2f} MiB"


def _utsname(context: KernelContext):
    try:
        return context.utsname
    except KernelUnavailable:
        return None


def _tasks(context: KernelContext) -> dict | None:
    """Tasks shown and those that could not be read (named, with why); None without processes."""
    try:
        found = context.task_list
    except KernelUnavailable:
        return None
    return {"shown": found.task_count, "processes": len(found.processes),
            "unreadable": list(found.unreadable)}


def _tasks_text(tasks: dict | None) -> str:
    if tasks is None:
        return "none (see Processes)"
    text = f"{tasks['shown']} shown ({tasks['processes']} processes), "
    if not tasks["unreadable"]:
        return text + "none unreadable"
    return text + f"{len(tasks['unreadable'])} could not be read (see Problems)"


def info_json(dump: Dump, context: KernelContext) -> dict:
    meta = dump.meta
    processes = context.processes_status()
    tasks = _tasks(context)         # before the problems: a task not shown is one
    memory = dump.memory
    uts = _utsname(context)
    details = meta.details
    ranges, range_count = contiguous_ranges(dump, MAX_RANGES_IN_JSON)
    return {
        "sources": list(dump.sources),
        "format": meta.format,
        "writer": meta.writer,
        "arch": dump.arch.name,
        "byte_order": dump.arch.byteorder,
        "page_size": dump.page_size,
        "dump_time": meta.dump_time.isoformat() if meta.dump_time else None,
        "complete": meta.complete,
        "problems": [str(problem) for problem in meta.problems],
        "kernel_release": meta.kernel_release,
        "utsname": dataclasses.asdict(uts) if uts else None,
        "dump_level": meta.dump_level,
        "compression": meta.compression,
        "processes": processes,
        "tasks": tasks,
        "cpu_count": len(dump.cpus),
        "cpus": sorted(dump.cpus),
        "vmcoreinfo": meta.details.get("vmcoreinfo", "absent" if dump.vmcoreinfo is None else "note"),
        "memory": {
            "end": memory.end,
            "present_bytes": memory.size_in(PageState.PRESENT),
            "zero_bytes": memory.size_in(PageState.ZERO),
            "excluded_bytes": memory.size_in(PageState.EXCLUDED),
            "missing_bytes": memory.size_in(PageState.MISSING),
            "chunks": len(memory.chunks),
            "ranges": [[start, end] for start, end in ranges],
            "range_count": range_count,
        },
        "details": {k: v for k, v in details.items() if k != "vmcoreinfo"},
    }


def info_text(dump: Dump, context: KernelContext) -> str:
    info = info_json(dump, context)
    uts = info["utsname"] or {}
    memory = info["memory"]
    rows = [
        ("Dump format", info["format"]),
        ("Writer", info["writer"] or "unknown"),
        ("Sources", ", ".join(info["sources"])),
        ("Dump complete", "yes" if info["complete"] else "NO"),
        ("Dump created", info["dump_time"] or "unknown"),
        ("UTS node name", uts.get("nodename", "unknown")),
        ("UTS kernel release", uts.get("release") or info["kernel_release"] or "unknown"),
        ("UTS kernel version", uts.get("version", "unknown")),
        ("System arch", f"{info['arch']} ({info['byte_order']}-endian, 64 bit)"),
        ("Page size", str(info["page_size"])),
        ("CPU count", str(info["cpu_count"])),
        ("Processes", info["processes"]),
        ("Tasks", _tasks_text(info["tasks"])),
        ("Dump memory range", _mib(memory["end"])),
        ("Memory present", _mib(memory["present_bytes"])),
        ("Memory zero", _mib(memory["zero_bytes"])),
        ("Memory excluded", _mib(memory["excluded_bytes"])),
        ("Memory missing", _mib(memory["missing_bytes"])),
        ("Dump level", "n/a" if info["dump_level"] is None else str(info["dump_level"])),
        ("Compression", info["compression"] or "none"),
        ("VMCOREINFO", info["vmcoreinfo"]),
    ]
    rows += [(str(k), str(v)) for k, v in info["details"].items()]
    lines = ["General dump info:"]
    lines += [f"  {label.ljust(19, '.')}: {value}" for label, value in rows]
    if dump.meta.problems:
        lines += ["", "Problems:"] + [f"  {p.severity.name.lower()}: {p}" for p in dump.meta.problems]
    lines += ["", "Memory map:"]
    ranges = memory["ranges"]
    for start, end in ranges[:MAX_RANGES_IN_TEXT]:
        lines.append(f"  {start:016x} - {end - 1:016x} ({_mib(end - start)})")
    if memory["range_count"] > MAX_RANGES_IN_TEXT:
        lines.append(f"  ... {memory['range_count'] - MAX_RANGES_IN_TEXT} more ranges: see memory/map")
    return "\n".join(lines) + "\n"


def info_json_text(dump: Dump, context: KernelContext) -> str:
    return json.dumps(info_json(dump, context), indent=2, default=str) + "\n"
