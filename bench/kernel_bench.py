#!/usr/bin/env python3
"""Types from a distro debug vmlinux: dumpfs's first use (empty layout cache) against drgn's
load of the same vmlinux on the same dump, in the same run, with peak RSS.

    python3 bench/kernel_bench.py [--tree DIR] [--only FOLDER ...]

Each side runs in its own subprocess (under a wrapper that reports the child's wall time
and ru_maxrss):
  - drgn: Program(); set_core_dump; load_debug_info([vmlinux]); walk init_task's task list
    (for_each_task, comm); on the s390x dump, which drgn refuses, through a dumpfs mount's
    vmcore (mounted before the clock starts);
  - dumpfs "auto": the types a user gets with --vmlinux (BTF first: the vmlinux's .BTF, the
    dump's own BTF, DWARF last), then the process list (pid, comm);
  - dumpfs "DWARF": the vmlinux's DWARF forced (DwarfTypes.resolve_wanted), then the same list;
  - dumpfs "cached": "auto" again with the layout cache the first run filled.
`--tree DIR` runs dumpfs from another checkout (e.g. the code before a change).
The vmlinux files come from fixtures/fetch-debug-vmlinux.sh (cached after the first run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import fixturecache as fc  # noqa: E402

CASES = [  # folder, dump, whether drgn reads it through a dumpfs mount's vmcore
    ("x86_64-debian11", "qemu-elf.vmcore.xz", False),
    ("s390x-debian", "qemu-dgm.elf.xz", True),      # drgn: "core file is missing NT_AUXV"
    ("x86_64-debian", "mkdf-zlib-d31.kdump.xz", False),
    ("x86_64-debian-many", "mkdf-raw-d31.kdump.xz", False),
]

# runs argv, prints {"seconds", "maxrss_mib", "returncode", "stdout", "stderr"}: one child per
# wrapper, so RUSAGE_CHILDREN is that child's alone
MEASURE = r"""
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"seconds": time.perf_counter() - started, "returncode": done.returncode,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "stdout": done.stdout, "stderr": done.stderr[-2000:]}))
"""

DRGN = r"""
import json, sys
import drgn
from drgn.helpers.linux.pid import for_each_task
prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
prog.load_debug_info([sys.argv[2]])
tasks = [(int(t.pid), t.comm.string_()) for t in for_each_task(prog)]
print(json.dumps({"tasks": len(tasks), "source": "drgn"}))
"""

DUMPFS = r"""
import json, sys
from dumpfs.backends import open_dump
from dumpfs.kernel.context import KernelContext
from dumpfs.kernel.dwarf import DwarfTypes
from dumpfs.kernel.tasks import TaskWalker
dump = open_dump(sys.argv[1])
context = KernelContext(dump, vmlinux=sys.argv[2])
if sys.argv[3] == "dwarf":
    types = DwarfTypes(sys.argv[2], context.release)
    types.resolve_wanted()
else:
    types = context.types
walker = TaskWalker(context.memory, context.symbols, types)
tasks = [(t.pid, t.comm) for t in walker.processes()]
print(json.dumps({"tasks": len(tasks), "source": types.source.split(" of ")[0].split(" (")[0]}))
"""


def measured(argv, env=None, cwd=None) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, *map(str, argv)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=1800)
    result = json.loads(done.stdout)
    if result["returncode"] == 0:
        result.update(json.loads(result["stdout"].strip().splitlines()[-1]))
    else:
        result["error"] = (result["stderr"].strip().splitlines() or ["failed"])[-1]
    del result["stdout"], result["stderr"]
    return result


@contextmanager
def drgn_core(dump: Path, through_mount: bool):
    """The core file drgn opens: the dump, or the vmcore of a dumpfs mount of it."""
    if not through_mount:
        yield dump
        return
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run([sys.executable, "-m", "dumpfs", "mount", dump, mnt], check=True,
                       capture_output=True)
        try:
            yield Path(mnt) / "vmcore"
        finally:
            subprocess.run([sys.executable, "-m", "dumpfs", "umount", mnt], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, help="run dumpfs from this checkout")
    parser.add_argument("--only", nargs="*", help="fixture folders to run")
    args = parser.parse_args()
    tree = (args.tree or HERE.parent).resolve()
    rows = []
    for folder, name, through_mount in CASES:
        if args.only and folder not in args.only:
            continue
        dump, vmlinux = fc.unpacked(folder, name), fc.debug_vmlinux(folder)
        row = {"dump": f"{folder}/{name}", "vmlinux": f"{vmlinux.name} ({vmlinux.stat().st_size >> 20} MiB)"}
        with drgn_core(dump, through_mount) as core:
            row["drgn"] = measured([sys.executable, "-c", DRGN, core, vmlinux])
        for label, mode in (("auto", "auto"), ("DWARF", "dwarf")):
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, DUMPFS_CACHE_DIR=cache, PYTHONPATH=str(tree),
                           PYTHONDONTWRITEBYTECODE="1")
                argv = [sys.executable, "-c", DUMPFS, dump, vmlinux, mode]
                row[label] = measured(argv, env, cwd=tree)     # `-c` puts the cwd first
                if mode == "auto":
                    row["cached"] = measured(argv, env, cwd=tree)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(table(rows, tree, any(through for folder, _name, through in CASES
                                if not args.only or folder in args.only)))
    return 0


def table(rows: list[dict], tree: Path, through_mount: bool) -> str:
    """The results as a Markdown section for bench/RESULTS.md."""
    lines = ["", "## Types from a distro debug vmlinux (bench/kernel_bench.py)", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, dumpfs from {tree}. "
             "Each figure is one subprocess: wall time and peak RSS (ru_maxrss). drgn: load the "
             "vmlinux + for_each_task. dumpfs: types (empty layout cache) + the process list; "
             "auto = BTF first as with --vmlinux, DWARF = the vmlinux's DWARF forced, "
             "cached = auto again on the filled cache.", "",
             "| dump | vmlinux | drgn s | drgn MiB | dumpfs | types from | s | MiB | time ratio "
             "| RSS ratio | tasks (drgn / dumpfs) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        drgn = row["drgn"]
        for label in ("auto", "DWARF", "cached"):
            r = row[label]
            if "error" in r:
                lines.append(f"| {row['dump']} | {row['vmlinux']} | | | {label} | error: {r['error']} "
                             "| | | | | |")
                continue
            ok = "error" not in drgn
            lines.append(
                f"| {row['dump']} | {row['vmlinux']} "
                + (f"| {drgn['seconds']:.2f} | {drgn['maxrss_mib']:.0f} " if ok else "| – | – ")
                + f"| {label} | {r['source']} | {r['seconds']:.2f} | {r['maxrss_mib']:.0f} "
                + (f"| {r['seconds'] / drgn['seconds']:.2f}× | {r['maxrss_mib'] / drgn['maxrss_mib']:.2f}× "
                   f"| {drgn['tasks']} / {r['tasks']} |" if ok else f"| – | – | – / {r['tasks']} |"))
    if through_mount:
        lines.append("\n- drgn reads the s390x dump through a dumpfs mount's vmcore (it refuses "
                     "the QEMU ELF: no NT_AUXV); the FUSE daemon's work is not in drgn's RSS.")
    for row in rows:
        if "error" in row["drgn"]:
            lines.append(f"\n- drgn on {row['dump']}: {row['drgn']['error']}")
    lines.append("\nRatios are dumpfs / drgn (lower is better for dumpfs); the target is at most "
                 "10× drgn's time and 1 GiB of peak RSS on the first use.  drgn counts every "
                 "thread, dumpfs the processes (thread-group leaders).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
