"""proc/: processes from the dump against the fixtures' truth.json, through real FUSE mounts
(with the kernel's own BTF, and with the custom kernels' vmlinux: its .BTF, its DWARF's layouts
equal to it); gdb on proc/PID/core;
drgn on the same dump; hostile memory (loops, pointers into nowhere, absurd sizes) stays bounded."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import time
from functools import lru_cache

import pytest

import fixturecache as fc
from conftest import time_limit
from dumpfs.backends import open_dump
from dumpfs.kernel.context import KernelContext
from dumpfs.model import Dump
from synthetic import patched_dump

VMLINUX = "vmlinux-6.1.192-dumpfs.xz"
BTF_DUMPS = [("x86_64-debian", "qemu-elf.vmcore.xz"), ("x86_64-custom", "qemu-elf.vmcore.xz"),
             ("x86_64-custom", "mkdf-zlib-d1.kdump.xz"), ("s390x-custom", "qemu-dgm.elf.xz"),
             ("x86_64-debian11", "qemu-elf.vmcore.xz")]
DWARF_DUMPS = [("x86_64-custom", "qemu-elf.vmcore.xz"), ("s390x-custom", "qemu-dgm.elf.xz")]
CASES = [(f, n, False) for f, n in BTF_DUMPS] + [(f, n, True) for f, n in DWARF_DUMPS]
IDS = [f"{f}/{n}{'+vmlinux' if v else ''}" for f, n, v in CASES]




pytestmark = pytest.mark.usefixtures("private_type_cache")


def mounted(mount, folder, name, with_vmlinux):
    sources = [fc.unpacked(folder, name)]
    if with_vmlinux:
        sources = ["--vmlinux", fc.unpacked(folder, VMLINUX)] + sources
    return mount(*sources)


def expected_processes(folder):
    """Truth processes with a known parent (late kernel workers in `missing` aside)."""
    return [p for p in fc.truth(folder)["processes"] if "ppid" in p]


def status_fields(text: str) -> dict:
    return dict(line.split(":\t", 1) for line in text.splitlines())


def heap_page_ok(page: bytes, pattern: bytes, phase: int) -> bool:
    reps = pattern * (len(page) // len(pattern) + 2)
    return page == reps[phase:phase + len(page)]


# ---------------------------------------------------------------------------
# Through the mount
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("folder,name,with_vmlinux", CASES, ids=IDS)
def test_proc_lists_every_process(mount, folder, name, with_vmlinux):
    root = mounted(mount, folder, name, with_vmlinux)
    listed = set(os.listdir(root / "proc"))
    for process in expected_processes(folder):
        pid = process["pid"]
        assert str(pid) in listed, f"pid {pid} ({process['comm']}) not in proc/"
        base = root / "proc" / str(pid)
        assert (base / "comm").read_text() == process["comm"] + "\n"
        status = status_fields((base / "status").read_text())
        assert status["Name"] == process["comm"]
        assert int(status["Pid"]) == pid and int(status["PPid"]) == process["ppid"]
        cmdline = (base / "cmdline").read_bytes()
        if process.get("kernel_thread"):
            assert cmdline == b"" and not (base / "mem").exists()
        elif process.get("cmdline") is not None:
            assert cmdline.split(b"\0")[:-1] == [a.encode() for a in process["cmdline"]]
        assert str(pid) in os.listdir(base / "task")
    # whatever else is listed is a kernel thread that started after the snapshot
    truth_pids = {p["pid"] for p in fc.truth(folder)["processes"]}
    for extra in listed - {str(p) for p in truth_pids}:
        assert (root / "proc" / extra / "cmdline").read_bytes() == b"", extra


@pytest.mark.parametrize("folder,name,with_vmlinux", CASES, ids=IDS)
def test_marker_processes_environ_maps_and_heap(mount, folder, name, with_vmlinux):
    root = mounted(mount, folder, name, with_vmlinux)
    truth = fc.truth(folder)
    processes = {p["pid"]: p for p in truth["processes"]}
    env = truth["markers"]["env"]
    base = root / "proc" / str(env["pid"])
    assert env["string"].encode() in (base / "environ").read_bytes().split(b"\0")
    assert (base / "maps").read_text().splitlines() == processes[env["pid"]]["maps"]
    with open(base / "mem", "rb") as mem:
        mem.seek(env["vaddr"])
        assert mem.read(len(env["string"])) == env["string"].encode()
        with pytest.raises(OSError) as caught:
            mem.seek(0)                     # page 0 is never mapped
            mem.read(4096)
        assert caught.value.errno == errno.EIO

    heap = truth["markers"]["heap"]
    hbase = root / "proc" / str(heap["pid"])
    assert (hbase / "maps").read_text().splitlines() == processes[heap["pid"]]["maps"]
    pattern = heap["pattern"].encode()
    with open(hbase / "mem", "rb") as mem:
        for (start, end), phase in zip(heap["ranges"], heap["range_phases"]):
            for address in range(start, end, 4096):
                mem.seek(address)
                assert heap_page_ok(mem.read(4096), pattern, phase), hex(address)
    # regions/<start>-<end> hold the same bytes as mem
    start, end = heap["ranges"][-1]
    region = next(r for r in os.listdir(hbase / "regions")
                  if int(r.split("-")[0], 16) <= start < int(r.split("-")[1], 16))
    with open(hbase / "regions" / region, "rb") as f:
        f.seek(start - int(region.split("-")[0], 16))
        assert heap_page_ok(f.read(4096), pattern, heap["range_phases"][-1])


@pytest.mark.parametrize("folder,name,with_vmlinux", CASES, ids=IDS)
def test_kernel_log_and_sources_name_the_type_source(mount, folder, name, with_vmlinux):
    root = mounted(mount, folder, name, with_vmlinux)
    truth = fc.truth(folder)
    log = (root / "kernel" / "log").read_text().splitlines()
    assert log[-len(truth["log_tail_raw"]):] == truth["log_tail_raw"]
    sources = (root / "kernel" / "sources").read_text()
    # the custom kernels' vmlinux has a .BTF section: used before its DWARF
    assert ("note: types: BTF in the .BTF section of" if with_vmlinux else
            "note: types: BTF in the dump") in sources
    info = (root / "info").read_text()
    assert re.search(r"^  Processes\.*: from the task list; types: (DWARF|BTF)", info, re.M)


def test_s390x_debian_explains_why_there_are_no_processes(mount):
    root = mount(fc.unpacked("s390x-debian", "qemu-dgm.elf.xz"))
    info = (root / "info").read_text()
    line = next(l for l in info.splitlines() if l.startswith("  Processes."))
    assert "processes need type information" in line and "no BTF" in line
    assert "pass --vmlinux or --btf" in line
    assert os.listdir(root / "proc") == ["unavailable"]
    # each step that failed, no guess about the kernel's configuration
    why = (root / "proc" / "unavailable").read_text()
    assert "no --btf or --vmlinux given" in why
    assert "no BTF in the kernel image (0x100000-0xef4898 searched; the kernel's symbols have no __start_BTF)" in why
    assert "CONFIG_" not in why
    assert "pass --vmlinux or --btf" in (root / "kernel" / "sources").read_text()


def test_kernel_threads_have_no_memory_files(mount):
    root = mount(fc.unpacked("x86_64-custom", "qemu-elf.vmcore.xz"))
    names = set(os.listdir(root / "proc" / "2"))
    assert {"comm", "status", "cmdline", "task"} <= names
    assert not names & {"mem", "maps", "core", "environ", "regions"}


# ---------------------------------------------------------------------------
# gdb on proc/PID/core
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("folder,name,gdb,register", [
    ("x86_64-custom", "qemu-elf.vmcore.xz", "gdb", "rip"),
    ("x86_64-debian", "qemu-elf.vmcore.xz", "gdb", "rip"),
    ("s390x-custom", "qemu-dgm.elf.xz", "gdb-multiarch", "pswa"),
])
def test_gdb_loads_the_process_core(mount, folder, name, gdb, register):
    if shutil.which(gdb) is None:
        pytest.fail(f"{gdb} is not installed")
    root = mount(fc.unpacked(folder, name))
    env = fc.truth(folder)["markers"]["env"]
    core = root / "proc" / str(env["pid"]) / "core"
    done = subprocess.run([gdb, "-nx", "-batch", "-c", str(core), "-ex", "info registers",
                           "-ex", f"x/s {env['vaddr']}"], capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert f'"{env["string"]}"' in out, out + done.stderr
    values = dict(re.findall(r"^(\w+)\s+(0x[0-9a-f]+)", out, re.M))
    assert int(values[register], 16) != 0
    maps = (root / "proc" / str(env["pid"]) / "maps").read_text().splitlines()
    pc = int(values[register], 16)
    # the saved user PC is inside an executable mapping of the process
    assert any(int(l[:l.index("-")], 16) <= pc < int(l.split()[0].split("-")[1], 16)
               and l.split()[1][2] == "x" for l in maps), hex(pc)


# ---------------------------------------------------------------------------
# drgn on the mounted vmcore of a flattened kdump it cannot open itself
# ---------------------------------------------------------------------------

DRGN_SCRIPT = """
import sys, drgn
from drgn.helpers.linux.pid import for_each_task
prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
prog.load_debug_info([sys.argv[2]])
for t in for_each_task(prog):
    print(int(t.pid), t.comm.string_().decode())
"""


def test_drgn_lists_the_same_tasks(mount):
    folder = "x86_64-custom"
    root = mount(fc.unpacked(folder, "qemu-kdump-zlib.vmcore.xz"))
    done = subprocess.run(["python3", "-c", DRGN_SCRIPT, str(root / "vmcore"),
                           str(fc.unpacked(folder, VMLINUX))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = {(int(pid), comm) for pid, comm in
              (line.split(" ", 1) for line in done.stdout.splitlines())} - {(0, "swapper/0")}
    ours = set()
    for pid in os.listdir(root / "proc"):
        for tid in os.listdir(root / "proc" / pid / "task"):
            ours.add((int(tid), (root / "proc" / pid / "task" / tid / "comm").read_text()[:-1]))
    assert ours == theirs


# ---------------------------------------------------------------------------
# Types: DWARF equals BTF; the second use comes from the cache
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["x86_64-custom", "s390x-custom"])
def test_dwarf_layouts_equal_btf_and_are_cached(folder, tmp_path, monkeypatch):
    from dumpfs.kernel.btf import btf_from_file
    from dumpfs.kernel.dwarf import WANTED_STRUCTS, DwarfTypes
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(tmp_path))
    vmlinux = fc.unpacked(folder, VMLINUX)
    started = time.monotonic()
    dwarf = DwarfTypes(vmlinux, "6.1.192-dumpfs")
    assert not dwarf.from_cache
    dwarf.resolve_wanted()
    first = time.monotonic() - started
    assert first < 30, f"first DWARF resolution took {first:.1f} s"
    btf = btf_from_file(vmlinux)
    for name in WANTED_STRUCTS:
        assert dwarf.struct(name) == btf.struct(name), name
    assert dwarf.enum("maple_type") == btf.enum("maple_type")
    started = time.monotonic()
    cached = DwarfTypes(vmlinux, "6.1.192-dumpfs")
    assert cached.from_cache
    for name in WANTED_STRUCTS:
        assert cached.struct(name) == btf.struct(name), name
    assert cached.cu_scanned == 0
    assert time.monotonic() - started < 2


def test_a_vmlinux_of_another_kernel_is_refused():
    dump = open_dump(str(fc.unpacked("x86_64-debian", "qemu-elf.vmcore.xz")))
    context = KernelContext(dump, vmlinux=fc.unpacked("x86_64-custom", VMLINUX))
    types = context.types           # falls back to the dump's own BTF
    assert "BTF in the dump" in types.source
    assert any("another kernel" in n for n in context.notes)


# ---------------------------------------------------------------------------
# Hostile memory: patched copies of a real dump
# ---------------------------------------------------------------------------

@lru_cache(maxsize=None)
def original():
    dump = open_dump(str(fc.unpacked("x86_64-custom", "qemu-elf.vmcore.xz")))
    context = KernelContext(dump)
    tasks = {t.pid: t for t in context.tasks.processes()}
    return dump, context, tasks


def patched(pointer_patches: dict[int, int]) -> Dump:
    """A copy of the x86_64-custom dump whose u64 at each kernel virtual address is replaced."""
    dump, context, _ = original()
    kmem = context.memory
    patches = {kmem.translate(v): value.to_bytes(8, "little") for v, value in pointer_patches.items()}
    return patched_dump(dump, patches)


def offset(struct, member):
    return original()[1].types.offsetof(struct, member)


def test_cyclic_task_list_is_cut(tmp_path):
    _, _, tasks = original()
    # pid 36's tasks.next points back to pid 35's list node: a loop that never reaches the head
    hostile = patched({tasks[36].address + offset("task_struct", "tasks"):
                       tasks[35].address + offset("task_struct", "tasks")})
    with time_limit(20):
        walker = KernelContext(hostile).tasks
        listed = walker.processes()
    # the walk back from the head finds the rest: every task is still listed
    assert [t.pid for t in listed] == list(tasks)
    assert any("loops back" in p for p in walker.problems)


def test_task_list_into_nowhere_and_threads_into_nowhere():
    _, _, tasks = original()
    nowhere = 0xFFFF_DEAD_0000_0000
    hostile = patched({tasks[35].address + offset("task_struct", "tasks"): nowhere,
                       tasks[1].signal + offset("signal_struct", "thread_head"): nowhere})
    with time_limit(20):
        walker = KernelContext(hostile).tasks
        listed = walker.processes()
        threads = walker.threads_of(listed[0])
    assert [t.pid for t in listed] == list(tasks)
    assert any("unreadable" in p for p in walker.problems)
    assert [t.pid for t in threads] == [1]


def test_maple_tree_with_a_loop_gives_eio():
    from dumpfs.views import build_tree
    _, context, tasks = original()
    mm = tasks[36].mm
    root_slot = mm + offset("mm_struct", "mm_mt.ma_root")
    root = context.memory.read_u64(root_slot)
    node = root & ~0xFF
    as_internal = node | (context.types.enum_value("maple_type", "maple_range_64") << 3) | 2
    # the root node becomes an internal node whose first child is itself
    hostile = patched({root_slot: as_internal,
                       node + offset("maple_range_64", "slot"): as_internal})
    tree = build_tree(hostile)
    with time_limit(20):
        maps = tree.walk("proc/36/maps")
        with pytest.raises(OSError) as caught:
            maps.read(0, maps.size)
        assert caught.value.errno == errno.EIO and "twice" in str(caught.value)
        core = tree.walk("proc/36/core")
        with pytest.raises(OSError):
            core.read(0, 64)
        assert tree.walk("proc/35/maps").size > 0       # other processes are unaffected


def test_absurd_argument_range_is_bounded():
    from dumpfs.kernel.mm import MAX_ARGS
    from dumpfs.views import build_tree
    _, _, tasks = original()
    mm = tasks[38].mm
    hostile = patched({mm + offset("mm_struct", "arg_end"): 1 << 62})
    tree = build_tree(hostile)
    with time_limit(20):
        cmdline = tree.walk("proc/38/cmdline")
        try:
            data = cmdline.read(0, cmdline.size)
            assert len(data) <= MAX_ARGS
        except OSError as exc:
            assert exc.errno == errno.EIO


def test_mem_reads_of_unmapped_pages_fail_with_the_reason():
    from dumpfs.views import build_tree
    dump, context, tasks = original()
    tree = build_tree(dump, context)
    mem = tree.walk("proc/35/mem")
    with pytest.raises(OSError) as caught:
        mem.read(0x1000, 16)
    assert caught.value.errno == errno.EIO and "not mapped" in str(caught.value)


def test_excluded_user_pages_say_so():
    """-d 31 dumps drop user pages: reads say "excluded"; environ is still listed with its size
    (from the mm_struct), only its read fails."""
    from dumpfs.views import build_tree
    dump = open_dump(str(fc.unpacked("x86_64-custom", "mkdf-lzo-d31.kdump.xz")))
    tree = build_tree(dump)
    env = fc.truth("x86_64-custom")["markers"]["env"]
    mem = tree.walk(f"proc/{env['pid']}/mem")
    with pytest.raises(OSError) as caught:
        mem.read(env["vaddr"], 16)
    assert "excluded" in str(caught.value)
    environ = tree.walk(f"proc/{env['pid']}/environ")
    assert environ.size > len(env["string"])
    with pytest.raises(OSError) as caught:
        environ.read(0, environ.size)
    assert caught.value.errno == errno.EIO and "excluded" in str(caught.value)
    assert tree.walk(f"proc/{env['pid']}/comm").read(0, 64) == b"sleep\n"


def test_info_command_explains_processes_too():
    """`dumpfs info` (no mount) says the same as the mounted info, with and without a vmlinux."""
    from conftest import run_dumpfs
    source = fc.unpacked("s390x-debian", "qemu-dgm.elf.xz")
    done = run_dumpfs("info", source)
    assert done.returncode == 0, done.stderr
    assert "pass --vmlinux or --btf" in done.stdout
    custom = fc.unpacked("x86_64-custom", "qemu-elf.vmcore.xz")
    vmlinux = fc.unpacked("x86_64-custom", "vmlinux-6.1.192-dumpfs.xz")
    done = run_dumpfs("info", "--vmlinux", vmlinux, custom)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^  Processes\.*: from the task list; types: BTF in the \.BTF section",
                     done.stdout, re.M)
