"""Tasks, read like the kernel's C (drgn's helpers are the model).

    for_each_process:   init_task.tasks, a circular list_head of thread-group leaders
    for_each_thread:    leader->signal->thread_head, threads linked by task->thread_node
                        (task->thread_group on kernels without thread_node)
    ppid:               task->real_parent->tgid (as /proc/PID/status shows it)
    state:              task->__state (task->state before 5.14) | task->exit_state

Dumps can be hostile: every list walk is capped (MAX_TASKS, MAX_THREADS) and
remembers where it has been, so a cycle or a pointer into nowhere ends the
walk with a reason instead of hanging.  A task is read with one read of its
task_struct and unpacked with struct.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

from dumpfs.errors import MemoryUnavailable, TypeMissing, WalkError
from dumpfs.kernel.address_space import KernelMemory
from dumpfs.kernel.types import Types

MAX_TASKS = 1 << 16
MAX_THREADS = 1 << 14
PF_KTHREAD = 0x00200000
TASK_REPORT = 0x7F
TASK_IDLE = 0x0402              # TASK_UNINTERRUPTIBLE | TASK_NOLOAD
TASK_RTLOCK_WAIT = 0x1000
TASK_STATE_NAMES = ["R (running)", "S (sleeping)", "D (disk sleep)", "T (stopped)",
                    "t (tracing stop)", "X (dead)", "Z (zombie)", "P (parked)", "I (idle)"]


@dataclass
class Task:
    address: int
    pid: int
    tgid: int
    comm: str
    flags: int
    state: int                  # __state | exit_state
    mm: int
    real_parent: int
    cred: int
    signal: int
    stack: int
    ppid: int = 0
    uids: tuple = (0, 0, 0, 0)   # real, effective, saved, fs
    gids: tuple = (0, 0, 0, 0)
    threads: list["Task"] = field(default_factory=list)   # leaders only, leader first

    @property
    def is_kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD) or not self.mm

    @property
    def state_text(self) -> str:
        return TASK_STATE_NAMES[task_state_index(self.state)]


def task_state_index(state: int) -> int:
    """__task_state_index(): fls() of the reported bits."""
    reported = state & TASK_REPORT
    if state == TASK_IDLE:
        reported = 0x80         # TASK_REPORT_IDLE
    elif state == TASK_RTLOCK_WAIT:
        reported = 0x02
    return min(reported.bit_length(), len(TASK_STATE_NAMES) - 1)


class Offsets:
    """Member offsets of one struct, looked up once; absent optional members are None."""

    def __init__(self, types: Types, struct_name: str, required=(), optional=()):
        self.size = types.sizeof(struct_name)
        self.offsets: dict[str, int | None] = {}
        for path in required:
            self.offsets[path] = types.offsetof(struct_name, path)
        for path in optional:
            try:
                self.offsets[path] = types.offsetof(struct_name, path)
            except TypeMissing:
                self.offsets[path] = None
        for path, value in self.offsets.items():
            if not path.startswith("_"):
                setattr(self, path.replace(".", "_"), value)

    def __getitem__(self, path: str) -> int | None:
        return self.offsets[path]


class TaskWalker:
    """Reads tasks of one kernel: `processes()` lists thread-group leaders with their threads."""

    def __init__(self, kmem: KernelMemory, symbols, types: Types):
        self.kmem = kmem
        self.arch = kmem.dump.arch.kernel
        self.types = types
        self.prefix = kmem.prefix
        self.init_task = symbols.address("init_task")
        if self.init_task is None:
            raise WalkError("no symbol init_task (the task list starts there): without "
                            "CONFIG_KALLSYMS_ALL pass --system-map or --vmlinux")
        try:
            self.t = Offsets(types, "task_struct",
                             ("tasks", "pid", "tgid", "comm", "real_parent", "mm", "flags",
                              "real_cred", "signal", "stack"),
                             ("__state", "state", "exit_state", "thread_node", "thread_group"))
            self.cred = Offsets(types, "cred", ("uid", "gid", "suid", "sgid", "euid", "egid",
                                                "fsuid", "fsgid"))
            self.sig = Offsets(types, "signal_struct", (), ("thread_head",))
        except TypeMissing as exc:
            raise WalkError(f"type information lacks what tasks need: {exc}") from None
        if self.t["__state"] is None and self.t.state is None:
            raise WalkError("task_struct has neither __state nor state")
        self._u32 = struct.Struct(self.prefix + "I")
        self._s32 = struct.Struct(self.prefix + "i")
        self._u64 = struct.Struct(self.prefix + "Q")
        self.problems: list[str] = []      # of the last complete walk, and threads since
        self._problems_lock = threading.Lock()
        self._parents: dict[int, int] = {}

    # -- one task -----------------------------------------------------------
    def read_task(self, address: int) -> Task:
        t = self.t
        try:
            raw = self.kmem.read(address, t.size)
        except MemoryUnavailable as exc:
            raise WalkError(f"task_struct at {address:#x} unreadable: {exc}") from None
        u64 = lambda off: self._u64.unpack_from(raw, off)[0]            # noqa: E731
        s32 = lambda off: self._s32.unpack_from(raw, off)[0]            # noqa: E731
        if t["__state"] is not None:
            state = self._u32.unpack_from(raw, t["__state"])[0]
        else:
            state = u64(t.state)
        if t.exit_state is not None:
            state |= self._u32.unpack_from(raw, t.exit_state)[0]
        comm = raw[t.comm:t.comm + 16].split(b"\0", 1)[0].decode("utf-8", "replace")
        return Task(address, s32(t.pid), s32(t.tgid), comm, self._u32.unpack_from(raw, t.flags)[0],
                    state & 0xFFFFFFFF, u64(t.mm), u64(t.real_parent), u64(t.real_cred),
                    u64(t.signal), u64(t.stack))

    def _fill(self, task: Task) -> Task:
        """ppid (the real parent's tgid) and credentials; unreadable ones stay 0."""
        parent = task.real_parent
        if parent and parent != task.address:
            if parent not in self._parents:
                try:
                    self._parents[parent] = self.kmem.read_s32(parent + self.t.tgid)
                except MemoryUnavailable:
                    self._parents[parent] = 0
            task.ppid = self._parents[parent]
        if task.cred:
            c = self.cred
            try:
                raw = self.kmem.read(task.cred, c.size)
                u32 = lambda off: self._u32.unpack_from(raw, off)[0]    # noqa: E731
                task.uids = (u32(c.uid), u32(c.euid), u32(c.suid), u32(c.fsuid))
                task.gids = (u32(c.gid), u32(c.egid), u32(c.sgid), u32(c.fsgid))
            except MemoryUnavailable:
                pass
        return task

    # -- lists ----------------------------------------------------------------
    def _list(self, head: int, member_offset: int, limit: int, what: str) -> tuple[list[int], str | None]:
        """Container addresses on the circular list at `head` (list_head.next at offset 0);
        the second value says why the walk stopped early (None: back at the head)."""
        out: list[int] = []
        seen = {head}
        try:
            node = self.kmem.read_pointer(head)
        except MemoryUnavailable as exc:
            return out, f"{what}: list head {head:#x} unreadable: {exc}"
        while node != head:
            if node in seen:
                return out, f"{what}: the list loops back to {node:#x} after {len(out)} entries"
            if len(out) >= limit:
                return out, f"{what}: more than {limit} entries (the list is damaged or absurd)"
            if not node:
                return out, f"{what}: NULL next pointer after {len(out)} entries"
            seen.add(node)
            out.append(node - member_offset)
            try:
                node = self.kmem.read_pointer(node)
            except MemoryUnavailable as exc:
                return out, f"{what}: entry {len(out)} unreadable: {exc}"
        return out, None

    def threads_of(self, leader: Task) -> list[Task]:
        """The leader first, then the other threads of its group."""
        t = self.t
        if t.thread_node is not None and self.sig.thread_head is not None and leader.signal:
            addresses, problem = self._list(leader.signal + self.sig.thread_head, t.thread_node,
                                            MAX_THREADS, f"threads of pid {leader.pid}")
        elif t.thread_group is not None:
            addresses, problem = self._list(leader.address + t.thread_group, t.thread_group,
                                            MAX_THREADS, f"threads of pid {leader.pid}")
            addresses = [leader.address] + addresses
        else:
            return [leader]
        if problem:
            self._note(problem)
        threads = [leader]
        for address in addresses:
            if address == leader.address:
                continue
            try:
                threads.append(self._fill(self.read_task(address)))
            except WalkError as exc:
                self._note(str(exc))
                break
        return threads

    def _note(self, problem: str) -> None:
        with self._problems_lock:
            self.problems.append(problem)

    def processes(self) -> list[Task]:
        """Every thread-group leader on init_task.tasks (init_task itself, pid 0, aside).

        `problems` becomes this walk's, whole: walks in other threads never mix into it."""
        problems: list[str] = []
        head = self.init_task + self.t.tasks
        addresses, problem = self._list(head, self.t.tasks, MAX_TASKS, "task list (init_task.tasks)")
        if problem:
            problems.append(problem)
        out = []
        for address in addresses:
            try:
                task = self._fill(self.read_task(address))
            except WalkError as exc:
                problems.append(str(exc))
                break
            if task.pid <= 0:
                continue
            out.append(task)
        with self._problems_lock:
            self.problems = problems
        return out

    # -- registers ---------------------------------------------------------------
    def pt_regs(self, task: Task) -> bytes:
        """The user registers saved at the top of the task's kernel stack (task_pt_regs)."""
        size = self.types.sizeof("pt_regs")
        if not task.stack:
            raise WalkError(f"pid {task.pid} has no kernel stack")
        address = task.stack + self.arch.thread_size - size
        try:
            return self.kmem.read(address, size)
        except MemoryUnavailable as exc:
            raise WalkError(f"pid {task.pid}: pt_regs at {address:#x} unreadable: {exc}") from None

    def user_registers(self, task: Task) -> bytes:
        """pr_reg of the task's NT_PRSTATUS (the machine's user_regs_struct), from its pt_regs."""
        return self.arch.user_registers(self.pt_regs(task), task.address, self.kmem, self.types)
