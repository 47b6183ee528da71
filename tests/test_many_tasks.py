"""Every task the dump holds is shown: x86_64-debian-many (2,557 processes, makedumpfile -d 31)
through a real mount against its truth.json, and walks that go on past what they cannot read
(list entries, task_struct pages, pid IDR nodes) in copies of real dumps with pages left out."""

from __future__ import annotations

import errno
import os
import re
import time
from functools import lru_cache

import pytest

import fixturecache as fc
from conftest import time_limit
from dumpfs.backends import open_dump
from dumpfs.errors import MemoryUnavailable
from dumpfs.kernel.context import KernelContext
from dumpfs.views import build_tree
from synthetic import excluding, patched_dump

MANY = ("x86_64-debian-many", "mkdf-raw-d31.kdump.xz")
CUSTOM = ("x86_64-custom", "qemu-elf.vmcore.xz")
# kernel threads of truth's snapshot that exited before the dump was taken: the dump's pid IDR
# holds no struct pid for them (drgn's find_task finds neither)
EXITED_KWORKERS = {31: "kworker/u4:2", 53: "kworker/0:2"}
# a task_struct whose tail page makedumpfile left out (an all-zero page): the first task the
# old walk lost, and every task after it with it
TAIL_EXCLUDED = (350, 0xFFFF8CF4C3BFE100)
NOWHERE = 0xFFFF_DEAD_0000_0000


@lru_cache(maxsize=None)
def opened(folder: str, name: str):
    dump = open_dump(str(fc.unpacked(folder, name)))
    context = KernelContext(dump)
    return dump, context, {t.pid: t for t in context.task_list.processes}


def offset(struct: str, member: str) -> int:
    return opened(*CUSTOM)[1].types.offsetof(struct, member)


def page_of(context: KernelContext, address: int) -> int:
    """The physical page of kernel virtual `address`."""
    return context.memory.translate(address)


def walk(dump):
    """A fresh walk of `dump`, bounded in time."""
    with time_limit(30):
        context = KernelContext(dump)
        return context, context.task_list


# ---------------------------------------------------------------------------
# x86_64-debian-many through the mount
# ---------------------------------------------------------------------------

def test_every_process_of_the_filtered_dump_is_listed(mount):
    root = mount(fc.unpacked(*MANY))
    truth = fc.truth(MANY[0])["processes"]
    started = time.monotonic()
    listed = set(os.listdir(root / "proc"))
    comms = {pid: (root / "proc" / pid / "comm").read_text() for pid in listed}
    elapsed = time.monotonic() - started
    users = [p for p in truth if not p["kernel_thread"]]
    assert len(users) == 2507
    for process in users:
        assert comms.get(str(process["pid"])) == process["comm"] + "\n", process["pid"]
    gone = {p["pid"]: p["comm"] for p in truth if str(p["pid"]) not in listed}
    assert gone == EXITED_KWORKERS
    for process in truth:
        if process["kernel_thread"] and process["pid"] not in gone:
            assert comms[str(process["pid"])] == process["comm"] + "\n"
    # whatever else is listed is a kernel thread that started after the snapshot
    for extra in listed - {str(p["pid"]) for p in truth}:
        assert (root / "proc" / extra / "cmdline").read_bytes() == b"", extra
    assert elapsed < 60, f"listing proc/ and reading every comm took {elapsed:.1f} s"
    info = (root / "info").read_text()
    assert re.search(rf"^  Tasks\.*: {len(listed)} shown \({len(listed)} processes\), "
                     r"none unreadable$", info, re.M), info


def test_the_exited_kworkers_are_not_in_the_dump():
    """The two kernel threads truth lists but proc/ does not: no struct pid in the dump's IDR."""
    _, context, processes = opened(*MANY)
    in_idr = {pid for pid, _ in context.tasks.pid_idr_tasks()[0]}
    assert len(in_idr) == len(processes)
    assert not set(EXITED_KWORKERS) & in_idr
    truth = {p["pid"]: p for p in fc.truth(MANY[0])["processes"]}
    for pid, comm in EXITED_KWORKERS.items():
        assert truth[pid]["comm"] == comm and truth[pid]["kernel_thread"]


def test_a_task_whose_tail_page_is_excluded_is_shown(mount):
    pid, address = TAIL_EXCLUDED
    dump, context, processes = opened(*MANY)
    with pytest.raises(MemoryUnavailable, match="excluded"):
        context.memory.read(address, context.types.sizeof("task_struct"))
    task = processes[pid]
    assert task.address == address and not task.missing
    root = mount(fc.unpacked(*MANY))
    assert (root / "proc" / str(pid) / "comm").read_text() == "sleep\n"
    assert "PPid:\t" in (root / "proc" / str(pid) / "status").read_text()


def test_a_task_that_cannot_be_read_is_named_with_the_reason():
    dump, context, processes = opened(*MANY)
    victim = processes[2000]
    pid_offset = context.types.offsetof("task_struct", "pid")
    page = page_of(context, victim.address + pid_offset) & ~0xFFF
    hostile = excluding(dump, [page])
    expected = {str(pid) for pid, task in processes.items()
                if page_of(context, task.address + pid_offset) & ~0xFFF != page}
    tree = build_tree(hostile)
    with time_limit(60):
        listed = set(tree.walk("proc").children)
        sources = tree.walk("kernel/sources").read(0, 1 << 24).decode()
        info = tree.walk("info").read(0, 1 << 20).decode()
    assert "2000" not in listed and listed == expected
    line = next(l for l in sources.splitlines() if f"{victim.address:#x}" in l)
    assert line.startswith("problem: processes: a task cannot be read: ")
    assert "pid 2000" in line and "excluded by the dump writer" in line, line
    assert re.search(rf"^  Tasks\.*: {len(listed)} shown \({len(listed)} processes\), "
                     r"1 could not be read \(see Problems\)$", info, re.M), info


# ---------------------------------------------------------------------------
# Walks past what they cannot read: x86_64-custom with pages left out
# ---------------------------------------------------------------------------

def patched(dump, context, pointer_patches: dict[int, int]):
    kmem = context.memory
    return patched_dump(dump, {kmem.translate(v): value.to_bytes(8, "little")
                               for v, value in pointer_patches.items()})


def test_an_excluded_list_entry_is_passed_walking_back_from_the_head():
    dump, context, tasks = opened(*CUSTOM)
    lost = tasks[36]
    hostile = excluding(dump, [page_of(context, lost.address + offset("task_struct", "tasks"))])
    _, found = walk(hostile)
    assert [t.pid for t in found.processes] == [pid for pid in tasks if pid != 36]
    assert any("walking back from the head" in n and "excluded" in n for n in found.notes)
    assert len(found.unreadable) == 1 and f"{lost.address:#x}" in found.unreadable[0]


def test_tasks_between_two_unreadable_entries_come_from_the_pid_idr():
    """Forwards the list stops at pid 36 (excluded), backwards at pid 46 (its prev pointer goes
    nowhere): 37 and 38, on neither walk, are found through the pid IDR."""
    dump, context, tasks = opened(*CUSTOM)
    hostile = patched(dump, context, {tasks[46].address + offset("task_struct", "tasks")
                                      + offset("list_head", "prev"): NOWHERE})
    hostile = excluding(hostile, [page_of(context, tasks[36].address
                                          + offset("task_struct", "tasks"))])
    _, found = walk(hostile)
    assert [t.pid for t in found.processes] == [pid for pid in tasks if pid != 36]
    assert any("walking back from the head: entry" in n for n in found.notes), found.notes
    assert any(n.startswith("2 processes found only in the pid IDR: 37 38") for n in found.notes)


def test_a_broken_list_head_leaves_the_pid_idr():
    dump, context, tasks = opened(*CUSTOM)
    head = context.tasks.init_task + offset("task_struct", "tasks")
    hostile = patched(dump, context, {head: NOWHERE, head + offset("list_head", "prev"): NOWHERE})
    _, found = walk(hostile)
    assert [t.pid for t in found.processes] == list(tasks)


def test_members_on_an_excluded_page_fail_only_the_files_that_need_them():
    """pid 47's comm, cred and signal lie on another page than its pid and mm."""
    dump, context, tasks = opened(*CUSTOM)
    task = tasks[47]
    assert page_of(context, task.address + offset("task_struct", "comm")) != \
        page_of(context, task.address + offset("task_struct", "pid"))
    hostile = excluding(dump, [page_of(context, task.address + offset("task_struct", "comm"))])
    tree = build_tree(hostile)
    with time_limit(30):
        assert "47" in tree.walk("proc").children
        for name in ("comm", "status", "stat"):
            with pytest.raises(OSError) as caught:
                tree.walk(f"proc/47/{name}").read(0, 4096)
            assert caught.value.errno == errno.EIO and "excluded" in str(caught.value)
        maps = tree.walk("proc/47/maps")
        assert maps.read(0, maps.size) == build_tree(dump).walk("proc/47/maps").read(0, 1 << 20)
        assert tree.walk("proc/1/comm").read(0, 64) == b"init\n"


def test_a_looping_pid_idr_is_cut():
    dump, context, tasks = opened(*CUSTOM)
    types = context.types
    idr = context.symbols.address("init_pid_ns") + types.offsetof("pid_namespace", "idr")
    root = context.memory.read_pointer(idr + types.offsetof("idr", "idr_rt.xa_head"))
    assert root & 3 == 2                        # a node: more than one pid
    node = root - 2
    slots = node + types.offsetof("xa_node", "slots")
    # slot 0 of the root (pids 0..63 or a child holding them) becomes the root itself; the
    # task list's head points nowhere, so that the IDR is searched (the walk back finds all)
    head = context.tasks.init_task + offset("task_struct", "tasks")
    hostile = patched(dump, context, {slots: root, head: NOWHERE})
    _, found = walk(hostile)
    assert any("reached twice" in n for n in found.notes), found.notes
    assert [t.pid for t in found.processes] == list(tasks)


def test_a_thread_found_only_in_the_pid_idr_joins_its_group():
    """pid 47 made a thread of pid 46 (its tgid patched) and cut off the task list on both
    sides: the IDR finds it, and it is shown under proc/46/task/, not as a process."""
    dump, context, tasks = opened(*CUSTOM)
    list_offset = offset("task_struct", "tasks")
    hostile = patched(dump, context, {
        tasks[46].address + list_offset: NOWHERE,
        tasks[57].address + list_offset + offset("list_head", "prev"): NOWHERE})
    tgid = tasks[47].address + offset("task_struct", "tgid")
    hostile = patched_dump(hostile, {context.memory.translate(tgid): (46).to_bytes(4, "little")})
    _, found = walk(hostile)
    processes = {t.pid: t for t in found.processes}
    assert 47 not in processes and set(processes) == set(tasks) - {47}
    assert [t.pid for t in processes[46].threads] == [46, 47]
    assert found.task_count == len(tasks)
    tree = build_tree(hostile)
    with time_limit(30):
        assert set(tree.walk("proc/46/task").children) == {"46", "47"}
        assert b"Threads:\t2\n" in tree.walk("proc/46/status").read(0, 4096)
