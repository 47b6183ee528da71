#!/usr/bin/env python3
"""proc/ benchmark: list the processes and read a process's 1 MiB heap through a dumpfs
mount, against drgn (for_each_task; access_remote_vm on the task's mm) on the same dump.

    python3 bench/proc_bench.py [--append bench/RESULTS.md] [--scale-only]

(DRGN_PYTHON=/path/to/python runs drgn with another interpreter than dumpfs.)

Each dumpfs figure is a fresh mount (cold caches of dumpfs; the dump file itself is in the
OS page cache after the first run).  drgn's time to load the vmlinux's debug info is
reported apart from the walk itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import fixturecache as fc  # noqa: E402

CASES = [  # folder, dump, vmlinux for drgn (None: drgn cannot get types for it)
    ("x86_64-custom", "qemu-elf.vmcore.xz", "vmlinux-6.1.192-dumpfs.xz"),
    ("x86_64-debian", "qemu-elf.vmcore.xz", None),
    ("s390x-custom", "qemu-dgm.elf.xz", "vmlinux-6.1.192-dumpfs.xz"),
]
# the scale case: a guest with 2,555 processes; drgn reads the distro's debug vmlinux
SCALE = ("x86_64-debian-many", "mkdf-raw-d31.kdump.xz",
         Path.home() / ".cache/dumpfs/debug-vmlinux/vmlinux-6.1.0-57-amd64")
RUNS = 3
# the Python that has drgn (may differ from the one that runs dumpfs, e.g. a venv's)
DRGN_PYTHON = os.environ.get("DRGN_PYTHON", sys.executable)

# drgn on sys.argv[1] (the dump) with sys.argv[2] (the vmlinux): `program()` is a fresh one
DRGN_PROGRAM = r"""
import json, sys, time
import drgn
from drgn.helpers.linux.pid import for_each_task, find_task
from drgn.helpers.linux.mm import access_remote_vm


def program():
    prog = drgn.Program()
    prog.set_core_dump(sys.argv[1])
    prog.load_debug_info([sys.argv[2]])
    return prog
"""

DRGN = DRGN_PROGRAM + r"""
t0 = time.perf_counter()
prog = program()
t1 = time.perf_counter()
tasks = [(int(t.pid), t.comm.string_()) for t in for_each_task(prog)]
t2 = time.perf_counter()
task = find_task(prog, int(sys.argv[3]))
data = access_remote_vm(task.mm, int(sys.argv[4]), int(sys.argv[5]))
t3 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "list": t2 - t1, "heap": t3 - t2, "tasks": len(tasks),
                  "heap_ok": data.count(sys.argv[6].encode()[:1]) > 0}))
"""

# the walk with every comm, on a fresh program each run (cold caches, as dumpfs' fresh mount)
DRGN_WALK = DRGN_PROGRAM + r"""
t0 = time.perf_counter()
program()
t1 = time.perf_counter()
times = []
for _ in range(int(sys.argv[3])):
    prog = program()
    t2 = time.perf_counter()
    tasks = [(int(t.pid), t.comm.string_()) for t in for_each_task(prog)]
    times.append(time.perf_counter() - t2)
print(json.dumps({"load": t1 - t0, "list": sorted(times)[len(times) // 2], "tasks": len(tasks)}))
"""


def dumpfs(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dumpfs", *map(str, args)], capture_output=True,
                          text=True, **kw)


def time_dumpfs(dump: Path, vmlinux: Path | None, pid: int, start: int, size: int, env=None):
    with tempfile.TemporaryDirectory() as mnt:
        extra = ["--vmlinux", vmlinux] if vmlinux else []
        t0 = time.perf_counter()
        done = dumpfs("mount", *extra, dump, mnt, env=env)
        if done.returncode:
            raise RuntimeError(done.stderr)
        t1 = time.perf_counter()
        try:
            pids = os.listdir(Path(mnt) / "proc")
            for p in pids:
                (Path(mnt) / "proc" / p / "comm").read_bytes()
            t2 = time.perf_counter()
            with open(Path(mnt) / "proc" / str(pid) / "mem", "rb") as mem:
                mem.seek(start)
                data = mem.read(size)
            t3 = time.perf_counter()
        finally:
            dumpfs("umount", mnt)
    return {"mount": t1 - t0, "list": t2 - t1, "heap": t3 - t2, "tasks": len(pids),
            "heap_bytes": len(data)}


def daemon_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def list_every_comm(mnt: str, pid: int) -> dict:
    """`ls proc/` then every process's `comm`: wall seconds, and the server's CPU seconds
    (steadier than wall time on a loaded machine)."""
    cpu0, t0 = daemon_cpu(pid), time.perf_counter()
    pids = os.listdir(Path(mnt) / "proc")
    t1, cpu1 = time.perf_counter(), daemon_cpu(pid)
    for p in pids:
        (Path(mnt) / "proc" / p / "comm").read_bytes()
    t2, cpu2 = time.perf_counter(), daemon_cpu(pid)
    return {"ls": t1 - t0, "list": t2 - t0, "tasks": len(pids), "ls_cpu": cpu1 - cpu0,
            "comm_cpu": cpu2 - cpu1, "load": os.getloadavg()[0]}


def time_listing(dump: Path) -> dict:
    """A fresh mount: `ls proc/` then every process's `comm`."""
    with tempfile.TemporaryDirectory() as mnt:
        done = dumpfs("mount", dump, mnt)
        if done.returncode:
            raise RuntimeError(done.stderr)
        try:
            found = subprocess.run(["pgrep", "-f", f"dumpfs mount .*{mnt}$"], capture_output=True,
                                   text=True).stdout.split()
            return list_every_comm(mnt, int(found[0]))
        finally:
            dumpfs("umount", mnt)


def time_noop_listing(count: int) -> dict:
    """The floor: the same listing on bench/noop_fs.py --proc (FUSE and pyfuse3 alone)."""
    with tempfile.TemporaryDirectory() as mnt:
        server = subprocess.Popen([sys.executable, str(HERE / "noop_fs.py"), "--proc", str(count), mnt])
        try:
            deadline = time.monotonic() + 30
            while not os.path.ismount(mnt):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("noop_fs --proc did not mount")
                time.sleep(0.02)
            return list_every_comm(mnt, server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)


def median(runs: list[dict], key: str) -> float:
    return sorted(r[key] for r in runs)[len(runs) // 2]


def scale_case() -> dict:
    """x86_64-debian-many: fresh mount, `ls proc` + every `comm`, median of RUNS; drgn walks
    the same task list reading every comm (its debug-info load apart)."""
    folder, name, vmlinux = SCALE
    dump = fc.unpacked(folder, name)
    runs = [time_listing(dump) for _ in range(RUNS)]
    floor = [time_noop_listing(runs[0]["tasks"]) for _ in range(RUNS)]
    row = {"dump": f"{folder}/{name}", "runs": runs, "ls": median(runs, "ls"),
           "list": median(runs, "list"), "tasks": runs[0]["tasks"], "floor_runs": floor,
           "floor": median(floor, "list"), "ls_cpu": median(runs, "ls_cpu"),
           "comm_cpu": median(runs, "comm_cpu"), "floor_cpu": median(floor, "comm_cpu"),
           "load": median(runs, "load")}
    if vmlinux.exists():
        done = subprocess.run([DRGN_PYTHON, "-c", DRGN_WALK, str(dump), str(vmlinux), str(RUNS)],
                              capture_output=True, text=True, timeout=1200)
        row["drgn"] = json.loads(done.stdout) if done.returncode == 0 else \
            {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    else:
        row["drgn"] = {"error": f"no {vmlinux}"}
    return row


def scale_lines(row: dict) -> list[str]:
    drgn = row["drgn"]
    lines = ["", f"Scale: {row['dump']} ({row['tasks']} processes), fresh mount, median of "
             f"{RUNS}, load {row['load']:.1f}: `ls proc` {row['ls']:.3f} s, `ls proc` + every "
             f"`comm` {row['list']:.3f} s (target < 2 s).  The floor, the same on "
             f"`noop_fs.py --proc` (FUSE and pyfuse3 alone): {row['floor']:.3f} s "
             f"({row['list'] / row['floor']:.1f}x).  Server CPU: `ls` {row['ls_cpu']:.2f} s, "
             f"the comms {row['comm_cpu']:.2f} s (no-op server {row['floor_cpu']:.2f} s)."]
    if "error" in drgn:
        lines.append(f"drgn: {drgn['error']}")
    else:
        lines.append(f"drgn (debug vmlinux, load {drgn['load']:.1f} s apart): for_each_task + "
                     f"every comm {drgn['list']:.3f} s ({drgn['tasks']} tasks); ratio "
                     f"{row['list'] / drgn['list']:.1f}x (target <= 10x).")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--append", metavar="RESULTS.md")
    parser.add_argument("--scale-only", action="store_true",
                        help="only the x86_64-debian-many listing case")
    args = parser.parse_args()
    scale = scale_case()
    print(json.dumps(scale), flush=True)
    if args.scale_only:
        print("\n".join(scale_lines(scale)))
        return 0
    rows = []
    for folder, name, vmlinux_name in CASES:
        truth = fc.truth(folder)
        heap = truth["markers"]["heap"]
        start, end = heap["ranges"][-1]
        size = min(end - start, 1 << 20)
        dump = fc.unpacked(folder, name)
        vmlinux = fc.unpacked(folder, vmlinux_name) if vmlinux_name else None
        ours = time_dumpfs(dump, None, heap["pid"], start, size)
        row = {"dump": f"{folder}/{name}", "size": size, "dumpfs_btf": ours}
        if vmlinux:
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, DUMPFS_CACHE_DIR=cache)
                row["dumpfs_dwarf_first"] = time_dumpfs(dump, vmlinux, heap["pid"], start, size, env)
                row["dumpfs_dwarf_cached"] = time_dumpfs(dump, vmlinux, heap["pid"], start, size, env)
            done = subprocess.run([DRGN_PYTHON, "-c", DRGN, str(dump), str(vmlinux), str(heap["pid"]),
                                   str(start), str(size), heap["pattern"]],
                                  capture_output=True, text=True, timeout=600)
            row["drgn"] = json.loads(done.stdout) if done.returncode == 0 else \
                {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
        else:
            row["drgn"] = {"error": "no vmlinux with debug info for this kernel"}
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = ["", "## proc/ (bench/proc_bench.py)", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs. dumpfs: fresh mount, "
             "`ls proc/` + every `comm` (list), then one read of the heap marker's 1 MiB "
             "mapping from `proc/PID/mem` (heap). drgn: `for_each_task` + comm (list), "
             "`access_remote_vm(task.mm, ...)` (heap); its debug-info load is apart.", "",
             "| dump | types | mount s | list s | heap s | drgn load s | drgn list s | drgn heap s "
             "| list ratio | heap ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    remarks = []
    for row in rows:
        drgn = row["drgn"]
        for label, key in (("BTF (dump)", "dumpfs_btf"), ("DWARF, 1st", "dumpfs_dwarf_first"),
                           ("DWARF, cached", "dumpfs_dwarf_cached")):
            if key not in row:
                continue
            r = row[key]
            if "error" in drgn:
                tail = "| – | – | – | – | – |"
            else:
                tail = (f"| {drgn['load']:.2f} | {drgn['list']:.3f} | {drgn['heap']:.3f} "
                        f"| {r['list'] / drgn['list']:.1f}× | {r['heap'] / drgn['heap']:.1f}× |")
            lines.append(f"| {row['dump']} | {label} | {r['mount']:.2f} | {r['list']:.3f} "
                         f"| {r['heap']:.3f} " + tail)
        if "error" in drgn:
            remarks.append(f"drgn on {row['dump']}: {drgn['error']}")
    lines += scale_lines(scale)
    lines.append("")
    lines += [f"- {r}" for r in remarks]
    lines.append("\nRatios are dumpfs time / drgn time (lower is better for dumpfs); "
                 "a DWARF mount's list time includes resolving the types (first) or reading "
                 "the layout cache (cached).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
